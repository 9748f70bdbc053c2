"""The run store: one SQLite file (WAL) holding prompts, generations, judge calls and steps.

Why SQLite in WAL mode: every write is one transaction, so a run killed at any instant
(even SIGKILL) reopens with each batch either fully written or absent, and `--resume`
can trust `is_done()` and never pays the judge twice for a pair it has already scored.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from nlhf.errors import NLHFInputError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    id INTEGER PRIMARY KEY,
    split TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS prompts_split ON prompts(split);
CREATE TABLE IF NOT EXISTS generations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    iteration INT NOT NULL,
    role TEXT NOT NULL,
    prompt_id INT NOT NULL,
    sample_index INT NOT NULL,
    response TEXT NOT NULL,
    response_ids TEXT,
    logprob REAL,
    UNIQUE(iteration, role, prompt_id, sample_index)
);
CREATE TABLE IF NOT EXISTS judge_calls (
    key TEXT PRIMARY KEY,
    judge TEXT NOT NULL,
    prompt TEXT NOT NULL,
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    prob REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    key TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    done_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    iteration INT NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL
);
"""

_TABLES = ("prompts", "generations", "judge_calls", "steps", "metrics")
# SQLite's default limit on bound parameters is 999 in old builds: stay well under it.
_CHUNK = 500


def _unusable(path: Path, exc: Exception) -> str:
    return (f"{path}: not a usable run store ({' '.join(str(exc).split())}); a garbled store "
            "or -wal file cannot be repaired: start a new run_dir")


class RunStore:
    """A run's SQLite store. Open it, use it, `close()` it (or use it as a context manager)."""

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we open every transaction ourselves (see _tx), explicitly.
            self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            with self._tx() as cur:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        cur.execute(statement)
        except sqlite3.DatabaseError as exc:  # garbled file or WAL, unwritable folder
            raise NLHFInputError(_unusable(self.path, exc)) from None

    @classmethod
    def open_existing(cls, path: str | Path, timeout: float = 30.0) -> RunStore:
        """Open a store a run already wrote, refusing one that is empty, garbled, fails
        SQLite's integrity check or lacks a table (never silently re-created)."""
        path = Path(path)
        if path.stat().st_size == 0:
            raise NLHFInputError(f"{path}: the run store is empty (0 bytes), so its prompts, "
                                 "samples and judge answers are lost; start a new run_dir")
        try:
            with closing(sqlite3.connect(str(path), timeout=timeout)) as conn:
                tables = {r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
                ok = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        except sqlite3.DatabaseError as exc:
            raise NLHFInputError(_unusable(path, exc)) from None
        if not ok or not tables >= set(_TABLES):
            raise NLHFInputError(f"{path}: the run store fails SQLite's integrity check or "
                                 "lacks its tables; start a new run_dir")
        return cls(path, timeout)

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction: all of it lands, or none of it (rollback on any error)."""
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def journal_mode(self) -> str:
        return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    def integrity_ok(self) -> bool:
        return self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- prompts --------------------------------------------------------------------------

    def add_prompts(self, rows: Iterable[tuple[str, str]]) -> list[int]:
        """Insert (split, text) rows in one transaction; returns their ids in order."""
        ids: list[int] = []
        with self._tx() as cur:
            for split, text in rows:
                cur.execute("INSERT INTO prompts(split, text) VALUES (?, ?)", (split, text))
                ids.append(int(cur.lastrowid))  # type: ignore[arg-type]
        return ids

    def prompts(self, split: str | None = None) -> list[tuple[int, str]]:
        """(id, text) pairs of one split (all splits when None), in insertion order."""
        if split is None:
            cur = self._conn.execute("SELECT id, text FROM prompts ORDER BY id")
        else:
            cur = self._conn.execute(
                "SELECT id, text FROM prompts WHERE split = ? ORDER BY id", (split,)
            )
        return [(int(i), str(t)) for i, t in cur.fetchall()]

    # -- generations ----------------------------------------------------------------------

    def put_generations(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Upsert generations keyed by (iteration, role, prompt_id, sample_index), one commit.

        Each row has those four keys plus `response`, and optionally `response_ids`
        (list of token ids, stored as JSON) and `logprob` (sum over response tokens).
        """
        sql = (
            "INSERT INTO generations(iteration, role, prompt_id, sample_index, response,"
            " response_ids, logprob) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(iteration, role, prompt_id, sample_index) DO UPDATE SET"
            " response = excluded.response, response_ids = excluded.response_ids,"
            " logprob = excluded.logprob"
        )
        values = []
        for r in rows:
            ids = r.get("response_ids")
            logprob = r.get("logprob")
            values.append((
                int(r["iteration"]), str(r["role"]), int(r["prompt_id"]),
                int(r["sample_index"]), str(r["response"]),
                None if ids is None else json.dumps([int(t) for t in ids]),
                None if logprob is None else float(logprob),
            ))
        with self._tx() as cur:
            cur.executemany(sql, values)

    def get_generations(self, iteration: int, role: str) -> list[dict[str, Any]]:
        """One iteration's generations of one role, ordered by (prompt_id, sample_index)."""
        cur = self._conn.execute(
            "SELECT iteration, role, prompt_id, sample_index, response, response_ids, logprob"
            " FROM generations WHERE iteration = ? AND role = ?"
            " ORDER BY prompt_id, sample_index",
            (int(iteration), str(role)),
        )
        out = []
        for it, rl, pid, si, resp, ids, lp in cur.fetchall():
            out.append({
                "iteration": it, "role": rl, "prompt_id": pid, "sample_index": si,
                "response": resp, "response_ids": None if ids is None else json.loads(ids),
                "logprob": lp,
            })
        return out

    # -- judge calls ----------------------------------------------------------------------

    def judge_get_many(self, keys: Sequence[str]) -> dict[str, float]:
        """Stored probabilities for those keys that have one (missing keys are absent)."""
        found: dict[str, float] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            cur = self._conn.execute(
                f"SELECT key, prob FROM judge_calls WHERE key IN ({marks})", chunk
            )
            found.update((str(k), float(p)) for k, p in cur.fetchall())
        return found

    def judge_put_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Save judge answers (`key, judge, prompt, a, b, prob`) in one commit.

        The first answer stored for a key stays: a resumed run sees the labels it trained on.
        """
        now = time.time()
        values = [
            (str(r["key"]), str(r["judge"]), str(r["prompt"]), str(r["a"]), str(r["b"]),
             float(r["prob"]), now)
            for r in rows
        ]
        with self._tx() as cur:
            cur.executemany(
                "INSERT OR IGNORE INTO judge_calls(key, judge, prompt, a, b, prob, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                values,
            )

    def count_judge_calls(self, judge: str | None = None) -> int:
        if judge is None:
            return int(self._conn.execute("SELECT COUNT(*) FROM judge_calls").fetchone()[0])
        return int(self._conn.execute(
            "SELECT COUNT(*) FROM judge_calls WHERE judge = ?", (judge,)
        ).fetchone()[0])

    def count_generated_tokens(self) -> int:
        """Response tokens of every stored training generation (all rounds and roles)."""
        rows = self._conn.execute(
            "SELECT response_ids FROM generations WHERE response_ids IS NOT NULL").fetchall()
        return sum(len(json.loads(r[0])) for r in rows)

    # -- steps (resume points) ------------------------------------------------------------

    def mark_done(self, key: str, payload: Mapping[str, Any] | None = None) -> None:
        """Record that a step finished, with a small JSON payload (e.g. paths, counts)."""
        with self._tx() as cur:
            cur.execute(
                "INSERT OR REPLACE INTO steps(key, payload, done_at) VALUES (?, ?, ?)",
                (key, json.dumps(dict(payload or {}), sort_keys=True), time.time()),
            )

    def is_done(self, key: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM steps WHERE key = ?", (key,)).fetchone()
        return row is not None

    def step_payload(self, key: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT payload FROM steps WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    # -- metrics --------------------------------------------------------------------------

    def add_metrics(self, iteration: int, values: Mapping[str, float]) -> None:
        with self._tx() as cur:
            cur.executemany(
                "INSERT INTO metrics(iteration, name, value) VALUES (?, ?, ?)",
                [(int(iteration), str(k), float(v)) for k, v in values.items()],
            )

    def metrics(self, name: str | None = None) -> list[tuple[int, str, float]]:
        """(iteration, name, value) rows in insertion order, optionally of one name."""
        sql = "SELECT iteration, name, value FROM metrics"
        args: tuple[Any, ...] = ()
        if name is not None:
            sql, args = sql + " WHERE name = ?", (name,)
        rows = self._conn.execute(sql + " ORDER BY id", args).fetchall()
        return [(int(i), str(n), float(v)) for i, n, v in rows]
