"""Tabular algorithms on exact games, each driven by the shared losses (bandit feedback)."""

from nlhf.algorithms.base import BanditOracle, LabSettings, TabularAlgorithm
from nlhf.algorithms.baselines import SPPO, XPO, OnlineDPO, OnlineIPO
from nlhf.algorithms.enpo import DENPO, ENPO
from nlhf.algorithms.inpo import INPO
from nlhf.algorithms.minimax import MinimaxOracle
from nlhf.algorithms.nash_md import NashMD
from nlhf.algorithms.omd import OMD, omd_step

ALGORITHMS: dict[str, type[TabularAlgorithm]] = {
    cls.name: cls
    for cls in (OMD, INPO, ENPO, DENPO, MinimaxOracle, XPO, SPPO, OnlineDPO, OnlineIPO, NashMD)
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
    "LabSettings",
    "MinimaxOracle",
    "NashMD",
    "OnlineDPO",
    "OnlineIPO",
    "TabularAlgorithm",
    "omd_step",
]
