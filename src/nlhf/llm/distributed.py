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
- **training**: the module is wrapped by ``accelerator.prepare`` (DDP) for each phase. Each
  rank forwards its block of every minibatch's rows, all-gathers the values, and computes
  the whole minibatch loss; its gradient flows through its own rows only, so the sum of the
  ranks' gradients is the full gradient: the loss is scaled by W, DDP averages (see
  :meth:`AccelerateDist.backward`). Clipping then sees the global norm;
- **the run directory**: rank 0 alone owns the store and writes every file; the other ranks
  read the store through :class:`RankZeroStore` (rank 0 answers, the answer is broadcast).

Test hook: with ``NLHF_TEST_TRACE=<file>`` every rank appends one JSON line per piece of
sharded work (``{"rank": r, "event": "generate", ...}``); without it nothing is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import torch

from nlhf.errors import NLHFInputError
from nlhf.llm.judges.base import Judge

if TYPE_CHECKING:
    from torch import nn

    from nlhf.llm.policy.lm import LMPolicy
    from nlhf.llm.store import RunStore

T = TypeVar("T")
TRACE_ENV = "NLHF_TEST_TRACE"
#: Seconds a rank may wait in one collective (default 2 h). Rank 0 alone drives a generation
#: server and writes the store while the others wait, which can take far longer than
#: torch's default (10 min for NCCL); a crashed rank still stops the launch at once.
TIMEOUT_ENV = "NLHF_DIST_TIMEOUT"


def trained_module(policy: LMPolicy, adapter: str) -> nn.Module:
    """The module whose parameters a phase trains: the LoRA model, or the full copy."""
    return policy.copies[adapter] if policy.finetune == "full" else policy.model


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

    def span(self, n: int) -> tuple[int, int]:
        """This rank's contiguous block [lo, hi) of n items (sizes differ by at most one)."""
        lo = self.rank * n // self.world
        return lo, (self.rank + 1) * n // self.world

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

    def data_parallel(self, policy: LMPolicy, adapter: str,
                      optimizer: torch.optim.Optimizer) -> AbstractContextManager[Any]:
        """The optimizer to step while ``adapter`` trains (one process: the optimizer itself)."""
        return nullcontext(optimizer)

    def accumulating(self, last: bool) -> AbstractContextManager[Any]:
        """Wrap a micro-batch's forward and backward; gradients are synchronised at ``last``."""
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


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
        self._wrapped: nn.Module | None = None
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

    @contextmanager
    def data_parallel(self, policy: LMPolicy, adapter: str,
                      optimizer: torch.optim.Optimizer) -> Iterator[Any]:
        """Wrap the trained module with ``accelerator.prepare`` (DDP) for one phase.

        Why per phase: the two adapters train in turns, and DDP fixes the set of parameters
        it synchronises when it wraps, so exactly this adapter's parameters require grad.
        """
        module = trained_module(policy, adapter)
        trained = {id(p) for p in policy.trainable_parameters(adapter)}
        for p in module.parameters():
            p.requires_grad_(id(p) in trained)
        wrapped, stepper = self.accelerator.prepare(module, optimizer)
        policy.grad_logprobs = RowSharded(self, policy, wrapped)
        self._wrapped = wrapped
        try:
            yield stepper
        finally:
            policy.grad_logprobs = None
            self._wrapped = None
            self.accelerator.free_memory()  # drops the DDP wrapper and the optimizer wrapper

    def accumulating(self, last: bool) -> AbstractContextManager[Any]:
        """DDP's ``no_sync`` for all but the last micro-batch of a step (it must wrap the
        forward as well as the backward): one all-reduce per optimizer step."""
        if last or self._wrapped is None:
            return nullcontext()
        return cast(AbstractContextManager[Any], self.accelerator.no_sync(self._wrapped))

    def backward(self, loss: torch.Tensor) -> None:
        """Every rank holds the whole minibatch loss, with gradients through its own rows only
        (:class:`RowSharded`): DDP averages the ranks' gradients, so scaling by W gives their
        sum, the gradient of the whole minibatch."""
        self.accelerator.backward(loss * self.world)

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip by the global norm: after DDP's all-reduce every rank holds the full gradient."""
        return cast(torch.Tensor, self.accelerator.clip_grad_norm_(params, max_norm))


def make_dist() -> Dist:
    """The process layout: :class:`AccelerateDist` under a multi-process launch, else one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return AccelerateDist()
    return SINGLE


class RowSharded:
    """Differentiable log-probs of a minibatch, each rank forwarding a contiguous block of rows.

    The other ranks' values arrive by all-gather as constants, so this rank's backward runs
    through its own rows only. A rank with no rows forwards one row at weight zero: DDP
    all-reduces in backward, and every rank must take part.
    """

    def __init__(self, dist: Dist, policy: LMPolicy, module: nn.Module) -> None:
        self.dist = dist
        self.policy = policy
        self.module = module

    def __call__(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                 adapter: str) -> torch.Tensor:
        lo, hi = self.dist.span(len(prompt_ids))
        rows = list(range(lo, hi)) or [0]
        with self.policy.using(adapter):  # selects the adapter; the forward goes through DDP
            local = self.policy._batch_logprobs(
                self.module, [prompt_ids[i] for i in rows], [response_ids[i] for i in rows])
        self.dist.trace("train_rows", rows=hi - lo)
        values = self.dist.gather([float(v) for v in local.detach()[: hi - lo].cpu()])
        full = torch.tensor(values, dtype=local.dtype, device=local.device)
        out = torch.cat([full[:lo], local[: hi - lo], full[hi:]])
        return out if hi > lo else out + 0.0 * local.sum()


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
    its answer is broadcast, so the other ranks never open the file.

    Every rank must make the same calls in the same order (they do: same control flow, same
    data). A write returns only once rank 0 has made it, so it doubles as a barrier.
    """

    CALLS = frozenset({
        "prompts", "get_generations", "judge_get_many", "count_judge_calls", "is_done",
        "step_payload", "metrics",  # reads
        "add_prompts", "put_generations", "judge_put_many", "mark_done", "add_metrics",  # writes
    })

    def __init__(self, store: RunStore | None, dist: Dist) -> None:
        self.local = store  # rank 0's store, None elsewhere
        self.dist = dist

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in self.CALLS:
            raise AttributeError(f"RankZeroStore has no {name!r}")

        def call(*args: Any, **kwargs: Any) -> Any:
            result = getattr(self.local, name)(*args, **kwargs) if self.dist.is_main else None
            return self.dist.broadcast(result)

        return call

    def close(self) -> None:
        if self.local is not None:
            self.local.close()


def shared_store(store: RunStore | None, dist: Dist) -> RunStore:
    """The store every rank uses: rank 0's own under one process, a :class:`RankZeroStore`."""
    if dist.world == 1:
        assert store is not None
        return store
    return cast("RunStore", RankZeroStore(store, dist))
