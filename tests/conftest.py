"""Shared fixtures: one tiny random Llama (SmolLM2 tokenizer) loaded once per session."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP
# spin-waiting under contention made small forward passes ~40x slower. Override with
# NLHF_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("NLHF_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_parts() -> tuple[Any, Any]:
    """(tokenizer, base model) of the tiny random model; never mutate, deep-copy instead."""
    from nlhf.llm.policy import TINY_MODEL, load_model_and_tokenizer

    return load_model_and_tokenizer(TINY_MODEL, seed=0)


@pytest.fixture
def make_policy(tiny_parts: tuple[Any, Any]) -> Callable[..., Any]:
    """Factory for a fresh LMPolicy on a private copy of the tiny base model."""
    from nlhf.llm.policy import LMPolicy

    tokenizer, model = tiny_parts

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("device", "cpu")
        return LMPolicy(tokenizer, copy.deepcopy(model), **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_policy(tiny_parts: tuple[Any, Any]) -> Any:
    """A read-only tiny policy whose adapters differ from the reference and from each other."""
    from nlhf.llm.policy import LMPolicy

    tokenizer, model = tiny_parts
    policy = LMPolicy(tokenizer, copy.deepcopy(model), device="cpu")
    perturb_adapter(policy, "policy", seed=1)
    perturb_adapter(policy, "adversary", seed=2)
    return policy


def perturb_adapter(policy: Any, adapter: str, *, seed: int, scale: float = 0.05) -> None:
    """Give an adapter non-zero weights (LoRA B starts at zero, so adapters start equal)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.trainable_parameters(adapter):
            p.add_(scale * torch.randn(p.shape, generator=gen))


@pytest.fixture
def prompts(tiny_parts: tuple[Any, Any]) -> list[list[int]]:
    """Three chat-formatted prompts of different lengths."""
    tokenizer, _ = tiny_parts
    texts = ["Hi", "What is the capital of France?", "Write a haiku about autumn leaves, please."]
    rows = []
    for text in texts:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        rows.append(list(tokenizer(rendered, add_special_tokens=False)["input_ids"]))
    return rows


@pytest.fixture
def perturb() -> Callable[..., None]:
    """`perturb_adapter` as a fixture, so test modules need not import conftest."""
    return perturb_adapter
