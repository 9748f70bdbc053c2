"""The openai judge against every odd reply shape: no traceback, no made-up 1/2, failures
counted and bounded, secrets never shown, a cache key that does not move at run time, and
the judge's diagnostics (position consistency, ties, failures)."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest

from fake_openai import FakeOpenAI
from nlhf.errors import NLHFInputError
from nlhf.llm.config import validate_config
from nlhf.llm.judges import CachedJudge, JudgeDiagnostics, JudgeFailureError, OpenAIJudge
from nlhf.llm.judges.diagnostics import noise_warning
from nlhf.llm.judges.openai_http import parse_answer
from nlhf.llm.judges.registry import make_judge
from nlhf.llm.preflight import preflight
from nlhf.llm.store import RunStore
from test_cli_train import one_line_error, run_cli, tiny_raw, write_config

KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def server():
    httpd = FakeOpenAI()
    yield httpd
    httpd.stop()


def _lp(a, b, first="A"):
    return {"choices": [{"message": {"content": first}, "logprobs": {"content": [
        {"token": first, "logprob": max(a, b),
         "top_logprobs": [{"token": "A", "logprob": a}, {"token": "B", "logprob": b}]}]}}]}


@pytest.mark.parametrize(("reply", "expected"), [
    (_lp(0.0, -9999.0), 1.0),                         # exp(9999) must not overflow
    (_lp(-9999.0, 0.0, "B"), 0.0),
    (_lp(-9999.0, -9999.0), 0.5),                     # equal log-probs: a real tie
    (_lp(math.log(0.7), math.log(0.3)), 0.7),
    (_lp(-math.inf, 0.0, "B"), 0.0),
    (_lp(-math.inf, -math.inf), 1.0),                 # no probability: the text decides
    ({"choices": [{"message": {"content": "A"},
                   "logprobs": {"content": [{"token": "A", "logprob": "x",
                                             "top_logprobs": None}]}}]}, 1.0),  # text
    ({"choices": [{"message": None, "text": "B"}]}, 0.0),   # completions-style text
    ({"choices": [{"message": {"content": ["A"]}}]}, None),  # content not a string
    ({"choices": ["A"]}, None),                       # a choice that is not an object
    ({"choices": []}, None),
    ({"choices": None}, None),
    ({"choices": "A"}, None),
    ({}, None),
    (None, None),
    ("A", None),
    ([1, 2], None),
    ({"choices": [{"message": {"content": "Neither."}}]}, None),
    ({"choices": [{"message": {"content": ""}}]}, None),
    ({"choices": [{"logprobs": {"content": [None, 3]}, "message": {"content": "A"}}]}, 1.0),
    ({"choices": [{"logprobs": {"content": [{"token": "A", "logprob": float("nan"),
                                             "top_logprobs": [{"token": "B",
                                                               "logprob": -1.0}]}]}}]}, None),
])
def test_parse_answer_never_raises(reply, expected):
    got = parse_answer(reply)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-9)


def test_unusable_replies_are_retried_then_answered(server):
    server.state["replies"] = [{"choices": ["A"]}, "not json at all", {"choices": []}]
    judge = OpenAIJudge(server.url, "m", concurrency=1, backoff=0.0, answer_retries=2)
    p = judge.prob(["q"], ["good"], ["x"])
    # one unusable reply re-asked, the non-JSON body retried by HTTP, one more unusable
    # reply re-asked: the first order is then answered; the second order straight away.
    assert p[0] == pytest.approx(0.8)
    assert judge.requests == 5
    assert judge.diagnostics.failures == 0 and judge.diagnostics.pairs == 1


def test_neither_answer_is_a_counted_failure_never_a_half(server, tmp_path):
    server.state["replies"] = [{"choices": [{"message": {"content": "Both are fine."}}]}] * 2
    judge = OpenAIJudge(server.url, "m", concurrency=1, answer_retries=1, logprobs=False)
    p = judge.prob(["q"], ["good"], ["x"])
    assert math.isnan(p[0])  # not 1/2
    assert judge.diagnostics.failures == 1
    assert "Both are fine" in judge.last_failure
    # Through the cache: counted, stood in as a tie, not stored (a later run asks again);
    # 1 failure is within the default 10% of the first 20 pairs.
    with RunStore(tmp_path / "s.sqlite") as store:
        server.state["replies"] = [{"choices": [{"message": {"content": "?"}}]}] * 2
        cached = CachedJudge(OpenAIJudge(server.url, "m", concurrency=1, answer_retries=1,
                                         logprobs=False), store)
        assert cached.prob(["q"], ["good"], ["x"])[0] == 0.5
        assert cached.failed == 1 and store.count_judge_calls() == 0
        assert cached.prob(["q"], ["good"], ["x"])[0] == 1.0  # asked again, answered
        assert store.count_judge_calls() == 1


def test_failures_stop_the_run_over_the_threshold(server, tmp_path):
    bad = {"choices": [{"message": {"content": "?"}}]}
    with RunStore(tmp_path / "s.sqlite") as store:
        inner = make_judge({"type": "openai", "base_url": server.url, "model": "m",
                            "logprobs": False, "concurrency": 1, "answer_retries": 0,
                            "max_failure_rate": 0.25})
        cached = CachedJudge(inner, store)
        # 4 failed pairs (each order fails) of 4 asked: 4 <= 0.25·20 = 5, so still running.
        # Pairs 0 and 1 fail (their first order gets the bad replies): 2 <= 0.25·20.
        server.state["replies"] = [bad] * 2
        out = cached.prob(["q"] * 4, ["x1", "x2", "good3", "good4"], ["y1", "y2", "z3", "z4"])
        np.testing.assert_allclose(out, [0.5, 0.5, 1.0, 1.0])  # failures stand in as ties...
        assert cached.failed == 2 and store.count_judge_calls() == 2  # ...and are not stored
        assert cached.diagnostics.failures == 2
        server.state["replies"] = [bad] * 4  # 4 more: 6 of 8 > 0.25·20
        with pytest.raises(JudgeFailureError) as info:
            cached.prob(["r"] * 4, ["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"])
    message = str(info.value)
    assert "\n" not in message and "judge openai: 6 of 8 pairs" in message
    assert "judge.max_failure_rate 0.25" in message and "unusable reply" in message


def test_logprobs_ignored_is_detected_once_and_the_key_stays(server, tmp_path, caplog):
    server.state["ignore_logprobs"] = True  # 200 without log-probs, as transformers serve
    judge = OpenAIJudge(server.url, "m", concurrency=2)
    key = judge.identity()
    with caplog.at_level(logging.WARNING, logger="nlhf.llm.judges.openai_http"), \
            RunStore(tmp_path / "s.sqlite") as store:
        cached = CachedJudge(judge, store)
        p = cached.prob(["q"] * 3, ["good", "x", "good b"], ["x", "good", "y"])
        np.testing.assert_allclose(p, [1.0, 0.0, 1.0])
        assert cached.answer_mode() == {"judge_logprobs_used": 0.0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without the log-probs" in warnings[0], warnings
    assert judge.identity() == key
    # Later requests no longer ask for log-probs.
    bodies = [b for p, b, _ in server.state["requests"] if p == "/v1/chat/completions"]
    assert bodies[0].get("logprobs") is True and "logprobs" not in bodies[-1]
    # A resumed run (new judge, same config) finds every answer: the key did not move.
    requests = len(bodies)
    with RunStore(tmp_path / "s.sqlite") as store:
        again = CachedJudge(OpenAIJudge(server.url, "m"), store)
        np.testing.assert_allclose(again.prob(["q"] * 3, ["good", "x", "good b"],
                                              ["x", "good", "y"]), p)
        assert again.misses == 0
    assert len(server.state["requests"]) == requests


def test_logprobs_rejected_then_text_with_one_retry_budget(server):
    server.state["no_logprobs"] = True
    judge = OpenAIJudge(server.url, "m", concurrency=1, answer_retries=0)
    assert judge.prob(["q"], ["good"], ["x"])[0] == 1.0  # the 400 costs no answer retry
    assert judge.answer_mode() == {"judge_logprobs_used": 0.0}
    assert OpenAIJudge(server.url, "m").answer_mode() == {}  # unknown before any answer


def test_logprobs_used_is_recorded(server):
    judge = OpenAIJudge(server.url, "m", concurrency=1)
    judge.prob(["q"], ["good"], ["x"])
    assert judge.answer_mode() == {"judge_logprobs_used": 1.0}


@pytest.mark.parametrize("code", [401, 400, 404, 503])
def test_server_error_text_never_shows_the_key(server, monkeypatch, code):
    monkeypatch.setenv("NLHF_TEST_KEY", KEY)
    server.state["echo_auth"] = code
    judge = OpenAIJudge(server.url, "m", api_key_env="NLHF_TEST_KEY", max_retries=1,
                        backoff=0.0, concurrency=1)
    with pytest.raises(NLHFInputError) as info:
        judge.prob(["q"], ["a"], ["b"])
    assert server.state["auth"][0] == f"Bearer {KEY}"  # the key was sent...
    message = str(info.value)
    assert KEY not in message and "sk-test" not in message and "\n" not in message  # ...not shown
    if code != 503:
        assert f"HTTP {code}" in message and "[redacted]" in message


def test_diagnostics_counts_from_both_orders():
    d = JudgeDiagnostics()
    # f: a shown first; g: b shown first (both "P(first shown wins)").
    f = np.array([0.9, 0.9, 0.2, 0.5, 0.7, np.nan, 1.0])
    g = np.array([0.1, 0.8, 0.3, 0.5, 0.5, 0.4, 1.0])
    d.add_orders(f, g)
    m = d.metrics()
    assert (d.pairs, d.failures, d.both_orders) == (7, 1, 6)
    assert d.consistent == 1  # pair 0 only: a wins both times
    assert d.follows_position == 3  # pairs 1 (first), 2 (second), 6 (first)
    assert d.ties == 2  # pair 3 (0.5/0.5) and pair 6 (1/1 → 1/2)
    assert m["judge_failure_rate"] == pytest.approx(1 / 7)
    assert m["judge_position_consistency"] == pytest.approx(1 / 6)
    assert m["judge_follows_position"] == pytest.approx(3 / 6)
    assert m["judge_tie_rate"] == pytest.approx(2 / 6)
    before = d.copy()
    d.add_symmetric(np.array([0.5, 0.7]))
    r = d.since(before).metrics()
    assert r == {"judge_pairs": 2.0, "judge_failures": 0.0, "judge_failure_rate": 0.0,
                 "judge_tie_rate": 0.5}


def test_noise_warning_lines():
    assert noise_warning("openai", {"judge_follows_position": 0.4, "judge_tie_rate": 0.2}) is None
    line = noise_warning("openai", {"judge_follows_position": 0.9})
    assert line and "follows position" in line and "90%" in line and "\n" not in line
    line = noise_warning("openai", {"judge_tie_rate": 0.75})
    assert line and "even" in line and "75%" in line


def test_a_judge_that_always_says_a_is_flagged(server):
    server.state["replies"] = [{"choices": [{"message": {"content": "A"}}]}] * 6
    judge = OpenAIJudge(server.url, "m", concurrency=1, logprobs=False)
    judge.prob(["q"] * 3, ["x1", "x2", "x3"], ["y1", "y2", "y3"])
    m = judge.diagnostics.metrics()
    assert m["judge_follows_position"] == 1.0 and m["judge_position_consistency"] == 0.0
    assert m["judge_tie_rate"] == 1.0
    assert "follows position" in (noise_warning("openai", m) or "")


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("base_url", "http:/chat/completions", "has no host"),
    ("base_url", "http://127.0.0.1:99999/v1", "Port out of range"),
    ("base_url", "127.0.0.1:8000/v1", "must start with http"),
    ("timeout", -1, "must be a number > 0"),
    ("timeout", "x", "must be a number > 0"),
    ("timeout", 0, "must be a number > 0"),
    ("concurrency", "x", "must be an integer >= 1"),
    ("concurrency", 0, "must be an integer >= 1"),
    ("backoff", -1, "must be a number >= 0"),
    ("max_retries", 1.5, "must be an integer >= 0"),
    ("logprobs", "yes", "must be true or false"),
    ("top_logprobs", 50, "<= 20"),
    ("max_failure_rate", 1.5, "<= 1"),
    ("max_failure_rate", float("nan"), "must be a number"),
    ("model", 3, "must be a string"),
])
def test_judge_fields_are_checked_with_one_line(field, value, needle):
    spec = {"type": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "m",
            field: value}
    with pytest.raises(NLHFInputError, match=re.escape(f"judge.{field}: ")) as info:
        make_judge(spec)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("base_url", "http:/chat/completions", "has no host"),
    ("base_url", "http://127.0.0.1:99999/v1", "Port out of range"),
    ("timeout", -1, "> 0"),
    ("timeout", "soon", "> 0"),
    ("concurrency", "x", "an integer"),
    ("backoff", -1, ">= 0"),
])
def test_preflight_rejects_bad_judge_fields_before_the_run_dir(tmp_path, field, value, needle):
    raw = tiny_raw(tmp_path)
    raw["judge"] = {"type": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "m",
                    field: value}
    with pytest.raises(NLHFInputError, match=re.escape(f"judge.{field}: ")) as info:
        preflight(validate_config(raw))
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_cli_never_shows_the_key_a_server_echoes(server, tmp_path):
    """A server whose error body echoes `Authorization: Bearer sk-...`: the CLI's one-line
    error, its whole output and the run directory never contain the key."""
    server.state["echo_auth"] = 401
    raw = tiny_raw(tmp_path)
    raw["judge"] = {"type": "openai", "base_url": server.url, "model": "m",
                    "api_key_env": "NLHF_TEST_KEY", "max_retries": 0}
    proc = run_cli("train", "--config", str(write_config(tmp_path, raw)), "--no-progress",
                   NLHF_TEST_KEY=KEY)
    line = one_line_error(proc, "HTTP 401", "[redacted]", "set $NLHF_TEST_KEY")
    assert server.state["auth"] and server.state["auth"][0] == f"Bearer {KEY}"
    assert KEY not in proc.stdout + proc.stderr and "sk-test" not in line
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


class _TwoRanks:
    """gather as two processes would: here the other rank asked the same counts."""

    def gather(self, items):
        return list(items) + list(items)


def test_round_diagnostics_are_saved_per_chunk_and_survive_a_restart(server, tmp_path):
    from nlhf.llm.judges.diagnostics import RoundDiagnostics

    with RunStore(tmp_path / "s.sqlite") as store:
        cached = CachedJudge(OpenAIJudge(server.url, "m", concurrency=1), store)
        diag = RoundDiagnostics(cached, store, _TwoRanks(), "it1/judge")
        cached.prob(["q"] * 2, ["good", "x"], ["x", "y"])
        diag.chunk_done(0)
        cached.prob(["q"], ["good z"], ["w"])
        diag.chunk_done(1)
        m = diag.metrics()
        assert m["judge_pairs"] == 6.0 and m["judge_failures"] == 0.0  # 3 pairs × 2 ranks
        assert m["judge_logprobs_used"] == 1.0
        # ("x", "y"): no "good" either side, the fake's 0.1 bias alone: both orders say
        # "first", so 1 of 3 pairs follows position; the others are consistent.
        assert m["judge_follows_position"] == pytest.approx(1 / 3)
        assert m["judge_position_consistency"] == pytest.approx(2 / 3)
        # A restarted process: every answer is cached, nothing new is counted, and the
        # saved chunks still give the same round metrics.
        again = CachedJudge(OpenAIJudge(server.url, "m"), store)
        diag2 = RoundDiagnostics(again, store, _TwoRanks(), "it1/judge")
        again.prob(["q"] * 2, ["good", "x"], ["x", "y"])
        diag2.chunk_done(0)
        assert again.misses == 0 and diag2.metrics() == m
