"""A NaN/Inf loss stops training before anything of the phase is saved, and the last
completed round stays resumable; `fit` never steps on a non-finite gradient."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import nlhf.llm.algorithms.round as round_services
from nlhf.errors import NLHFInputError
from nlhf.llm.config import TrainOptConfig
from nlhf.llm.fit import fit
from nlhf.llm.loop import train
from nlhf.llm.resume import check_run_files
from nlhf.llm.rundir import RunDir
from test_train import tiny_config


def test_fit_stops_before_a_step_on_a_nan_loss(make_policy: Any) -> None:
    policy = make_policy()
    before = [p.detach().clone() for p in policy.trainable_parameters("policy")]

    def nan_loss(micro: Any) -> torch.Tensor:
        params = policy.trainable_parameters("policy")
        return sum(p.sum() for p in params) * float("nan")

    with pytest.raises(NLHFInputError) as e:
        fit(policy, "policy", 4, nan_loss, TrainOptConfig(batch_size=2), seed=0, desc="step_a")
    msg = str(e.value)
    assert "\n" not in msg and "step_a step 1" in msg and "non-finite" in msg
    after = policy.trainable_parameters("policy")
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_nan_in_round_two_keeps_round_one_resumable(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tmp_path, "denpo", iterations=2)
    real_fit, calls = round_services.fit, {"n": 0}

    def fit_nan_in_round_two(policy: Any, adapter: str, n: int, loss_fn: Any, *a: Any,
                             **k: Any) -> Any:
        calls["n"] += 1  # ENPO fits twice per round: Step A, then Step B
        if calls["n"] == 3:
            return real_fit(policy, adapter, n, lambda m: loss_fn(m) * float("nan"), *a, **k)
        return real_fit(policy, adapter, n, loss_fn, *a, **k)

    monkeypatch.setattr(round_services, "fit", fit_nan_in_round_two)
    with pytest.raises(NLHFInputError, match="non-finite loss"):
        train(cfg, progress=False)
    run = RunDir(cfg.run_dir)
    state = json.loads(run.state.read_text())
    assert state["last_completed_iteration"] == 1
    assert not run.adapter(2, "policy").exists()  # nothing of round 2's phase was saved
    assert check_run_files(run) == 1  # files agree and every saved adapter is finite
    assert len(run.metrics.read_text().splitlines()) == 1

    monkeypatch.setattr(round_services, "fit", real_fit)
    train(cfg, resume=True, progress=False)
    assert json.loads(run.state.read_text())["last_completed_iteration"] == 2
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    assert all(v == v for r in rows for v in r.values())  # no NaN reached the metrics
