"""Pre-flight check of a new training run: every cheap input check, before any file is written.

Why: a run that fails on its prompts, judge or model path after ``config.yaml`` and the store
exist leaves a half-made run directory that blocks the next start ("already exists"). Here
the prompts are loaded and split, the judge is built (no model or endpoint is contacted:
its fields' types and bounds and its endpoint URL are checked, and a Python preference
function answers a two-pair probe batch) and local model paths are checked, so bad input
costs one line and writes nothing. The model itself is not loaded: that is the slow part,
and its errors are one-line input errors too.
"""

from __future__ import annotations

from dataclasses import dataclass

from nlhf.errors import NLHFInputError
from nlhf.llm.config import TrainConfig
from nlhf.llm.judges import Judge, make_judge
from nlhf.llm.policy.loading import (
    DEFAULT_MODEL,
    TINY_MODEL,
    local_model_path,
    render_prompt,
    tokenizer_and_context,
)
from nlhf.llm.prompts import load_prompts, split_prompts
from nlhf.llm.tracking import check_report_to

#: Judge fields that name a local model folder or a Hub id, by judge type. (An openai
#: judge's ``model`` is the server's name for it, which may be a path on the server.)
JUDGE_MODEL_FIELDS = {"reward-model": "model", "llm-judge": "model", "criteria": "model_path"}


@dataclass(frozen=True)
class Checked:
    """What the pre-flight check loaded, so the run reuses it instead of loading it again."""

    train_prompts: list[str]
    heldout_prompts: list[str]
    judge: Judge


def check_prompts(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """Load and split the prompts; the held-out and per-round counts must fit the set."""
    d = cfg.data
    train, heldout = split_prompts(load_prompts(d.prompts, d.field, d.max_prompt_chars),
                                   d.heldout, d.split_seed)
    if d.prompts_per_iteration > len(train):
        raise NLHFInputError(
            f"data.prompts_per_iteration ({d.prompts_per_iteration}) is more than the "
            f"{len(train)} training prompts of {d.prompts} left after data.heldout "
            f"({d.heldout}); lower data.prompts_per_iteration or data.heldout, or add prompts"
        )
    return train, heldout


def check_model_paths(cfg: TrainConfig) -> None:
    """A model name that looks like a path must exist and hold safetensors (or be GGUF)."""
    if cfg.model.name not in (TINY_MODEL, DEFAULT_MODEL):
        local_model_path(cfg.model.name, "model.name")
    field = JUDGE_MODEL_FIELDS.get(str(cfg.judge.get("type")))
    value = cfg.judge.get(field) if field else None
    if isinstance(value, str) and value:
        local_model_path(value, f"judge.{field}")


def check_context(cfg: TrainConfig, prompts: list[str]) -> None:
    """Every prompt plus the longest generation fits the model's context (tokenizer and
    config.json only; skipped for a Hub id, whose files are not fetched before the run)."""
    found = tokenizer_and_context(cfg.model.name, cfg.model.trust_remote_code)
    if found is None:
        return
    tokenizer, context = found
    field, new = max((("rollout.max_new_tokens", cfg.rollout.max_new_tokens),
                      ("eval.max_new_tokens", cfg.eval.max_new_tokens)), key=lambda f: f[1])
    if new >= context:
        raise NLHFInputError(f"{field} ({new}) leaves no room for a prompt in the "
                             f"{context}-token context of {cfg.model.name}; lower it")
    for text in prompts:
        n = len(render_prompt(tokenizer, text))
        if n + new > context:
            shown = " ".join(text.split())[:40]
            raise NLHFInputError(
                f"data.prompts: the prompt {shown!r}... of {cfg.data.prompts} is {n} tokens, "
                f"which with {field} ({new}) exceeds the {context}-token context of "
                f"{cfg.model.name}; shorten it (data.max_prompt_chars) or lower {field}"
            )


def preflight(cfg: TrainConfig, judge: Judge | None = None) -> Checked:
    """Validate a new run's inputs without loading the model; raises NLHFInputError.
    ``judge``: one built in Python (``nlhf.train(..., judge=...)``) instead of cfg.judge's."""
    train, heldout = check_prompts(cfg)
    judge = judge if judge is not None else make_judge(cfg.judge)
    judge.preflight_check()
    check_model_paths(cfg)
    check_report_to(cfg.report_to)
    check_context(cfg, train + heldout)
    return Checked(train, heldout, judge)
