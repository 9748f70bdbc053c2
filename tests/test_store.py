"""The run store: round trips, one transaction per batch, WAL, and survival of SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from nlhf.llm.store import RunStore


def _gen(iteration: int, role: str, pid: int, k: int, text: str = "hi") -> dict:
    return {"iteration": iteration, "role": role, "prompt_id": pid, "sample_index": k,
            "response": text, "response_ids": [1, 2, k], "logprob": -1.5 * k}


def test_wal_mode_schema_and_reopen(tmp_path):
    path = tmp_path / "run" / "store.sqlite"
    with RunStore(path) as store:
        assert store.journal_mode() == "wal"
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        ids = store.add_prompts([("train", "p0"), ("train", "p1"), ("eval", "e0")])
        store.mark_done("iter0/generate", {"n": 3})
    # WAL is a property of the file: a plain connection sees it too.
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"prompts", "generations", "judge_calls", "steps", "metrics"} <= tables
    raw.close()
    with RunStore(path) as store:
        assert store.prompts("train") == [(ids[0], "p0"), (ids[1], "p1")]
        assert store.prompts("eval") == [(ids[2], "e0")]
        assert len(store.prompts()) == 3
        assert store.is_done("iter0/generate") and not store.is_done("iter1/generate")
        assert store.step_payload("iter0/generate") == {"n": 3}
        assert store.step_payload("nope") is None


def test_generations_upsert_and_order(tmp_path):
    with RunStore(tmp_path / "s.sqlite") as store:
        store.put_generations([_gen(0, "policy", 2, 1), _gen(0, "policy", 1, 0),
                               _gen(0, "policy", 2, 0), _gen(0, "adversary", 1, 0)])
        store.put_generations([{**_gen(0, "policy", 2, 1, "new"), "response_ids": None,
                                "logprob": None}])
        rows = store.get_generations(0, "policy")
        assert [(r["prompt_id"], r["sample_index"]) for r in rows] == [(1, 0), (2, 0), (2, 1)]
        assert rows[0]["response_ids"] == [1, 2, 0] and rows[0]["logprob"] == 0.0
        assert rows[2]["response"] == "new" and rows[2]["response_ids"] is None
        assert len(store.get_generations(0, "adversary")) == 1
        assert store.get_generations(1, "policy") == []


def test_a_failed_batch_writes_nothing(tmp_path):
    with RunStore(tmp_path / "s.sqlite") as store:
        bad = [_gen(0, "policy", 0, 0), {"iteration": 0, "role": "policy"}]  # missing keys
        with pytest.raises(KeyError):
            store.put_generations(bad)
        assert store.get_generations(0, "policy") == []
        store.put_generations([_gen(0, "policy", 0, 0)])  # the connection is still usable
        assert len(store.get_generations(0, "policy")) == 1


def test_judge_calls_and_metrics(tmp_path):
    with RunStore(tmp_path / "s.sqlite") as store:
        rows = [{"key": f"k{i}", "judge": "j", "prompt": "p", "a": "a", "b": f"b{i}",
                 "prob": i / 10} for i in range(3)]
        store.judge_put_many(rows)
        store.judge_put_many([{**rows[0], "prob": 0.99}])  # the first answer stays
        assert store.judge_get_many(["k0", "k2", "zz", "k0"]) == {"k0": 0.0, "k2": 0.2}
        assert store.count_judge_calls() == 3 and store.count_judge_calls("other") == 0
        many = [{**rows[0], "key": f"m{i}"} for i in range(1200)]  # over one IN (...) chunk
        store.judge_put_many(many)
        assert len(store.judge_get_many([r["key"] for r in many])) == 1200
        store.add_metrics(0, {"gap": 0.25, "win_rate": 0.5})
        store.add_metrics(1, {"gap": 0.125})
        assert store.metrics("gap") == [(0, "gap", 0.25), (1, "gap", 0.125)]
        assert len(store.metrics()) == 3


_WRITER = textwrap.dedent("""
    import sys
    from nlhf.llm.store import RunStore
    store = RunStore(sys.argv[1])
    it = 0
    while True:
        store.put_generations(
            {"iteration": it, "role": "policy", "prompt_id": p, "sample_index": 0,
             "response": "x" * 200, "response_ids": list(range(50)), "logprob": -1.0}
            for p in range(50)
        )
        store.judge_put_many([{"key": f"k{it}", "judge": "j", "prompt": "p", "a": "a",
                               "b": "b", "prob": 0.5}])
        store.mark_done(f"iter{it}", {"rows": 50})
        it += 1
""")


def test_survives_sigkill_mid_write(tmp_path):
    path = tmp_path / "s.sqlite"
    RunStore(path).close()
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)])
    try:
        deadline = time.monotonic() + 20
        with RunStore(path) as watcher:
            while watcher.count_judge_calls() < 5:
                assert child.poll() is None, "the writer died on its own"
                assert time.monotonic() < deadline, "the writer never wrote"
                time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    with RunStore(path) as store:
        assert store.integrity_ok()
        iters = [r[0] for r in store._conn.execute(
            "SELECT DISTINCT iteration FROM generations ORDER BY iteration")]
        assert len(iters) >= 5 and iters == list(range(len(iters)))
        for it in iters:  # every batch landed whole or not at all
            assert len(store.get_generations(it, "policy")) == 50
        for it in iters[:-1]:  # a finished step implies its data
            assert store.is_done(f"iter{it}")
        store.put_generations([_gen(999, "policy", 0, 0)])  # writable after the crash
        assert len(store.get_generations(999, "policy")) == 1
