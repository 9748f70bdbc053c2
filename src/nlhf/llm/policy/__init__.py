"""Policies: the Hugging Face causal-LM policy (LoRA adapters, log-probs) and its loaders.

Names are imported lazily so `import nlhf.llm.policy` stays cheap for code (like the tabular
laboratory) that never touches transformers or peft.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_MODEL": "nlhf.llm.policy.loading",
    "TINY_MODEL": "nlhf.llm.policy.loading",
    "cache_dir": "nlhf.llm.policy.loading",
    "load_model_and_tokenizer": "nlhf.llm.policy.loading",
    "set_seed": "nlhf.llm.policy.loading",
    "LMPolicy": "nlhf.llm.policy.lm",
    "LoraSettings": "nlhf.llm.policy.lm",
    "ADAPTERS": "nlhf.llm.policy.lm",
    "load_policy": "nlhf.llm.policy.lm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
