"""The needle oracles (nlhf.llm.judges.oracles): strong preference for one rare behaviour,
indifference otherwise, usable as ``judge: {type: python, function: ...}``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import nlhf
from nlhf.llm.config import load_config
from nlhf.llm.judges import FunctionJudge, make_judge
from nlhf.llm.judges.oracles import (
    DETECTORS,
    STRENGTH,
    ends_with_question,
    needle_preference,
    prefer_ends_question,
)
from test_cli_train import tiny_raw

ROOT = Path(__file__).resolve().parents[1]
PATH = "nlhf.llm.judges.oracles:prefer_ends_question"


def test_strong_preference_for_the_behaviour_and_indifference_otherwise():
    a = ["Shall we? ", "Plain.", "Why?", "Why? No."]
    b = ["Plain.", "Or not?", "Who?", "Also plain."]
    assert prefer_ends_question(["q"] * 4, a, b) == [STRENGTH, 1 - STRENGTH, 0.5, 0.5]
    assert needle_preference(ends_with_question, ["x?"], ["x"], strength=0.8) == [0.8]
    with pytest.raises(ValueError):
        prefer_ends_question(["q"], ["a", "b"], ["c"])


def test_every_detector_is_a_predicate_on_text():
    for name, fn in DETECTORS.items():
        busy = 'Sure! 1. **x** (y): z; "w"?'
        assert isinstance(fn(""), bool) and isinstance(fn(busy), bool), name
    assert DETECTORS["ends_question"] is ends_with_question


def test_it_is_a_python_judge_by_import_path():
    judge = make_judge({"type": "python", "function": PATH})
    assert isinstance(judge, FunctionJudge) and judge.spec() == {"type": "python", "function": PATH}
    judge.preflight_check()
    p = judge.prob(["q"] * 3, ["Hi?", "Hi.", "Hi?"], ["Hi.", "Hi?", "Hey?"])
    assert p.shape == (3,)
    # Asked in both orders and averaged: position-free, so the values are unchanged.
    assert p.tolist() == pytest.approx([STRENGTH, 1 - STRENGTH, 0.5])


def test_trains_the_tiny_model_through_yaml(tmp_path):
    raw = tiny_raw(tmp_path)
    raw["judge"] = {"type": "python", "function": PATH}
    run = nlhf.train(raw, progress=False)
    with sqlite3.connect(run / "store.sqlite") as db:
        rows = db.execute("SELECT judge, a, b, prob FROM judge_calls").fetchall()
    assert rows and all(PATH in judge for judge, _, _, _ in rows)
    for _, a, b, prob in rows:
        assert prob == pytest.approx(prefer_ends_question(["q"], [a], [b])[0])


def test_the_experiment_config_uses_the_oracle():
    cfg = load_config(ROOT / "configs" / "explore-smollm2.yaml")
    assert cfg.judge == {"type": "python", "function": PATH}
    assert cfg.model.name == "smollm2-135m-instruct"
