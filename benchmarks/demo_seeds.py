"""The offline demo (`make demo`'s three commands) at several seeds, with the numbers that
show a length hack or a degenerate policy beside every win-rate.

For each seed: `nlhf train --config <config> --set seed=N run_dir=<out>/seed<N>`, then
`nlhf eval` (the run's judge), `nlhf report`, and `nlhf eval --judge <second>` (a judge the
run did not train on), each timed. From the eval JSON: win-rate [95% CI], W/T/L, KL to the
reference, mean tokens; from the AlpacaEval exports: the cap rate, the share of responses
that reached `eval.max_new_tokens` (their text re-tokenised: the export keeps no token ids,
so this count can differ by a token from the generated one, see `mean_tokens_check`). Writes
JSON and a markdown table (default `benchmarks/results/demo_seeds.{json,md}`).

    python benchmarks/demo_seeds.py --seeds 0 1 2
    python benchmarks/demo_seeds.py --seeds 0 --tag r2 --set hparams.eta=0.1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchjson import write_result

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cpu: dict[str, float], key: str) -> float:
    """Run `nlhf <args>` in a subprocess (the CLI `make demo` uses); wall seconds it took.

    Its CPU seconds (user + system) go to ``cpu[key]``: on a shared machine the wall time
    grows with the other jobs, the CPU time much less, so both are recorded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nlhf.cli", *args], check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu[key] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall


def _token_counts(texts: list[str], tokenizer: Any) -> list[int]:
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def _side(records: list[dict[str, str]], tokenizer: Any, cap: int) -> dict[str, float]:
    counts = _token_counts([r["output"] for r in records], tokenizer)
    return {"cap_rate": sum(c >= cap for c in counts) / len(counts),
            "mean_tokens_check": sum(counts) / len(counts)}


def eval_summary(run_dir: Path, name: str, tokenizer: Any) -> dict[str, Any]:
    """Win-rate, CI, W/T/L, KL, mean length and cap rate of one saved evaluation."""
    res = json.loads((run_dir / "eval" / f"{name}.json").read_text())
    cap = res["settings"]["max_new_tokens"]
    out = {
        "win_rate": res["win_rate"], "ci": res["win_rate_ci"],
        "wlt": [res["wins"], res["ties"], res["losses"]],
        "kl_ref": res["policy"]["kl_ref"],
        "mean_tokens": res["policy"]["mean_tokens"],
        "ref_mean_tokens": res["opponent"]["mean_tokens"],
        "max_new_tokens": cap,
    }
    for side, suffix in (("policy", ""), ("reference", "_reference")):
        records = json.loads((run_dir / "eval" / f"alpaca_eval_{name}{suffix}.json").read_text())
        for key, value in _side(records, tokenizer, cap).items():
            out[f"{key}" if side == "policy" else f"ref_{key}"] = value
    return out


def train_summary(run_dir: Path) -> dict[str, Any]:
    """Per-iteration seconds, Step A/B losses, training KL and response length."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    keys = ("time_iteration", "step_a_loss", "step_b_loss", "kl_policy_ref", "response_len",
            "score_policy", "score_adversary")
    return {k: [r.get(k) for r in rows] for k in keys}


def _mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def fmt(v: float) -> str:
    return f"{v:.3f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| tag | seed | win-rate [95% CI] | W/T/L | KL | mean tokens (ref) | cap rate (ref) "
            "| 2nd judge win-rate [CI] | s/iteration | wall (CPU) |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        e, s = r["eval"], r["second"]
        wall = r["seconds"]["total"]
        lines.append(
            f"| {r['tag']} | {r['seed']} | {fmt(e['win_rate'])} [{fmt(e['ci'][0])}, "
            f"{fmt(e['ci'][1])}] | {'/'.join(map(str, e['wlt']))} | {e['kl_ref']:.3f} "
            f"| {e['mean_tokens']:.1f} ({e['ref_mean_tokens']:.1f}) "
            f"| {e['cap_rate']:.2f} ({e['ref_cap_rate']:.2f}) "
            + (f"| {fmt(s['win_rate'])} [{fmt(s['ci'][0])}, {fmt(s['ci'][1])}] " if s else "| — ")
            + f"| {', '.join(f'{t:.0f}' for t in r['train']['time_iteration'])} "
            f"| {_mmss(wall)} ({_mmss(r['cpu_seconds']['total'])}) |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", nargs="*", default=[],
                    help="extra key=value overrides for `nlhf train`")
    ap.add_argument("--tag", default="final", help="name of this recipe in the table")
    ap.add_argument("--runs", default="runs/demo_seeds", help="parent of the run directories")
    ap.add_argument("--second-judge", default="configs/judge_second.yaml")
    ap.add_argument("--no-second", action="store_true", help="skip the second-judge eval")
    ap.add_argument("--out", default="benchmarks/results/demo_seeds.json")
    ap.add_argument("--iterate", default="last", help="which iterate to evaluate (nlhf eval)")
    ap.add_argument("--skip-train", action="store_true",
                    help="evaluate the run directories that an earlier call trained")
    args = ap.parse_args()
    label = args.iterate if args.iterate in ("last", "average") else f"iter{args.iterate}"

    from transformers import AutoTokenizer

    from nlhf.llm.policy.loading import default_model_dir

    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    tokenizer = None
    rows = []
    for seed in args.seeds:
        run_dir = Path(args.runs) / f"{args.tag}-seed{seed}"
        sets = [f"seed={seed}", f"run_dir={run_dir}", *args.overrides]
        cpu: dict[str, float] = {"train": 0.0}
        secs = {"train": 0.0}
        if not args.skip_train:
            secs["train"] = _run(["train", "--config", args.config, "--no-progress",
                                  *[a for s in sets for a in ("--set", s)]], cpu, "train")
        pick = ["--iterate", args.iterate]
        secs["eval"] = _run(["eval", "--run", str(run_dir), "--no-progress", *pick], cpu, "eval")
        secs["report"] = _run(["report", str(run_dir)], cpu, "report")
        secs["total"] = secs["train"] + secs["eval"] + secs["report"]
        cpu["total"] = cpu["train"] + cpu["eval"] + cpu["report"]
        if tokenizer is None:  # after train: the first run converts the GGUF model
            tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
        row: dict[str, Any] = {"tag": args.tag, "seed": seed, "run_dir": str(run_dir),
                               "overrides": args.overrides, "seconds": secs,
                               "cpu_seconds": cpu,
                               "iterate": args.iterate,
                               "eval": eval_summary(run_dir, f"{label}_vs_reference", tokenizer),
                               "train": train_summary(run_dir), "second": None}
        if not args.no_second:
            secs["second_eval"] = _run(["eval", "--run", str(run_dir), "--no-progress", *pick,
                                        "--judge", args.second_judge], cpu, "second_eval")
            row["second"] = eval_summary(run_dir, f"{label}_vs_reference_criteria", tokenizer)
        rows.append(row)
        print(markdown(rows[-1:]), flush=True)
    table = markdown(rows)
    print(table)
    write_result(args.out, {"config": args.config, "runs": rows, "table": table})
    Path(args.out).with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
