"""The run report: markdown, plots, and graceful handling of what a run lacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nlhf.errors import NLHFInputError
from nlhf.llm.config import TrainConfig, dump_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fake_eval(run: Path, name: str, iterate: str, t: int | None, wr: float,
               training_judge: bool = True) -> None:
    """An eval file shaped like `evaluate`'s output, without running a model."""
    (run / "eval").mkdir(exist_ok=True)
    data = {
        "name": name, "against": "reference", "iterate": iterate, "policy_iteration": t,
        "win_rate": wr, "win_rate_ci": [wr - 0.1, wr + 0.1], "wins": 3, "ties": 1,
        "losses": 2, "hard_win_rate": 0.58,
        "policy": {"label": f"r-{iterate}", "mean_tokens": 7.5, "kl_ref": 0.02},
        "opponent": {"label": "r-reference", "mean_tokens": 8.0, "kl_ref": 0.0},
        "kl_note": "an estimate", "settings": {"judge": {"type": "criteria"}, "n_prompts": 6,
                                               "training_judge": training_judge},
    }
    (run / "eval" / f"{name}.json").write_text(json.dumps(data))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    root = tmp_path / "run-a"
    dump_config(TrainConfig.model_validate({"iterations": 3, "model": {"name": "tiny-random"}}),
                root / "config.yaml")
    for t in (1, 2, 3):
        (root / "adapters" / f"iter_{t}" / "policy").mkdir(parents=True)
    state = {"last_completed_iteration": 3, "policy_iterates": []}  # the trainer's keys
    (root / "state.json").write_text(json.dumps(state))
    rows = [{"iteration": t, "loss_policy": 1.0 / t, "loss_adversary": 0.4 + 0.1 * t,
             "kl_policy_ref": 0.01 * t, "mean_response_length": 10.0 + t} for t in (1, 2, 3)]
    text = "\n".join(json.dumps(r) for r in rows) + "\nnot json\n"
    (root / "metrics.jsonl").write_text(text)
    return root


def test_report_with_metrics_and_evals(run: Path) -> None:
    from nlhf.llm.report import report

    _fake_eval(run, "iter1_vs_reference", "iter1", 1, 0.52)
    _fake_eval(run, "iter2_vs_reference", "iter2", 2, 0.55)
    _fake_eval(run, "last_vs_reference", "last", 3, 0.6)
    _fake_eval(run, "last_vs_reference_llm-judge", "last", 3, 0.9, training_judge=False)
    (run / "eval" / "alpaca_eval_last_vs_reference.json").write_text("[]")
    path = report(run)
    assert path == run / "report.md"
    md = path.read_text()
    assert "# Run report: run-a" in md
    assert "enpo" in md and "tiny-random" in md and "3 completed" in md
    assert "| iteration | loss_policy | loss_adversary | kl_policy_ref |" in md
    assert "skipped 1 unreadable line" in md
    assert "iter2_vs_reference" in md and "0.55" in md and "3/1/2" in md
    assert "alpaca_eval" not in md
    for stem in ("loss", "kl", "length", "win_rate"):
        png = run / "plots" / f"{stem}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"](plots/{stem}.png)" in md
    assert "skipped" not in md.split("## Plots")[1]
    assert not list((run / "plots").glob(".*"))


def test_report_without_evals_or_metrics(run: Path) -> None:
    from nlhf.llm.report import report

    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 1, "loss_policy": 0.3}) + "\n")
    md = report(run).read_text()
    assert "No evaluations yet" in md
    assert (run / "plots" / "loss.png").is_file()
    assert not (run / "plots" / "win_rate.png").exists()
    assert "Win-rate per iteration: skipped" in md
    assert "KL(policy ‖ reference): skipped" in md and "Response length: skipped" in md

    (run / "metrics.jsonl").unlink()
    md = report(run).read_text()
    assert "No metrics recorded." in md and "Losses: skipped" in md


def test_report_bad_run_dir(tmp_path: Path) -> None:
    from nlhf.llm.report import report

    with pytest.raises(NLHFInputError, match="not a directory"):
        report(tmp_path / "missing")
    with pytest.raises(NLHFInputError, match=r"config\.yaml"):
        report(tmp_path)
