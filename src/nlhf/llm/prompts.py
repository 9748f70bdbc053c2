"""Prompt sources for the LLM trainer: the builtin set, JSONL/CSV files, or a Hub dataset.

Every bad input raises a one-line :class:`NLHFInputError` naming the file, line and the
config field to change, so the CLI can print it and exit without a traceback.
"""

from __future__ import annotations

import csv
import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

from nlhf.errors import NLHFInputError

BUILTIN = "builtin"
BUILTIN_LABEL = "builtin:nlhf/llm/data/prompts.jsonl"
_SOURCE_HELP = (
    "set data.prompts to 'builtin', a .jsonl or .csv file, or hf:<dataset>[:<split>[:<column>]]"
)


def _one_line(text: object, limit: int = 200) -> str:
    """Collapse whitespace so a foreign exception message fits in our one-line errors."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _check_prompt(value: Any, where: str, field: str, max_chars: int) -> str:
    """Validate one prompt value; ``where`` is "path:line" or "source:row N"."""
    if not isinstance(value, str):
        raise NLHFInputError(
            f"{where}: field '{field}' must be a string, got {type(value).__name__}; "
            "fix the data or set data.field to the text column"
        )
    prompt = value.strip()
    if not prompt:
        raise NLHFInputError(f"{where}: empty prompt in field '{field}'; remove the line")
    if len(prompt) > max_chars:
        raise NLHFInputError(
            f"{where}: prompt has {len(prompt)} characters, over the limit of {max_chars}; "
            "shorten it or raise data.max_prompt_chars"
        )
    return prompt


def _read_text(path: Path) -> str:
    if not path.exists():
        raise NLHFInputError(f"{path}: file not found; {_SOURCE_HELP}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise NLHFInputError(
            f"{path}: cannot read the file ({_one_line(exc)}); check the path and that it is "
            "UTF-8 text"
        ) from exc


def _parse_jsonl(text: str, label: str, field: str, max_chars: int) -> list[str]:
    prompts: list[str] = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue  # blank lines (e.g. a trailing newline) carry no prompt
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise NLHFInputError(
                f"{label}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                "each line must be one JSON object"
            ) from exc
        if not isinstance(obj, dict):
            raise NLHFInputError(
                f"{label}:{lineno}: expected a JSON object, got {type(obj).__name__}; "
                f'write each line as {{"{field}": "..."}}'
            )
        if field not in obj:
            raise NLHFInputError(
                f"{label}:{lineno}: missing field '{field}'; add it or set data.field to the "
                "key that holds the prompt"
            )
        prompts.append(_check_prompt(obj[field], f"{label}:{lineno}", field, max_chars))
    return prompts


def _parse_csv(path: Path, field: str, max_chars: int) -> list[str]:
    text = _read_text(path)
    reader = csv.DictReader(text.splitlines(keepends=True))
    prompts: list[str] = []
    try:
        columns = reader.fieldnames or []
        if columns and field not in columns:
            raise NLHFInputError(
                f"{path}: no column '{field}' (columns: {', '.join(columns)}); "
                "set data.field to the prompt column"
            )
        for row in reader:
            value = row.get(field)
            if value is None:  # short row: the prompt column is absent
                raise NLHFInputError(
                    f"{path}:{reader.line_num}: missing field '{field}'; the row has fewer "
                    "columns than the header"
                )
            prompts.append(_check_prompt(value, f"{path}:{reader.line_num}", field, max_chars))
    except csv.Error as exc:
        raise NLHFInputError(
            f"{path}:{reader.line_num}: not valid CSV ({_one_line(exc)}); check the quoting"
        ) from exc
    return prompts


def _parse_hf(source: str, field: str, max_chars: int) -> list[str]:
    """``hf:<dataset>[:<split>[:<column>]]``; ``datasets`` is imported only here."""
    parts = source[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 3:
        raise NLHFInputError(
            f"{source}: bad Hub source; write hf:<dataset>[:<split>[:<column>]], "
            "e.g. hf:openbmb/UltraFeedback:train:instruction"
        )
    name = parts[0]
    split = parts[1] if len(parts) > 1 and parts[1] else "train"
    column = parts[2] if len(parts) > 2 and parts[2] else field
    try:
        import datasets
    except ImportError as exc:
        raise NLHFInputError(
            f"{source}: the 'datasets' package is not installed; pip install 'nlhf[datasets]' "
            "or use a local .jsonl/.csv file for data.prompts"
        ) from exc
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # any failure (offline, typo, no such split) → one line
        raise NLHFInputError(
            f"{source}: could not load dataset '{name}' split '{split}' "
            f"({type(exc).__name__}: {_one_line(exc)}); check the name and split, "
            "or use a local .jsonl/.csv file for data.prompts"
        ) from exc
    columns = list(getattr(ds, "column_names", []) or [])
    if column not in columns:
        raise NLHFInputError(
            f"{source}: no column '{column}' (columns: {', '.join(columns)}); "
            "name it as hf:<dataset>:<split>:<column> or set data.field"
        )
    return [
        _check_prompt(value, f"{source}:row {i}", column, max_chars)
        for i, value in enumerate(ds[column])
    ]


def load_prompts(source: str, field: str = "prompt", max_chars: int = 2000) -> list[str]:
    """Load and validate prompts from ``source``; stripped, in file order, duplicates kept.

    ``source`` is ``"builtin"``, a ``.jsonl`` path (one object per line with ``field``), a
    ``.csv`` path (column ``field``) or ``hf:<dataset>[:<split>[:<column>]]``.
    """
    if max_chars <= 0:
        raise NLHFInputError(f"data.max_prompt_chars must be > 0, got {max_chars}")
    source = source.strip()
    if source == BUILTIN:
        text = (resources.files("nlhf.llm.data").joinpath("prompts.jsonl")
                .read_text(encoding="utf-8"))
        label = BUILTIN_LABEL
        prompts = _parse_jsonl(text, label, field, max_chars)
    elif source.startswith("hf:"):
        label = source
        prompts = _parse_hf(source, field, max_chars)
    else:
        path = Path(source).expanduser()
        label = str(path)
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            prompts = _parse_jsonl(_read_text(path), label, field, max_chars)
        elif suffix == ".csv":
            prompts = _parse_csv(path, field, max_chars)
        else:
            raise NLHFInputError(f"{source}: unknown prompt source; {_SOURCE_HELP}")
    if not prompts:
        raise NLHFInputError(
            f"{label}: no prompts found; it needs at least one non-empty '{field}' entry"
        )
    return prompts


def split_prompts(prompts: list[str], heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """Deterministically split into (train, held-out) after de-duplication.

    De-duplicating first makes the two parts disjoint as *strings*, so a held-out prompt is
    never trained on even when the source repeats it.
    """
    if heldout < 0:
        raise NLHFInputError(f"data.heldout must be >= 0, got {heldout}")
    unique = list(dict.fromkeys(prompts))
    if heldout >= len(unique):
        raise NLHFInputError(
            f"data.heldout ({heldout}) leaves no training prompts: only {len(unique)} unique "
            "prompts; lower data.heldout or add prompts"
        )
    order = unique[:]
    random.Random(seed).shuffle(order)
    return order[heldout:], order[:heldout]
