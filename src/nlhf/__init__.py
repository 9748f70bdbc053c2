"""nlhf: Nash Learning from Human Feedback with explicit exploration (ENPO / DENPO)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nlhf.llm.config import TrainConfig
    from nlhf.llm.judges import Judge

__version__ = "0.1.0"
__all__ = ["__version__", "train"]


def train(
    config: TrainConfig | Mapping[str, Any] | str | Path,
    *,
    judge: Judge | Callable[[list[str], list[str], list[str]], Sequence[float]] | None = None,
    judge_name: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train an LLM with NLHF (what ``nlhf train`` does); returns the run directory.

    ``config``: a TrainConfig, a mapping of its fields, or a YAML file. ``judge``: any
    preference function ``prefer(prompts, a, b) -> probabilities that a is preferred`` (or a
    Judge), used instead of ``config``'s judge; its cache identity is its import path
    ``module:function``, or ``judge_name`` (required for lambdas and nested functions).
    Imports stay inside, so ``import nlhf`` loads no torch.
    """
    from nlhf.llm.config import TrainConfig, load_config, validate_config
    from nlhf.llm.judges import FunctionJudge, Judge
    from nlhf.llm.loop import train as train_loop

    if isinstance(config, (str, Path)):
        cfg = load_config(Path(config))
    elif isinstance(config, TrainConfig):
        cfg = config
    else:
        cfg = validate_config(dict(config))
    built: Judge | None = None
    if isinstance(judge, Judge):
        built = judge
    elif judge is not None:
        built = FunctionJudge(judge, name=judge_name)
        cfg = cfg.model_copy(update={"judge": built.spec()})  # config.yaml names it
    return train_loop(cfg, resume=resume, progress=progress, judge=built)
