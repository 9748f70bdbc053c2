"""Experiment tracking: a tiny run's metrics read back from TensorBoard's event files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nlhf.errors import NLHFInputError
from nlhf.llm.config import TrainConfig
from nlhf.llm.loop import train
from nlhf.llm.tracking import check_report_to, open_tracker
from test_train import tiny_config


def _with_trackers(cfg: TrainConfig, report_to: list[str]) -> TrainConfig:
    return TrainConfig.model_validate({**cfg.model_dump(), "report_to": report_to})


def _scalars(logdir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_gets_every_iteration_metric(tmp_path: Path) -> None:
    cfg = _with_trackers(tiny_config(tmp_path, "online-dpo", iterations=2), ["tensorboard"])
    run = train(cfg, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = _scalars(run / "tensorboard")
    assert [r["iteration"] for r in rows] == [1, 2]
    for row in rows:
        t = row.pop("iteration")
        assert row and set(row) <= set(logged)
        for key, value in row.items():
            assert logged[key][t] == pytest.approx(value, rel=1e-6, abs=1e-6)  # float32
    assert set(logged["kl_policy_ref"]) == {1, 2}


def test_no_trackers_by_default(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "online-dpo", iterations=1)
    assert cfg.report_to == []
    run = train(cfg, progress=False)
    assert not (run / "tensorboard").exists()


def test_tracker_direct_and_disabled(tmp_path: Path) -> None:
    tracker = open_tracker(["tensorboard"], tmp_path, {"seed": 0})
    tracker.log(1, {"a": 0.5, "b": -2.0})
    tracker.log(2, {"a": 0.25})
    tracker.close()
    assert _scalars(tmp_path / "tensorboard") == {"a": {1: 0.5, 2: 0.25}, "b": {1: -2.0}}
    off = open_tracker(["tensorboard"], tmp_path / "rank1", {}, enabled=False)
    off.log(1, {"a": 1.0})
    off.close()
    assert not (tmp_path / "rank1").exists()


def test_missing_tracker_package_fails_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(NLHFInputError) as e:
        check_report_to(["tensorboard", "wandb"])
    assert str(e.value) == ("report_to: wandb needs the `wandb` package: pip install "
                            "'nlhf[wandb]', or remove wandb from report_to")
    cfg = _with_trackers(tiny_config(tmp_path), ["wandb"])
    with pytest.raises(NLHFInputError, match="report_to: wandb"):
        train(cfg, progress=False)
    assert not Path(cfg.run_dir).exists()
    with pytest.raises(NLHFInputError, match="unknown tracker 'mlflow'"):
        check_report_to(["mlflow"])
