"""Run lab jobs in a process pool behind one progress bar.

Each job is ``fn(*args, queue)``; it puts the number of rounds it has played on ``queue`` as it
goes, so one bar shows the pool's progress. Used by ``simulate`` and the tau sweep alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from nlhf.progress import progress_bar

Job = tuple[Callable[..., Any], tuple]


def pool_context():
    """fork where the platform has it: workers inherit the imported torch (≈2 s each saved
    against spawn); the parent has run no torch op, so no thread pool is forked mid-use."""
    import multiprocessing as mp

    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def default_workers(n_jobs: int) -> int:
    """One worker per job, at most one per core."""
    return min(n_jobs, os.cpu_count() or 1)


def run_jobs(
    jobs: Sequence[Job],
    *,
    total_rounds: int,
    label: str,
    workers: int | None = None,
    progress: bool = True,
    submit_order: Sequence[int] | None = None,
) -> list[Any]:
    """Each job's result, in ``jobs`` order.

    ``submit_order`` (indices into ``jobs``) lets the caller start the longest jobs first, so
    the last to finish is a short one.
    """
    import multiprocessing as mp

    workers = workers or default_workers(len(jobs))
    order = list(submit_order) if submit_order is not None else list(range(len(jobs)))
    with mp.Manager() as manager:
        queue = manager.Queue()
        ctx = pool_context() if workers > 1 else None
        with (
            ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool,
            progress_bar(progress) as bar,
        ):
            task = bar.add_task(label, total=total_rounds)
            submitted = {i: pool.submit(jobs[i][0], *jobs[i][1], queue) for i in order}
            futures = [submitted[i] for i in range(len(jobs))]
            while any(not f.done() for f in futures):
                while not queue.empty():
                    bar.advance(task, queue.get())
                time.sleep(0.05)
            while not queue.empty():
                bar.advance(task, queue.get())
            return [f.result() for f in futures]
