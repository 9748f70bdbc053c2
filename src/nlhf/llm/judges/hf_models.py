"""Load the Hugging Face tokenizer and model of a judge (``reward-model``, ``llm-judge``).

The checks are the policy loader's (:mod:`nlhf.llm.policy.loading`): a typo'd local path or a
folder of pickled weights is a one-line ``judge.*`` error, and only safetensors weights are
ever loaded. torch and transformers are imported on first use.
"""

from __future__ import annotations

from typing import Any


def load_judge_tokenizer(name: str, *, trust_remote_code: bool, revision: str | None) -> Any:
    """The tokenizer of judge model ``name``, with a pad token (EOS if it has none)."""
    from transformers import AutoTokenizer

    from nlhf.llm.policy.loading import local_model_path

    local_model_path(name, "judge.model")  # no pickled weights, no Hub lookup for a bad path
    tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code,
                                        revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_judge_model(auto_class: str, name: str, *, dtype: str | None, device: str,
                     trust_remote_code: bool, revision: str | None) -> Any:
    """Judge model ``name`` as ``transformers.<auto_class>`` in eval mode on ``device``.

    ``dtype``: float32, bfloat16 or float16 (None: the checkpoint's default).
    """
    import transformers

    from nlhf.llm.policy.loading import local_model_path, torch_dtype

    local_model_path(name, "judge.model")
    model = getattr(transformers, auto_class).from_pretrained(
        name, use_safetensors=True, dtype=torch_dtype(dtype, "judge.dtype") if dtype else None,
        trust_remote_code=trust_remote_code, revision=revision,
    )
    return model.to(device).eval()
