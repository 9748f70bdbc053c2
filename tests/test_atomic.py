"""Atomic writers (nlhf.atomic): the target is old or new, never half written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nlhf.atomic import atomic_directory, atomic_path, write_json_atomic, write_text_atomic


def test_text_and_json_writes_replace_the_target(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    assert write_json_atomic(target, {"b": "é", "a": 1}, indent=2, ensure_ascii=False) == target
    assert target.read_text(encoding="utf-8") == '{\n  "b": "é",\n  "a": 1\n}\n'
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target, suffix=".png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".plot.png.")
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    with pytest.raises(TypeError):
        write_json_atomic(target, {"x": object()})
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_atomic_directory_replaces_or_keeps(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "w").write_text("1")
    with pytest.raises(OSError), atomic_directory(target) as tmp:
        (tmp / "w").write_text("2")
        raise OSError("disk full")
    assert json.loads((target / "w").read_text()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
