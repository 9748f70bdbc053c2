"""`nlhf train` / `nlhf eval` as real subprocesses: bad input is one line on stderr, exit 2,
no traceback and no run directory; a judge endpoint that is down leaves a resumable run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fake_openai import FakeOpenAI, free_port

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["Explain why the sky is blue.", "Write a haiku about autumn.", "What is rain?",
           "List three fruits.", "Describe a cat.", "Why do birds sing?"]


def run_cli(*args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
    full_env.pop("NLHF_TEST_KILL_AFTER", None)
    return subprocess.run([sys.executable, "-m", "nlhf.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=180)


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2 and exactly one `error: ...` line on stderr naming every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: ") and len(line) > len("error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def write_prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def tiny_raw(tmp_path: Path) -> dict[str, Any]:
    """The smallest valid run: tiny random model, 1 round of 2 prompts, 4 new tokens."""
    return {
        "run_dir": str(tmp_path / "run"),
        "iterations": 1,
        "algorithm": "denpo",
        "model": {"name": "tiny-random", "lora": {"r": 4, "alpha": 8}},
        "hparams": {"eta": 0.75, "tau": 0.25, "n_comparators": 1, "step_b_candidates": 2},
        "data": {"prompts": str(write_prompts(tmp_path / "prompts.jsonl")),
                 "prompts_per_iteration": 2, "heldout": 2},
        "rollout": {"max_new_tokens": 4, "batch_size": 8},
        "train": {"batch_size": 2},
        "judge": {"type": "criteria", "criteria": ["length", "diversity", "structure"]},
    }


def write_config(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# Each case edits the tiny config (and may write files); returns the needles of the error.
Case = Callable[[Path, dict[str, Any]], list[str]]


def _set(section: str, **values: Any) -> Case:
    def edit(tmp_path: Path, raw: dict[str, Any]) -> list[str]:
        if section:
            raw[section] = {**raw.get(section, {}), **values}
        else:
            raw.update(values)
        key = next(iter(values))
        return [f"{section}.{key}" if section else key]
    return edit


def _prompt_lines(lines: list[str], needle: str, **data: Any) -> Case:
    def edit(tmp_path: Path, raw: dict[str, Any]) -> list[str]:
        path = tmp_path / "bad.jsonl"
        path.write_text("".join(line + "\n" for line in lines))
        raw["data"] |= {"prompts": str(path), **data}
        return [needle.format(path=path)]
    return edit


def _missing_prompts(tmp_path: Path, raw: dict[str, Any]) -> list[str]:
    raw["data"]["prompts"] = str(tmp_path / "missing.jsonl")
    return [str(tmp_path / "missing.jsonl"), "file not found"]


def _judge_model_missing(tmp_path: Path, raw: dict[str, Any]) -> list[str]:
    raw["judge"] = {"type": "reward-model", "model": "/nonexistent/rm"}
    return ["judge.model", "/nonexistent/rm"]


def _undecodable_prompts(tmp_path: Path, raw: dict[str, Any]) -> list[str]:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9"}\n')
    raw["data"]["prompts"] = str(path)
    return [str(path), "cannot read"]


def _pickle_only_model(tmp_path: Path, raw: dict[str, Any]) -> list[str]:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    raw["model"]["name"] = str(folder)
    return ["model.name", "pytorch_model.bin", "safetensors"]


def _run_dir_under_a_file(tmp_path: Path, raw: dict[str, Any]) -> list[str]:
    (tmp_path / "afile").write_text("mine")
    raw["run_dir"] = str(tmp_path / "afile" / "run")
    return ["run_dir", "is a file, not a folder"]


def _junk_model(config_json: str, weights: bytes, *needles: str) -> Case:
    def edit(tmp_path: Path, raw: dict[str, Any]) -> list[str]:
        folder = tmp_path / "junk"
        folder.mkdir()
        (folder / "config.json").write_text(config_json)
        (folder / "model.safetensors").write_bytes(weights)
        raw["model"]["name"] = str(folder)
        return ["model.name", *needles]
    return edit


def _prompt_beyond_context(tmp_path: Path, raw: dict[str, Any]) -> list[str]:
    raw["rollout"]["max_new_tokens"] = 2040  # the tiny model's context is 2048 tokens
    return ["data.prompts", "rollout.max_new_tokens (2040)", "2048-token context"]


GOOD = json.dumps({"prompt": "Fine."})
CASES: dict[str, Case] = {
    "unknown field": _set("hparams", etaa=1.0),
    "unknown algorithm": _set("", algorithm="ppo"),
    "unknown judge type": _set("judge", type="gpt-judge"),
    "unknown judge field": _set("judge", temprature=1.0),
    "tau >= eta": _set("hparams", tau=0.75),
    "eta <= 0": _set("hparams", eta=0.0),
    "n_comparators = 0": _set("hparams", n_comparators=0),
    "one step B candidate": _set("hparams", step_b_candidates=1),
    "missing prompts file": _missing_prompts,
    "unreadable prompts file": _undecodable_prompts,
    "malformed jsonl line": _prompt_lines([GOOD, GOOD, '{"prompt": "no end'], "{path}:3"),
    "empty prompt": _prompt_lines([GOOD, json.dumps({"prompt": "  "})], "{path}:2"),
    "over-long prompt": _prompt_lines([GOOD, json.dumps({"prompt": "x" * 2001})],
                                      "data.max_prompt_chars"),
    "heldout leaves nothing": _set("data", heldout=6),
    "too many prompts per round": _set("data", prompts_per_iteration=5),
    "model path does not exist": _set("model", name="/nonexistent/model"),
    "pickle-only model folder": _pickle_only_model,
    "judge model path does not exist": _judge_model_missing,
    "learning rate inf": _set("train", learning_rate=float("inf")),
    "learning rate 1e30": _set("train", learning_rate=1e30),
    "eta inf": _set("hparams", eta=float("inf")),
    "iterations true": _set("", iterations=True),
    "iterations 1e9": _set("", iterations=10**9),
    "max_new_tokens 1e9": _set("rollout", max_new_tokens=10**9),
    "lora rank 100000": _set("model", lora={"r": 100000}),
    "temperature 1e-30": _set("rollout", temperature=1e-30),
    "run_dir under a file": _run_dir_under_a_file,
    "junk model folder": _junk_model("{not json", b"\x00" * 64, "config.json", "not valid JSON"),
    "junk model weights": _junk_model("{}", b"\x07" * 64, "model.safetensors",
                                      "not a readable safetensors"),
    "prompt beyond the context": _prompt_beyond_context,
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_is_one_line_and_writes_no_run_dir(tmp_path: Path, name: str) -> None:
    raw = tiny_raw(tmp_path)
    needles = CASES[name](tmp_path, raw)
    proc = run_cli("train", "--config", str(write_config(tmp_path, raw)))
    one_line_error(proc, *needles)
    assert not (tmp_path / "run").exists()


def test_missing_and_unreadable_config_files(tmp_path: Path) -> None:
    one_line_error(run_cli("train", "--config", str(tmp_path / "nope.yaml")),
                   "nope.yaml", "not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: [unclosed\nseed: 0\n")
    one_line_error(run_cli("train", "--config", str(bad)), "bad.yaml", "not valid YAML")
    one_line_error(run_cli("train", "--config", str(tmp_path)), str(tmp_path), "cannot read")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    one_line_error(run_cli("train", "--config", str(empty)), "empty.yaml",
                   "missing required fields 'run_dir', 'algorithm'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "empty.yaml"]


def test_run_dir_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run_cli("train", "--resume", str(empty)), "config.yaml", str(empty))
    assert not any(empty.iterdir())
    raw = tiny_raw(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    proc = run_cli("train", "--config", str(write_config(tmp_path, raw)))
    one_line_error(proc, "run_dir", str(run), "already exists", "--resume")
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


def test_judge_endpoint_down_then_resume(tmp_path: Path) -> None:
    port = free_port()
    raw = tiny_raw(tmp_path)
    raw["judge"] = {"type": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m",
                    "max_retries": 1, "backoff": 0.01, "timeout": 1}
    config = write_config(tmp_path, raw)
    run = tmp_path / "run"
    line = one_line_error(run_cli("train", "--config", str(config)), "unreachable",
                          f"127.0.0.1:{port}")
    assert "judge endpoint" in line
    # Resumable: the config and the collected samples are kept, no round was finished.
    assert (run / "config.yaml").is_file() and (run / "store.sqlite").is_file()
    assert not (run / "state.json").exists()
    server = FakeOpenAI(port)
    try:
        proc = run_cli("train", "--resume", str(run), "--no-progress")
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "run finished" in proc.stdout
    # The start-up banner says what the run costs before the work.
    assert "1 rounds x 2 prompts" in proc.stdout and "judge calls" in proc.stdout
    assert server.state["paths"] and set(server.state["paths"]) == {"/v1/chat/completions"}
    assert json.loads((run / "state.json").read_text())["last_completed_iteration"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    hf_home, cache = tmp_path / "hf", tmp_path / "nlhf-cache"
    proc = run_cli("train", "--config", str(REPO / "configs/llama3-8b-enpo.yaml"), "--dry-run",
                   cwd=tmp_path, HF_HOME=str(hf_home), NLHF_CACHE=str(cache))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in ("rounds", "generations", "judge", "calls", "memory"):
        assert word in proc.stdout, word
    assert not any(tmp_path.iterdir())  # no run dir, no Hub or model cache
    assert not (REPO / "runs/llama3-8b-enpo").exists()


def test_eval_of_a_missing_run_is_one_line() -> None:
    one_line_error(run_cli("eval", "--run", "/nonexistent"), "/nonexistent")
