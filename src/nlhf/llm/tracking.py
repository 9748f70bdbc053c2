"""Experiment tracking: each finished iteration's metrics to TensorBoard, trackio or W&B.

Why per iteration: an NLHF round is the unit whose metrics mean something (win-rate against
the round's comparator, KL, losses, wall time); `metrics.jsonl` holds the same rows. The
trackers are the libraries themselves (`torch.utils.tensorboard`, `trackio`, `wandb`),
imported only when `report_to` names them; a missing one is a one-line error at the start.

Where they write: TensorBoard to `<run_dir>/tensorboard/` (`tensorboard --logdir RUN`);
trackio to its local project "nlhf" (or `TRACKIO_PROJECT`); W&B to project "nlhf" (or
`WANDB_PROJECT`) under a run id fixed by the run directory, so a resumed run continues the
same W&B run. Only the main process logs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nlhf.errors import NLHFInputError

TRACKERS = ("tensorboard", "trackio", "wandb")
#: Tracker → (module that must import, what to install).
_NEEDS = {
    "tensorboard": ("tensorboard", "pip install 'nlhf[tracking]' (the tensorboard package)"),
    "trackio": ("trackio", "pip install 'nlhf[trackio]'"),
    "wandb": ("wandb", "pip install 'nlhf[wandb]'"),
}
PROJECT = "nlhf"


def check_report_to(report_to: Sequence[str]) -> None:
    """Every named tracker is known and importable; else one line saying what to install."""
    for name in report_to:
        if name not in _NEEDS:
            raise NLHFInputError(
                f"report_to: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}"
            )
        module, install = _NEEDS[name]
        if importlib.util.find_spec(module) is None:
            raise NLHFInputError(
                f"report_to: {name} needs the `{module}` package: {install}, or remove "
                f"{name} from report_to"
            )


def _run_id(root: Path) -> str:
    """A stable id per run directory: the name plus a short hash of its absolute path."""
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    return f"{root.resolve().name}-{digest}"


def _tensorboard(root: Path, config: dict[str, Any]) -> tuple[Callable[..., None], Callable]:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(root / "tensorboard"))

    def log(iteration: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=iteration)
        writer.flush()

    return log, writer.close


def _trackio(root: Path, config: dict[str, Any]) -> tuple[Callable[..., None], Callable]:
    import trackio

    trackio.init(project=os.environ.get("TRACKIO_PROJECT", PROJECT), name=_run_id(root),
                 config=config, resume="allow")
    return (lambda t, m: trackio.log(dict(m), step=t)), trackio.finish


def _wandb(root: Path, config: dict[str, Any]) -> tuple[Callable[..., None], Callable]:
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), id=_run_id(root),
                     name=root.resolve().name, config=config, resume="allow", dir=str(root))
    return (lambda t, m: run.log(dict(m), step=t)), run.finish


_OPENERS = {"tensorboard": _tensorboard, "trackio": _trackio, "wandb": _wandb}


class Tracker:
    """The open trackers of one run; `log` once per finished iteration, `close` at the end."""

    def __init__(self, sinks: list[tuple[Callable[..., None], Callable[[], Any]]]) -> None:
        self._sinks = sinks

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        for log, _ in self._sinks:
            log(iteration, metrics)

    def close(self) -> None:
        for _, close in self._sinks:
            close()
        self._sinks = []


def open_tracker(report_to: Sequence[str], root: str | Path, config: dict[str, Any],
                 *, enabled: bool = True) -> Tracker:
    """Open the trackers `report_to` names (none when not `enabled`, e.g. not rank 0)."""
    if not enabled or not report_to:
        return Tracker([])
    check_report_to(report_to)
    return Tracker([_OPENERS[name](Path(root), config) for name in dict.fromkeys(report_to)])
