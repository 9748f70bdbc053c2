"""Small input checks of issue 12 that need no training: writable folders, the run store's
open-existing check, junk model folders, quiet model conversion off a terminal."""

from __future__ import annotations

import io
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from nlhf.errors import NLHFInputError
from nlhf.llm.policy.loading import _bars_on_terminal_only, check_model_files
from nlhf.llm.rundir import require_writable
from nlhf.llm.store import RunStore


def test_require_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_writable(tmp_path / "a" / "b")  # nearest existing ancestor is writable
    (tmp_path / "file").write_text("x")
    with pytest.raises(NLHFInputError, match="is a file, not a folder"):
        require_writable(tmp_path / "file" / "run")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a non-root user would see
    with pytest.raises(NLHFInputError, match="run_dir: no permission to write in"):
        require_writable(tmp_path / "new")
    assert not (tmp_path / "a").exists() and not (tmp_path / "new").exists()


def test_open_existing_refuses_what_a_plain_open_would_rewrite(tmp_path: Path) -> None:
    good = tmp_path / "good.sqlite"
    with RunStore(good) as store:
        store.add_metrics(1, {"x": 1.0})
    with RunStore.open_existing(good) as store:
        assert store.metrics() == [(1, "x", 1.0)]
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(NLHFInputError, match="empty"):
        RunStore.open_existing(empty)
    assert empty.stat().st_size == 0
    garbled = tmp_path / "garbled.sqlite"
    garbled.write_bytes(b"not sqlite" * 500)
    with pytest.raises(NLHFInputError, match="not a usable run store"):
        RunStore.open_existing(garbled)
    with pytest.raises(NLHFInputError, match="not a usable run store"):
        RunStore(garbled)  # a plain open is one line too, not a sqlite3 traceback
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE other (x INT)")
    with pytest.raises(NLHFInputError, match="lacks its tables"):
        RunStore.open_existing(foreign)


def test_check_model_files(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    check_model_files(folder, "model.name")
    (folder / "model.safetensors").write_bytes(b"\x01" * 10)
    with pytest.raises(NLHFInputError, match=r"model\.name: .*model\.safetensors"):
        check_model_files(folder, "model.name")


def test_conversion_bars_are_dropped_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    with _bars_on_terminal_only():
        print("Converting ... 50%", file=sys.stderr)
    assert captured.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with _bars_on_terminal_only():
        print("Converting ... 50%", file=sys.stderr)
    assert "50%" in terminal.getvalue()


def test_resume_errors_and_history_hide_secret_values(tmp_path: Path) -> None:
    from nlhf.llm.config import TrainConfig, dump_config
    from nlhf.llm.resume import record_creation, verify_resume
    from nlhf.llm.rundir import RunDir

    run = RunDir(tmp_path / "run")
    cfg = TrainConfig.model_validate({"run_dir": str(run.root), "judge": {"type": "criteria"}})
    dump_config(cfg, run.config)
    record_creation(run, cfg)
    secret = cfg.model_copy(update={"judge": {"type": "criteria", "api_key": "sk-SECRET"}})
    with pytest.raises(NLHFInputError) as e:
        verify_resume(run, secret)
    assert "judge.api_key" in str(e.value) and "sk-SECRET" not in str(e.value)
    assert "<hidden>" in str(e.value)
    more = cfg.model_copy(update={"iterations": 5})
    assert verify_resume(run, more).iterations == 5
    assert "sk-SECRET" not in (run.root / "history.jsonl").read_text()
    assert '"iterations": [3, 5]' in (run.root / "history.jsonl").read_text()
