"""Build a judge from its config section (`judge:` in a run config), with one-line errors."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.llm.http_client import require_http_url
from nlhf.llm.judges.base import Judge

#: Fields every judge type takes; they change how a run treats answers, never an answer.
COMMON_FIELDS = ("max_failure_rate",)

# type → (required fields, optional fields); the optional ones mirror the constructors.
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "criteria": ((), ("criteria", "temperature", "target_words", "model_path", "device",
                      "batch_size")),
    "reward-model": (("model",), ("soft", "device", "dtype", "trust_remote_code", "revision",
                                  "max_length", "batch_size")),
    "llm-judge": (("model",), ("device", "dtype", "trust_remote_code", "revision", "template",
                               "chat_template", "max_response_tokens", "batch_size")),
    "openai": (("base_url", "model"), ("api_key_env", "template", "temperature", "max_tokens",
                                       "logprobs", "top_logprobs", "timeout", "max_retries",
                                       "backoff", "max_backoff", "concurrency", "batch_size",
                                       "answer_retries")),
    "tabular": ((), ("P", "game", "batch_size")),
    "python": (("function",), ("name", "symmetric", "batch_size")),
}
#: The judge types, the one list (the run config checks `judge.type` against it too).
JUDGES = tuple(_FIELDS)
# field → (kind, lower bound, upper bound, lower bound excluded); checked for every type.
_BOUNDS: dict[str, tuple[str, float, float | None, bool]] = {
    "batch_size": ("int", 1, None, False), "concurrency": ("int", 1, None, False),
    "max_retries": ("int", 0, None, False), "answer_retries": ("int", 0, None, False),
    "max_tokens": ("int", 1, None, False), "top_logprobs": ("int", 0, 20, False),
    "max_response_tokens": ("int", 1, None, False), "max_length": ("int", 1, None, False),
    "timeout": ("number", 0, None, True), "backoff": ("number", 0, None, False),
    "max_backoff": ("number", 0, None, False), "temperature": ("number", 0, None, False),
    "max_failure_rate": ("number", 0, 1, False),
}
_BOOLS = ("logprobs", "soft", "trust_remote_code", "symmetric")
_STRINGS = ("model", "api_key_env", "template", "name", "base_url")
_HINTS = {
    "model": "a Hugging Face Hub id or a local model folder",
    "base_url": "the endpoint's base URL, e.g. http://127.0.0.1:8000/v1",
    "function": "'package.module:function', a batched prefer(prompts, a, b)",
}


def make_judge(spec: Mapping[str, Any]) -> Judge:
    """`spec` = {"type": one of JUDGES, **fields}; unknown types and fields are errors."""
    if not isinstance(spec, Mapping):
        raise NLHFInputError(f"judge: expected a mapping with a 'type' field, got {spec!r}")
    kind = spec.get("type", "criteria")
    if kind not in _FIELDS:
        raise NLHFInputError(f"judge.type: unknown judge {kind!r}; choose one of "
                             f"{', '.join(JUDGES)}")
    required, optional = _FIELDS[kind]
    fields = {k: v for k, v in spec.items() if k != "type"}
    for name in fields:
        if name not in required and name not in optional and name not in COMMON_FIELDS:
            raise NLHFInputError(f"judge.{name}: not a field of judge type {kind!r}; "
                                 f"fields: {', '.join(required + optional + COMMON_FIELDS)}")
    for name in required:
        if fields.get(name) in (None, ""):
            raise NLHFInputError(f"judge.{name}: required for judge type {kind!r} "
                                 f"({_HINTS.get(name, 'missing')})")
    check_fields(fields)
    if "base_url" in fields:
        require_http_url(fields["base_url"], "judge.base_url")
    limit = fields.pop("max_failure_rate", None)
    judge = _BUILDERS[kind](fields)
    if limit is not None:
        judge.max_failure_rate = float(limit)
    return judge


def check_fields(fields: Mapping[str, Any]) -> None:
    """Types and bounds of the judge fields, one line naming the field (before any build)."""
    for name, value in fields.items():
        if name in _BOUNDS:
            kind, lo, hi, open_lo = _BOUNDS[name]
            ok_type = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
            ok = ok_type and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > lo if open_lo else value >= lo) and (hi is None or value <= hi)
            if not ok:
                what = "an integer" if kind == "int" else "a number"
                bound = f"{'>' if open_lo else '>='} {lo:g}" + (f" and <= {hi:g}" if hi else "")
                raise NLHFInputError(f"judge.{name}: must be {what} {bound}, got {value!r}")
        elif name in _BOOLS and not isinstance(value, bool):
            raise NLHFInputError(f"judge.{name}: must be true or false, got {value!r}")
        elif name in _STRINGS and value is not None and not isinstance(value, str):
            raise NLHFInputError(f"judge.{name}: must be a string, got {value!r}")


def _criteria(f: dict[str, Any]) -> Judge:
    from nlhf.llm.judges.criteria import CriteriaJudge

    return CriteriaJudge(**f)


def _reward_model(f: dict[str, Any]) -> Judge:
    from nlhf.llm.judges.reward_model import RewardModelJudge

    return RewardModelJudge(**f)


def _llm_judge(f: dict[str, Any]) -> Judge:
    from nlhf.llm.judges.llm_judge import LLMJudge

    return LLMJudge(**f)


def _openai(f: dict[str, Any]) -> Judge:
    from nlhf.llm.judges.openai_http import OpenAIJudge

    return OpenAIJudge(**f)


def _python(f: dict[str, Any]) -> Judge:
    from nlhf.llm.judges.python_fn import FunctionJudge

    return FunctionJudge(**f)


def _tabular(f: dict[str, Any]) -> Judge:
    from nlhf.llm.judges.tabular import TabularJudge

    if ("P" in f) == ("game" in f):
        raise NLHFInputError("judge.P: give exactly one of judge.P (a C×K×K matrix) "
                             "or judge.game (a game file, .json or .npz)")
    if "game" in f:
        from nlhf.preferences import read_game_file

        fields = read_game_file(Path(f["game"]))
        if "P" not in fields:
            raise NLHFInputError(f"{f['game']}: missing field 'P'")
        try:
            P = np.asarray(fields["P"], dtype=np.float64)
        except (TypeError, ValueError):
            raise NLHFInputError(f"{f['game']}: field 'P' must be a numeric array") from None
    else:
        P = f["P"]
    return TabularJudge(P, **({"batch_size": f["batch_size"]} if "batch_size" in f else {}))


_BUILDERS: dict[str, Callable[[dict[str, Any]], Judge]] = {
    "criteria": _criteria, "reward-model": _reward_model, "llm-judge": _llm_judge,
    "openai": _openai, "tabular": _tabular, "python": _python,
}
