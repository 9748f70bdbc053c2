"""HF rollouts: seeded reproducibility, EOS handling, cached log-probs equal a forward pass."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from nlhf.llm.policy import LMPolicy
from nlhf.llm.rollout import Sample, Sampling, generate
from nlhf.llm.rollout.hf import Sampler, _cut_at_eos, batch_seed

MAX_NEW = 10


def forward_logprobs(policy: LMPolicy, samples: list[Sample], adapter: str | None) -> torch.Tensor:
    return policy.sequence_logprobs(
        [s.prompt_ids for s in samples], [s.response_ids for s in samples], adapter
    )


@pytest.fixture(scope="module")
def eos_policy(tiny_parts: Any) -> LMPolicy:
    """Tiny policy whose head favours EOS (~15% a step): responses end early or run full."""
    tokenizer, model = tiny_parts
    model = copy.deepcopy(model)
    weight = model.get_input_embeddings().weight
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 9.0
    model.lm_head = head
    policy = LMPolicy(tokenizer, model, device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.trainable_parameters("policy"):
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return policy


def test_generate_shapes_and_grouping(tiny_policy: LMPolicy, prompts: Any) -> None:
    samples = generate(
        tiny_policy, prompts, "policy", Sampling(n_per_prompt=2, max_new_tokens=MAX_NEW),
        batch_size=4,
    )
    assert len(samples) == 2 * len(prompts)
    assert [s.prompt_index for s in samples] == [0, 0, 1, 1, 2, 2]
    for s in samples:
        assert s.prompt_ids == prompts[s.prompt_index]
        assert 1 <= len(s.response_ids) <= MAX_NEW
        assert isinstance(s.text, str)
        assert s.logprob is not None and s.logprob < 0


def test_generation_reproducible_with_seed(tiny_policy: LMPolicy, prompts: Any) -> None:
    kwargs: dict[str, Any] = {"batch_size": 4, "progress": False}

    def seeded(seed: int) -> Sampling:
        return Sampling(n_per_prompt=2, max_new_tokens=MAX_NEW, seed=seed)

    a = generate(tiny_policy, prompts, "policy", seeded(5), **kwargs)
    torch.rand(10)  # global RNG state must not matter
    b = generate(tiny_policy, prompts, "policy", seeded(5), **kwargs)
    c = generate(tiny_policy, prompts, "policy", seeded(6), **kwargs)
    assert [s.response_ids for s in a] == [s.response_ids for s in b]
    assert [s.response_ids for s in a] != [s.response_ids for s in c]
    # Sampling does not disturb the caller's RNG stream.
    torch.manual_seed(0)
    x = torch.rand(3)
    torch.manual_seed(0)
    generate(tiny_policy, prompts[:1], "policy", seeded(5), **kwargs)
    assert torch.equal(torch.rand(3), x)


@pytest.mark.parametrize("adapter", ["policy", "adversary", None])
def test_cached_logprob_matches_forward(
    tiny_policy: LMPolicy, prompts: Any, adapter: str | None
) -> None:
    samples = generate(
        tiny_policy, prompts, adapter, Sampling(n_per_prompt=2, max_new_tokens=MAX_NEW),
        progress=False,
    )
    cached = torch.tensor([s.logprob for s in samples])
    assert torch.allclose(cached, forward_logprobs(tiny_policy, samples, adapter), atol=1e-4)


def test_responses_end_at_eos_or_limit(eos_policy: LMPolicy, prompts: Any) -> None:
    samples = generate(
        eos_policy,
        prompts,
        "policy",
        Sampling(n_per_prompt=6, max_new_tokens=12, seed=1),
        batch_size=8,
        progress=False,
    )
    eos = eos_policy.tokenizer.eos_token_id
    ended = [s for s in samples if s.response_ids[-1] == eos]
    assert ended and len(ended) < len(samples)  # both kinds of ending occur
    for s in samples:
        assert eos not in s.response_ids[:-1]
        assert s.response_ids[-1] == eos or len(s.response_ids) == 12
        assert "<|im_end|>" not in s.text
    # EOS is part of the response and of its cached log-prob.
    cached = torch.tensor([s.logprob for s in samples])
    assert torch.allclose(cached, forward_logprobs(eos_policy, samples, "policy"), atol=1e-4)


def test_logprob_only_when_sampling_from_the_policy(tiny_policy: LMPolicy, prompts: Any) -> None:
    for kwargs in ({"temperature": 0.7}, {"top_p": 0.9}, {"temperature": 0.0}):
        samples = generate(
            tiny_policy, prompts[:2], "policy", Sampling(max_new_tokens=4, **kwargs),
            progress=False,
        )
        assert all(s.logprob is None for s in samples)


def test_greedy_ignores_seed(tiny_policy: LMPolicy, prompts: Any) -> None:
    runs = [
        generate(
            tiny_policy, prompts, None, Sampling(temperature=0.0, max_new_tokens=6, seed=seed),
            progress=False,
        )
        for seed in (0, 1)
    ]
    assert [s.response_ids for s in runs[0]] == [s.response_ids for s in runs[1]]


def test_helpers() -> None:
    assert _cut_at_eos([5, 2, 2, 2], {2}) == [5, 2]
    assert _cut_at_eos([5, 6], {2}) == [5, 6]
    assert _cut_at_eos([7, 9, 3], {9, 3}) == [7, 9]
    assert batch_seed(0, 1) == batch_seed(0, 1) != batch_seed(0, 2) != batch_seed(1, 1)


def test_progress_bar_runs(tiny_policy: LMPolicy, prompts: Any) -> None:
    samples = generate(tiny_policy, prompts[:1], "policy", Sampling(max_new_tokens=2),
                       progress=True)
    assert len(samples) == 1


@pytest.mark.parametrize(
    ("temperature", "top_p", "want"),
    [
        (1.0, 1.0, [0.5, 0.3, 0.15, 0.05]),
        (1.0, 0.7, [0.625, 0.375, 0.0, 0.0]),  # nucleus {0.5, 0.3}, renormalised
        (2.0, 1.0, None),  # softmax(logits / 2)
    ],
)
def test_sampler_draws_from_the_tempered_nucleus(temperature: float, top_p: float,
                                                 want: list[float] | None) -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    logits = probs.log().float()
    if want is None:
        want = torch.softmax(probs.log() / temperature, -1).tolist()
    n = 200_000
    sampler = Sampler(temperature, top_p, torch.Generator().manual_seed(0))
    scores = sampler(torch.zeros((n, 1), dtype=torch.long), logits.expand(n, -1).clone())
    tokens = scores.argmax(-1)
    assert bool((scores.isfinite().sum(-1) == 1).all())  # one token kept per row
    freq = torch.bincount(tokens, minlength=4).double() / n
    for f, p in zip(freq.tolist(), want, strict=True):
        assert abs(f - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 1e-12, (freq, want)
    # Recorded log-probs are the raw model's (the policy's), whatever the sampling.
    assert torch.allclose(sampler.logprobs[0], probs.log().float()[tokens], atol=1e-6)
