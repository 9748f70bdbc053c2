"""Markdown table and PNG plots for a tabular-lab results document."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from nlhf.lab.claims import Claim, check_claims, loglog_slope


def summary_rows(results: dict) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results["runs"]:
        groups[(r["instance"], r["algorithm"], r["tau"])].append(r)
    rows = []
    for (instance, algorithm, tau), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])
    ):
        finals = np.array([r["final_regret"] for r in runs])
        curve = np.mean([r["regret_curve"] for r in runs], axis=0)
        rows.append(
            {
                "instance": instance,
                "algorithm": algorithm,
                "tau": tau,
                "T": runs[0]["T"],
                "seeds": len(runs),
                "mean": float(finals.mean()),
                "std": float(finals.std(ddof=1)) if len(finals) > 1 else 0.0,
                "slope": loglog_slope(curve) if len(curve) >= 10 else float("nan"),
                "gap_last": float(np.mean([r["final_gap_last"] for r in runs])),
            }
        )
    return rows


def summary_markdown(results: dict, claims: list[Claim] | None = None) -> str:
    claims = check_claims(results) if claims is None else claims
    lines = [
        "# Tabular lab results",
        "",
        f"Command: `{results.get('command', '')}`",
        "",
        "| instance | algorithm | tau | T | seeds | final regret (mean ± sd) "
        "| log-log slope T/10→T | final gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary_rows(results):
        lines.append(
            f"| {r['instance']} | {r['algorithm']} | {r['tau']:g} | {r['T']} | {r['seeds']} | "
            f"{r['mean']:.2f} ± {r['std']:.2f} | {r['slope']:.3f} | {r['gap_last']:.2e} |"
        )
    if claims:
        lines += ["", "## Claims (SPEC §3)", "", "| claim | measured | verdict |", "|---|---|---|"]
        for c in claims:
            verdict = "reported" if c.passed is None else ("PASS" if c.passed else "FAIL")
            lines.append(f"| {c.text} | {c.measured} | {verdict} |")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: dict, out: Path) -> list[Path]:
    """regret_vs_T.png (log-log, per instance) and final_regret_vs_inv_tau.png."""
    plt = _pyplot()

    written = []
    instances = sorted({r["instance"] for r in results["runs"]})
    fig, axes = plt.subplots(1, len(instances), figsize=(5 * len(instances), 4), squeeze=False)
    groups: dict[tuple, list] = defaultdict(list)
    for r in results["runs"]:
        groups[(r["instance"], r["algorithm"], r["tau"])].append(r["regret_curve"])
    for ax, instance in zip(axes[0], instances, strict=True):
        for (inst, alg, tau), curves in sorted(groups.items()):
            if inst != instance:
                continue
            curve = np.mean(curves, axis=0)
            ax.loglog(np.arange(1, len(curve) + 1), curve, label=f"{alg} τ={tau:g}")
        ax.set_title(instance)
        ax.set_xlabel("round T")
        ax.set_ylabel("Reg(T)")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    # fixed margins: tight_layout measured every tick label of the log axes, ~half of make lab's
    # plotting time
    fig.subplots_adjust(left=0.1 / len(instances) + 0.02, right=0.98, bottom=0.13, top=0.92,
                        wspace=0.3)
    path = out / "regret_vs_T.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(5, 4))
    by_alg: dict[tuple, dict[float, float]] = defaultdict(dict)
    for row in summary_rows(results):
        by_alg[(row["instance"], row["algorithm"])][row["tau"]] = row["mean"]
    for (instance, alg), points in sorted(by_alg.items()):
        if len(points) < 2:
            continue
        taus = sorted(points)
        ax.semilogy(
            [1 / t for t in taus], [points[t] for t in taus], "o-", label=f"{alg} ({instance})"
        )
    ax.set_xlabel("1/τ")
    ax.set_ylabel("final regret")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.13, top=0.95)
    path = out / "final_regret_vs_inv_tau.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
