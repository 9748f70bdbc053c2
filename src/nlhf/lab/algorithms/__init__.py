"""Tabular algorithms on exact games, each driven by the shared losses (bandit feedback)."""

from nlhf.lab.algorithms.base import BanditOracle, LabSettings, TabularAlgorithm
from nlhf.lab.algorithms.baselines import SPPO, XPO, OnlineDPO, OnlineIPO
from nlhf.lab.algorithms.denpo_explore import DENPOExplore
from nlhf.lab.algorithms.enpo import DENPO, ENPO
from nlhf.lab.algorithms.inpo import INPO
from nlhf.lab.algorithms.minimax import MinimaxOracle
from nlhf.lab.algorithms.nash_md import NashMD
from nlhf.lab.algorithms.omd import OMD, omd_step

ALGORITHMS: dict[str, type[TabularAlgorithm]] = {
    cls.name: cls
    for cls in (OMD, INPO, ENPO, DENPO, DENPOExplore, MinimaxOracle, XPO, SPPO, OnlineDPO,
                OnlineIPO, NashMD)
}

__all__ = [
    "ALGORITHMS",
    "DENPO",
    "ENPO",
    "INPO",
    "OMD",
    "SPPO",
    "XPO",
    "BanditOracle",
    "DENPOExplore",
    "LabSettings",
    "MinimaxOracle",
    "NashMD",
    "OnlineDPO",
    "OnlineIPO",
    "TabularAlgorithm",
    "omd_step",
]
