"""The LLM trainer's parts, one job per module; :mod:`nlhf.train` runs them.

- :mod:`~nlhf.trainer.rundir`: run-directory layout, atomic writers, ``policy_iterates``.
- :mod:`~nlhf.trainer.data`: prompts per round, rollouts, log-prob passes, judge calls.
- :mod:`~nlhf.trainer.fit`: the one optimisation loop (AdamW, minibatches, clipping).
- :mod:`~nlhf.trainer.base`: resumable phases and the algorithm interface.
- :mod:`~nlhf.trainer.enpo`, :mod:`~nlhf.trainer.baselines`: each algorithm's round.
"""

from __future__ import annotations

from nlhf.trainer.base import LLMAlgorithm
from nlhf.trainer.baselines import INPO, SPPO, XPO, NashMD, OnlineDPO, OnlineIPO
from nlhf.trainer.enpo import ENPO

LLM_ALGORITHMS: dict[str, type[LLMAlgorithm]] = {
    cls.name: cls for cls in (ENPO, INPO, NashMD, OnlineDPO, OnlineIPO, XPO, SPPO)
}

__all__ = ["ENPO", "INPO", "LLM_ALGORITHMS", "SPPO", "XPO", "LLMAlgorithm", "NashMD",
           "OnlineDPO", "OnlineIPO"]
