"""Policies: the Hugging Face causal-LM policy (LoRA adapters, log-probs) and its loaders.

Names are imported lazily so `import nlhf.policies` stays cheap for code (like the tabular
laboratory) that never touches transformers or peft.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_MODEL": "nlhf.policies.loading",
    "TINY_MODEL": "nlhf.policies.loading",
    "cache_dir": "nlhf.policies.loading",
    "load_model_and_tokenizer": "nlhf.policies.loading",
    "set_seed": "nlhf.policies.loading",
    "LMPolicy": "nlhf.policies.lm",
    "LoraSettings": "nlhf.policies.lm",
    "ADAPTERS": "nlhf.policies.lm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
