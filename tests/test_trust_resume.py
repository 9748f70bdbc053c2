"""`nlhf train --resume` and `nlhf eval` check a run before they use it: the config against
its fingerprint (only safe changes pass, and are recorded), the store, state.json,
metrics.jsonl and every adapter; each failure is one line naming the field or file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from nlhf.llm.resume import fields_sha256
from test_cli_train import one_line_error, run_cli, tiny_raw, write_config

ADAPTER = "adapters/iter_1/policy/adapter_model.safetensors"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-round tiny run made by the CLI (copied, never changed, by each test)."""
    root = tmp_path_factory.mktemp("finished")
    proc = run_cli("train", "--config", str(write_config(root, tiny_raw(root))), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


def copy_run(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def history(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_creation_stores_a_fingerprint_and_history(finished: Path) -> None:
    fp = json.loads((finished / "fingerprint.json").read_text())
    assert len(fp["sha256"]) == 64 and fp["fields"]["hparams.eta"] == 0.75
    assert "iterations" not in fp["fields"] and "run_dir" not in fp["fields"]
    assert [e["event"] for e in history(finished)] == ["created"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--set", "hparams.eta=0.9"], "hparams.eta"),
        (["--set", "algorithm=inpo"], "algorithm"),
        (["--set", "seed=3"], "seed"),
        (["--set", "model.lora.r=8"], "model.lora.r"),
        (["--set", "data.prompts_per_iteration=1"], "data.prompts_per_iteration"),
        (["--set", "iterations=2", "--set", "train.learning_rate=0.5"], "train.learning_rate"),
    ],
)
def test_unsafe_change_on_resume_is_one_line(finished: Path, tmp_path: Path, args: list[str],
                                             field: str) -> None:
    run = copy_run(finished, tmp_path)
    before = (run / "config.yaml").read_text()
    line = one_line_error(run_cli("train", "--resume", str(run), *args), f"field '{field}'",
                          "cannot change on resume", "start a new run_dir")
    assert "differs from the run's config" in line
    assert (run / "config.yaml").read_text() == before


def test_config_beside_resume_follows_the_same_rule(finished: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**raw, "hparams": {**raw["hparams"], "tau": 0.5}}))
    one_line_error(run_cli("train", "--resume", str(run), "--config", str(other)),
                   "field 'hparams.tau'", "start a new run_dir")
    # A safe change in the given config is applied and recorded.
    other.write_text(yaml.safe_dump({**raw, "iterations": 2,
                                     "eval": {**raw["eval"], "max_new_tokens": 6}}))
    proc = run_cli("train", "--resume", str(run), "--config", str(other), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "state.json").read_text())["last_completed_iteration"] == 2
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["iterations"] == 2 and saved["eval"]["max_new_tokens"] == 6
    assert saved["run_dir"] == raw["run_dir"]
    last = history(run)[-1]
    assert last["event"] == "resume" and last["completed_iteration"] == 1
    assert last["changed"] == {"eval.max_new_tokens": [48, 6], "iterations": [1, 2]}


def test_safe_set_on_resume_is_applied(finished: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path)
    proc = run_cli("train", "--resume", str(run), "--set", "eval.temperature=1.0",
                   "--no-progress")
    assert proc.returncode == 0 and "run finished" in proc.stdout, proc.stderr[-3000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["eval"]["temperature"] == 1.0
    assert history(run)[-1]["changed"] == {"eval.temperature": [0.7, 1.0]}
    one_line_error(run_cli("train", "--resume", str(run), "--set", "iterations=0"),
                   "iterations")


def test_hand_edited_config_is_caught(finished: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path)
    text = (run / "config.yaml").read_text().replace("tau: 0.25", "tau: 0.3")
    (run / "config.yaml").write_text(text)
    one_line_error(run_cli("train", "--resume", str(run)), "config.yaml",
                   "field 'hparams.tau' was edited", "start a new run_dir")


def _as_if_made_before(run: Path, field: str) -> dict[str, Any]:
    """The run as an older nlhf, which lacked ``hparams.<field>``, wrote it."""
    fp = json.loads((run / "fingerprint.json").read_text())
    del fp["fields"][f"hparams.{field}"]
    fp["sha256"] = fields_sha256(fp["fields"])
    (run / "fingerprint.json").write_text(json.dumps(fp))
    raw = yaml.safe_load((run / "config.yaml").read_text())
    del raw["hparams"][field]
    return raw


def test_fields_added_by_a_newer_version_do_not_block_resume(finished: Path,
                                                            tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path)
    raw = _as_if_made_before(run, "explore_temperature")
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    proc = run_cli("train", "--resume", str(run), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    added = [e for e in history(run) if e.get("added_fields")]
    assert added and added[-1]["added_fields"] == ["hparams.explore_temperature"]
    # Written into config.yaml by hand with another value, it is an edit, not an addition.
    other = copy_run(finished, tmp_path / "other")
    raw = _as_if_made_before(other, "explore_temperature")
    raw["hparams"]["explore_temperature"] = 3.0
    (other / "config.yaml").write_text(yaml.safe_dump(raw))
    one_line_error(run_cli("train", "--resume", str(other)), "config.yaml",
                   "field 'hparams.explore_temperature' was edited")


def _truncate_adapter(run: Path) -> str:
    path = run / ADAPTER
    path.write_bytes(path.read_bytes()[:-100])
    return ADAPTER


def _nan_adapter(run: Path) -> str:
    path = run / ADAPTER
    state = load_file(str(path))
    first = next(iter(state))
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, str(path))
    return "NaN/Inf"


def _bad_adapter_config(run: Path) -> str:
    (run / "adapters/iter_1/policy/adapter_config.json").write_text('{"r": 4,')
    return "adapter_config.json"


def _garbled_state(run: Path) -> str:
    (run / "state.json").write_text("{not json")
    return "state.json"


def _garbled_store(run: Path) -> str:
    (run / "store.sqlite").write_bytes(b"garbage" * 1000)
    (run / "store.sqlite-wal").unlink(missing_ok=True)
    return "store.sqlite"


def _empty_store(run: Path) -> str:
    (run / "store.sqlite").write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        (run / f"store.sqlite{suffix}").unlink(missing_ok=True)
    return "empty"


def _metrics_disagree(run: Path) -> str:
    row = json.loads((run / "metrics.jsonl").read_text())
    row["score_policy"] = 123.0
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    return "metrics.jsonl"


def _state_ahead(run: Path) -> str:
    state = json.loads((run / "state.json").read_text())
    state |= {"last_completed_iteration": 2, "policy_iterates": [
        "adapters/iter_1/policy", "adapters/iter_2/policy"]}
    (run / "state.json").write_text(json.dumps(state))
    return "round 2"


BREAKS = {
    "truncated adapter": _truncate_adapter,
    "NaN adapter": _nan_adapter,
    "corrupt adapter_config.json": _bad_adapter_config,
    "garbled state.json": _garbled_state,
    "garbled store": _garbled_store,
    "empty store": _empty_store,
    "metrics.jsonl disagrees": _metrics_disagree,
    "state.json ahead of the store": _state_ahead,
}
# What `nlhf eval` also refuses (it does not read metrics, nor rely on state's counts).
EVAL_BREAKS = ["truncated adapter", "NaN adapter", "corrupt adapter_config.json",
               "garbled state.json", "garbled store", "empty store"]


@pytest.mark.parametrize("name", list(BREAKS))
def test_broken_run_files_stop_a_resume(finished: Path, tmp_path: Path, name: str) -> None:
    """Also when the run is already finished: nothing is silently rewritten."""
    run = copy_run(finished, tmp_path)
    needle = BREAKS[name](run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    one_line_error(run_cli("train", "--resume", str(run)), needle)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k not in (".lock", "history.jsonl")} == {
        k: v for k, v in before.items() if k not in (".lock", "history.jsonl")}


@pytest.mark.parametrize("name", EVAL_BREAKS)
def test_broken_run_files_stop_an_eval(finished: Path, tmp_path: Path, name: str) -> None:
    run = copy_run(finished, tmp_path)
    needle = BREAKS[name](run)
    one_line_error(run_cli("eval", "--run", str(run), "--no-progress"), needle)
    assert not (run / "eval").exists()


def test_finished_run_resumes_to_a_no_op(finished: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path)
    proc = run_cli("train", "--resume", str(run), "--no-progress")
    assert proc.returncode == 0 and "run finished" in proc.stdout, proc.stderr[-3000:]
    assert history(run)[-1] == {**history(run)[-1], "event": "resume", "changed": {}}


def test_eval_judge_given_as_long_yaml(finished: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path)
    spec = "{type: criteria, criteria: [length, diversity, structure]}" + " " * 300
    proc = run_cli("eval", "--run", str(run), "--judge", spec, "--n-prompts", "1",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
