"""The run report: markdown, plots, and graceful handling of what a run lacks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from nlhf.errors import NLHFInputError
from nlhf.llm.config import TrainConfig, dump_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fake_eval(run: Path, name: str, iterate: str, t: int | None, wr: float,
               training_judge: bool = True, seconds: float = 4.0) -> None:
    """An eval file shaped like `evaluate`'s output, without running a model."""
    (run / "eval").mkdir(exist_ok=True)
    data = {
        "name": name, "against": "reference", "iterate": iterate, "policy_iteration": t,
        "win_rate": wr, "win_rate_ci": [wr - 0.1, wr + 0.1], "wins": 3, "ties": 1,
        "losses": 2, "hard_win_rate": 0.58,
        "policy": {"label": f"r-{iterate}", "mean_tokens": 7.5, "kl_ref": 0.02},
        "opponent": {"label": "r-reference", "mean_tokens": 8.0, "kl_ref": 0.0},
        "kl_note": "an estimate", "settings": {"judge": {"type": "criteria"}, "n_prompts": 6,
                                               "training_judge": training_judge,
                                               "seconds": seconds},
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
             "kl_policy_ref": 0.01 * t, "mean_response_length": 10.0 + t,
             "time_generate": 3.0, "time_logprobs": 1.0, "time_judge": 2.0,
             "time_iteration": 10.0 + t} for t in (1, 2, 3)]
    text = "\n".join(json.dumps(r) for r in rows) + "\nnot json\n"
    (root / "metrics.jsonl").write_text(text)
    return root


def test_report_with_metrics_and_evals(run: Path) -> None:
    from nlhf.llm.report import report

    _fake_eval(run, "iter1_vs_reference", "iter1", 1, 0.52, seconds=5.0)
    _fake_eval(run, "iter2_vs_reference", "iter2", 2, 0.55, seconds=6.0)
    _fake_eval(run, "last_vs_reference", "last", 3, 0.6, seconds=7.0)
    _fake_eval(run, "average_vs_reference", "average", None, 0.57, seconds=8.0)
    _fake_eval(run, "last_vs_reference_llm-judge", "last", 3, 0.9, training_judge=False)
    (run / "eval" / "alpaca_eval_last_vs_reference.json").write_text("[]")
    path = report(run)
    assert path == run / "report.md"
    md = path.read_text()
    assert md.startswith("# Run report: run-a\n\n## Summary")
    summary = md.split("## Per iteration")[0]
    assert "| algorithm | denpo |" in summary and "tiny-random" in summary
    assert "3 of 3 completed" in summary
    assert "| win-rate, last iterate (95% CI) | 0.600 [0.500, 0.700] |" in summary
    assert "| win-rate, average iterate (95% CI) | 0.570 [0.470, 0.670] |" in summary
    assert "| KL(policy ‖ reference) | 0.02 |" in summary  # the eval's, not training's
    assert "36 s training, 30 s evaluation" in summary  # 11+12+13; 5+6+7+8+4

    table = md.split("## Per iteration")[1].split("### Wall time")[0]
    assert "| metric | 1 | 2 | 3 |" in table  # iterations as columns
    assert "| win-rate vs ref (95% CI) | 0.520 [0.420, 0.620] | 0.550 [0.450, 0.650] | " \
           "0.600 [0.500, 0.700] |" in table
    assert "| loss_policy | 1 | 0.5 | 0.3333 |" in table
    assert "time_generate" not in table  # timings have their own table
    assert "skipped 1 unreadable line" in md
    phases = md.split("### Wall time per phase (seconds)")[1].split("##")[0]
    assert "| generation | 3.0 | 3.0 | 3.0 |" in phases
    assert "| training | 5.0 | 6.0 | 7.0 |" in phases  # time_iteration - 3 - 1 - 2
    assert "| evaluation | 5.0 | 6.0 | 7.0 |" in phases

    assert "iter2_vs_reference" in md and "3/1/2" in md
    assert "alpaca_eval" not in md
    for stem in ("losses", "kl", "length", "win_rate", "time"):
        png = run / "plots" / f"{stem}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"](plots/{stem}.png)" in md
    assert "skipped" not in md.split("## Plots")[1]
    assert not list((run / "plots").glob(".*"))

    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["iteration"] for r in rows] == ["1", "2", "3"]
    assert float(rows[1]["loss_policy"]) == 0.5 and float(rows[2]["time_judge"]) == 2.0
    assert float(rows[0]["eval_win_rate"]) == 0.52 and float(rows[2]["eval_win_rate_hi"]) == 0.7
    assert float(rows[1]["time_eval"]) == 6.0


def test_table_keeps_ten_rows(run: Path) -> None:
    from nlhf.llm.report import report

    rows = [{"iteration": t, **{f"m{k:02d}": float(k * t) for k in range(15)}} for t in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _fake_eval(run, "iter1_vs_reference", "iter1", 1, 0.52)
    md = report(run).read_text()
    table = md.split("## Per iteration")[1].split("\n\n")[1]
    body = [line for line in table.splitlines() if line.startswith("| ") and "metric" not in line]
    assert len(body) == 10 and body[0].startswith("| win-rate vs ref")
    assert "| m08 |" in table and "| m09 |" not in table
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {f"m{k:02d}" for k in range(15)} <= set(header)


def test_report_without_evals_or_metrics(run: Path) -> None:
    from nlhf.llm.report import report

    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 1, "loss_policy": 0.3}) + "\n")
    md = report(run).read_text()
    assert "No evaluations yet" in md
    assert "| win-rate, last iterate (95% CI) | not evaluated" in md
    assert (run / "plots" / "losses.png").is_file()
    assert not (run / "plots" / "win_rate.png").exists()
    assert "Win-rate per iteration: skipped" in md
    assert "KL(policy ‖ reference): skipped" in md and "Response length: skipped" in md
    assert "Wall time per phase: skipped" in md
    assert "| KL(policy ‖ reference) | not recorded |" in md

    (run / "metrics.jsonl").unlink()
    (run / "state.json").unlink()
    md = report(run).read_text()
    assert "No metrics recorded." in md and "Losses: skipped" in md
    assert "? of 3 completed" in md
    assert (run / "metrics.csv").read_text() == ("iteration,eval_win_rate,eval_win_rate_lo,"
                                                  "eval_win_rate_hi,eval_kl,time_eval\n")


def test_report_bad_run_dir(tmp_path: Path) -> None:
    from nlhf.llm.report import report

    with pytest.raises(NLHFInputError, match="not a directory"):
        report(tmp_path / "missing")
    with pytest.raises(NLHFInputError, match=r"config\.yaml"):
        report(tmp_path)
