"""Rollouts: sampling responses from a policy (HF `generate`; vLLM optional on GPU)."""

from nlhf.rollout.hf import Sample, generate

__all__ = ["Sample", "generate"]
