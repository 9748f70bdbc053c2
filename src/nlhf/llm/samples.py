"""Data collection shared by every algorithm: prompts, rollouts, log-prob passes, judge calls.

Each piece is a pure function of (seed, iteration, adapter weights) and is written to the run
store before anything uses it; the trainer then always *reads it back*, so an uninterrupted
run and a resumed one train on bit-identical numbers. Samples of a role are kept grouped by
prompt in round order: sample ``k`` of round prompt ``i`` sits at index ``i·per_prompt + k``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nlhf.errors import NLHFInputError
from nlhf.llm.distributed import SINGLE, Dist, sharded_logprobs
from nlhf.llm.rollout.base import Generator, HFGenerator
from nlhf.llm.rollout.hf import Sampling
from nlhf.progress import progress_bar

if TYPE_CHECKING:
    from nlhf.llm.config import TrainConfig
    from nlhf.llm.judges import CachedJudge
    from nlhf.llm.policy.lm import LMPolicy
    from nlhf.llm.rollout.hf import Sample
    from nlhf.llm.rundir import RunDir
    from nlhf.llm.store import RunStore

log = logging.getLogger(__name__)

#: Which adapter computes each policy: pi_t is the "policy" adapter, pihat_t the "adversary",
#: and pi_ref the frozen base (adapters off).
ADAPTER_OF: dict[str, str | None] = {"pi_t": "policy", "pihat_t": "adversary", "ref": None}
#: Comparisons per judge call: a kill mid-judging loses at most one chunk of answers.
JUDGE_CHUNK = 256


def phase_seed(seed: int, iteration: int, tag: str) -> int:
    """A 63-bit seed that depends only on (run seed, iteration, phase tag)."""
    entropy = [seed, iteration, zlib.crc32(tag.encode("utf-8"))]
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def round_prompts(train: Sequence[tuple[int, str]], n: int, seed: int, iteration: int
                  ) -> list[tuple[int, str]]:
    """The round's ``n`` training prompts (all of them if fewer), drawn from (seed, t)."""
    order = np.random.default_rng(phase_seed(seed, iteration, "prompts")).permutation(len(train))
    return [train[int(i)] for i in order[: min(n, len(train))]]


@dataclass(frozen=True)
class Source:
    """One ``generate`` call: ``model`` samples all ``roles`` (name, count per prompt) at once.

    ``temperature`` (default: the rollout's) samples at another temperature, e.g. DENPO-explore's
    T_e; such samples' log-probs under ``model`` are recomputed, not taken from the sampler.
    """

    model: str
    roles: tuple[tuple[str, int], ...]
    temperature: float | None = None


@dataclass
class RoleSamples:
    """All samples of one role in a round, grouped by prompt."""

    name: str
    sampler: str
    per_prompt: int
    prompt_pos: list[int]
    response_ids: list[list[int]]
    texts: list[str]
    #: Sequence log-probs by policy name ("pi_t", "ref", ...); NaN where unknown.
    logp: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def at(self, pos: int, k: int) -> int:
        """Where sample ``k`` of the round's prompt ``pos`` sits (samples are prompt-major)."""
        return pos * self.per_prompt + k

    def column(self, k: int) -> list[int]:
        """Sample ``k`` of every prompt, in prompt order."""
        return [self.at(pos, k) for pos in range(len(self) // self.per_prompt)]

    def first(self, n: int) -> list[int]:
        """The first ``n`` samples of every prompt, prompt-major."""
        return [self.at(pos, k) for pos in range(len(self) // self.per_prompt) for k in range(n)]


@dataclass
class RoundData:
    """What one round trains on: its prompts and every role's samples and log-probs."""

    iteration: int
    prompt_ids: list[int]
    prompt_texts: list[str]
    prompt_tokens: list[list[int]]
    roles: dict[str, RoleSamples]
    #: Where the policy computes: stored numbers become tensors there.
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def tensor(self, values: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=torch.float32, device=self.device)

    def seqs(self, role: str, idx: Sequence[int]) -> tuple[list[list[int]], list[list[int]]]:
        """(prompt token ids, response token ids) of samples ``idx`` of ``role``."""
        r = self.roles[role]
        return [self.prompt_tokens[r.prompt_pos[i]] for i in idx], [r.response_ids[i] for i in idx]

    def logp(self, role: str, model: str, idx: Sequence[int] | None = None) -> torch.Tensor:
        """Stored log-probs of ``role``'s samples under ``model``, as a float32 tensor."""
        values = self.roles[role].logp[model]
        if idx is not None:
            values = values[list(idx)]
        return self.tensor(values)

    def prompt_of(self, role: str, i: int) -> str:
        return self.prompt_texts[self.roles[role].prompt_pos[i]]


# -- rollout backends that load adapter folders (rollout.backend: openai / vllm) ------------


def current_adapter_dir(policy: LMPolicy, run: RunDir, iteration: int, adapter: str) -> Path:
    """The folder holding ``adapter``'s weights as round ``iteration`` samples them.

    Round t samples pi_t (pihat_t), which round t − 1 saved to ``adapters/iter_{t-1}/``;
    round 1 samples the seeded initial adapters, saved here once to ``adapters/iter_0/``
    (evaluation and ``state.json`` list iterates from 1, so iteration 0 stays out of them).
    """
    from nlhf.llm.policy.lm import ADAPTER_WEIGHTS

    folder = run.adapter(iteration - 1, adapter)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        policy.save_adapter(adapter, folder)
    return folder


def served_name(run: RunDir, iteration: int, adapter: str) -> str:
    """A name per (run, iteration, adapter), e.g. ``policy-it3-1a2b3c4d``: servers that cache
    adapters by name never serve last round's weights, and two runs never share a name."""
    tag = zlib.crc32(str(run.root.resolve()).encode("utf-8"))
    return f"{adapter}-it{iteration}-{tag:08x}"


@contextmanager
def serving(generator: Generator, policy: LMPolicy, run: RunDir | None, iteration: int,
            adapter: str | None) -> Iterator[str | None]:
    """The name under which ``generator`` samples ``adapter`` (None: the reference).

    In-memory backends (hf) sample the adapter itself. The others get this round's iterate
    loaded from its folder before sampling and unloaded after it (best effort).
    """
    if adapter is None or not generator.loads_adapters:
        yield adapter
        return
    if run is None:
        raise ValueError(f"rollout.backend {generator.backend} needs the run directory")
    name = served_name(run, iteration, adapter)
    generator.load_adapter(name, current_adapter_dir(policy, run, iteration, adapter))
    yield name
    try:
        generator.unload_adapter(name)
    except NLHFInputError as exc:
        log.warning("rollout: could not unload adapter %s: %s", name, exc)


def run_generation(policy: LMPolicy, cfg: TrainConfig, iteration: int,
                   prompts: Sequence[tuple[int, str]], prompt_tokens: list[list[int]],
                   sources: Sequence[Source], store: RunStore, progress: bool,
                   generator: Generator | None = None, run: RunDir | None = None,
                   dist: Dist = SINGLE) -> dict[str, Any]:
    """Sample every source once and store all rows in one transaction.

    ``generator`` (default: HF on ``policy``) is the ``rollout.backend``; backends without
    exact log-probs leave ``logprob`` None, which :func:`missing_logprobs` recomputes. Under
    several processes every rank gets every sample (see :func:`sample_source`).
    """
    r = cfg.rollout
    gen = generator if generator is not None else HFGenerator(policy, batch_size=r.batch_size)
    rows: list[dict[str, Any]] = []
    n_tokens = 0
    for src in sources:
        n = sum(k for _, k in src.roles)
        samples = sample_source(gen, policy, cfg, iteration, src, prompt_tokens, progress,
                                run, dist)
        for pos, (pid, _) in enumerate(prompts):
            group = samples[pos * n:(pos + 1) * n]
            offset = 0
            for role, k in src.roles:
                for j in range(k):
                    s = group[offset + j]
                    n_tokens += len(s.response_ids)
                    rows.append({"iteration": iteration, "role": role, "prompt_id": pid,
                                 "sample_index": j, "response": s.text,
                                 "response_ids": s.response_ids,
                                 "logprob": s.logprob if src.temperature is None else None})
                offset += k
    store.put_generations(rows)
    return {"samples": len(rows), "tokens": n_tokens}


def sample_source(gen: Generator, policy: LMPolicy, cfg: TrainConfig, iteration: int,
                  src: Source, prompt_tokens: list[list[int]], progress: bool,
                  run: RunDir | None, dist: Dist = SINGLE) -> list[Sample]:
    """One source's samples, grouped by prompt, identical on every rank and for any number
    of ranks: the hf backend splits its batches across ranks (same batches, same seeds);
    a server or engine is driven by rank 0 alone (it batches across its own GPUs)."""
    r = cfg.rollout
    seed_key = f"generate/{src.model}" + ("" if src.temperature is None
                                          else f"@{src.temperature}")
    sampling = Sampling(n_per_prompt=sum(k for _, k in src.roles),
                        max_new_tokens=r.max_new_tokens,
                        temperature=r.temperature if src.temperature is None else src.temperature,
                        top_p=r.top_p, seed=phase_seed(cfg.seed, iteration, seed_key))
    adapter = ADAPTER_OF[src.model]
    if dist.world > 1 and r.backend == "hf":
        if not isinstance(gen, HFGenerator):
            raise TypeError("rollout.backend hf: expected an HFGenerator")
        mine = gen.generate_shard(prompt_tokens, adapter, dist.rank, dist.world, sampling,
                                  progress=progress)
        dist.trace("generate", source=src.model, samples=len(mine))
        every = dict(dist.gather(list(mine.items())))
        return [every[k] for k in range(len(every))]

    def served() -> list[Sample]:
        with serving(gen, policy, run, iteration, adapter) as name:
            return gen.generate(prompt_tokens, name, sampling, progress=progress)

    if dist.world > 1:
        return dist.broadcast(served() if dist.is_main else [])
    return served()


def load_round(store: RunStore, iteration: int, prompts: Sequence[tuple[int, str]],
               prompt_tokens: list[list[int]], sources: Sequence[Source],
               device: torch.device | None = None) -> RoundData:
    """Rebuild the round's samples from the store, in round order."""
    pos_of = {pid: pos for pos, (pid, _) in enumerate(prompts)}
    roles: dict[str, RoleSamples] = {}
    for src in sources:
        for role, k in src.roles:
            found = {(g["prompt_id"], g["sample_index"]): g
                     for g in store.get_generations(iteration, role)}
            picked = []
            for pid, _ in prompts:
                for j in range(k):
                    if (pid, j) not in found:
                        raise RuntimeError(f"store: iteration {iteration} lacks {role} sample "
                                           f"{j} of prompt {pid}; the run store is inconsistent")
                    picked.append(found[(pid, j)])
            rs = RoleSamples(
                name=role, sampler=src.model, per_prompt=k,
                prompt_pos=[pos_of[g["prompt_id"]] for g in picked],
                response_ids=[list(g["response_ids"]) for g in picked],
                texts=[g["response"] for g in picked],
            )
            cached = [np.nan if g["logprob"] is None else g["logprob"] for g in picked]
            rs.logp[src.model] = np.asarray(cached, dtype=np.float64)
            roles[role] = rs
    return RoundData(iteration, [p for p, _ in prompts], [t for _, t in prompts],
                     prompt_tokens, roles, device or torch.device("cpu"))


def missing_logprobs(data: RoundData, needs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (role, model) log-probs that the generation cache does not already hold."""
    out = []
    for role, model in dict.fromkeys(needs):
        values = data.roles[role].logp.get(model)
        if values is None or bool(np.isnan(values).any()):
            out.append((role, model))
    return out


def run_logprobs(policy: LMPolicy, data: RoundData, todo: Sequence[tuple[str, str]],
                 batch_size: int, progress: bool, dist: Dist = SINGLE) -> dict[str, list[float]]:
    """No-grad forward passes for the missing (role, model)s; returns {"role/model": values}.

    All roles scored by one model go through one call, so the responses that share a prompt
    (a pair's two sides, comparators) share its forward pass (:meth:`LMPolicy.
    _batch_logprobs`). Under several processes the batches are split across ranks and every
    rank gets all.
    """
    by_model: dict[str, list[str]] = {}
    for role, model in todo:
        by_model.setdefault(model, []).append(role)
    out: dict[str, list[float]] = {}
    with progress_bar(progress) as pb:
        task = pb.add_task("log-probs", total=sum(len(data.roles[r]) for r, _ in todo))
        for model, roles in by_model.items():
            rows = [(role, i) for role in roles for i in range(len(data.roles[role]))]
            # Chunks of whole prompts: row order is role-major, so walk prompt by prompt.
            rows.sort(key=lambda ri: data.roles[ri[0]].prompt_pos[ri[1]])
            values: dict[tuple[str, int], float] = {}
            chunk = max(1, batch_size) * 8
            for start in range(0, len(rows), chunk):
                part = rows[start:start + chunk]
                p_ids = [data.prompt_tokens[data.roles[r].prompt_pos[i]] for r, i in part]
                r_ids = [data.roles[r].response_ids[i] for r, i in part]
                lp = sharded_logprobs(policy, dist, p_ids, r_ids, ADAPTER_OF[model],
                                      batch_size)
                values.update(zip(part, (float(v) for v in lp.detach().cpu()), strict=True))
                pb.advance(task, len(part))
            for role in roles:
                out[f"{role}/{model}"] = [values[role, i] for i in range(len(data.roles[role]))]
    return out


def attach_logprobs(data: RoundData, computed: dict[str, list[float]]) -> None:
    for key, values in computed.items():
        role, model = key.split("/")
        data.roles[role].logp[model] = np.asarray(values, dtype=np.float64)


Comparison = tuple[str, int, str, int]


def run_judge(judge: CachedJudge, data: RoundData, comparisons: Sequence[Comparison],
              progress: bool, on_chunk: Callable[[int], None] | None = None) -> list[float]:
    """P(a ≻ b) for each (role_a, i_a, role_b, i_b), through the store-backed judge cache.

    One batched pass, cut in chunks for the progress bar: each chunk's answers are stored
    as it ends, so a kill mid-judging loses at most one chunk.
    """
    prompts = [data.prompt_of(ra, ia) for ra, ia, _, _ in comparisons]
    a = [data.roles[ra].texts[ia] for ra, ia, _, _ in comparisons]
    b = [data.roles[rb].texts[ib] for _, _, rb, ib in comparisons]
    out: list[float] = []
    with progress_bar(progress) as pb:
        task = pb.add_task(f"judge ({judge.name})", total=len(comparisons))
        for s in range(0, len(comparisons), JUDGE_CHUNK):
            e = s + JUDGE_CHUNK
            out += [float(v) for v in judge.prob(prompts[s:e], a[s:e], b[s:e])]
            pb.advance(task, len(prompts[s:e]))
            if on_chunk is not None:
                on_chunk(s // JUDGE_CHUNK)
    return out
