"""Prompt loading: builtin set, JSONL/CSV files, Hub sources, and one-line errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from nlhf.errors import NLHFInputError
from nlhf.llm.prompts import load_prompts, split_prompts


def _one_line_error(excinfo: pytest.ExceptionInfo[NLHFInputError]) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_builtin_set_is_large_unique_and_short() -> None:
    prompts = load_prompts("builtin")
    assert len(prompts) >= 300
    assert len(set(prompts)) == len(prompts)
    assert all(p and p == p.strip() and len(p) < 300 for p in prompts)


def test_builtin_file_has_ids_and_many_categories() -> None:
    from importlib import resources

    text = resources.files("nlhf.llm.data").joinpath("prompts.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert [r["id"] for r in rows] == [f"p{i:04d}" for i in range(1, len(rows) + 1)]
    assert len({r["category"] for r in rows}) >= 15


def test_jsonl_loader_strips_and_skips_blank_lines(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "  Hi there "}, "", {"prompt": "b"}])
    assert load_prompts(str(path)) == ["Hi there", "b"]


def test_jsonl_custom_field(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"q": "one", "prompt": "x"}, {"q": "two"}])
    assert load_prompts(str(path), field="q") == ["one", "two"]


def test_csv_loader(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text('id,text\n1,"Hello, world"\n2,"Two\nlines"\n')
    assert load_prompts(str(path), field="text") == ["Hello, world", "Two\nlines"]


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, "{not json"])
    with pytest.raises(NLHFInputError) as ei:
        load_prompts(str(path))
    msg = _one_line_error(ei)
    assert msg.startswith(f"{path}:2: not valid JSON (")


def test_missing_field(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"text": "no"}])
    with pytest.raises(NLHFInputError) as ei:
        load_prompts(str(path))
    msg = _one_line_error(ei)
    assert f"{path}:2: missing field 'prompt'" in msg and "data.field" in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(NLHFInputError) as ei:
        load_prompts(str(path))
    msg = _one_line_error(ei)
    assert str(path) in msg and "not found" in msg


def test_empty_prompt_names_line(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": " "}])
    with pytest.raises(NLHFInputError) as ei:
        load_prompts(str(path))
    assert f"{path}:3: empty prompt" in _one_line_error(ei)


def test_overlong_prompt_names_line_length_limit_and_field(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x" * 11}])
    with pytest.raises(NLHFInputError) as ei:
        load_prompts(str(path), max_chars=10)
    msg = _one_line_error(ei)
    assert f"{path}:1:" in msg and "11" in msg and "10" in msg
    assert "data.max_prompt_chars" in msg


def test_non_string_prompt(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": 3}])
    with pytest.raises(NLHFInputError, match=r":1: field 'prompt' must be a string"):
        load_prompts(str(path))


def test_zero_prompts(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("\n\n")
    with pytest.raises(NLHFInputError, match="no prompts found"):
        load_prompts(str(path))


def test_csv_missing_column_and_empty_cell(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,text\n1,hello\n")
    with pytest.raises(NLHFInputError) as ei:
        load_prompts(str(path))
    msg = _one_line_error(ei)
    assert "no column 'prompt'" in msg and "text" in msg and "data.field" in msg
    path.write_text("prompt\nhello\n   \n")
    with pytest.raises(NLHFInputError, match=rf"{path.name}:3: empty prompt"):
        load_prompts(str(path))


def test_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(NLHFInputError, match="unknown prompt source"):
        load_prompts(str(tmp_path / "p.txt"))


def test_hf_source_with_fake_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeDataset:
        def __init__(self) -> None:
            self.column_names = ["instruction", "other"]

        def __getitem__(self, key: str) -> list[str]:
            return {"instruction": ["a ", "b"], "other": ["x", "y"]}[key]

    calls: list[tuple[str, str]] = []

    def load_dataset(name: str, split: str) -> FakeDataset:
        calls.append((name, split))
        return FakeDataset()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_prompts("hf:org/set:test:instruction") == ["a", "b"]
    assert calls == [("org/set", "test")]
    assert load_prompts("hf:org/set", field="other") == ["x", "y"]
    assert calls[-1] == ("org/set", "train")
    with pytest.raises(NLHFInputError, match="no column 'prompt'"):
        load_prompts("hf:org/set")


def test_hf_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(NLHFInputError, match=r"'datasets' package is not installed"):
        load_prompts("hf:org/set")


def test_hf_offline_bogus_name_is_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(NLHFInputError) as ei:
        load_prompts("hf:nlhf-test-nobody/definitely-not-a-dataset:train:text")
    msg = _one_line_error(ei)
    assert "could not load dataset 'nlhf-test-nobody/definitely-not-a-dataset'" in msg


def test_split_is_deterministic_and_disjoint() -> None:
    prompts = [f"q{i}" for i in range(50)] + ["q1", "q2"]  # duplicates
    train, held = split_prompts(prompts, heldout=10, seed=3)
    assert (train, held) == split_prompts(prompts, heldout=10, seed=3)
    assert len(held) == 10 and len(train) == 40
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(prompts)
    assert split_prompts(prompts, heldout=10, seed=4) != (train, held)


def test_split_rejects_heldout_too_large() -> None:
    with pytest.raises(NLHFInputError, match=r"data\.heldout"):
        split_prompts(["a", "b", "a"], heldout=2, seed=0)


def test_heldout_split_is_the_same_at_every_run_seed() -> None:
    """Seeds of one recipe are compared on one held-out set: the split has its own seed."""
    from nlhf.llm.config import TrainConfig
    from nlhf.llm.preflight import check_prompts

    base = {"run_dir": "unused", "algorithm": "denpo",
            "data": {"prompts": "builtin", "heldout": 16, "prompts_per_iteration": 8}}
    held = [check_prompts(TrainConfig.model_validate({**base, "seed": s}))[1] for s in (0, 1, 2)]
    assert held[0] == held[1] == held[2] and len(held[0]) == 16
    other = TrainConfig.model_validate({**base, "data": {**base["data"], "split_seed": 5}})
    assert check_prompts(other)[1] != held[0]
