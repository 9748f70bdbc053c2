"""Sampling with Hugging Face `generate`: KV cache, left padding, reproducible per batch.

At temperature 1 and top-p 1 the samples come from the policy itself, so the log-prob of
each response under pi_t is recorded while sampling (:class:`Sampler`); the trainer then
needs no second forward pass for the pi_t term of its losses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nlhf.llm.batching import even_batches
from nlhf.llm.policy.lm import distinct_prompts, left_pad
from nlhf.progress import progress_bar

if TYPE_CHECKING:
    from nlhf.llm.policy.lm import LMPolicy


@dataclass
class Sample:
    """One sampled response; `logprob` is log pi(response | prompt) when known, else None."""

    prompt_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    logprob: float | None

    @classmethod
    def decoded(cls, tokenizer: Any, prompt_index: int, prompt_ids: list[int],
                response_ids: list[int], logprob: float | None = None) -> Sample:
        """A sample whose ``text`` is its response decoded without special tokens (EOS)."""
        return cls(prompt_index=prompt_index, prompt_ids=prompt_ids, response_ids=response_ids,
                   text=tokenizer.decode(response_ids, skip_special_tokens=True),
                   logprob=logprob)


@dataclass(frozen=True)
class Sampling:
    """How to sample: the arguments every generator (HF, vLLM, a server) takes, in one place.

    ``n_per_prompt`` samples per prompt, each cut at ``max_new_tokens``; ``temperature`` <= 0
    is greedy; the same ``seed`` gives the same samples (as far as the backend repeats).
    """

    n_per_prompt: int = 1
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def exact(self) -> bool:
        """True where the sampling distribution is the policy itself (temperature 1, top-p 1)."""
        return self.temperature == 1.0 and self.top_p == 1.0


def prompt_lists(prompts_ids: Sequence[Sequence[int]]) -> list[list[int]]:
    """The prompts as lists of ids; an empty prompt is an error (nothing to continue)."""
    if any(len(p) == 0 for p in prompts_ids):
        raise ValueError("every prompt needs at least one token")
    return [list(p) for p in prompts_ids]


def batch_seed(seed: int, batch_index: int) -> int:
    """A well-mixed 63-bit seed for one batch, a pure function of (seed, batch index)."""
    state = np.random.SeedSequence([seed % 2**63, batch_index]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _generation_config(policy: LMPolicy, max_new_tokens: int) -> Any:
    """Greedy decoding over the scores of :class:`Sampler` (which draws the tokens itself),
    with every processor that greedy decoding applies set to neutral, so that a model's own
    defaults cannot distort sampling (sampling-only knobs such as top-k do not apply)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        temperature=1.0,
        top_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_new_tokens=0,
        max_new_tokens=max_new_tokens,
        num_beams=1,
        use_cache=True,
        pad_token_id=policy.pad_token_id,
        eos_token_id=policy.eos_token_ids,
        return_dict_in_generate=True,
    )


class Sampler:
    """A `generate` logits processor that samples each step's tokens itself.

    It draws by the exponential race (token = argmax p_i / E_i, E_i ~ Exp(1), exactly a
    draw from p), as `torch.multinomial` does, so two policies sampled with the same seed
    share their noise: close policies give identical responses, which makes `nlhf eval`'s
    comparison with the reference a paired one (ties). (Inverse-CDF sampling is a little
    faster but couples far less.) It returns scores that are 0 at the drawn token and -inf
    elsewhere, so greedy `generate` keeps exactly that token. With ``record`` it keeps the
    token's log-prob under the scores `generate` gives it (the model's logits) at that step,
    so no step's logits need to be kept: the trainer uses them when the sampling
    distribution is the policy itself (temperature 1, top-p 1). Temperature <= 0 picks the
    argmax.
    """

    def __init__(self, temperature: float, top_p: float, generator: torch.Generator,
                 *, record: bool = True) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.generator = generator
        self.record = record
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float()
        if self.temperature <= 0:
            tokens = logits.argmax(-1, keepdim=True)
        else:
            scaled = logits if self.temperature == 1.0 else logits / self.temperature
            probs = torch.softmax(scaled, dim=-1)
            if self.top_p < 1.0:
                probs = _nucleus(probs, self.top_p)
            race = torch.empty_like(probs).exponential_(generator=self.generator)
            tokens = (probs / race).argmax(-1, keepdim=True)
        if self.record:
            self.logprobs.append(
                (logits.gather(-1, tokens) - torch.logsumexp(logits, dim=-1, keepdim=True))[:, 0])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, tokens, 0.0)


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p`` (>= 1 token)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p >= top_p
    return probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))


def _cut_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Keep tokens up to and including the first EOS (pad == EOS, so later ones are padding)."""
    for i, tok in enumerate(tokens):
        if tok in eos:
            return tokens[: i + 1]
    return tokens


Job = tuple[int, list[int]]


def plan_batches(
    prompts_ids: Sequence[Sequence[int]], n_per_prompt: int, batch_size: int
) -> tuple[list[Job], list[list[int]]]:
    """The jobs (prompt index, prompt ids), one per sample, and the batches of job indices
    that :func:`generate` runs: length-sorted to cut padding.

    Public so that data-parallel ranks can split the *batches* among themselves: a batch
    keeps its members and its seed whichever rank runs it, so the samples do not depend on
    the number of processes.
    """
    prompts = prompt_lists(prompts_ids)
    jobs = [(i, list(p)) for i, p in enumerate(prompts) for _ in range(n_per_prompt)]
    order = sorted(range(len(jobs)), key=lambda k: len(jobs[k][1]))
    return jobs, even_batches(order, max(1, batch_size))


def generate_batches(
    policy: LMPolicy,
    jobs: Sequence[Job],
    batches: Sequence[Sequence[int]],
    run: Iterable[int],
    adapter: str | None,
    sampling: Sampling = Sampling(),
    *,
    progress: bool = True,
) -> dict[int, Sample]:
    """Run batches ``run`` (indices into ``batches``) of a :func:`plan_batches` plan; returns
    {job index: sample}. Batch b is seeded from (seed, b), so its samples do not depend on
    which other batches this call runs (``sampling.n_per_prompt`` is the plan's already)."""
    exact = sampling.exact
    config = _generation_config(policy, sampling.max_new_tokens)
    eos = set(policy.eos_token_ids)
    results: dict[int, Sample] = {}
    todo = list(run)
    name = adapter or "reference"
    with progress_bar(progress) as bar, policy.using(adapter) as model, torch.no_grad():
        task = bar.add_task(f"generate ({name})", total=sum(len(batches[b]) for b in todo))
        for b in todo:
            idx = batches[b]
            prompts = [jobs[k][1] for k in idx]
            ids, mask = left_pad(prompts, policy.pad_token_id)
            ids, mask = ids.to(policy.device), mask.to(policy.device)
            shared = _shared_prefill(policy, model, prompts)
            generator = torch.Generator(policy.device).manual_seed(batch_seed(sampling.seed, b))
            sampler = Sampler(sampling.temperature, sampling.top_p, generator, record=exact)
            out = model.generate(  # type: ignore[operator]
                input_ids=ids, attention_mask=mask, generation_config=config,
                logits_processor=[sampler], **shared,
            )
            new = out.sequences[:, ids.shape[1] :]
            token_lp = torch.stack(sampler.logprobs, dim=1).cpu() if exact else None
            for j, k in enumerate(idx):
                response = _cut_at_eos(new[j].tolist(), eos)
                logprob = None if token_lp is None else float(token_lp[j, : len(response)].sum())
                results[k] = Sample.decoded(policy.tokenizer, *jobs[k], response, logprob)
            bar.advance(task, len(idx))
    return results


def _shared_prefill(policy: LMPolicy, model: Any, prompts: list[list[int]]) -> dict[str, Any]:
    """The KV cache of a batch's prompts, each distinct prompt forwarded once, for `generate`.

    Why: a round samples several responses per prompt, and `generate` would prefill every
    copy, padded to the batch's longest prompt. Here each distinct prompt is forwarded once
    (in groups of similar length) and its rows share its cache: all but the last prompt
    token, which `generate` feeds itself. Returns {} when there is nothing to share.
    """
    distinct, rows = distinct_prompts(prompts)
    if len(distinct) == len(prompts) or min(len(p) for p in distinct) < 2:
        return {}
    _, cache, _ = policy.forward_prompts(model, [p[:-1] for p in distinct])
    cache.batch_select_indices(torch.tensor(rows, device=policy.device))
    return {policy.cache_arg: cache}


def generate(
    policy: LMPolicy,
    prompts_ids: Sequence[Sequence[int]],
    adapter: str | None,
    sampling: Sampling = Sampling(),
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> list[Sample]:
    """Sample ``sampling.n_per_prompt`` responses per prompt from `adapter` (None: the
    reference).

    Returns samples grouped by prompt, in prompt order. Prompts are batched by length to cut
    padding; batch b is seeded from (seed, b), so a call repeats exactly given its arguments.
    `temperature <= 0` means greedy decoding. `logprob` is filled only at temperature 1 and
    top-p 1, where the sampling distribution is the policy itself.
    """
    jobs, batches = plan_batches(prompts_ids, sampling.n_per_prompt, batch_size)
    results = generate_batches(
        policy, jobs, batches, range(len(batches)), adapter, sampling, progress=progress,
    )
    return [results[k] for k in range(len(jobs))]
