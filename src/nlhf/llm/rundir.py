"""The run directory: where each artefact of a training run lives, and its atomic writers.

Layout (other tools read it, keep it stable)::

    <run_dir>/config.yaml                    resolved config, written first
    <run_dir>/store.sqlite                   prompts, generations, judge calls, steps, metrics
    <run_dir>/metrics.jsonl                  one {"iteration": t, ...} object per finished t
    <run_dir>/state.json                     last completed iteration + saved policy iterates
    <run_dir>/fingerprint.json               sha256 of the fields a resume may not change
    <run_dir>/history.jsonl                  creation and each resume, with changed fields
    <run_dir>/adapters/iter_{t}/policy/      pi_{t+1}, the policy after round t (t = 1..T)
    <run_dir>/adapters/iter_{t}/adversary/   pihat_{t+1} (ENPO only: baselines train no adversary)

``metrics.jsonl`` keys (per round t): ``score_policy`` (mean judge score of y ~ pi_t: ENPO
I(y), SPPO win-rate, pairwise P(y ≻ y')), ``score_adversary`` (ENPO I(y')),
``kl_policy_ref`` (mean log pi_t(y) − log pi_ref(y) over the round's y ~ pi_t),
``response_len`` (mean tokens of y, EOS included; ``response_len_<role>`` for other roles),
``<phase>_loss`` / ``_loss_first`` / ``_loss_last`` / ``_grad_norm`` / ``_steps`` for each
training phase (``step_a``, ``step_b`` for ENPO; ``train`` otherwise), ``step_b_pairs``,
``step_b_policy_logratio`` (mean log pi_{t+1} − log pi_t on the candidates),
``step_b_score_gap``, ``prompts``, ``judge_calls_total`` (stored comparisons so far) and
wall-clock ``time_<phase>`` / ``time_iteration`` in seconds (the only keys that differ
between an uninterrupted run and a resumed one).

Every file is written to a temp name and renamed, so a run killed at any instant leaves each
artefact either old or new, never half written. ``metrics.jsonl`` and ``state.json`` are
rebuilt from the store each time, so a resumed run cannot duplicate a line.

Average iterate (SPEC §2.5): the returned policy is the mixture (1/T)·Σ_t pi_t over the saved
iterates. :func:`policy_iterates` lists them (from ``state.json``: completed rounds only) and
:func:`sample_average_iterate` draws, per sample, which iterate to generate from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nlhf.atomic import write_json_atomic, write_text_atomic
from nlhf.errors import NLHFInputError

if TYPE_CHECKING:
    from nlhf.llm.config import TrainConfig

CONFIG = "config.yaml"
STORE = "store.sqlite"
METRICS = "metrics.jsonl"
STATE = "state.json"


@dataclass(frozen=True)
class RunDir:
    """One run directory: the paths of its artefacts, and (read on first use) its config
    and saved iterations. The trainer writes through it, ``nlhf eval``/``report``/``export``
    read through it (they get one from :func:`nlhf.llm.evaluate.open_run`, which checks it).
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def name(self) -> str:
        return self.root.resolve().name

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def store(self) -> Path:
        return self.root / STORE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def state(self) -> Path:
        return self.root / STATE

    def adapter(self, iteration: int, name: str = "policy") -> Path:
        """Folder of one saved adapter ("policy" or "adversary") after round ``iteration``."""
        return self.root / "adapters" / f"iter_{iteration}" / name

    @cached_property
    def cfg(self) -> TrainConfig:
        """The run's resolved config (``config.yaml``)."""
        from nlhf.llm.config import load_run_config

        return load_run_config(self.config)

    @cached_property
    def iterations(self) -> tuple[int, ...]:
        """Iterations with a saved policy adapter, capped at the last completed round."""
        return saved_iterations(self.root)


def saved_iterations(root: Path) -> tuple[int, ...]:
    """Iterations with a saved policy, capped at state.json's completed_iteration if present."""
    found = []
    adapters = Path(root) / "adapters"
    if adapters.is_dir():
        for child in adapters.iterdir():
            m = re.fullmatch(r"iter_(\d+)", child.name)
            if m and (child / "policy").is_dir():
                found.append(int(m.group(1)))
    done = completed_iteration(root)
    if done is not None:
        found = [t for t in found if t <= done]
    return tuple(sorted(t for t in found if t >= 1))


def completed_iteration(root: Path) -> int | None:
    """The last completed round from state.json (either key the trainer may write), or None."""
    try:
        state = json.loads((Path(root) / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    for key in ("completed_iteration", "last_completed_iteration"):
        if isinstance(state.get(key), int):
            return int(state[key])
    return None


def require_writable(root: Path, field: str = "run_dir") -> None:
    """``root`` can be created and written: its nearest existing ancestor is a writable
    folder. Checked before a new run writes anything, so the failure is one line."""
    root = Path(root).absolute()
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir():
        raise NLHFInputError(f"{field}: {existing} is a file, not a folder, so {root} cannot "
                             f"be created there; choose another {field}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NLHFInputError(f"{field}: no permission to write in {existing}; choose another "
                             f"{field} or fix the folder's permissions")


@contextmanager
def run_lock(run: RunDir) -> Iterator[None]:
    """Hold ``<run_dir>/.lock`` so two trainers never write one run; the OS frees it on kill."""
    try:
        import fcntl
    except ImportError:  # not POSIX: run unlocked
        yield
        return
    run.root.mkdir(parents=True, exist_ok=True)
    with open(run.root / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise NLHFInputError(
                f"run_dir: {run.root} is in use by another training process; wait for it "
                "to end or choose another run_dir"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_partial_writes(run: RunDir) -> list[Path]:
    """Delete the temp files and folders that a killed atomic write left behind.

    Only our writers' hidden names match (see :mod:`nlhf.atomic`): ``.<name>.tmp-*`` /
    ``.<name>.old-*`` folders of ``atomic_directory`` and ``.<name>.*.tmp`` files of
    :func:`write_text_atomic`.
    """
    removed = []
    for folder in [run.root, *sorted(run.root.glob("adapters/iter_*"))]:
        for path in folder.glob(".*"):
            name = path.name
            if not (".tmp-" in name or ".old-" in name or name.endswith(".tmp")):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_metrics(run: RunDir, rows: Iterable[tuple[int, str, float]]) -> None:
    """Rewrite ``metrics.jsonl`` from the store's (iteration, name, value) rows."""
    by_iter: dict[int, dict[str, Any]] = {}
    for iteration, name, value in rows:
        by_iter.setdefault(iteration, {"iteration": iteration})[name] = value
    lines = [json.dumps(by_iter[t], sort_keys=False) for t in sorted(by_iter)]
    write_text_atomic(run.metrics, "".join(line + "\n" for line in lines))


def write_state(run: RunDir, payload: Mapping[str, Any]) -> None:
    write_json_atomic(run.state, dict(payload), indent=2)


def read_state(run_dir: str | Path) -> dict[str, Any]:
    """``state.json`` of a run, or an empty state if no round has finished yet."""
    path = RunDir(run_dir).state
    if not path.is_file():
        return {"last_completed_iteration": 0, "policy_iterates": []}
    return dict(json.loads(path.read_text(encoding="utf-8")))


def policy_iterates(run_dir: str | Path) -> list[Path]:
    """Saved policy iterates pi_2..pi_{T+1} of the completed rounds, oldest first.

    The initial policy (= pi_ref for LoRA, whose B matrices start at zero) is not listed:
    evaluate it as the reference.
    """
    root = Path(run_dir)
    return [root / rel for rel in read_state(root).get("policy_iterates", [])]


def sample_average_iterate(run_dir: str | Path, n: int, seed: int = 0) -> list[Path]:
    """For each of ``n`` samples, the iterate to sample it from: uniform over the saved ones.

    Sampling ``s`` uniformly and then ``y ~ pi_s`` is exactly sampling the average iterate.
    """
    iterates = policy_iterates(run_dir)
    if not iterates:
        raise FileNotFoundError(f"{run_dir}: no completed iteration, so no policy iterate")
    picks = np.random.default_rng([seed, 0xA1]).integers(0, len(iterates), size=n)
    return [iterates[int(i)] for i in picks]
