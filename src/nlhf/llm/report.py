"""A run's report: `report.md` (summary, per-iteration table, wall time, evals, config,
plots), `metrics.csv` beside it with every metric, and PNG plots under `plots/`.

Why this order: a reader wants the answer first (did it win, at what KL, how long), then how
it moved over iterations. The markdown table keeps iterations as columns and at most
`MAX_ROWS` chosen rows so it fits a screen; the CSV keeps everything.
Why so forgiving: a report is read most when a run went wrong (killed, half-logged, never
evaluated), so every missing piece becomes a note in the report instead of an error.
Plots use matplotlib's object API (`Figure`, rendered by Agg) so no global backend or
pyplot state is touched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlhf.atomic import atomic_path, write_text_atomic
from nlhf.llm.evaluate import open_run
from nlhf.llm.rundir import RunDir, completed_iteration

LENGTH_KEY = re.compile(r"length|(^|_)len(_|$)")
MAX_ROWS = 10
#: Rows of the per-iteration table, in this order, when the run logged them.
PREFERRED_ROWS = (
    "score_policy", "score_adversary", "kl_policy_ref", "response_len", "step_a_loss",
    "step_b_loss", "train_loss", "judge_calls_total", "time_iteration",
)
#: Wall-time phases: (row label, metrics.jsonl key); training and evaluation are derived.
PHASES = (("generation", "time_generate"), ("log-probs", "time_logprobs"),
          ("judging", "time_judge"), ("training", None), ("evaluation", None))


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


# --------------------------------------------------------------------------- evals


@dataclass(frozen=True)
class Point:
    """One evaluated iterate: win-rate against the reference with its CI, and eval time."""

    iteration: int | None
    win_rate: float
    lo: float
    hi: float
    kl: float | None
    seconds: float | None

    def cell(self) -> str:
        return f"{self.win_rate:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


def _point(e: dict[str, Any]) -> Point:
    lo, hi = e.get("win_rate_ci", [e["win_rate"], e["win_rate"]])
    kl = (e.get("policy") or {}).get("kl_ref")
    seconds = (e.get("settings") or {}).get("seconds")
    return Point(e.get("policy_iteration"), float(e["win_rate"]), float(lo), float(hi),
                 float(kl) if _is_number(kl) else None,
                 float(seconds) if _is_number(seconds) else None)


def _comparable(e: dict[str, Any]) -> bool:
    """Against the reference under the training judge: comparable across iterations."""
    return e.get("against") == "reference" and bool(
        (e.get("settings") or {}).get("training_judge", True))


def winrate_points(evals: list[dict[str, Any]]) -> dict[int, Point]:
    """Per iteration t, its win-rate from single-iterate evals against the reference under
    the training judge; an explicit iter<t> eval wins over a "last" one at the same t."""
    points: dict[int, tuple[bool, Point]] = {}
    for e in evals:
        t = e.get("policy_iteration")
        if not _comparable(e) or not isinstance(t, int):
            continue
        explicit = e.get("iterate") == f"iter{t}"
        if t not in points or (explicit and not points[t][0]):
            points[t] = (explicit, _point(e))
    return {t: points[t][1] for t in sorted(points)}


def headline(evals: list[dict[str, Any]], iterate: str) -> Point | None:
    """The eval of `iterate` ("last" or "average") against the reference, training judge."""
    found = [e for e in evals if _comparable(e) and e.get("iterate") == iterate]
    return _point(found[-1]) if found else None


# --------------------------------------------------------------------------- tables


def phase_times(rows: list[dict[str, Any]], points: dict[int, Point]) -> dict[str, list[Any]]:
    """Seconds per phase (row) per iteration (column); "" where the run did not record it.
    Training is the round's time less generation, log-probs and judging (the trainer's
    `time_iteration` is their sum); evaluation is that iterate's `nlhf eval` time."""
    out: dict[str, list[Any]] = {label: [] for label, _ in PHASES}
    for r in rows:
        point = points.get(r["iteration"])
        for label, key in PHASES:
            if key is not None:
                value = r.get(key, "")
            elif label == "evaluation":
                value = point.seconds if point and point.seconds is not None else ""
            elif _is_number(r.get("time_iteration")):
                value = r["time_iteration"] - sum(
                    r.get(k) or 0.0 for _, k in PHASES[:3] if _is_number(r.get(k)))
            else:
                value = ""
            out[label].append(value if _is_number(value) else "")
    return {k: v for k, v in out.items() if any(x != "" for x in v)}


def chosen_rows(keys: list[str]) -> list[str]:
    """At most `MAX_ROWS` metric names: the preferred ones the run has, then others in order."""
    preferred = [k for k in PREFERRED_ROWS if k in keys]
    others = [k for k in keys if k not in preferred and not k.startswith("time_")
              and not k.endswith(("_first", "_last", "_steps"))]
    return (preferred + others)[:MAX_ROWS]


def write_csv(path: Path, rows: list[dict[str, Any]], points: dict[int, Point]) -> None:
    """Every numeric metric per iteration (rows), plus the per-iteration eval columns."""
    keys = _numeric_keys(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    extra = ["eval_win_rate", "eval_win_rate_lo", "eval_win_rate_hi", "eval_kl", "time_eval"]
    writer.writerow(["iteration", *keys, *extra])
    for t in sorted({r["iteration"] for r in rows} | set(points)):
        row = next((r for r in rows if r["iteration"] == t), {})
        p = points.get(t)
        evals = [p.win_rate, p.lo, p.hi, p.kl, p.seconds] if p else [None] * len(extra)
        writer.writerow([t, *(row.get(k, "") for k in keys),
                         *("" if v is None else v for v in evals)])
    write_text_atomic(path, buf.getvalue())


# --------------------------------------------------------------------------- plots


def save_png(fig: Any, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["iteration"], r[key]) for r in rows if _is_number(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _panels(rows: list[dict[str, Any]], keys: list[str], title: str, path: Path) -> None:
    """One small axes per key (losses differ in scale and sign, so never share axes)."""
    from matplotlib.figure import Figure

    cols = min(3, len(keys))
    n_rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4 * cols, 3 * n_rows))
    axes = fig.subplots(n_rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        ax.plot(*_series(rows, key), marker="o")
        _integer_x(ax)
        ax.set_title(key, fontsize="medium")
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(title)
    save_png(fig, path)


def _winrate_plot(points: dict[int, Point], average: Point | None, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ps = list(points.values())
    ax.errorbar([p.iteration for p in ps], [p.win_rate for p in ps],
                yerr=[[p.win_rate - p.lo for p in ps], [p.hi - p.win_rate for p in ps]],
                marker="o", capsize=3, label="iterate t")
    if average is not None:
        ax.axhline(average.win_rate, color="tab:orange", label="average iterate")
        ax.axhspan(average.lo, average.hi, color="tab:orange", alpha=0.15)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    _integer_x(ax)
    ax.set_ylabel("win-rate vs reference")
    ax.set_title("Win-rate against the reference (95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save_png(fig, path)


def _time_plot(iterations: list[int], phases: dict[str, list[Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    bottom = [0.0] * len(iterations)
    for label, values in phases.items():
        heights = [v if _is_number(v) else 0.0 for v in values]
        ax.bar(iterations, heights, bottom=bottom, label=label)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    _integer_x(ax)
    ax.set_ylabel("seconds")
    ax.set_title("Wall time per phase")
    ax.legend(fontsize="small")
    save_png(fig, path)


def make_plots(
    run_path: Path, rows: list[dict[str, Any]], evals: list[dict[str, Any]]
) -> tuple[list[tuple[str, str]], list[str]]:
    """Write the plots that the data allow: ([(title, relative path)], [notes on skipped])."""
    plots_dir = run_path / "plots"
    keys = _numeric_keys(rows)
    made: list[tuple[str, str]] = []
    notes: list[str] = []
    points = winrate_points(evals)
    if points:
        _winrate_plot(points, headline(evals, "average"), plots_dir / "win_rate.png")
        made.append(("Win-rate per iteration", "plots/win_rate.png"))
    else:
        notes.append("Win-rate per iteration: skipped, no per-iteration evals against the "
                     "reference (run `nlhf eval --run RUN --iterate each,average`)")
    losses = [k for k in keys if "loss" in k.lower() and not k.endswith(("_first", "_last"))]
    wanted = [
        ("Losses", "losses", losses),
        ("KL(policy ‖ reference)", "kl", [k for k in keys if k == "kl_policy_ref"]),
        ("Response length", "length", [k for k in keys if LENGTH_KEY.search(k.lower())]),
    ]
    for title, stem, selected in wanted:
        if not selected:
            notes.append(f"{title}: skipped, no such metric in metrics.jsonl")
            continue
        _panels(rows, selected, title, plots_dir / f"{stem}.png")
        made.append((title, f"plots/{stem}.png"))
    phases = phase_times(rows, points)
    if phases:
        _time_plot([r["iteration"] for r in rows], phases, plots_dir / "time.png")
        made.append(("Wall time per phase", "plots/time.png"))
    else:
        notes.append("Wall time per phase: skipped, no time_* metric in metrics.jsonl")
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


def _summary_section(run: RunDir, rows: list[dict[str, Any]], evals: list[dict[str, Any]],
                     points: dict[int, Point]) -> list[str]:
    c = run.cfg
    done = completed_iteration(run.root)
    last, average = headline(evals, "last"), headline(evals, "average")
    if last is None and points:
        last = points[max(points)]
    kl = last.kl if last and last.kl is not None else (
        rows[-1].get("kl_policy_ref") if rows else None)
    train_s = sum(r["time_iteration"] for r in rows if _is_number(r.get("time_iteration")))
    eval_s = sum(_point(e).seconds or 0.0 for e in evals)
    not_evaluated = "not evaluated (run `nlhf eval --run RUN`)"
    items = [
        ("algorithm", c.algorithm),
        ("model", f"{c.model.name} ({c.model.finetune}, {c.model.dtype})"),
        ("judge", str(c.judge.get("type", c.judge))),
        ("iterations", f"{'?' if done is None else done} of {c.iterations} completed"),
        ("win-rate, last iterate (95% CI)", last.cell() if last else not_evaluated),
        ("win-rate, average iterate (95% CI)", average.cell() if average else not_evaluated),
        ("KL(policy ‖ reference)", _fmt(float(kl)) if _is_number(kl) else "not recorded"),
        ("wall time", f"{train_s:.0f} s training" + (f", {eval_s:.0f} s evaluation"
                                                        if eval_s else "")),
    ]
    return ["## Summary", "", *_table(["", "value"], [list(i) for i in items]), ""]


def _per_iteration_section(rows: list[dict[str, Any]], points: dict[int, Point],
                           notes: list[str]) -> list[str]:
    out = ["## Per iteration", ""]
    iterations = sorted({r["iteration"] for r in rows} | set(points))
    if not iterations:
        return [*out, "No metrics recorded.", *(f"\n_Note: {n}_" for n in notes), ""]
    by_iter = {r["iteration"]: r for r in rows}
    table: list[list[Any]] = []
    if points:
        table.append(["win-rate vs ref (95% CI)",
                      *(points[t].cell() if t in points else "" for t in iterations)])
    for key in chosen_rows(_numeric_keys(rows))[: MAX_ROWS - len(table)]:
        table.append([key, *(by_iter.get(t, {}).get(key, "") for t in iterations)])
    out += _table(["metric", *map(str, iterations)], table)
    out.append("\nAll metrics, one row per iteration: [metrics.csv](metrics.csv).")
    phases = phase_times(rows, points)
    if phases:
        cols = [r["iteration"] for r in rows]
        out += ["", "### Wall time per phase (seconds)", ""]
        out += _table(["phase", *map(str, cols)],
                      [[label, *(f"{v:.1f}" if _is_number(v) else "" for v in values)]
                       for label, values in phases.items()])
    out += [f"\n_Note: {n}_" for n in notes]
    return [*out, ""]


def _config_section(run: RunDir) -> list[str]:
    c = run.cfg
    h = c.hparams
    items = [
        ("algorithm", c.algorithm), ("seed", c.seed),
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


def _evals_section(evals: list[dict[str, Any]]) -> list[str]:
    out = ["## Evaluations", ""]
    if not evals:
        return [*out, "No evaluations yet (run `nlhf eval --run RUN`).", ""]
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
    """Write `<run>/report.md`, `<run>/metrics.csv` and `<run>/plots/*.png`; returns the
    report's path."""
    run = open_run(run_dir, need_adapters=False)
    rows, metric_notes = read_metrics(run.root / "metrics.jsonl")
    evals = read_evals(run.root / "eval")
    points = winrate_points(evals)
    write_csv(run.root / "metrics.csv", rows, points)
    plots, plot_notes = make_plots(run.root, rows, evals)
    lines = [f"# Run report: {run.name}", ""]
    lines += _summary_section(run, rows, evals, points)
    lines += _per_iteration_section(rows, points, metric_notes)
    lines += _evals_section(evals)
    lines += ["## Plots", ""]
    for title, rel in plots:
        lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    lines += [f"- {n}" for n in plot_notes]
    lines += ["", *_config_section(run)]
    return write_text_atomic(run.root / "report.md", "\n".join(lines).rstrip() + "\n")
