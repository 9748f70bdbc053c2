"""The one progress bar every long step shows (lab sweeps, generation, judging, training).

Why one factory: the same columns everywhere (what, how far, elapsed, remaining), and one
place that decides when bars are off (``enabled=False``: tests, non-rank-0 processes).
"""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(enabled: bool = True) -> Progress:
    """A rich progress bar (to stderr); add tasks with ``add_task(description, total=n)``."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
                    transient=False)
