"""Data parallelism over the processes of ``accelerate launch`` (SPEC §4: accelerate, no
home-made distribution).

Design: every rank runs the same control flow on the same data, so a run on W processes
trains on exactly the numbers a one-process run would, and ends with the same weights up to
float rounding in the summed gradients. The work is split so that no result depends on W:

- **generation** (``rollout.backend: hf``): ranks split the *batches* of the one-process plan
  (:func:`nlhf.llm.rollout.hf.plan_batches`); a batch keeps its members and its seed (seed, b)
  whichever rank runs it, so the samples are bit-identical. Server backends (openai, vllm)
  batch across their own GPUs: rank 0 drives them and broadcasts the samples;
- **log-prob passes**: ranks split the batches of :meth:`LMPolicy.logprob_batches`, so each
  value comes from the same padded batch as in one process;
- **judging**: the comparisons that the cache misses are split in contiguous blocks;
- **training** (:func:`nlhf.llm.fit.fit`): ranks split each minibatch's items in contiguous
  spans (:meth:`Dist.share`) and back-propagate their micro-batches through the plain module;
  every loss share keeps the whole minibatch's denominator, so the ranks' gradients add up
  to the minibatch gradient. :meth:`AccelerateDist.sum_gradients` sums them (and the loss
  shares, for logging) in one all-reduce per step; clipping then sees the global norm and
  every rank takes the same optimizer step. No wrapper, no hook: the model is never touched;
- **the run directory**: rank 0 alone owns the store and writes every file; the other ranks
  read the store through :class:`RankZeroStore` (rank 0 answers, the answer is broadcast).

Test hook: with ``NLHF_TEST_TRACE=<file>`` every rank appends one JSON line per piece of
sharded work (``{"rank": r, "event": "generate", ...}``); without it nothing is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import reduce
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import torch

from nlhf.errors import NLHFInputError
from nlhf.llm.judges.base import Judge

if TYPE_CHECKING:
    from nlhf.llm.policy.lm import LMPolicy
    from nlhf.llm.store import RunStore

T = TypeVar("T")
TRACE_ENV = "NLHF_TEST_TRACE"
#: Seconds a rank may wait in one collective (default 2 h). Rank 0 alone drives a generation
#: server and writes the store while the others wait, which can take far longer than
#: torch's default (10 min for NCCL); a crashed rank still stops the launch at once.
TIMEOUT_ENV = "NLHF_DIST_TIMEOUT"


class Dist:
    """One process: every collective is the identity, every write is this process's."""

    rank = 0
    world = 1
    #: Where this rank computes (None: the policy's default device).
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        return obj

    def gather(self, items: list[T]) -> list[T]:
        """Every rank's ``items`` concatenated in rank order, on every rank."""
        return list(items)

    def span(self, n: int, ranks: int | None = None) -> tuple[int, int]:
        """This rank's contiguous block [lo, hi) of n items cut among the first ``ranks`` ranks
        (default all; sizes differ by at most one; empty for the ranks beyond)."""
        ranks = self.world if ranks is None else ranks
        if self.rank >= ranks:
            return 0, 0
        return self.rank * n // ranks, (self.rank + 1) * n // ranks

    def owns(self, batch: int) -> bool:
        """Round-robin owner of batch number ``batch``."""
        return batch % self.world == self.rank

    def on_main(self, fn: Callable[[], T], share: Callable[[T], Any] = lambda v: v) -> T:
        """Run ``fn`` on rank 0 only; the others get ``share(result)``, or raise its error.

        Why: rank 0 alone touches the run directory, and a bad-input error there must stop
        every rank with the same message instead of leaving them waiting in a collective.
        """
        if self.world == 1:
            return fn()
        status: tuple[str, Any] = ("ok", None)
        value: Any = None
        error: BaseException | None = None
        if self.is_main:
            try:
                value = fn()
                status = ("ok", share(value))
            except NLHFInputError as exc:
                status, error = ("input", str(exc)), exc
            except Exception as exc:
                status, error = ("crash", f"{type(exc).__name__}: {exc}"), exc
        status = self.broadcast(status)
        if error is not None:
            raise error
        if status[0] == "input":
            raise NLHFInputError(status[1])
        if status[0] == "crash":
            raise RuntimeError(f"rank 0 failed: {status[1]}")
        return cast(T, value if self.is_main else status[1])

    def trace(self, event: str, **fields: Any) -> None:
        """Test hook (``NLHF_TEST_TRACE``): record one piece of this rank's work."""
        path = os.environ.get(TRACE_ENV)
        if path:
            line = json.dumps({"rank": self.rank, "world": self.world, "event": event, **fields})
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    # -- training ---------------------------------------------------------------------------

    def share(self, items: Sequence[T], extra: Sequence[T] = ()) -> tuple[list[T], list[T]]:
        """This rank's part of a training minibatch: a contiguous span of its ``items`` and
        one of its ``extra`` side items (e.g. ENPO's proximal samples).

        Only the first min(W, len(items)) ranks get a part, so side items always travel with
        items, as in :func:`nlhf.llm.fit.micro_batches`; a rank beyond them gets nothing and
        contributes zero gradients.
        """
        active = min(self.world, len(items))
        (lo, hi), (e_lo, e_hi) = self.span(len(items), active), self.span(len(extra), active)
        return list(items[lo:hi]), list(extra[e_lo:e_hi])

    def sum_gradients(self, params: Sequence[torch.nn.Parameter], loss: float) -> float:
        """Sum every rank's gradients of ``params`` in place; returns the ranks' summed
        ``loss`` shares. One process: nothing to sum."""
        return loss


SINGLE = Dist()


class AccelerateDist(Dist):
    """W processes started by ``accelerate launch``: collectives through accelerate."""

    def __init__(self) -> None:
        from datetime import timedelta

        from accelerate import Accelerator
        from accelerate.utils import DistributedType, InitProcessGroupKwargs

        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "7200")))
        self.accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
        kind = self.accelerator.distributed_type
        if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                    DistributedType.MEGATRON_LM, DistributedType.XLA):
            raise NLHFInputError(
                f"accelerate: distributed_type {kind.value} is not supported by nlhf train "
                "yet; launch with a DDP config (configs/accelerate/ddp.yaml), see docs/scaling.md"
            )
        if self.accelerator.mixed_precision != "no":
            raise NLHFInputError(
                f"accelerate: mixed_precision {self.accelerator.mixed_precision}: the trainer "
                "casts the model itself; launch with --mixed_precision no and set model.dtype "
                "(e.g. bfloat16)"
            )
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        if self.world == 1:  # e.g. torchrun / --multi_gpu on a machine without GPUs
            raise NLHFInputError(
                f"accelerate: WORLD_SIZE={os.environ.get('WORLD_SIZE')} but accelerate found no "
                "distributed backend; without GPUs set ACCELERATE_USE_CPU=true (gloo), see "
                "docs/scaling.md"
            )
        device = self.accelerator.device  # "cpu:0" under gloo, which safetensors rejects
        self.device = torch.device("cpu") if device.type == "cpu" else device

    def broadcast(self, obj: T) -> T:
        from accelerate.utils import broadcast_object_list

        box = [obj if self.is_main else None]
        broadcast_object_list(box, from_process=0)
        return cast(T, box[0])

    def gather(self, items: list[T]) -> list[T]:
        from accelerate.utils import gather_object

        return list(gather_object(list(items)))

    def sum_gradients(self, params: Sequence[torch.nn.Parameter], loss: float) -> float:
        """Sum the ranks' gradients (and loss shares) with one ``accelerator.reduce`` a step.

        One flat buffer holds every gradient (a rank without items sends zeros), the loss
        share, and per parameter whether this rank has a gradient: a parameter that no rank
        reached keeps ``grad=None``, as in one process (AdamW skips it instead of decaying it).
        The buffer is at least float32 (bf16 gradients are summed in float32, rounded once),
        and each gradient is dropped once copied in, so at its peak the step holds the
        buffer and accelerate's copy of it.
        """
        dtype = reduce(torch.promote_types, (p.dtype for p in params), torch.float32)
        sizes = [p.numel() for p in params]
        n = sum(sizes)
        buffer = torch.zeros(n + len(params) + 1, dtype=dtype, device=params[0].device)
        buffer[n:] = torch.tensor([float(p.grad is not None) for p in params] + [loss],
                                  dtype=torch.float64)
        for p, part in zip(params, buffer[:n].split(sizes), strict=True):
            if p.grad is not None:
                part.copy_(p.grad.reshape(-1))
                p.grad = None
        total = self.accelerator.reduce(buffer, reduction="sum")
        del buffer
        reached = total[n:-1].tolist()
        for p, grad, seen in zip(params, total[:n].split(sizes), reached, strict=True):
            p.grad = grad.view_as(p).to(p.dtype) if seen else None
        return float(total[-1])


def make_dist() -> Dist:
    """The process layout: :class:`AccelerateDist` under a multi-process launch, else one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return AccelerateDist()
    return SINGLE


def sharded_logprobs(policy: LMPolicy, dist: Dist, prompt_ids: Sequence[Sequence[int]],
                     response_ids: Sequence[Sequence[int]], adapter: str | None,
                     batch_size: int) -> torch.Tensor:
    """No-grad :meth:`LMPolicy.sequence_logprobs` with its batches split across ranks.

    Each rank runs whole batches of the one-process plan, so every value is bit-identical to
    a one-process run; all ranks get all values.
    """
    if dist.world == 1:
        return policy.sequence_logprobs(prompt_ids, response_ids, adapter, batch_size=batch_size)
    mine: list[tuple[int, float]] = []
    for b, idx in enumerate(policy.logprob_batches(prompt_ids, response_ids, batch_size)):
        if dist.owns(b):
            lp = policy.sequence_logprobs([prompt_ids[i] for i in idx],
                                          [response_ids[i] for i in idx], adapter,
                                          batch_size=len(idx))
            mine += zip(idx, (float(v) for v in lp.detach().cpu()), strict=True)
    dist.trace("logprobs", rows=len(mine))
    values = dict(dist.gather(mine))
    return torch.tensor([values[i] for i in range(len(prompt_ids))], dtype=torch.float32,
                        device=policy.device)


class ShardedJudge(Judge):
    """A judge whose batch is split in contiguous blocks across ranks; every rank gets all
    answers. Same name and identity as the inner judge, so cache keys do not change."""

    def __init__(self, judge: Judge, dist: Dist) -> None:
        self.judge = judge
        self.dist = dist
        self.name = judge.name
        self.symmetric = judge.symmetric
        self.batch_size = judge.batch_size

    def settings(self) -> dict[str, Any]:
        return self.judge.settings()

    def identity(self) -> str:
        return self.judge.identity()

    def _prob_one_order(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        return self.judge._prob_one_order(prompts, a, b)

    def prob(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        lo, hi = self.dist.span(len(prompts))
        local = self.judge.prob(prompts[lo:hi], a[lo:hi], b[lo:hi]) if hi > lo else []
        self.dist.trace("judge", pairs=hi - lo)
        return np.asarray(self.dist.gather([float(v) for v in local]), dtype=np.float64)


class RankZeroStore:
    """The run store as every rank sees it: rank 0 owns the SQLite file and runs each call;
    its answer (or its error) reaches every rank, so the other ranks never open the file.

    Contract: every rank makes the same calls in the same order (they do: same control flow,
    same data), since each call is a collective. A write returns only once rank 0 has made
    it, so it doubles as a barrier. The methods are those of :class:`RunStore` that the
    trainer uses, with the same signatures (checked by ``tests/test_distributed.py``).
    """

    def __init__(self, store: RunStore | None, dist: Dist) -> None:
        self.local = store  # rank 0's store, None elsewhere
        self.dist = dist

    def _on_rank_0(self, call: Callable[[RunStore], T]) -> T:
        return self.dist.on_main(lambda: call(cast("RunStore", self.local)))

    # -- reads ------------------------------------------------------------------------------

    def prompts(self, split: str | None = None) -> list[tuple[int, str]]:
        return self._on_rank_0(lambda s: s.prompts(split))

    def get_generations(self, iteration: int, role: str) -> list[dict[str, Any]]:
        return self._on_rank_0(lambda s: s.get_generations(iteration, role))

    def judge_get_many(self, keys: Sequence[str]) -> dict[str, float]:
        return self._on_rank_0(lambda s: s.judge_get_many(keys))

    def count_judge_calls(self, judge: str | None = None) -> int:
        return self._on_rank_0(lambda s: s.count_judge_calls(judge))

    def is_done(self, key: str) -> bool:
        return self._on_rank_0(lambda s: s.is_done(key))

    def step_payload(self, key: str) -> dict[str, Any] | None:
        return self._on_rank_0(lambda s: s.step_payload(key))

    def metrics(self, name: str | None = None) -> list[tuple[int, str, float]]:
        return self._on_rank_0(lambda s: s.metrics(name))

    # -- writes -----------------------------------------------------------------------------

    def add_prompts(self, rows: Iterable[tuple[str, str]]) -> list[int]:
        return self._on_rank_0(lambda s: s.add_prompts(rows))

    def put_generations(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self._on_rank_0(lambda s: s.put_generations(rows))

    def judge_put_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self._on_rank_0(lambda s: s.judge_put_many(rows))

    def mark_done(self, key: str, payload: Mapping[str, Any] | None = None) -> None:
        self._on_rank_0(lambda s: s.mark_done(key, payload))

    def add_metrics(self, iteration: int, values: Mapping[str, float]) -> None:
        self._on_rank_0(lambda s: s.add_metrics(iteration, values))

    def close(self) -> None:
        if self.local is not None:
            self.local.close()


def shared_store(store: RunStore | None, dist: Dist) -> RunStore:
    """The store every rank uses: rank 0's own under one process, a :class:`RankZeroStore`."""
    if dist.world == 1:
        assert store is not None
        return store
    return cast("RunStore", RankZeroStore(store, dist))
