"""SIGKILL a real training process mid-round, resume it, and get the uninterrupted result.

Kills (via the NLHF_TEST_KILL_AFTER hook, a real SIGKILL): first in the middle of round 1's
judging (some answers stored, phase unfinished), then in the middle of round 2's Step B
(Step A finished and saved). The resumed run must end with the same metrics (timings aside)
and bit-identical adapters, and must not ask the judge again for what it had stored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from nlhf.llm.loop import KILL_ENV
from nlhf.llm.store import RunStore
from test_train import tiny_config

SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
import nlhf.llm.samples as data
data.JUDGE_CHUNK = 4  # several judge chunks per round, so a kill can land between them
from nlhf.llm.config import TrainConfig
from nlhf.llm.loop import train
cfg = TrainConfig.model_validate(json.loads(sys.argv[1]))
train(cfg, resume=sys.argv[2] == "resume", progress=False)
"""


def run_train(cfg: Any, resume: bool, kill_after: str | None = None) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop(KILL_ENV, None)
    if kill_after:
        env[KILL_ENV] = kill_after
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, cfg.model_dump_json(), "resume" if resume else "new"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode


def metrics_without_timings(run: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


def judge_payload(run: Path, key: str) -> dict[str, Any]:
    with RunStore(run / "store.sqlite") as store:
        return store.step_payload(key) or {}


def test_sigkill_and_resume_match_an_uninterrupted_run(tmp_path: Path) -> None:
    whole = tiny_config(tmp_path)
    broken = whole.model_copy(update={"run_dir": str(tmp_path / "resumed")})
    assert run_train(whole, resume=False) == 0

    assert run_train(broken, resume=False, kill_after="it1/judge/chunk1") == -signal.SIGKILL
    b = Path(broken.run_dir)
    assert not (b / "state.json").exists()
    with RunStore(b / "store.sqlite") as store:
        stored_before = store.count_judge_calls()
        assert stored_before > 0 and not store.is_done("it1/judge")

    assert run_train(broken, resume=True, kill_after="it2/step_b/step1") == -signal.SIGKILL
    assert json.loads((b / "state.json").read_text())["last_completed_iteration"] == 1
    leftover = b / "adapters/iter_2/.policy.tmp-killed"  # what a kill mid-save leaves
    leftover.mkdir()
    assert run_train(broken, resume=True) == 0
    assert not leftover.exists()

    a = Path(whole.run_dir)
    assert metrics_without_timings(b) == metrics_without_timings(a)
    for t in (1, 2):
        for adapter in ("policy", "adversary"):
            sa = load_file(str(a / f"adapters/iter_{t}/{adapter}/adapter_model.safetensors"))
            sb = load_file(str(b / f"adapters/iter_{t}/{adapter}/adapter_model.safetensors"))
            assert sa.keys() == sb.keys()
            assert all(torch.equal(sa[k], sb[k]) for k in sa), f"iter_{t}/{adapter} differs"
    with RunStore(a / "store.sqlite") as sa_store, RunStore(b / "store.sqlite") as sb_store:
        assert sb_store.count_judge_calls() == sa_store.count_judge_calls()
    # The resumed round-1 judging found the answers stored before the kill and asked only
    # for the rest: no comparison was asked twice.
    pa, pb = judge_payload(a, "it1/judge"), judge_payload(b, "it1/judge")
    assert pb["cached"] >= stored_before > 0
    assert pb["asked"] + pb["cached"] == pa["asked"] + pa["cached"]
    assert pb["asked"] == pa["asked"] - stored_before
    assert pb["probs"] == pa["probs"]
