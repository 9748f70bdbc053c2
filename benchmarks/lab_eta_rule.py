"""Choose ENPO's eta rule on the training families of docs/lab.md (needle K 8, 16; c 0.1, 0.3).

Usage: PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/lab_eta_rule.py OUT.json (about 3 min
of CPU). Prints one JSON line per (rule, family) and the rule's score: the geometric-mean
final regret at tau ≤ 0.02, then the worst power slope (docs/lab.md has the table).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from nlhf.lab.sweep import SweepConfig, run_cell
from nlhf.lab.tau_fits import fit_growth

RULES = {"4tau+0.25": (4.0, 0.25), "2tau+0.5": (2.0, 0.5), "const 0.5": (0.0, 0.5),
         "const 1.0": (0.0, 1.0)}
TAUS = (0.2, 0.1, 0.05, 0.02, 0.01)
CS = (0.1, 0.3)


def job(args: tuple[str, int]) -> tuple[str, int, list[dict]]:
    name, K = args
    slope, offset = RULES[name]
    cfg = SweepConfig(K=(K,), c=CS, tau=TAUS, T=1000, seeds=3, algorithms=("enpo",),
                      settings={"eta_slope": slope, "eta_offset": offset})
    return name, K, run_cell("enpo", K, cfg)


def main(out: Path) -> None:
    lines = []
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        for name, K, rows in pool.map(job, [(n, K) for n in RULES for K in (8, 16)]):
            for c in CS:
                reg = np.array([[r["final_regret"] for r in rows if r["c"] == c and r["tau"] == t]
                                for t in TAUS])
                fit = fit_growth(TAUS, reg)
                line = {"rule": name, "K": K, "c": c, "regret": reg.mean(1).round(2).tolist(),
                        "slope": round(fit.slope, 3), "ci": [round(x, 3) for x in fit.ci]}
                print(json.dumps(line), flush=True)
                lines.append(line)
    for name in RULES:
        reg = np.array([x["regret"] for x in lines if x["rule"] == name])
        small = np.exp(np.log(reg[:, [i for i, t in enumerate(TAUS) if t <= 0.02]]).mean())
        worst = max(x["slope"] for x in lines if x["rule"] == name)
        print(f"{name}: geo-mean regret tau ≤ 0.02 {small:.2f}, worst slope {worst:.2f}")
    out.write_text(json.dumps(lines, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
