"""Exploration on a language model: the needle behaviour's rate per iteration, per algorithm.

Given run directories trained on a needle oracle (configs/explore-smollm2.yaml), measures how
often each iterate shows the behaviour (nlhf.llm.judges.oracles.DETECTORS), two ways:

- **training**: the samples y ~ pi_t that round t stored (role ``policy``, the round's
  training prompts). Free: read from ``store.sqlite``. Round t samples iterate t − 1, so
  round 1 is the reference and the last iterate is not in it.
- **held-out**: ``--heldout-samples`` responses per held-out prompt of the run from every
  saved iterate (``adapters/iter_<k>/policy``) and from the reference (k = 0), with the same
  sampling seed for every iterate (paired draws). Cached in ``<run>/exploration/``.

Writes a JSON and a markdown table (rate, hits/n per iterate and run; pooled over seeds
with a Wilson 95% interval) and a plot: rate per iterate per algorithm, pooled over seeds
with CI bars, one marker per seed. ``--train`` first trains every algorithm × seed with
``nlhf train --config`` (resuming unfinished runs), for use without ``nlhf compare``.

    python benchmarks/llm_exploration.py --runs out/runs/*
    python benchmarks/llm_exploration.py --train --config configs/explore-smollm2.yaml \\
        --algorithms denpo inpo online-dpo xpo --seeds 0 1 2 --root out/runs
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchjson import write_result
from llm_behaviour_rate import load_rows, rate, sample, save_rows
from nlhf.llm.judges.oracles import DETECTORS
from nlhf.stats import wilson_interval

ROOT = Path(__file__).resolve().parents[1]
BEHAVIOUR = "ends_question"
SAMPLE_SEED = 20_261_203
#: Same generation budget per prompt (4): DENPO samples y, two comparators and y'; a pairwise
#: method samples p pairs (y, y'), so it takes p = 2 (see configs/explore-smollm2.yaml).
BUDGET_SETS = {"inpo": ["hparams.pairs_per_prompt=2"], "online-dpo": ["hparams.pairs_per_prompt=2"],
               "xpo": ["hparams.pairs_per_prompt=2"], "online-ipo": ["hparams.pairs_per_prompt=2"],
               "nash-md": ["hparams.pairs_per_prompt=2"]}


def _flags(sets: Sequence[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def train_all(config: str, algorithms: Sequence[str], seeds: Sequence[int], root: Path,
              extra: Sequence[str]) -> list[Path]:
    """Train (or resume) ``root/<algo>-s<seed>`` for every pair, one after another, each
    with its :data:`BUDGET_SETS` overrides."""
    runs, root, config = [], root.resolve(), str(Path(config).resolve())
    for algo in algorithms:
        for seed in seeds:
            run = root / f"{algo}-s{seed}"
            sets = [f"algorithm={algo}", f"seed={seed}", *BUDGET_SETS.get(algo, []), *extra]
            if (run / "config.yaml").is_file():  # resume (a no-op when finished)
                cmd = ["train", "--resume", str(run), *_flags(extra)]
            else:
                cmd = ["train", "--config", config, *_flags([*sets, f"run_dir={run}"])]
            print("nlhf", " ".join(cmd), flush=True)
            subprocess.run([sys.executable, "-m", "nlhf.cli", *cmd], check=True, cwd=ROOT)
            runs.append(run)
    return runs


def training_rates(run: Path, behaviour: str) -> dict[int, dict[str, Any]]:
    """{iterate k: rate} from the y ~ pi_t samples stored by round k + 1."""
    from nlhf.llm.store import RunStore

    out = {}
    with RunStore(run / "store.sqlite") as store:
        t = 1
        while rows := store.get_generations(t, "policy"):
            out[t - 1] = rate([{"prompt": g["prompt_id"], "response": g["response"]}
                               for g in rows], DETECTORS[behaviour])
            t += 1
    return out


def heldout_rates(run: Path, behaviour: str, n: int, n_prompts: int | None,
                  max_new_tokens: int | None) -> dict[int, dict[str, Any]]:
    """{iterate k: rate} on the run's held-out prompts; samples cached under the run."""
    from nlhf.llm.evaluate import open_run
    from nlhf.llm.policy import load_policy
    from nlhf.llm.store import RunStore

    info = open_run(run)
    with RunStore(run / "store.sqlite") as store:
        prompts = [text for _, text in store.prompts("heldout")][:n_prompts]
    tokens = max_new_tokens or info.cfg.rollout.max_new_tokens
    policy = None
    out = {}
    for k in (0, *info.iterations):
        cache = run / "exploration" / f"iter_{k}-n{n}-p{len(prompts)}-t{tokens}.jsonl"
        if not cache.is_file():
            if policy is None:
                policy = load_policy(info.cfg)
            adapter = None
            if k:
                policy.load_adapter("policy", info.adapter(k))
                adapter = "policy"
            save_rows(cache, sample(policy, prompts, adapter, n=n, max_new_tokens=tokens,
                                    temperature=info.cfg.rollout.temperature, seed=SAMPLE_SEED))
        out[k] = rate(load_rows(cache), DETECTORS[behaviour])
    return out


def describe(run: Path) -> tuple[str, int]:
    """(algorithm, seed) from the run's config.yaml."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return str(cfg["algorithm"]), int(cfg["seed"])


def pooled(per_run: Sequence[dict[int, dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """Sum hits and n over runs (seeds) per iterate; Wilson 95% over the pooled samples."""
    out: dict[int, dict[str, Any]] = {}
    for table in per_run:
        for k, r in table.items():
            acc = out.setdefault(k, {"hits": 0, "n": 0, "runs": 0})
            acc["hits"] += r["hits"]
            acc["n"] += r["n"]
            acc["runs"] += 1
    for acc in out.values():
        acc["rate"] = acc["hits"] / acc["n"] if acc["n"] else float("nan")
        acc["wilson"] = list(wilson_interval(acc["hits"], acc["n"]))
    return dict(sorted(out.items()))


def markdown(results: dict[str, Any], behaviour: str) -> str:
    lines = [f"Behaviour `{behaviour}`: rate (hits/n) per iterate k (0 = reference).", ""]
    for kind in ("training", "heldout"):
        algos = results[kind]
        if not algos:
            continue
        ks = sorted({int(k) for a in algos.values() for r in a["runs"].values() for k in r})
        lines += [f"### {kind}", "", "| run | " + " | ".join(f"k={k}" for k in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for algo, a in algos.items():
            for seed, table in a["runs"].items():
                cells = [f"{table[k]['rate']:.1%} ({table[k]['hits']}/{table[k]['n']})"
                         if k in table else "" for k in ks]
                lines.append(f"| {algo} s{seed} | " + " | ".join(cells) + " |")
            cells = [f"**{a['pooled'][k]['rate']:.1%}** [{a['pooled'][k]['wilson'][0]:.1%}, "
                     f"{a['pooled'][k]['wilson'][1]:.1%}]" if k in a["pooled"] else ""
                     for k in ks]
            lines.append(f"| **{algo} pooled** | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], behaviour: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("training", "heldout") if results[k]]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    titles = {"training": "training samples y ~ pi_k (round k+1's prompts)",
              "heldout": "held-out prompts, each saved iterate"}
    for ax, kind in zip(axes[0], kinds, strict=True):
        for i, (algo, a) in enumerate(results[kind].items()):
            ks = sorted(int(k) for k in a["pooled"])
            shift = (i - (len(results[kind]) - 1) / 2) * 0.06
            rates = [a["pooled"][k]["rate"] for k in ks]
            lo = [r - a["pooled"][k]["wilson"][0] for r, k in zip(rates, ks, strict=True)]
            hi = [a["pooled"][k]["wilson"][1] - r for r, k in zip(rates, ks, strict=True)]
            line = ax.errorbar([k + shift for k in ks], rates, yerr=[lo, hi], marker="o",
                               capsize=3, label=algo)
            for table in a["runs"].values():
                sk = sorted(int(k) for k in table)
                ax.plot([k + shift for k in sk], [table[k]["rate"] for k in sk], ".",
                        color=line[0].get_color(), alpha=0.35)
        ax.set_xlabel("iterate k (0 = reference)")
        ax.set_ylabel(f"rate of '{behaviour}'")
        ax.set_title(titles[kind], fontsize=10)
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def plot_final(final: Path, out: Path) -> None:
    """Final-iterate rate per algorithm (pooled over seeds, Wilson 95%), one dot per seed,
    from the per-run ``final_rate.json`` files collected in ``final`` (see docs)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(final.read_text())
    runs = data["runs"]
    by_algo: dict[str, list[dict[str, Any]]] = {}
    for name, r in runs.items():
        by_algo.setdefault(name.rsplit("-s", 1)[0], []).append(r)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, rs in enumerate(by_algo.values()):
        hits, n = sum(r["hits"] for r in rs), sum(r["n"] for r in rs)
        lo, hi = wilson_interval(hits, n)
        ax.errorbar([i], [hits / n], yerr=[[hits / n - lo], [hi - hits / n]], marker="o",
                    capsize=4)
        ax.plot([i] * len(rs), [r["rate"] for r in rs], ".", color="grey", alpha=0.6)
    if ref := data.get("reference"):
        lo, hi = wilson_interval(ref["hits"], ref["n"])
        ax.axhspan(lo, hi, color="grey", alpha=0.15, label="reference, Wilson 95%")
        ax.axhline(ref["hits"] / ref["n"], color="grey", lw=1)
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(by_algo)), list(by_algo), rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("rate in the final iterate's samples")
    ax.set_title("final iterate (k = 3), pooled over seeds, Wilson 95%", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=[], help="run directories")
    ap.add_argument("--train", action="store_true", help="train algorithms x seeds first")
    ap.add_argument("--config", default="configs/explore-smollm2.yaml")
    ap.add_argument("--algorithms", nargs="+", default=["denpo", "inpo", "online-dpo", "xpo"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--root", default="out/runs", help="where --train puts <algo>-s<seed>")
    ap.add_argument("--set", nargs="*", default=[], dest="extra",
                    help="extra overrides for --train, e.g. iterations=2")
    ap.add_argument("--behaviour", default=BEHAVIOUR, choices=sorted(DETECTORS))
    ap.add_argument("--heldout-samples", type=int, default=2,
                    help="samples per held-out prompt and iterate (0: training samples only)")
    ap.add_argument("--heldout-prompts", type=int, help="first N held-out prompts (default all)")
    ap.add_argument("--max-new-tokens", type=int, help="held-out budget (default the run's)")
    ap.add_argument("--out", default="benchmarks/results/llm_exploration")
    ap.add_argument("--figure", default="docs/figures/llm_exploration.png")
    ap.add_argument("--final", help="plot only: a JSON of final-iterate rates per run "
                    "(benchmarks/results/llm_exploration_final.json) to --figure")
    args = ap.parse_args(argv)

    if args.final:
        plot_final(Path(args.final), Path(args.figure))
        return
    runs = [Path(r) for r in args.runs]
    if args.train:
        runs += train_all(args.config, args.algorithms, args.seeds, Path(args.root), args.extra)
    if not runs:
        ap.error("give --runs RUN_DIR ... or --train")
    results: dict[str, Any] = {"training": {}, "heldout": {}}
    for run in sorted(dict.fromkeys(runs)):
        algo, seed = describe(run)
        measured = {"training": training_rates(run, args.behaviour)}
        if args.heldout_samples > 0:
            measured["heldout"] = heldout_rates(run, args.behaviour, args.heldout_samples,
                                                args.heldout_prompts, args.max_new_tokens)
        for kind, table in measured.items():
            results[kind].setdefault(algo, {"runs": {}})["runs"][seed] = table
            print(f"{run} ({kind}): " + ", ".join(
                f"k={k} {r['rate']:.1%} ({r['hits']}/{r['n']})" for k, r in table.items()),
                flush=True)
    for kind in results:
        for a in results[kind].values():
            a["pooled"] = pooled(list(a["runs"].values()))
    out = Path(args.out)
    write_result(out.with_suffix(".json"), {"behaviour": args.behaviour,
                                            "runs": [str(r) for r in runs], **results})
    out.with_suffix(".md").write_text(markdown(results, args.behaviour))
    print(f"wrote {out.with_suffix('.md')}")
    plot(results, args.behaviour, Path(args.figure))


if __name__ == "__main__":
    main()
