"""Any Python preference function as the judge: ``judge: {type: python, function: ...}`` in
YAML and ``nlhf.train(config, judge=fn)`` in Python, on the tiny model; every bad function
is one line naming the judge and what it returned, before any run directory exists."""

from __future__ import annotations

import json
import math
import os
import sqlite3
from pathlib import Path

import pytest
import yaml

import nlhf
from nlhf.errors import NLHFInputError
from nlhf.llm.config import validate_config
from nlhf.llm.judges import FunctionJudge, make_judge
from nlhf.llm.preflight import preflight
from test_cli_train import one_line_error, run_cli, tiny_raw, write_config

HERE = Path(__file__).resolve().parent
PATH = "test_judge_python:prefer_longer"
NOT_CALLABLE = 3


def prefer_longer(prompts: list[str], a: list[str], b: list[str]) -> list[float]:
    """P(a ≻ b): the longer response, softly; position-free."""
    return [0.5 + 0.4 * math.tanh((len(x) - len(y)) / 20) for x, y in zip(a, b, strict=True)]


def _returns(value):
    def fn(prompts, a, b):
        return value(len(prompts)) if callable(value) else value
    return fn


@pytest.mark.parametrize(("returned", "needle"), [
    (lambda n: [0.5] * (n + 1), "returned shape (3,)"),
    (lambda n: [[0.5]] * n, "returned shape (2, 1)"),
    ("0.5", "returned '0.5'"),
    (None, "returned None"),
    ({"p": 0.5}, "returned {'p': 0.5}"),
    (0.5, "returned 0.5"),
    (lambda n: ["a"] * n, "not numbers"),
    (lambda n: [float("nan")] * n, "returned nan"),
    (lambda n: [1.5] * n, "returned 1.5"),
    (lambda n: [-0.1] * n, "returned -0.1"),
])
def test_bad_return_values_are_one_line_at_preflight(returned, needle):
    judge = FunctionJudge(_returns(returned), name="mine")
    with pytest.raises(NLHFInputError) as info:
        judge.preflight_check()
    message = str(info.value)
    assert message.startswith("judge mine: ") and needle in message and "\n" not in message
    assert "expected 2 probabilities in [0, 1]" in message


def test_a_function_that_raises_is_one_line():
    def boom(prompts, a, b):
        raise KeyError("no such column")

    with pytest.raises(NLHFInputError, match=r"^judge boom-judge: raised KeyError: 'no such"):
        FunctionJudge(boom, name="boom-judge").preflight_check()


@pytest.mark.parametrize(("path", "needle"), [
    ("no_such_pkg_xyz.prefs:prefer", "cannot import module 'no_such_pkg_xyz.prefs'"),
    ("test_judge_python:missing", "has no 'missing'"),
    ("test_judge_python:NOT_CALLABLE", "is not callable"),
    ("prefer_longer", "expected 'package.module:function'"),
    (":prefer", "expected 'package.module:function'"),
])
def test_bad_import_paths(path, needle):
    with pytest.raises(NLHFInputError, match=r"^judge\.function: ") as info:
        make_judge({"type": "python", "function": path})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_identity_comes_from_the_import_path_or_a_name():
    judge = make_judge({"type": "python", "function": PATH})
    assert PATH in judge.identity() and judge.spec() == {"type": "python", "function": PATH}
    assert FunctionJudge(prefer_longer).identity() == judge.identity()
    named = FunctionJudge(lambda p, a, b: [0.5] * len(p), name="coin")
    assert "coin" in named.identity() and named.spec() == {"type": "python", "name": "coin"}
    with pytest.raises(NLHFInputError, match=r"^judge\.name: .*has no import path"):
        FunctionJudge(lambda p, a, b: [0.5] * len(p))
    # Both orders are asked and averaged, like every judge; this one is position-free.
    p = judge.prob(["q", "q"], ["a long answer here", "x"], ["short", "x"])
    assert p[0] == pytest.approx(0.5 + 0.4 * math.tanh(13 / 20)) and p[1] == 0.5


def test_preflight_probes_a_yaml_judge_before_the_run_dir(tmp_path):
    raw = tiny_raw(tmp_path)
    raw["judge"] = {"type": "python", "function": "test_judge_python:NOT_CALLABLE"}
    with pytest.raises(NLHFInputError, match=r"judge\.function: .*not callable"):
        preflight(validate_config(raw))
    raw["judge"] = {"type": "python", "function": PATH}
    assert isinstance(preflight(validate_config(raw)).judge, FunctionJudge)
    assert not (tmp_path / "run").exists()


def test_nlhf_train_rejects_a_bad_function_before_any_file(tmp_path):
    raw = tiny_raw(tmp_path)
    with pytest.raises(NLHFInputError, match=r"^judge half: returned shape \(1,\)"):
        nlhf.train(raw, judge=lambda p, a, b: [0.5], judge_name="half", progress=False)
    assert not (tmp_path / "run").exists()


def _judge_rows(run: Path) -> list[str]:
    with sqlite3.connect(run / "store.sqlite") as db:
        return [r[0] for r in db.execute("SELECT judge FROM judge_calls")]


def test_python_api_trains_with_a_function_and_resumes_from_its_path(tmp_path):
    raw = tiny_raw(tmp_path)
    run = nlhf.train(raw, judge=prefer_longer, progress=False)
    assert run == tmp_path / "run"
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["judge"] == {"type": "python", "function": PATH}
    rows = _judge_rows(run)
    assert rows and all(PATH in r for r in rows)
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["judge_pairs"] == len(rows) and metrics["judge_failures"] == 0
    # Position-free: every pair is consistent in both orders or an exact tie.
    assert metrics["judge_position_consistency"] + metrics["judge_tie_rate"] == pytest.approx(1)
    assert metrics["judge_follows_position"] == 0.0
    # A resume rebuilds the judge from config.yaml, by its path, with the same cache key.
    rebuilt = make_judge(stored["judge"])
    assert set(rows) == {rebuilt.identity()}


def test_yaml_function_judge_through_the_cli(tmp_path):
    raw = tiny_raw(tmp_path)
    raw["judge"] = {"type": "python", "function": PATH}
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("train", "--config", str(write_config(tmp_path, raw)), "--no-progress", **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(PATH in r for r in _judge_rows(tmp_path / "run"))
    raw["run_dir"] = str(tmp_path / "run2")
    raw["judge"] = {"type": "python", "function": "test_judge_python:NOT_CALLABLE"}
    one_line_error(run_cli("train", "--config", str(write_config(tmp_path, raw)), **env),
                   "judge.function", "not callable")
    assert not (tmp_path / "run2").exists()
