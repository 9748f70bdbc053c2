"""The LLM trainer's parts, one job per module; :mod:`nlhf.llm.loop` runs them.

- :mod:`~nlhf.llm.rundir`: run-directory layout, atomic writers, ``policy_iterates``.
- :mod:`~nlhf.llm.samples`: prompts per round, rollouts, log-prob passes, judge calls.
- :mod:`~nlhf.llm.fit`: the one optimisation loop (AdamW, minibatches, clipping).
- :mod:`~nlhf.llm.algorithms.base`: resumable phases and the algorithm interface.
- :mod:`~nlhf.llm.algorithms.denpo`, :mod:`~nlhf.llm.algorithms.pairwise`: each algorithm's round.
"""

from __future__ import annotations

from nlhf.llm.algorithms.base import LLMAlgorithm
from nlhf.llm.algorithms.denpo import ENPO
from nlhf.llm.algorithms.pairwise import INPO, SPPO, XPO, NashMD, OnlineDPO, OnlineIPO

LLM_ALGORITHMS: dict[str, type[LLMAlgorithm]] = {
    cls.name: cls for cls in (ENPO, INPO, NashMD, OnlineDPO, OnlineIPO, XPO, SPPO)
}

__all__ = ["ENPO", "INPO", "LLM_ALGORITHMS", "SPPO", "XPO", "LLMAlgorithm", "NashMD",
           "OnlineDPO", "OnlineIPO"]
