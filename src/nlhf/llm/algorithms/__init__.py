"""The algorithms' rounds on a language model, one file each (pairwise baselines share one).

- :mod:`~nlhf.llm.algorithms.round`: the services a round uses (sample, judge, fit).
- :mod:`~nlhf.llm.algorithms.denpo`: DENPO, the practical ENPO (policy + adversary).
- :mod:`~nlhf.llm.algorithms.denpo_explore`: DENPO with an exploring (tempered) Step B.
- :mod:`~nlhf.llm.algorithms.pairwise`: INPO, Nash-MD, online DPO / IPO, XPO as one table.
- :mod:`~nlhf.llm.algorithms.sppo`: SPPO.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nlhf.errors import NLHFInputError
from nlhf.llm.algorithms.denpo import DENPO
from nlhf.llm.algorithms.denpo_explore import DENPOExplore
from nlhf.llm.algorithms.pairwise import METHODS, Pairwise
from nlhf.llm.algorithms.round import Algorithm, Round
from nlhf.llm.algorithms.sppo import SPPO

if TYPE_CHECKING:
    from nlhf.llm.config import HParams

#: Every algorithm the trainer runs, by its config name.
ALGORITHMS: tuple[str, ...] = ("denpo", "denpo-explore", *METHODS, "sppo")

def make_algorithm(name: str, h: HParams) -> Algorithm:
    """The algorithm called ``name`` with hyper-parameters ``h``."""
    if name == "denpo":
        return DENPO(h)
    if name == "denpo-explore":
        return DENPOExplore(h)
    if name == "sppo":
        return SPPO(h)
    if name in METHODS:
        return Pairwise(h, name)
    raise NLHFInputError(f"algorithm: unknown '{name}'; choose one of {', '.join(ALGORITHMS)}")


__all__ = [
    "ALGORITHMS",
    "DENPO",
    "SPPO",
    "Algorithm",
    "DENPOExplore",
    "Pairwise",
    "Round",
    "make_algorithm",
]
