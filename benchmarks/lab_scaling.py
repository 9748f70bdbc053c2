"""Wall time of the tabular lab: the paper-claims preset, and growth with T and K.

Prints a table and writes JSON (default benchmarks/results/lab_scaling.json). Ratios are
against the smallest setting measured in the same invocation, so machine speed cancels.

    .venv/bin/python benchmarks/lab_scaling.py [--T-max 10000] [--out FILE]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchjson import write_result
from nlhf.lab.algorithms import LabSettings
from nlhf.lab.simulate import build_specs, paper_claims_experiment, run_experiment, run_one


def time_preset() -> float:
    start = time.perf_counter()
    run_experiment(paper_claims_experiment("benchmark"), progress=False)
    return time.perf_counter() - start


def time_single(instance: str, algorithm: str, T: int, K: int, seeds: int = 3) -> float:
    spec = build_specs([instance], [algorithm], [0.1], T, seeds, LabSettings(tau=0.1), K=K, c=0.25)[
        0
    ]
    start = time.perf_counter()
    run_one(spec)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--T-max", type=int, default=10_000)
    parser.add_argument("--out", default="benchmarks/results/lab_scaling.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [
        {
            "what": "paper-claims preset (12 runs × 1000 rounds × 3 seeds, 2 workers)",
            "seconds": time_preset(),
        }
    ]
    Ts = [T for T in (1_000, 10_000, 100_000) if args.T_max >= T]
    for algorithm in ("inpo", "enpo", "oracle"):
        base = None
        for T in Ts:
            s = time_single("gbpm", algorithm, T, 8)
            base = base or s
            rows.append({"what": f"{algorithm} gbpm K=8, T={T}", "seconds": s, "ratio": s / base})
        base = None
        for K in (8, 32, 128):
            s = time_single("gbpm", algorithm, 1_000, K)
            base = base or s
            rows.append(
                {"what": f"{algorithm} gbpm T=1000, K={K}", "seconds": s, "ratio": s / base}
            )
    print(f"{'setting':<64} {'seconds':>9} {'× smallest':>10}")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        print(f"{r['what']:<64} {r['seconds']:>9.2f} {ratio:>10}")
    write_result(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
