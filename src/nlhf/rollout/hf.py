"""Sampling with Hugging Face `generate`: KV cache, left padding, reproducible per batch.

At temperature 1 and top-p 1 the samples come from the policy itself, so the log-prob of
each response under pi_t is read off the generation logits here; the trainer then needs no
second forward pass for the pi_t term of its losses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from nlhf.policies.lm import LMPolicy


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


def prompt_lists(prompts_ids: Sequence[Sequence[int]]) -> list[list[int]]:
    """The prompts as lists of ids; an empty prompt is an error (nothing to continue)."""
    if any(len(p) == 0 for p in prompts_ids):
        raise ValueError("every prompt needs at least one token")
    return [list(p) for p in prompts_ids]


def batch_seed(seed: int, batch_index: int) -> int:
    """A well-mixed 63-bit seed for one batch, a pure function of (seed, batch index)."""
    state = np.random.SeedSequence([seed % 2**63, batch_index]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _generation_config(
    policy: LMPolicy, max_new_tokens: int, temperature: float, top_p: float, exact: bool
) -> Any:
    """Every sampling knob set explicitly, so a model's own defaults cannot distort sampling."""
    from transformers import GenerationConfig

    sample = temperature > 0
    return GenerationConfig(
        do_sample=sample,
        temperature=temperature if sample else 1.0,
        top_p=top_p if sample else 1.0,
        top_k=0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_new_tokens=0,
        max_new_tokens=max_new_tokens,
        num_beams=1,
        use_cache=True,
        pad_token_id=policy.pad_token_id,
        eos_token_id=policy.eos_token_ids,
        return_dict_in_generate=True,
        output_logits=exact,
    )


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[b, width - len(row) :] = 1
    return ids, mask


def _cut_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Keep tokens up to and including the first EOS (pad == EOS, so later ones are padding)."""
    for i, tok in enumerate(tokens):
        if tok in eos:
            return tokens[: i + 1]
    return tokens


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


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
    step = max(1, batch_size)
    return jobs, [order[s : s + step] for s in range(0, len(order), step)]


def generate_batches(
    policy: LMPolicy,
    jobs: Sequence[Job],
    batches: Sequence[Sequence[int]],
    run: Iterable[int],
    adapter: str | None,
    *,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> dict[int, Sample]:
    """Run batches ``run`` (indices into ``batches``) of a :func:`plan_batches` plan; returns
    {job index: sample}. Batch b is seeded from (seed, b), so its samples do not depend on
    which other batches this call runs."""
    exact = temperature == 1.0 and top_p == 1.0
    config = _generation_config(policy, max_new_tokens, temperature, top_p, exact)
    eos = set(policy.eos_token_ids)
    results: dict[int, Sample] = {}
    todo = list(run)
    cuda = [policy.device] if policy.device.type == "cuda" else []
    name = adapter or "reference"
    with _progress(progress) as bar, policy.using(adapter) as model, torch.no_grad():
        task = bar.add_task(f"generate ({name})", total=sum(len(batches[b]) for b in todo))
        for b in todo:
            idx = batches[b]
            ids, mask = _left_pad([jobs[k][1] for k in idx], policy.pad_token_id)
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(batch_seed(seed, b))
                out = model.generate(  # type: ignore[operator]
                    input_ids=ids.to(policy.device),
                    attention_mask=mask.to(policy.device),
                    generation_config=config,
                )
            new = out.sequences[:, ids.shape[1] :]
            token_lp = _token_logprobs(out.logits, new) if exact else None
            for j, k in enumerate(idx):
                response = _cut_at_eos(new[j].tolist(), eos)
                logprob = None if token_lp is None else float(token_lp[j, : len(response)].sum())
                results[k] = Sample.decoded(policy.tokenizer, *jobs[k], response, logprob)
            bar.advance(task, len(idx))
    return results


def generate(
    policy: LMPolicy,
    prompts_ids: Sequence[Sequence[int]],
    adapter: str | None,
    *,
    n_per_prompt: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> list[Sample]:
    """Sample `n_per_prompt` responses per prompt from `adapter` (None: the reference).

    Returns samples grouped by prompt, in prompt order. Prompts are batched by length to cut
    padding; batch b is seeded from (seed, b), so a call repeats exactly given its arguments.
    `temperature <= 0` means greedy decoding. `logprob` is filled only at temperature 1 and
    top-p 1, where the sampling distribution is the policy itself.
    """
    jobs, batches = plan_batches(prompts_ids, n_per_prompt, batch_size)
    results = generate_batches(
        policy, jobs, batches, range(len(batches)), adapter, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, seed=seed, progress=progress,
    )
    return [results[k] for k in range(len(jobs))]


def _token_logprobs(logits: Sequence[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Log-prob of each generated token under the raw (unprocessed) model logits."""
    columns = []
    for t, step_logits in enumerate(logits):
        step = step_logits.float()
        picked = step.gather(-1, tokens[:, t : t + 1]).squeeze(-1)
        columns.append(picked - torch.logsumexp(step, dim=-1))
    return torch.stack(columns, dim=1).cpu()
