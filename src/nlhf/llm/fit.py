"""The one optimisation loop every training phase uses: AdamW, minibatches, clipping.

Why a fresh optimizer per phase: each round solves its own argmin problem (SPEC §2), and a
phase that restarts after a kill must start from exactly what the uninterrupted run had, so
no optimizer state may outlive a phase. Shuffles and dropout are seeded at the phase start.

Each minibatch is forwarded and back-propagated in micro-batches of ``opt.micro_batch_size``
items (gradient accumulation), so the activation memory is that of a micro-batch. The
losses take the whole minibatch's denominator (``norm``, see :mod:`nlhf.losses`), so the
accumulated gradient is the minibatch gradient exactly (up to float rounding).

Under several processes the same holds across ranks: each rank takes a contiguous share of
every minibatch's items (:meth:`Dist.share`), cuts it into micro-batches and back-propagates
them through the plain module; :meth:`Dist.sum_gradients` then adds the ranks' gradients
and loss shares, so clipping and the step see the whole minibatch (:mod:`nlhf.llm.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from nlhf.llm.batching import even_batches
from nlhf.llm.distributed import SINGLE, Dist
from nlhf.llm.policy.loading import set_seed
from nlhf.llm.resume import require_finite_step, require_finite_weights
from nlhf.progress import progress_bar

if TYPE_CHECKING:
    from torch import nn

    from nlhf.llm.config import TrainOptConfig
    from nlhf.llm.policy.lm import LMPolicy


@dataclass(frozen=True)
class Micro:
    """One micro-batch: its items and extra items, and those of its whole minibatch.

    A loss computed on ``items`` with the minibatch's denominator (e.g. ``len(batch)``) is
    this micro-batch's share of the minibatch loss.
    """

    items: list[int]
    extra: list[int]
    batch: list[int]
    batch_extra: list[int]


#: loss_fn(micro-batch) -> its share of the minibatch loss (the shares add up to it).
LossFn = Callable[[Micro], torch.Tensor]


def micro_batches(items: list[int], extra: list[int], size: int,
                  dist: Dist = SINGLE) -> list[Micro]:
    """This rank's micro-batches of the minibatch (``items``, ``extra``): its share (all of it
    in one process) cut into micro-batches of ``size`` items (0: one), its extras spread
    evenly. Each carries the whole minibatch, whose size the loss's denominator takes."""
    mine, mine_extra = dist.share(items, extra)
    parts = even_batches(mine, size)
    if not parts:
        return []
    extra_parts = np.array_split(np.asarray(mine_extra, dtype=np.int64), len(parts))
    return [Micro(part, [int(e) for e in ex], items, extra)
            for part, ex in zip(parts, extra_parts, strict=True)]


def trained_module(policy: LMPolicy, adapter: str) -> nn.Module:
    """The module whose parameters a phase trains: the LoRA model, or the full copy."""
    return policy.copies[adapter] if policy.finetune == "full" else policy.model


@contextmanager
def training_mode(policy: LMPolicy, adapter: str) -> Iterator[None]:
    """Dropout on (if configured) while an adapter trains; back to eval afterwards."""
    module: nn.Module = trained_module(policy, adapter)
    module.train()
    try:
        yield
    finally:
        module.eval()


def fit(
    policy: LMPolicy,
    adapter: str,
    n_items: int,
    loss_fn: LossFn,
    opt: TrainOptConfig,
    seed: int,
    *,
    n_extra: int = 0,
    progress: bool = False,
    desc: str = "train",
    on_step: Callable[[int], None] | None = None,
    dist: Dist = SINGLE,
) -> dict[str, float]:
    """Minimise ``loss_fn`` over minibatches of ``opt.batch_size`` items for ``opt.epochs``.

    ``n_extra`` side items (e.g. ENPO's proximal samples) are shuffled separately and spread
    evenly over the same minibatches. Returns loss statistics of the phase.

    ``opt.batch_size`` is the global minibatch: under several processes every rank draws the
    same minibatches and back-propagates its share of their items; the summed gradients make
    the steps those of one process (:mod:`nlhf.llm.distributed`).
    """
    set_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    params = policy.trainable_parameters(adapter)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)
    bs = max(1, opt.batch_size)
    n_batches = -(-n_items // bs)
    losses: list[float] = []
    norms: list[float] = []
    with progress_bar(progress) as pb, training_mode(policy, adapter):
        task = pb.add_task(desc, total=n_batches * opt.epochs)
        for _ in range(opt.epochs):
            order = torch.randperm(n_items, generator=gen).tolist()
            extra = torch.randperm(n_extra, generator=gen).tolist() if n_extra else []
            extra_parts = np.array_split(np.asarray(extra, dtype=np.int64), n_batches)
            for b in range(n_batches):
                optimizer.zero_grad(set_to_none=True)
                parts = micro_batches(order[b * bs:(b + 1) * bs],
                                      [int(i) for i in extra_parts[b]], opt.micro_batch_size,
                                      dist)
                dist.trace("train_items", items=sum(len(part.items) for part in parts))
                loss = 0.0
                for part in parts:
                    share = loss_fn(part)
                    share.backward()
                    loss += float(share.detach())
                loss = dist.sum_gradients(params, loss)
                norm = torch.nn.utils.clip_grad_norm_(params, opt.max_grad_norm)
                require_finite_step(loss, float(norm), desc, len(losses) + 1)
                optimizer.step()
                losses.append(loss)
                norms.append(float(norm))
                pb.advance(task)
                if on_step is not None:
                    on_step(len(losses))
    optimizer.zero_grad(set_to_none=True)
    require_finite_weights(params, desc)
    if not losses:
        return {"loss": float("nan"), "steps": 0}
    return {
        "loss": float(np.mean(losses)),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "grad_norm": float(np.mean(norms)),
        "steps": len(losses),
    }
