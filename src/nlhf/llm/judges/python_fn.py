"""Any Python preference function as the judge (``judge: {type: python, function: ...}``).

The function is batched::

    prefer(prompts: list[str], a: list[str], b: list[str]) -> Sequence[float]

returning P(a_i ≻ b_i | prompt_i) in [0, 1]. It is asked both orders like every judge (a
biased function is symmetrised; an unbiased one gives the same answer), and every answer is
checked: a wrong length, a non-number, NaN or a value outside [0, 1] is one line naming the
judge and what it returned. :meth:`FunctionJudge.preflight_check` asks it a tiny probe batch
before any training starts.

Identity (the cache key): the explicit ``name`` when given, else the function's import path
``module:qualname``, so a resumed run finds its answers. A lambda or a nested function has no
import path: it needs a name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.llm.judges.base import Judge

PreferenceFn = Callable[[list[str], list[str], list[str]], Sequence[float]]
_PROBE = (["Say hello.", "Name a colour."], ["Hello!", "Blue."], ["Hi there, friend.", "Red."])


def import_function(path: Any, field: str = "judge.function") -> PreferenceFn:
    """``package.module:function`` (dots after the colon reach attributes) → the callable."""
    if not isinstance(path, str) or ":" not in path or path.startswith(":"):
        raise NLHFInputError(f"{field}: expected 'package.module:function', got {path!r}")
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise NLHFInputError(f"{field}: cannot import module {module_name!r} ({exc}); is it "
                             "installed or on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise NLHFInputError(f"{field}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise NLHFInputError(f"{field}: {path} is not callable (it is a {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def import_path(fn: Callable[..., Any]) -> str | None:
    """``module:qualname`` when that imports back to ``fn``, else None (lambdas, closures)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    return f"{module}:{qualname}"


class FunctionJudge(Judge):
    """A user's batched preference function behind the judge interface."""

    name = "python"
    symmetric = False

    def __init__(self, function: PreferenceFn | str | None = None, *, name: str | None = None,
                 symmetric: bool = False, batch_size: int = 64) -> None:
        if isinstance(function, str):
            self.path: str | None = function
            self.fn = import_function(function)
        elif callable(function):
            self.fn, self.path = function, import_path(function)
        else:
            raise NLHFInputError(f"judge.function: required: 'package.module:function' or, in "
                                 f"Python, a callable; got {function!r}")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise NLHFInputError(f"judge.name: must be a non-empty string, got {name!r}")
        if name is None and self.path is None:
            raise NLHFInputError(
                f"judge.name: {getattr(function, '__qualname__', function)!r} has no import "
                "path (a lambda, a nested function or a script's __main__), so it cannot key "
                "the judge cache: give it a name (nlhf.train(..., judge_name='my-judge'))")
        self.label = name or self.path or "python"
        self.explicit_name = name
        self.symmetric = bool(symmetric)
        self.batch_size = batch_size

    def settings(self) -> dict[str, Any]:
        return {"name": self.explicit_name} if self.explicit_name else {"function": self.path}

    def spec(self) -> dict[str, Any]:
        """The ``judge:`` config section that rebuilds this judge (for config.yaml)."""
        out: dict[str, Any] = {"type": "python"}
        if self.path:
            out["function"] = self.path
        if self.explicit_name:
            out["name"] = self.explicit_name
        if self.symmetric:
            out["symmetric"] = True
        return out

    def _prob_one_order(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        try:
            raw = self.fn(list(prompts), list(a), list(b))
        except NLHFInputError:
            raise
        except Exception as exc:
            raise NLHFInputError(f"judge {self.label}: raised {type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:200]}") from None
        return self._checked(raw, len(prompts))

    def _checked(self, raw: Any, n: int) -> np.ndarray:
        shown = " ".join(repr(raw).split())[:120]
        expected = f"expected {n} probabilities in [0, 1] (one per pair)"
        if isinstance(raw, (str, bytes, dict)) or not hasattr(raw, "__len__"):
            raise NLHFInputError(f"judge {self.label}: returned {shown}; {expected}")
        try:
            values = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise NLHFInputError(f"judge {self.label}: returned {shown}, not numbers; "
                                 f"{expected}") from None
        if values.shape != (n,):
            raise NLHFInputError(f"judge {self.label}: returned shape {values.shape} "
                                 f"({shown}); {expected}")
        bad = ~np.isfinite(values) | (values < 0) | (values > 1)
        if bad.any():
            raise NLHFInputError(f"judge {self.label}: returned {float(values[bad][0])!r} at pair "
                                 f"{int(np.argmax(bad))} ({shown}); {expected}")
        return values

    def preflight_check(self) -> None:
        """Ask the function a two-pair probe batch; a bad answer is one line, now."""
        self._prob_one_order(*(list(x) for x in _PROBE))
