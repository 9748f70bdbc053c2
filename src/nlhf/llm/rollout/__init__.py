"""Rollouts: sampling responses from a policy (HF `generate`; a completions server; vLLM on GPU).

``rollout.backend`` picks the :class:`~nlhf.llm.rollout.base.Generator` (see docs/rollout.md).
"""

from nlhf.llm.rollout.backends import make_generator
from nlhf.llm.rollout.base import Generator, HFGenerator
from nlhf.llm.rollout.hf import Sample, Sampling, generate

__all__ = ["Generator", "HFGenerator", "Sample", "Sampling", "generate", "make_generator"]
