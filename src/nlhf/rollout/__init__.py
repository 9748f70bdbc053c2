"""Rollouts: sampling responses from a policy (HF `generate`; a completions server; vLLM on GPU).

``rollout.backend`` picks the :class:`~nlhf.rollout.base.Generator` (see docs/rollout.md).
"""

from nlhf.rollout.base import Generator, HFGenerator, make_generator
from nlhf.rollout.hf import Sample, generate

__all__ = ["Generator", "HFGenerator", "Sample", "generate", "make_generator"]
