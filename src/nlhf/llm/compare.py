"""`nlhf compare`: several algorithms × seeds on one recipe, judged the same way.

A compare file is a train config (the shared recipe: model, data, judge, eval) plus a
``compare:`` section saying which algorithms, which seeds, and the few per-algorithm
overrides that equalise the budget (for example ``hparams.pairs_per_prompt``). Each run is
an ordinary run directory, ``<out>/runs/<algorithm>-s<seed>``, so ``nlhf eval``, ``report``
and ``export`` work on it.

Why these choices:
- Runs are trained in-process, one after another, seed-major (every algorithm's seed 0
  first), so a stopped comparison already holds a complete table for the first seeds.
- Resuming is the run directory's own: a finished run is skipped, a started one continues
  (``nlhf.llm.loop.train(resume=True)``), a finished evaluation (``eval/<name>.json``,
  written atomically) is read back, not redone. The head-to-head judgements go through a
  ``CachedJudge`` on ``<out>/judge.sqlite``: a killed comparison never asks the judge twice.
- Head-to-head reuses each run's evaluation samples (its last iterate on the held-out
  prompts, sampled once for the reference evaluation), so the matrix costs judge calls only.
- Every config is validated before the first run trains: a bad algorithm or override in
  run 17 fails at once, not after hours.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nlhf.atomic import write_json_atomic, write_text_atomic
from nlhf.errors import NLHFInputError
from nlhf.llm.config import (
    TrainConfig,
    apply_overrides,
    config_from_mapping,
    dump_config,
    parse_overrides,
    read_config_mapping,
)
from nlhf.llm.rundir import RunDir, read_state
from nlhf.stats import mean_interval

EVAL_NAME = "compare_last_vs_reference"
CI_LEVEL = 0.95


class CompareSection(BaseModel):
    """The ``compare:`` section of a compare file."""

    model_config = ConfigDict(extra="forbid")

    out: str = Field(description="folder for runs/, compare.json, compare.md, compare.png")
    algorithms: dict[str, list[str]] = Field(
        description="algorithm -> its own `key=value` overrides ([] for none), in table order")
    seeds: list[int] = Field(default=[0, 1, 2], min_length=1)
    second_judge: dict[str, Any] | None = Field(
        default=None, description="a judge spec the runs did not train on; each final policy "
        "is judged against the reference again with it, on the same evaluation samples")

    @field_validator("algorithms")
    @classmethod
    def _known(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from nlhf.llm.algorithms import ALGORITHMS

        if not value:
            raise ValueError("list at least one algorithm")
        unknown = [a for a in value if a not in ALGORITHMS]
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}; choose from {', '.join(ALGORITHMS)}")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds repeat: {value}")
        return value


@dataclass(frozen=True)
class PlannedRun:
    """One algorithm × seed of the comparison, with its validated train config."""

    algorithm: str
    seed: int
    cfg: TrainConfig

    @property
    def run(self) -> RunDir:
        return RunDir(Path(self.cfg.run_dir))


@dataclass(frozen=True)
class Comparison:
    source: str
    section: CompareSection
    runs: list[PlannedRun]  # seed-major

    @property
    def out(self) -> Path:
        return Path(self.section.out)

    @property
    def recipe(self) -> TrainConfig:
        return self.runs[0].cfg


def load_comparison(path: str | Path, overrides: dict[str, Any] | None = None) -> Comparison:
    """Read a compare file, apply ``--set`` overrides (``compare.seeds=[0]`` too), and
    validate every run's config; all errors are one line naming the file and field."""
    source = str(path)
    raw = apply_overrides(read_config_mapping(path), overrides or {})
    if "compare" not in raw:
        raise NLHFInputError(
            f"{source}: no 'compare' section; add compare: {{out: runs/compare, algorithms: "
            "{denpo: [], inpo: []}} (see configs/compare-smollm2.yaml)")
    try:
        section = CompareSection.model_validate(raw.pop("compare"))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in ("compare", *err["loc"]))
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise NLHFInputError(f"{source}: {where}: {msg}") from None
    if section.second_judge is not None:
        from nlhf.llm.judges import make_judge

        try:
            make_judge(section.second_judge)  # a bad spec fails here, before any training
        except NLHFInputError as exc:
            raise NLHFInputError(f"{source}: compare.second_judge: {exc}") from None
    runs = []
    for seed in section.seeds:
        for algorithm, sets in section.algorithms.items():
            run_dir = Path(section.out) / "runs" / f"{algorithm}-s{seed}"
            own = {**parse_overrides(sets), "algorithm": algorithm, "seed": seed,
                   "run_dir": str(run_dir)}
            cfg = config_from_mapping(raw, own, f"{source} (compare.algorithms.{algorithm})")
            runs.append(PlannedRun(algorithm, seed, cfg))
    return Comparison(source, section, runs)


# --------------------------------------------------------------------------- running


def _same_recipe(planned: TrainConfig, saved: Path) -> bool:
    """A run directory made by this comparison: its config.yaml equals the planned one."""
    from nlhf.llm.config import load_run_config

    have = load_run_config(saved, {"run_dir": str(saved.parent)}).model_dump(mode="json")
    want = planned.model_copy(update={"run_dir": str(saved.parent)}).model_dump(mode="json")
    return have == want


def check_existing(comparison: Comparison) -> None:
    """Refuse run directories that another recipe made, before any training starts."""
    for p in comparison.runs:
        saved = p.run.config
        if saved.is_file() and not _same_recipe(p.cfg, saved):
            raise NLHFInputError(
                f"{saved}: made with another recipe than {comparison.source}; move it away or "
                "set compare.out to a new folder")


def run_state(p: PlannedRun) -> str:
    """'done', 'started' (resumable) or 'new'."""
    if not p.run.config.is_file():
        return "new"
    done = int(read_state(p.run.root).get("last_completed_iteration", 0))
    return "done" if done >= p.cfg.iterations else "started"


def plan_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """Per run: state, generations and judge comparisons per prompt and in all (from the
    same plan as `nlhf train --dry-run`), so the budgets can be checked before training."""
    from nlhf.llm.plan import make_plan

    rows = []
    for p in comparison.runs:
        plan = make_plan(p.cfg)
        rows.append({
            "algorithm": p.algorithm, "seed": p.seed, "state": run_state(p),
            "generations_per_prompt": plan["generations"]["per_prompt_total"],
            "comparisons_per_prompt": plan["judge"]["comparisons_per_prompt"],
            "generations": plan["generations"]["total"],
            "judge_calls": plan["judge"]["calls_total"],
            "max_new_tokens": plan["tokens"]["generated_total_max"], "run_dir": str(p.run.root)})
    return rows


def format_plan(comparison: Comparison) -> str:
    rows = plan_rows(comparison)
    head = ["algorithm", "seed", "state", "gen/prompt", "cmp/prompt", "generations",
            "judge calls", "max new tokens", "run_dir"]
    keys = ["algorithm", "seed", "state", "generations_per_prompt", "comparisons_per_prompt",
            "generations", "judge_calls", "max_new_tokens", "run_dir"]
    table = [head] + [[str(r[k]) for k in keys] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in table]
    return f"{comparison.source}: {len(rows)} runs, seed-major\n" + "\n".join(lines)


def train_and_evaluate(p: PlannedRun, state: str, progress: bool) -> dict[str, Any]:
    """Train (or resume, by ``state`` from :func:`run_state`) one run, then evaluate its
    last iterate against the reference; returns the evaluation (read back when it exists)."""
    from nlhf.llm.evaluate import evaluate
    from nlhf.llm.loop import checkpoint, train

    if state != "done":
        train(p.cfg, resume=state == "started", progress=progress)
    checkpoint(f"compare/trained/{p.run.name}")
    path = p.run.root / "eval" / f"{EVAL_NAME}.json"
    if not path.is_file():
        evaluate(p.run.root, iterate="last", name=EVAL_NAME, progress=progress)
    checkpoint(f"compare/evaluated/{p.run.name}")
    return json.loads(path.read_text())


def run_comparison(comparison: Comparison, *, progress: bool = True,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and evaluate every run (skipping finished work), then judge head-to-head and
    write ``compare.json``, ``compare.md`` and ``compare.png`` in ``compare.out``; the table
    is rewritten after every run, so a stopped comparison shows what it has."""
    check_existing(comparison)
    out = comparison.out
    out.mkdir(parents=True, exist_ok=True)
    dump_config(comparison.recipe.model_copy(update={"run_dir": str(out / "runs")}),
                out / "recipe.yaml")
    total = len(comparison.runs)
    doc: dict[str, Any] = {}
    for i, p in enumerate(comparison.runs, 1):
        state = run_state(p)
        verb = {"new": "training", "started": "resuming", "done": "finished, evaluating"}[state]
        echo(f"[{i}/{total}] {p.algorithm} seed {p.seed}: {verb} ({p.run.root})")
        start = time.perf_counter()
        evaluation = train_and_evaluate(p, state, progress)
        echo(f"[{i}/{total}] {p.algorithm} seed {p.seed}: win-rate "
             f"{_ci_text(evaluation['win_rate'], evaluation['win_rate_ci'])} vs reference "
             f"({time.perf_counter() - start:.0f} s)")
        doc = write_outputs(comparison)
    return doc


# --------------------------------------------------------------------------- results


def finished(comparison: Comparison) -> list[PlannedRun]:
    """The runs whose evaluation is written."""
    return [p for p in comparison.runs
            if (p.run.root / "eval" / f"{EVAL_NAME}.json").is_file()]


def run_costs(run: RunDir) -> dict[str, float]:
    """Judge comparisons stored, tokens generated for training, training wall seconds."""
    from nlhf.llm.store import RunStore

    rows = [json.loads(line) for line in run.metrics.read_text().splitlines() if line.strip()]
    with RunStore(run.store) as store:
        tokens = store.count_generated_tokens()
    return {
        "judge_calls": float(rows[-1]["judge_calls_total"]) if rows else 0.0,
        "generated_tokens": float(tokens),
        "train_seconds": float(sum(r.get("time_iteration", 0.0) for r in rows)),
    }


def _per_prompt(evaluation: dict[str, Any]) -> dict[int, float]:
    return {int(r["prompt_id"]): float(r["p_win"]) for r in evaluation["per_prompt"]}


def _interval(values: list[float]) -> tuple[float, list[float]]:
    mean = float(np.mean(values))
    lo, hi = mean_interval(values, CI_LEVEL, "t", bounds=(0.0, 1.0))
    return mean, [lo, hi]


def pooled_win_rate(evaluations: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool seeds per prompt (the mean of p_win over seeds), then a t-interval over prompts:
    the prompt-to-prompt spread; the seed-to-seed spread is shown beside it, not folded in."""
    tables = [_per_prompt(e) for e in evaluations]
    common = sorted(set.intersection(*(set(t) for t in tables)))
    mean, ci = _interval([float(np.mean([t[k] for t in tables])) for k in common])
    return {"win_rate": mean, "ci": ci, "seeds": len(tables), "prompts": len(common)}


def _samples(run: RunDir, side: str = "") -> list[dict[str, str]]:
    """The last iterate's evaluation responses (``side="_reference"``: the reference's), one
    per held-out prompt (sample 0)."""
    return json.loads((run.root / "eval" / f"alpaca_eval_{EVAL_NAME}{side}.json").read_text())


def eval_samples(done: list[PlannedRun]) -> dict[tuple[str, int], list[dict[str, str]]]:
    """Each finished run's evaluation responses, by (algorithm, seed), read once."""
    return {(p.algorithm, p.seed): _samples(p.run) for p in done}


def second_judge_rates(comparison: Comparison, done: list[PlannedRun],
                       samples: dict[tuple[str, int], list[dict[str, str]]]) -> dict[str, Any]:
    """Per algorithm: each seed's win-rate against the reference under ``second_judge``, on
    the evaluation's own samples (judge calls only), and the seeds pooled as in the main
    table. Empty when the compare file names no second judge."""
    from nlhf.llm.judges import CachedJudge, make_judge
    from nlhf.llm.store import RunStore

    spec = comparison.section.second_judge
    if spec is None:
        return {}
    out: dict[str, Any] = {"judge": dict(spec), "rows": {}}
    with RunStore(comparison.out / "judge.sqlite") as store:
        judge = CachedJudge(make_judge(spec), store)
        for algo in comparison.section.algorithms:
            evals = []
            for p in (p for p in done if p.algorithm == algo):
                mine, ref = samples[p.algorithm, p.seed], _samples(p.run, "_reference")
                probs = judge.prob([r["instruction"] for r in mine], [r["output"] for r in mine],
                                   [r["output"] for r in ref])
                mean, ci = _interval(probs.tolist())
                evals.append({"seed": p.seed, "win_rate": mean, "ci": ci, "per_prompt": [
                    {"prompt_id": i, "p_win": float(x)} for i, x in enumerate(probs)]})
            if evals:
                out["rows"][algo] = {
                    "per_seed": [{k: e[k] for k in ("seed", "win_rate", "ci")} for e in evals],
                    "pooled": pooled_win_rate(evals)}
    return out


def head_to_head(comparison: Comparison, done: list[PlannedRun],
                 samples: dict[tuple[str, int], list[dict[str, str]]]) -> dict[str, Any]:
    """Each algorithm's final policy against every other, seed by seed on the same prompts;
    cell [a][b] is a's win-rate over b, pooled over the seeds where both finished."""
    from nlhf.llm.judges import CachedJudge, make_judge
    from nlhf.llm.store import RunStore

    by_key = {(p.algorithm, p.seed): p for p in done}
    algos = list(comparison.section.algorithms)
    judge_spec = comparison.recipe.judge
    cells: dict[str, dict[str, Any]] = {}
    with RunStore(comparison.out / "judge.sqlite") as store:
        judge = CachedJudge(make_judge(judge_spec), store)
        for i, a in enumerate(algos):
            for b in algos[i + 1:]:
                per_prompt: list[float] = []
                seeds = [s for s in comparison.section.seeds
                         if (a, s) in by_key and (b, s) in by_key]
                for s in seeds:
                    xa, xb = samples[a, s], samples[b, s]
                    if [r["instruction"] for r in xa] != [r["instruction"] for r in xb]:
                        raise NLHFInputError(
                            f"{by_key[b, s].run.root}: held-out prompts differ from "
                            f"{by_key[a, s].run.root}'s; keep data.split_seed and data.heldout "
                            "the same for every run")
                    per_prompt += judge.prob([r["instruction"] for r in xa],
                                             [r["output"] for r in xa],
                                             [r["output"] for r in xb]).tolist()
                if not seeds:
                    continue
                mean, ci = _interval(per_prompt)
                cells.setdefault(a, {})[b] = {"win_rate": mean, "ci": ci, "seeds": seeds}
                cells.setdefault(b, {})[a] = {"win_rate": 1 - mean, "ci": [1 - ci[1], 1 - ci[0]],
                                              "seeds": seeds}
    return cells


def summarise(comparison: Comparison) -> dict[str, Any]:
    """Everything the report shows, as plain data (also written as compare.json)."""
    done = finished(comparison)
    samples = eval_samples(done)
    rows = []
    for algo in comparison.section.algorithms:
        mine = [p for p in done if p.algorithm == algo]
        evals = [json.loads((p.run.root / "eval" / f"{EVAL_NAME}.json").read_text())
                 for p in mine]
        per_seed = []
        for p, e in zip(mine, evals, strict=True):
            costs = run_costs(p.run)
            per_seed.append({
                "seed": p.seed, "run": str(p.run.root), "win_rate": e["win_rate"],
                "ci": e["win_rate_ci"], "kl": e["policy"]["kl_ref"],
                "mean_tokens": e["policy"]["mean_tokens"],
                "reference_mean_tokens": e["opponent"]["mean_tokens"],
                "eval_seconds": e["settings"]["seconds"] + e["settings"]["shared_seconds"],
                **costs})
        row: dict[str, Any] = {"algorithm": algo, "per_seed": per_seed}
        if evals:
            row["pooled"] = pooled_win_rate(evals)
            for key in ("kl", "mean_tokens", "judge_calls", "generated_tokens", "train_seconds",
                        "eval_seconds"):
                row[key] = float(np.mean([s[key] for s in per_seed]))
        rows.append(row)
    recipe = comparison.recipe
    return {
        "source": comparison.source, "out": str(comparison.out),
        "algorithms": dict(comparison.section.algorithms), "seeds": comparison.section.seeds,
        "planned_runs": len(comparison.runs), "finished_runs": len(done),
        "recipe": {"model": recipe.model.name, "judge": dict(recipe.judge),
                   "iterations": recipe.iterations,
                   "prompts_per_iteration": recipe.data.prompts_per_iteration,
                   "heldout": recipe.data.heldout,
                   "eval_max_new_tokens": recipe.eval.max_new_tokens,
                   "eval_samples_per_prompt": recipe.eval.n_samples_per_prompt},
        "rows": rows, "total_seconds": total_seconds(rows),
        "head_to_head": head_to_head(comparison, done, samples),
        "second_judge": second_judge_rates(comparison, done, samples),
        "ci_level": CI_LEVEL,
    }


def total_seconds(rows: list[dict[str, Any]]) -> float:
    """Train plus evaluation wall seconds summed over the finished runs: what the whole
    comparison costs, whether it ran in one invocation or was resumed (model loading and the
    head-to-head judging, seconds in all, are not in it)."""
    return float(sum(s["train_seconds"] + s["eval_seconds"]
                     for row in rows for s in row["per_seed"]))


def _ci_text(mean: float, ci: list[float]) -> str:
    return f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _significance(ci: list[float]) -> str:
    return "above" if ci[0] > 0.5 else "below" if ci[1] < 0.5 else "n.s."


def markdown(doc: dict[str, Any]) -> str:
    """The comparison as a markdown page: recipe, table against the reference, matrix."""
    r = doc["recipe"]
    seeds = doc["seeds"]
    lines = [
        "# Comparison", "",
        f"Compare file `{doc['source']}`; {doc['finished_runs']} of {doc['planned_runs']} runs "
        f"finished. Model `{r['model']}`, judge `{r['judge'].get('type')}`, "
        f"{r['iterations']} iterations × {r['prompts_per_iteration']} prompts, evaluation on "
        f"{r['heldout']} held-out prompts ({r['eval_samples_per_prompt']} sample each, "
        f"≤ {r['eval_max_new_tokens']} tokens), last iterate.", "",
        *_total_lines(doc),
        "## Win-rate against the reference", "",
        f"Per seed: mean P(policy ≻ reference) over prompts with a {doc['ci_level']:.0%} "
        "t-interval. Pooled: per-prompt mean over seeds, t-interval over prompts (the seed "
        "spread is in the seed columns). `above`/`below`: the pooled interval excludes 0.5.", "",
        "| algorithm | overrides | " + " | ".join(f"seed {s}" for s in seeds)
        + " | pooled | | KL | tokens (ref) | judge calls | generated tokens | train + eval s |",
        "|---|---|" + "---|" * len(seeds) + "---|---|---|---|---|---|---|",
    ]
    for row in doc["rows"]:
        by_seed = {s["seed"]: s for s in row["per_seed"]}
        cells = [_ci_text(by_seed[s]["win_rate"], by_seed[s]["ci"]) if s in by_seed else "—"
                 for s in seeds]
        sets = ", ".join(f"`{x}`" for x in doc["algorithms"][row["algorithm"]]) or "—"
        if "pooled" in row:
            pooled = row["pooled"]
            ref_tokens = np.mean([s["reference_mean_tokens"] for s in row["per_seed"]])
            tail = [_ci_text(pooled["win_rate"], pooled["ci"]), _significance(pooled["ci"]),
                    f"{row['kl']:.3f}", f"{row['mean_tokens']:.1f} ({ref_tokens:.1f})",
                    f"{row['judge_calls']:.0f}", f"{row['generated_tokens']:.0f}",
                    f"{row['train_seconds'] + row['eval_seconds']:.0f}"]
        else:
            tail = ["not run yet"] + [""] * 6
        lines.append(f"| {row['algorithm']} | {sets} | " + " | ".join(cells + tail) + " |")
    algos = [row["algorithm"] for row in doc["rows"]]
    h2h = doc["head_to_head"]
    lines += ["", "## Head to head", "",
              "Row's final policy against column's, on the same held-out prompts and "
              "evaluation samples, pooled over the seeds both finished (t-interval over "
              "prompt × seed).", "",
              "| row ≻ column | " + " | ".join(algos) + " |",
              "|---|" + "---|" * len(algos)]
    for a in algos:
        cells = []
        for b in algos:
            cell = h2h.get(a, {}).get(b)
            cells.append("—" if a == b or cell is None else _ci_text(cell["win_rate"], cell["ci"]))
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines + _second_judge_lines(doc)) + "\n"


def _total_lines(doc: dict[str, Any]) -> list[str]:
    if "total_seconds" not in doc or not doc["finished_runs"]:
        return []
    total = doc["total_seconds"]
    return [f"Train + evaluation time summed over the {doc['finished_runs']} finished runs: "
            f"**{total / 3600:.2f} h** ({total / 60 / doc['finished_runs']:.1f} min per run).",
            ""]


def _second_judge_lines(doc: dict[str, Any]) -> list[str]:
    """The same win-rates against the reference under the judge the runs did not train on."""
    second = doc.get("second_judge") or {}
    if not second:
        return []
    seeds = doc["seeds"]
    lines = ["", "## Second judge", "",
             f"Judge `{json.dumps(second['judge'])}`, which no run trained on, on the same "
             "evaluation samples: win-rate against the reference, per seed and pooled as above. "
             "Reported without a threshold: it shows whether a gain transfers.", "",
             "| algorithm | " + " | ".join(f"seed {s}" for s in seeds) + " | pooled | |",
             "|---|" + "---|" * len(seeds) + "---|---|"]
    for algo, row in second["rows"].items():
        by_seed = {r["seed"]: r for r in row["per_seed"]}
        cells = [_ci_text(by_seed[s]["win_rate"], by_seed[s]["ci"]) if s in by_seed else "—"
                 for s in seeds]
        pooled = row["pooled"]
        cells += [_ci_text(pooled["win_rate"], pooled["ci"]), _significance(pooled["ci"])]
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    return lines


def plot(doc: dict[str, Any], path: Path) -> None:
    """Left: win-rate against the reference (pooled with CI, one dot per seed; green: the
    second judge, pooled). Right: the head-to-head matrix."""
    from matplotlib.figure import Figure

    from nlhf.llm.report import save_png

    rows = [r for r in doc["rows"] if "pooled" in r]
    algos = [r["algorithm"] for r in doc["rows"]]
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    for x, row in enumerate(rows):
        p = row["pooled"]
        left.errorbar([x], [p["win_rate"]], yerr=[[p["win_rate"] - p["ci"][0]],
                                                  [p["ci"][1] - p["win_rate"]]],
                      fmt="o", color="C0", capsize=4, markersize=7)
        left.scatter([x + 0.15] * len(row["per_seed"]), [s["win_rate"] for s in row["per_seed"]],
                     color="C1", s=14, zorder=3)
    second = (doc.get("second_judge") or {}).get("rows", {})
    for x, row in enumerate(rows):
        if row["algorithm"] in second:
            p = second[row["algorithm"]]["pooled"]
            left.errorbar([x - 0.15], [p["win_rate"]], yerr=[[p["win_rate"] - p["ci"][0]],
                                                            [p["ci"][1] - p["win_rate"]]],
                          fmt="D", color="C2", capsize=3, markersize=5,
                          label="second judge (pooled)" if x == 0 else None)
    if second:
        left.legend(loc="lower right", fontsize=8)
    left.axhline(0.5, color="grey", lw=0.8, ls="--")
    left.set_xticks(range(len(rows)), [r["algorithm"] for r in rows], rotation=20)
    left.set_ylabel("win-rate vs reference")
    left.set_title("pooled over seeds (95% CI); dots: seeds")
    matrix = np.full((len(algos), len(algos)), np.nan)
    for i, a in enumerate(algos):
        for j, b in enumerate(algos):
            cell = doc["head_to_head"].get(a, {}).get(b)
            if cell is not None:
                matrix[i, j] = cell["win_rate"]
    image = right.imshow(matrix, vmin=0.3, vmax=0.7, cmap="RdBu")
    for i in range(len(algos)):
        for j in range(len(algos)):
            if not math.isnan(matrix[i, j]):
                right.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8)
    right.set_xticks(range(len(algos)), algos, rotation=30)
    right.set_yticks(range(len(algos)), algos)
    right.set_title("head to head: row ≻ column")
    fig.colorbar(image, ax=right, shrink=0.8)
    fig.tight_layout()
    save_png(fig, path)


def write_outputs(comparison: Comparison) -> dict[str, Any]:
    """compare.json, compare.md and compare.png from what has finished."""
    doc = summarise(comparison)
    out = comparison.out
    write_json_atomic(out / "compare.json", doc, indent=1)
    write_text_atomic(out / "compare.md", markdown(doc))
    if doc["finished_runs"]:
        plot(doc, out / "compare.png")
    return doc
