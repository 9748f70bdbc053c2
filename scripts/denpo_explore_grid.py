"""Final regret of INPO and DENPO-explore (several T_e) on one needle at tau = 0.025.

usage: python scripts/denpo_explore_grid.py K c T seeds inpo,4,8   (docs/lab.md, DENPO-explore)
"""

from __future__ import annotations

import sys
import time

import numpy as np

from nlhf.lab.algorithms import DENPOExplore, LabSettings
from nlhf.lab.simulate import RunSpec, run_one


def main(argv: list[str]) -> None:
    K, c, T, seeds = int(argv[0]), float(argv[1]), int(argv[2]), int(argv[3])
    tau = 0.025
    for te in argv[4].split(","):
        start = time.time()
        alg = "inpo" if te == "inpo" else "denpo" if te == "denpo" else "denpo-explore"
        if alg == "denpo-explore":
            DENPOExplore.temperature = float(te)
        rows = run_one(RunSpec("needle", alg, tau, T, seeds, LabSettings(tau=tau, pairs=8),
                               K=K, c=c))
        finals = [r["final_regret"] for r in rows]
        print(K, c, te, round(float(np.mean(finals)), 1), [round(f) for f in finals],
              f"{time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
