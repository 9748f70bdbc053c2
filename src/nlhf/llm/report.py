"""A run's report: `report.md` with the config, per-iteration metrics, evals and PNG plots.

Why so forgiving: a report is read most when a run went wrong (killed, half-logged, never
evaluated), so every missing piece becomes a note in the report instead of an error.
Plots use matplotlib's object API (`Figure`, rendered by Agg) so no global backend or
pyplot state is touched.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from nlhf.atomic import atomic_path, write_text_atomic
from nlhf.llm.evaluate import Run, completed_iteration, open_run

LENGTH_KEY = re.compile(r"length|(^|_)len(_|$)")


# --------------------------------------------------------------------------- reading


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of metrics.jsonl (last row wins per iteration), sorted by iteration, and notes."""
    notes: list[str] = []
    if not path.is_file():
        return [], [f"no {path.name}: no per-iteration metrics"]
    by_iter: dict[int, dict[str, Any]] = {}
    bad = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            it = int(row["iteration"])
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        by_iter.setdefault(it, {}).update(row)
        by_iter[it]["iteration"] = it
    if bad:
        notes.append(f"{path.name}: skipped {bad} unreadable line(s)")
    return [by_iter[k] for k in sorted(by_iter)], notes


def read_evals(eval_dir: Path) -> list[dict[str, Any]]:
    """Results written by `evaluate` (AlpacaEval exports and unreadable files are skipped)."""
    out = []
    if not eval_dir.is_dir():
        return out
    for path in sorted(eval_dir.glob("*.json")):
        if path.name.startswith("alpaca_eval_"):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "win_rate" in data:
            out.append(data)
    return out


def _numeric_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        for k, v in row.items():
            if k != "iteration" and _is_number(v):
                keys.setdefault(k, None)
    return list(keys)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------- plots


def _save_png(fig: Any, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _line_plot(
    rows: list[dict[str, Any]], keys: list[str], title: str, ylabel: str, path: Path
) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for key in keys:
        pts = [(r["iteration"], r[key]) for r in rows if _is_number(r.get(key))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
    _integer_x(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(keys) > 1:
        ax.legend(fontsize="small")
    _save_png(fig, path)


def _winrate_points(evals: list[dict[str, Any]]) -> list[tuple[int, float, float, float]]:
    """(iteration, win-rate, lo, hi) from single-iterate evals against the reference under
    the training judge; an explicit iter<t> eval wins over a "last" one at the same t."""
    points: dict[int, tuple[bool, tuple[int, float, float, float]]] = {}
    for e in evals:
        t = e.get("policy_iteration")
        if e.get("against") != "reference" or not isinstance(t, int):
            continue
        if not (e.get("settings") or {}).get("training_judge", True):
            continue  # evaluated with another judge: not comparable across iterations
        lo, hi = e.get("win_rate_ci", [e["win_rate"], e["win_rate"]])
        explicit = e.get("iterate") == f"iter{t}"
        if t not in points or (explicit and not points[t][0]):
            points[t] = (explicit, (t, float(e["win_rate"]), float(lo), float(hi)))
    return [points[t][1] for t in sorted(points)]


def _winrate_plot(points: list[tuple[int, float, float, float]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    _integer_x(ax)
    ax.set_ylabel("win-rate vs reference")
    ax.set_title("Win-rate against the reference (95% CI)")
    ax.grid(alpha=0.3)
    _save_png(fig, path)


def make_plots(
    run_path: Path, rows: list[dict[str, Any]], evals: list[dict[str, Any]]
) -> tuple[list[tuple[str, str]], list[str]]:
    """Write the plots that the data allow: ([(title, relative path)], [notes on skipped])."""
    plots_dir = run_path / "plots"
    keys = _numeric_keys(rows)
    made: list[tuple[str, str]] = []
    notes: list[str] = []
    wanted = [
        ("Losses", "loss", [k for k in keys if "loss" in k.lower()], "loss"),
        ("KL(policy ‖ reference)", "kl", [k for k in keys if k == "kl_policy_ref"], "KL"),
        ("Response length", "length", [k for k in keys if LENGTH_KEY.search(k.lower())],
         "mean length"),
    ]
    for title, stem, selected, ylabel in wanted:
        if not selected:
            notes.append(f"{title}: skipped, no such metric in metrics.jsonl")
            continue
        _line_plot(rows, selected, title, ylabel, plots_dir / f"{stem}.png")
        made.append((title, f"plots/{stem}.png"))
    points = _winrate_points(evals)
    if points:
        _winrate_plot(points, plots_dir / "win_rate.png")
        made.append(("Win-rate per iteration", "plots/win_rate.png"))
    else:
        notes.append(
            "Win-rate per iteration: skipped, no per-iteration evals against the reference "
            "(run `evaluate(run, iterate='<t>')` for each t)"
        )
    return made, notes


# --------------------------------------------------------------------------- markdown


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def _config_section(run: Run) -> list[str]:
    c = run.cfg
    h = c.hparams
    done = completed_iteration(run.path)
    completed: Any = "unknown (no readable state.json)" if done is None else done
    items = [
        ("algorithm", c.algorithm), ("model", f"{c.model.name} ({c.model.finetune}, "
                                              f"{c.model.dtype})"),
        ("iterations", f"{c.iterations} planned, {completed} completed"),
        ("seed", c.seed),
        ("hparams", f"eta={h.eta}, tau={h.tau}, alpha={h.alpha}, beta={h.beta}, s={h.s}, "
                    f"n_comparators={h.n_comparators}, pairs_per_prompt={h.pairs_per_prompt}"),
        ("judge", json.dumps(c.judge, sort_keys=True)),
        ("data", f"{c.data.prompts}: {c.data.prompts_per_iteration} prompts/iteration, "
                 f"{c.data.heldout} held out"),
        ("rollout", f"{c.rollout.backend}, max_new_tokens={c.rollout.max_new_tokens}, "
                    f"temperature={c.rollout.temperature}"),
        ("optimiser", f"lr={c.train.learning_rate}, epochs={c.train.epochs}, "
                      f"batch_size={c.train.batch_size}"),
        ("saved iterations", ", ".join(map(str, run.iterations)) or "none"),
    ]
    return ["## Configuration", "", *_table(["setting", "value"], [list(i) for i in items]), ""]


def _metrics_section(rows: list[dict[str, Any]], notes: list[str]) -> list[str]:
    out = ["## Per-iteration metrics", ""]
    if rows:
        keys = _numeric_keys(rows)
        out += _table(["iteration", *keys], [[r["iteration"], *(r.get(k, "") for k in keys)]
                                              for r in rows])
    else:
        out.append("No metrics recorded.")
    out += [f"\n_Note: {n}_" for n in notes]
    return [*out, ""]


def _evals_section(evals: list[dict[str, Any]]) -> list[str]:
    out = ["## Evaluations", ""]
    if not evals:
        return [*out, "No evaluations yet (run `nlhf eval` / `nlhf.llm.evaluate.evaluate`).", ""]
    rows = []
    for e in evals:
        lo, hi = e.get("win_rate_ci", [math.nan, math.nan])
        pol, opp = e.get("policy", {}), e.get("opponent", {})
        s = e.get("settings", {})
        rows.append([
            e.get("name"), e.get("iterate"), opp.get("label", e.get("against")),
            e["win_rate"], f"[{lo:.3f}, {hi:.3f}]",
            f"{e.get('wins')}/{e.get('ties')}/{e.get('losses')}", e.get("hard_win_rate", ""),
            pol.get("mean_tokens", ""), opp.get("mean_tokens", ""), pol.get("kl_ref", ""),
            (s.get("judge") or {}).get("type", ""), s.get("n_prompts", ""),
        ])
    out += _table(["eval", "iterate", "opponent", "win-rate", "95% CI", "W/T/L", "hard WR",
                   "tokens (pol)", "tokens (opp)", "KL", "judge", "prompts"], rows)
    notes = {e.get("kl_note") for e in evals if e.get("kl_note")}
    out += [f"\n_KL: {n}_" for n in sorted(notes)]
    return [*out, ""]


def report(run_dir: str | Path) -> Path:
    """Write `<run>/report.md` and `<run>/plots/*.png`; returns the report's path."""
    run = open_run(run_dir, need_adapters=False)
    rows, metric_notes = read_metrics(run.path / "metrics.jsonl")
    evals = read_evals(run.path / "eval")
    plots, plot_notes = make_plots(run.path, rows, evals)
    lines = [f"# Run report: {run.name}", ""]
    lines += _config_section(run)
    lines += _metrics_section(rows, metric_notes)
    lines += _evals_section(evals)
    lines += ["## Plots", ""]
    for title, rel in plots:
        lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    lines += [f"- {n}" for n in plot_notes]
    return write_text_atomic(run.path / "report.md", "\n".join(lines).rstrip() + "\n")
