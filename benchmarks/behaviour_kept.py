"""Does a refactor keep behaviour? Train one small recipe at two commits and compare metrics.

Checks out ``--before`` (a git commit) into a temporary worktree, trains the same recipe with
its code and with this checkout's, at one seed, and prints every shared metric of every
iteration side by side with the largest relative difference. Run for issue 11 (layout move):

    python benchmarks/behaviour_kept.py --before ce6e277 --before-algorithm enpo

The recipe is the tiny random model (seconds on a CPU); ``--model smollm2-135m-instruct``
and a larger ``--iterations`` run the real model (minutes). Timing and judge-diagnostic
metrics are left out: they are not behaviour. Writes ``benchmarks/results/behaviour_kept.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchjson import write_result

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["What is 2+2?", "Name a colour.", "Say hi.", "What is the capital of France?",
           "Name an animal.", "Give a number.", "What is water?", "Name a fruit.",
           "Tell me a word.", "What is up?"]


def recipe(run_dir: Path, prompts: Path, algorithm: str, model: str, iterations: int) -> dict:
    return {
        "run_dir": str(run_dir), "seed": 0, "iterations": iterations, "algorithm": algorithm,
        "model": {"name": model, "lora": {"r": 4, "alpha": 8}},
        "hparams": {"eta": 0.75, "tau": 0.25, "n_comparators": 1, "step_b_candidates": 2},
        "data": {"prompts": str(prompts), "prompts_per_iteration": 3, "heldout": 2},
        "rollout": {"max_new_tokens": 6, "batch_size": 8}, "train": {"batch_size": 2},
        "judge": {"type": "criteria", "criteria": ["length", "diversity", "structure"]},
    }


def train(src: Path, config: Path) -> list[dict[str, Any]]:
    """Train with the package under ``src``; the run's metrics, one dict per iteration."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "nlhf.cli", "train", "--config", str(config)],
                   check=True, env=env, cwd=src.parent, stdout=subprocess.DEVNULL)
    run_dir = Path(yaml.safe_load(config.read_text())["run_dir"])
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def behaviour(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items()
            if isinstance(v, float) and not k.startswith("time") and "judge_" not in k}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git commit of the old code")
    ap.add_argument("--before-algorithm", default="denpo", help="its name for the algorithm")
    ap.add_argument("--algorithm", default="denpo")
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/behaviour_kept.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        old = tmp / "before"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.before],
                       check=True, cwd=ROOT)
        try:
            prompts = tmp / "prompts.jsonl"
            prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
            runs = {}
            for tag, src, alg in (("before", old / "src", args.before_algorithm),
                                  ("after", ROOT / "src", args.algorithm)):
                config = tmp / f"{tag}.yaml"
                config.write_text(yaml.safe_dump(
                    recipe(tmp / tag / "run", prompts, alg, args.model, args.iterations)))
                runs[tag] = [behaviour(m) for m in train(src, config)]
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT)
    rows, worst = [], 0.0
    for it, (b, a) in enumerate(zip(runs["before"], runs["after"], strict=True), start=1):
        for key in sorted(b.keys() & a.keys()):
            rel = abs(a[key] - b[key]) / max(abs(b[key]), 1e-3)
            worst = max(worst, rel)
            rows.append({"iteration": it, "metric": key, "before": b[key], "after": a[key],
                         "rel_diff": rel})
            print(f"iter {it}  {key:28s} {b[key]:12.6g} {a[key]:12.6g}  rel {rel:.1e}")
    print(f"largest relative difference over {len(rows)} values: {worst:.2e}")
    write_result(args.out, {"before": args.before, "model": args.model, "rows": rows,
                            "max_rel_diff": worst})


if __name__ == "__main__":
    main()
