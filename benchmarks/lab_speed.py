"""`make lab`'s command timed against a baseline checkout, alternating, in one invocation.

The 2-core VMs this project runs on drift by ±20% from minute to minute, so a wall time on its
own says little; runs of the two trees interleaved and compared by their medians do.

    git worktree add /tmp/lab_base <commit>
    python benchmarks/lab_speed.py --baseline /tmp/lab_base --repeats 5

Each run is `python -m nlhf.cli simulate --preset paper-claims` with PYTHONPATH set to the
tree's src/ (the same interpreter and packages), output to a temporary directory. Writes
benchmarks/results/lab_speed.json with every wall time, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchjson import write_result

ROOT = Path(__file__).resolve().parents[1]


def wall_seconds(tree: Path) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "nlhf.cli", "simulate", "--preset", "paper-claims",
             "--out", out, "--no-progress"],
            check=True, cwd=tree, stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(tree / "src")},
        )
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="checkout of the baseline")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/lab_speed.json")
    args = ap.parse_args()
    trees = {"baseline": args.baseline.resolve(), "current": ROOT}
    walls: dict[str, list[float]] = {name: [] for name in trees}
    for i in range(args.repeats):
        for name, tree in trees.items():
            walls[name].append(wall_seconds(tree))
            print(f"run {i + 1}/{args.repeats} {name}: {walls[name][-1]:.2f} s", flush=True)
    medians = {name: statistics.median(w) for name, w in walls.items()}
    result = {
        "command": "nlhf simulate --preset paper-claims (make lab)",
        "baseline": str(trees["baseline"]),
        "walls": walls,
        "medians": medians,
        "ratio_current_over_baseline": medians["current"] / medians["baseline"],
    }
    write_result(args.out, result)
    print(f"median wall: baseline {medians['baseline']:.2f} s, current {medians['current']:.2f} s"
          f" (×{result['ratio_current_over_baseline']:.2f})")


if __name__ == "__main__":
    main()
