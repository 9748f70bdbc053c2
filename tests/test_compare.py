"""`nlhf compare` on the tiny model: bad input fails before training; a comparison killed
twice (after a run's evaluation, then in the middle of a later run's round) resumes to the
same tables as an uninterrupted one and never asks the judge again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nlhf.errors import NLHFInputError
from nlhf.llm.compare import EVAL_NAME, load_comparison, markdown, pooled_win_rate
from nlhf.llm.loop import KILL_ENV
from nlhf.llm.store import RunStore
from test_train import CHEAP_JUDGE, tiny_config

ALGORITHMS = {"denpo": [], "online-dpo": ["hparams.pairs_per_prompt=2"]}


def write_compare(tmp_path: Path, out: Path, **compare: Any) -> Path:
    raw = tiny_config(tmp_path, iterations=1, eval={"max_new_tokens": 8}).model_dump(mode="json")
    raw["compare"] = {"out": str(out), "algorithms": ALGORITHMS, "seeds": [0],
                      "second_judge": CHEAP_JUDGE, **compare}
    path = tmp_path / f"compare-{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(config: Path, *flags: str,
            kill_after: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop(KILL_ENV, None)
    if kill_after:
        env[KILL_ENV] = kill_after
    return subprocess.run(
        [sys.executable, "-m", "nlhf.cli", "compare", "--config", str(config), "--no-progress",
         *flags],
        env=env, capture_output=True, text=True, timeout=300,
    )


def judge_calls(run: Path) -> int:
    with RunStore(run / "store.sqlite") as store:
        return store.count_judge_calls()


def tables(out: Path) -> dict[str, Any]:
    doc = json.loads((out / "compare.json").read_text())
    keep = ("seed", "win_rate", "ci", "kl", "mean_tokens", "judge_calls", "generated_tokens")
    rows = {r["algorithm"]: [{k: s[k] for k in keep} for s in r["per_seed"]] for r in doc["rows"]}
    return {"rows": rows, "head_to_head": doc["head_to_head"]}


def test_killed_comparison_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    done = run_cli(write_compare(tmp_path, whole))
    assert done.returncode == 0, done.stderr[-3000:]
    config = write_compare(tmp_path, broken)

    killed = run_cli(config, kill_after="compare/evaluated/denpo-s0")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    denpo = broken / "runs/denpo-s0"
    evaluation = denpo / "eval" / f"{EVAL_NAME}.json"
    stamp, calls = evaluation.stat().st_mtime_ns, judge_calls(denpo)
    assert not (broken / "runs/online-dpo-s0").exists()
    report = run_cli(config, "--report-only")  # tables from what is evaluated; no training
    assert report.returncode == 0 and "1 of 2 runs evaluated" in report.stdout, report.stderr
    assert not (broken / "runs/online-dpo-s0").exists()
    assert "1 of 2 runs finished" in (broken / "compare.md").read_text()

    killed = run_cli(config, kill_after="it1/judge")  # online-dpo, in the middle of its round
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (broken / "runs/online-dpo-s0/config.yaml").is_file()
    assert not (broken / "runs/online-dpo-s0/eval").exists()

    resumed = run_cli(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "online-dpo seed 0: resuming" in resumed.stdout
    assert "denpo seed 0: finished, evaluating" in resumed.stdout
    # The finished run was neither trained nor evaluated again, nor judged again.
    assert evaluation.stat().st_mtime_ns == stamp and judge_calls(denpo) == calls
    assert tables(broken) == tables(whole)
    doc = json.loads((broken / "compare.json").read_text())
    assert doc["finished_runs"] == doc["planned_runs"] == 2
    assert doc["total_seconds"] == pytest.approx(sum(
        s["train_seconds"] + s["eval_seconds"] for row in doc["rows"] for s in row["per_seed"]))
    assert doc["total_seconds"] > 0
    h2h = doc["head_to_head"]
    assert h2h["denpo"]["online-dpo"]["win_rate"] == pytest.approx(
        1 - h2h["online-dpo"]["denpo"]["win_rate"])
    assert (broken / "compare.png").stat().st_size > 0
    page = (broken / "compare.md").read_text()
    assert "2 of 2 runs finished" in page and "| denpo |" in page
    assert f"summed over the 2 finished runs: **{doc['total_seconds'] / 3600:.2f} h**" in page
    # The second judge here is the training judge itself, on the same evaluation samples:
    # it must give back each run's evaluated win-rate.
    second = doc["second_judge"]["rows"]
    for row in doc["rows"]:
        main_rates = [s["win_rate"] for s in row["per_seed"]]
        assert [s["win_rate"] for s in second[row["algorithm"]]["per_seed"]] == pytest.approx(
            main_rates)
        assert second[row["algorithm"]]["pooled"]["win_rate"] == pytest.approx(main_rates[0])
    assert "## Second judge" in page
    # A rerun of a finished comparison trains nothing and asks the judge nothing new.
    with RunStore(broken / "judge.sqlite") as store:
        before = store.count_judge_calls()
    again = run_cli(config)
    assert again.returncode == 0 and "resuming" not in again.stdout
    with RunStore(broken / "judge.sqlite") as store:
        assert store.count_judge_calls() == before


@pytest.mark.parametrize(("compare", "message"), [
    ({"algorithms": {"denpo": [], "enpo-fast": []}}, "compare.algorithms: unknown enpo-fast"),
    ({"seeds": [0, 0]}, "compare.seeds: seeds repeat"),
    ({"algorithms": {"inpo": ["hparams.no_such=1"]}}, "compare.algorithms.inpo"),
    ({"typo": 1}, "compare.typo: Extra inputs are not permitted"),
    ({"second_judge": {"type": "oracle"}}, "compare.second_judge: judge.type: unknown judge"),
])
def test_bad_compare_files_fail_before_training(tmp_path: Path, compare: dict[str, Any],
                                                message: str) -> None:
    out = tmp_path / "out"
    config = write_compare(tmp_path, out, **compare)
    with pytest.raises(NLHFInputError, match=message.replace("(", r"\(")) as info:
        load_comparison(config)
    assert "\n" not in str(info.value) and str(config) in str(info.value)
    result = run_cli(config)
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert not out.exists()


def test_missing_section_and_foreign_runs(tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"run_dir": "x", "algorithm": "denpo"}))
    with pytest.raises(NLHFInputError, match="no 'compare' section"):
        load_comparison(plain)
    out = tmp_path / "out"
    config = write_compare(tmp_path, out)
    other = tiny_config(tmp_path, iterations=2)  # another recipe in the same run folder
    run = out / "runs/denpo-s0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(
        other.model_copy(update={"run_dir": str(run)}).model_dump(mode="json")))
    result = run_cli(config)
    assert result.returncode == 2 and "made with another recipe" in result.stderr


def test_dry_run_shows_equal_judge_budgets(tmp_path: Path) -> None:
    config = write_compare(tmp_path, tmp_path / "out", seeds=[0, 1])
    result = subprocess.run([sys.executable, "-m", "nlhf.cli", "compare", "--config",
                             str(config), "--dry-run"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    # denpo: 4 generations, 4 comparisons per prompt; online-dpo with 2 pairs: 4 and 2.
    assert [r[:5] for r in rows] == [["denpo", "0", "new", "4", "4"],
                                     ["online-dpo", "0", "new", "4", "2"],
                                     ["denpo", "1", "new", "4", "4"],
                                     ["online-dpo", "1", "new", "4", "2"]]
    assert not (tmp_path / "out").exists()


def test_pooled_win_rate_and_page() -> None:
    evals = [{"per_prompt": [{"prompt_id": i, "p_win": p} for i, p in enumerate(ps)]}
             for ps in ([1.0, 0.0, 1.0, 0.5], [0.0, 0.0, 1.0, 0.5])]
    pooled = pooled_win_rate(evals)
    # Per prompt over seeds: 0.5, 0, 1, 0.5 -> mean 0.5, t-interval over four prompts.
    assert pooled["win_rate"] == pytest.approx(0.5) and pooled["prompts"] == 4
    assert pooled["ci"][0] < 0.5 < pooled["ci"][1]
    doc = {"source": "c.yaml", "finished_runs": 0, "planned_runs": 2, "seeds": [0],
           "ci_level": 0.95, "algorithms": {"denpo": []},
           "recipe": {"model": "m", "judge": {"type": "criteria"}, "iterations": 1,
                      "prompts_per_iteration": 4, "heldout": 2, "eval_max_new_tokens": 8,
                      "eval_samples_per_prompt": 1},
           "rows": [{"algorithm": "denpo", "per_seed": []}], "head_to_head": {}}
    assert "| denpo | — | — | not run yet |" in markdown(doc)
