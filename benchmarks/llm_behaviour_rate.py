"""How often a policy shows each needle behaviour (nlhf.llm.judges.oracles.DETECTORS).

Samples ``--samples`` responses to each of ``--n-prompts`` prompts (drawn with ``--seed``
from ``--prompts``) from the reference, or from iterate ``--iterate`` of ``--run``, at the
demo's settings (temperature 1, 48 new tokens), saves them as JSONL (``--save``), and prints
every detector's rate with two 95% intervals: Wilson over all samples, and a bootstrap over
prompts (samples of one prompt are correlated). ``--from-samples`` re-scores saved samples
without generating, so candidate detectors are all tried on the same draws.

    python benchmarks/llm_behaviour_rate.py --n-prompts 200 --samples 2 \\
        --save benchmarks/results/llm_behaviour_reference.jsonl
    python benchmarks/llm_behaviour_rate.py \\
        --from-samples benchmarks/results/llm_behaviour_reference.jsonl
    python benchmarks/llm_behaviour_rate.py --run out/runs/denpo-s0 --iterate 3 --n-prompts 64
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchjson import write_result
from nlhf.llm.judges.oracles import DETECTORS
from nlhf.stats import bootstrap_interval, wilson_interval

ROOT = Path(__file__).resolve().parents[1]
DEMO_PROMPTS = "src/nlhf/llm/data/short_prompts.jsonl"
MODEL = "smollm2-135m-instruct"


def pick_prompts(source: str, n: int, seed: int) -> list[str]:
    """``n`` distinct prompts of ``source`` in a seeded random order (all when fewer)."""
    from nlhf.llm.prompts import load_prompts

    unique = list(dict.fromkeys(load_prompts(source)))
    order = np.random.default_rng(seed).permutation(len(unique))
    return [unique[int(i)] for i in order[:min(n, len(unique))]]


def sample(policy: Any, prompts: Sequence[str], adapter: str | None, *, n: int,
           max_new_tokens: int, temperature: float, seed: int,
           batch_size: int = 32) -> list[dict[str, Any]]:
    """``n`` responses per prompt from ``adapter`` (None: the reference), as JSON rows."""
    from nlhf.llm.rollout.hf import Sampling, generate

    ids = [policy.encode_prompt(p) for p in prompts]
    sampling = Sampling(n_per_prompt=n, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=1.0, seed=seed)
    out = generate(policy, ids, adapter, sampling, batch_size=batch_size, progress=True)
    return [{"prompt_index": s.prompt_index, "prompt": prompts[s.prompt_index],
             "response": s.text, "tokens": len(s.response_ids)} for s in out]


def rate(rows: Sequence[dict[str, Any]], detector: Callable[[str], bool],
         level: float = 0.95) -> dict[str, Any]:
    """The share of rows showing the behaviour, Wilson CI over rows and a bootstrap CI over
    prompts (the mean of per-prompt rates resampled by prompt)."""
    hits = [bool(detector(r["response"])) for r in rows]
    k, n = sum(hits), len(hits)
    by_prompt: dict[Any, list[bool]] = {}
    for r, h in zip(rows, hits, strict=True):
        by_prompt.setdefault(r.get("prompt", r.get("prompt_index")), []).append(h)
    per_prompt = np.array([np.mean(v) for v in by_prompt.values()], dtype=float)
    boot = (bootstrap_interval(per_prompt, level) if per_prompt.size > 1 and per_prompt.std() > 0
            else (float(per_prompt.mean()), float(per_prompt.mean())) if per_prompt.size
            else (0.0, 1.0))
    return {"hits": k, "n": n, "rate": k / n if n else float("nan"),
            "wilson": list(wilson_interval(k, n, level)), "prompt_bootstrap": list(boot),
            "prompts": len(by_prompt)}


def rates(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: rate(rows, fn) for name, fn in DETECTORS.items()}


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def save_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {p} ({len(rows)} samples)")


def load_iterate(run_dir: str, iterate: int | None) -> tuple[Any, str | None]:
    """(policy, adapter): the run's base model with iterate ``iterate``'s policy adapter."""
    from nlhf.llm.evaluate import open_run
    from nlhf.llm.policy import load_policy

    run = open_run(run_dir)
    policy = load_policy(run.cfg)
    if iterate is None:
        return policy, None
    policy.load_adapter("policy", run.adapter(iterate))
    return policy, "policy"


def print_table(table: dict[str, dict[str, Any]]) -> None:
    print(f"{'behaviour':<18} {'hits/n':>9} {'rate':>7}  {'Wilson 95%':>16}  "
          f"{'prompt boot 95%':>16}")
    for name, r in sorted(table.items(), key=lambda kv: kv[1]["rate"]):
        w, b = r["wilson"], r["prompt_bootstrap"]
        print(f"{name:<18} {r['hits']:>4}/{r['n']:<4} {r['rate']:>7.3%}  "
              f"[{w[0]:.3%}, {w[1]:.3%}]  [{b[0]:.3%}, {b[1]:.3%}]")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-samples", help="score saved samples (JSONL) instead of generating")
    ap.add_argument("--run", help="a run directory: sample its iterate (default: the reference)")
    ap.add_argument("--iterate", type=int, help="iteration of --run (default: the reference)")
    ap.add_argument("--model", default=MODEL, help="the reference model without --run")
    ap.add_argument("--prompts", default=DEMO_PROMPTS)
    ap.add_argument("--n-prompts", type=int, default=200)
    ap.add_argument("--samples", type=int, default=2, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", help="write the samples here (JSONL)")
    ap.add_argument("--out", default="benchmarks/results/llm_behaviour_rate.json")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    if args.from_samples:
        rows = load_rows(args.from_samples)
        settings: dict[str, Any] = {"from_samples": args.from_samples}
    else:
        if args.run:
            policy, adapter = load_iterate(args.run, args.iterate)
        else:
            from nlhf.llm.policy.lm import LMPolicy

            policy, adapter = LMPolicy.from_name(args.model, finetune="lora", seed=args.seed), None
        prompts = pick_prompts(str(ROOT / args.prompts) if not Path(args.prompts).exists()
                               else args.prompts, args.n_prompts, args.seed)
        rows = sample(policy, prompts, adapter, n=args.samples,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                      seed=args.seed)
        settings = {k: getattr(args, k) for k in ("run", "iterate", "model", "prompts",
                                                  "n_prompts", "samples", "max_new_tokens",
                                                  "temperature", "seed")}
        if args.save:
            save_rows(args.save, rows)
    table = rates(rows)
    print_table(table)
    lengths = [r["tokens"] for r in rows if "tokens" in r]
    write_result(args.out, {
        "settings": settings, "samples": len(rows), "seconds": time.perf_counter() - start,
        "mean_tokens": float(np.mean(lengths)) if lengths else None,
        "cap_rate": (float(np.mean([t >= args.max_new_tokens for t in lengths]))
                     if lengths else None),
        "rates": table,
    })


if __name__ == "__main__":
    main()
