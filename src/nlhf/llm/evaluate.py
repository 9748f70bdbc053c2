"""Evaluate a trained run: win-rate against the reference or another run, with intervals.

Why these choices:
- Both sides sample with the same seed and batching (common random numbers): a policy
  compared with an identical one gets identical responses, hence exactly 1/2.
- The average iterate is the mixture policy that NLHF's guarantees are about (SPEC §2):
  each sample draws one saved iterate uniformly (seeded, `rundir.sample_average_iterate`)
  and is then sampled from it, which is exactly a draw from (1/T) Σ_t π_t; its KL to the
  reference uses the mixture's log-probability log (1/T) Σ_t π_t(y).
- Several iterates (last, average, each saved one) are evaluated in one call that loads the
  model and samples the opponent once; every iterate's file says how long it took.
- Judging goes through `CachedJudge` on the run's store, so re-evaluating costs no calls.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import logsumexp

from nlhf.atomic import write_json_atomic
from nlhf.errors import NLHFInputError
from nlhf.llm.config import TrainConfig
from nlhf.llm.resume import check_readable
from nlhf.llm.rundir import RunDir, policy_iterates, sample_average_iterate
from nlhf.stats import mean_interval, wilson_interval

if TYPE_CHECKING:
    from nlhf.llm.policy.lm import LMPolicy
    from nlhf.llm.rollout.hf import Sample

# Offsets the eval sampling seed from the run's seed, so eval samples are not training ones.
EVAL_SEED_OFFSET = 10_007
CI_LEVEL = 0.95
CI_METHOD = "t"
ALPACA_DATASET = "nlhf-heldout"
_TIE_TOL = 1e-12


# --------------------------------------------------------------------------- run directories


def open_run(run_dir: str | Path, what: str = "run", *, need_adapters: bool = True) -> RunDir:
    """Check a run directory and read its config; every failure is one line with the fix."""
    path = Path(run_dir)
    if not path.is_dir():
        raise NLHFInputError(
            f"{what}: {path} is not a directory; pass a run directory written by `nlhf train`"
        )
    run = RunDir(path)
    if not run.config.is_file():
        raise NLHFInputError(
            f"{what}: {path} has no config.yaml; pass a run directory written by `nlhf train`"
        )
    check_readable(run, run.cfg.model.finetune)  # corrupt or NaN files: one line
    if not run.iterations and need_adapters:
        raise NLHFInputError(
            f"{what}: {path / 'adapters'} holds no policy adapters (iter_<t>/policy); "
            "train at least one iteration first"
        )
    return run


def resolve_iterate(run: RunDir, iterate: str | int) -> tuple[str, tuple[int, ...]]:
    """(label, iterations): "last" → the last saved, "average" → all, "<t>" → iteration t."""
    text = str(iterate).strip().lower()
    if text == "last":
        return "last", (run.iterations[-1],)
    if text == "average":
        return "average", run.iterations
    if text.isdigit():
        t = int(text)
        if t not in run.iterations:
            have = ", ".join(map(str, run.iterations))
            raise NLHFInputError(
                f"iterate: {run.adapter(t)} not found; saved iterations: {have}"
            )
        return f"iter{t}", (t,)
    raise NLHFInputError(
        f"iterate: expected 'last', 'average' or an iteration number, got {iterate!r}"
    )


def expand_iterates(run: RunDir, iterates: str | list[str]) -> list[tuple[str, tuple[int, ...]]]:
    """Resolve a comma list of iterates; "each" stands for every saved iteration in turn."""
    items = iterates.split(",") if isinstance(iterates, str) else list(iterates)
    out: dict[str, tuple[int, ...]] = {}
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        for spec in map(str, run.iterations) if item.lower() == "each" else [item]:
            label, its = resolve_iterate(run, spec)
            out.setdefault(label, its)
    if not out:
        raise NLHFInputError("iterate: give at least one of last, average, each or a number")
    return list(out.items())


def _base_id(cfg: TrainConfig) -> str:
    """What must match for two runs to share a reference (tiny-random's weights follow the seed)."""
    from nlhf.llm.policy.loading import TINY_MODEL

    name = cfg.model.name
    return f"{name} (seed {cfg.seed})" if name == TINY_MODEL else name


def _policy_key(cfg: TrainConfig) -> tuple[Any, ...]:
    """Runs with equal keys can load their adapters into one in-memory model."""
    m = cfg.model
    return (_base_id(cfg), m.dtype, m.trust_remote_code, m.finetune, m.lora.model_dump_json())


# --------------------------------------------------------------------------- sampling


@dataclass
class Side:
    """One side's samples (grouped by prompt, n per prompt) and log π(y) − log π_ref(y)."""

    label: str
    iterate: str
    iterations: tuple[int, ...]
    samples: list[Sample]
    log_ratio: np.ndarray
    choices: list[int] | None = None  # average iterate: the iteration drawn for each sample


@dataclass
class _Sampler:
    prompt_ids: list[list[int]]
    n: int
    max_new_tokens: int
    temperature: float
    seed: int
    batch_size: int
    progress: bool

    def draw(self, policy: LMPolicy, slot: str | None, rows: list[int],
             n: int | None = None) -> list[Sample]:
        """`n` (default: the eval's) samples for each prompt index in `rows`."""
        from nlhf.llm.rollout.hf import Sampling, generate

        sampling = Sampling(n_per_prompt=self.n if n is None else n,
                            max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                            top_p=1.0, seed=self.seed)
        return generate(policy, [self.prompt_ids[i] for i in rows], slot, sampling,
                        batch_size=self.batch_size, progress=self.progress)


def _logprobs(policy: LMPolicy, slot: str | None, samples: list[Sample], bs: int) -> np.ndarray:
    if not samples:
        return np.zeros(0)
    values = policy.sequence_logprobs(
        [s.prompt_ids for s in samples], [s.response_ids for s in samples], slot, batch_size=bs
    )
    return values.detach().float().cpu().numpy().astype(float)


def sample_reference(policy: LMPolicy, sampler: _Sampler, label: str) -> Side:
    rows = list(range(len(sampler.prompt_ids)))
    samples = sampler.draw(policy, None, rows)
    return Side(label, "reference", (), samples, np.zeros(len(samples)))


def sample_run(
    policy: LMPolicy, slot: str, run: RunDir, iterate: str, iterations: tuple[int, ...],
    sampler: _Sampler, label: str,
) -> Side:
    """Sample from one saved iterate, or from the uniform mixture of all saved iterates."""
    if len(iterations) > 1:
        return sample_average(policy, slot, run, iterate, sampler, label)
    bs = sampler.batch_size
    policy.load_adapter(slot, run.adapter(iterations[0]))
    samples = sampler.draw(policy, slot, list(range(len(sampler.prompt_ids))))
    ratio = _logprobs(policy, slot, samples, bs) - _logprobs(policy, None, samples, bs)
    return Side(label, iterate, iterations, samples, ratio)


def _iteration_of(adapter: Path) -> int:
    """`.../adapters/iter_<t>/policy` → t."""
    m = re.fullmatch(r"iter_(\d+)", adapter.parent.name)
    if m is None:
        raise NLHFInputError(
            f"state.json: policy iterate {adapter} is not adapters/iter_<t>/policy"
        )
    return int(m.group(1))


def check_average(run: RunDir) -> tuple[int, ...]:
    """The iterates of the average: state.json's `policy_iterates`, which must be saved."""
    listed = tuple(sorted({_iteration_of(p) for p in policy_iterates(run.root)}))
    if not listed or not set(listed) <= set(run.iterations):
        raise NLHFInputError(
            f"{run.root / 'state.json'}: policy_iterates lists {list(listed)} but the adapters "
            f"hold {list(run.iterations)}; the average iterate needs the list `nlhf train` "
            "writes (evaluate single iterates: --iterate last or N)"
        )
    return listed


def sample_average(
    policy: LMPolicy, slot: str, run: RunDir, iterate: str, sampler: _Sampler, label: str
) -> Side:
    """The average iterate: per sample, an iterate s drawn uniformly, then y ~ π_s."""
    n_prompts, n, bs = len(sampler.prompt_ids), sampler.n, sampler.batch_size
    picks = sample_average_iterate(run.root, n_prompts * n, seed=sampler.seed)
    choices = [_iteration_of(p) for p in picks]  # sample k: prompt k // n, draw k % n
    iterations = check_average(run)
    slots: list[Sample | None] = [None] * len(choices)
    for t in sorted(set(choices)):
        ks = [k for k, c in enumerate(choices) if c == t]
        policy.load_adapter(slot, run.adapter(t))
        for k, s in zip(ks, sampler.draw(policy, slot, [k // n for k in ks], n=1), strict=True):
            s.prompt_index = k // n
            slots[k] = s
    samples = [s for s in slots if s is not None]
    # log of the mixture's probability: log mean_t π_t(y), one forward pass per iterate.
    per_iterate = []
    for t in iterations:
        policy.load_adapter(slot, run.adapter(t))
        per_iterate.append(_logprobs(policy, slot, samples, bs))
    mixture = logsumexp(np.stack(per_iterate), axis=0) - np.log(len(iterations))
    ratio = mixture - _logprobs(policy, None, samples, bs)
    return Side(label, iterate, iterations, samples, ratio, choices)


# --------------------------------------------------------------------------- evaluation


def evaluate(
    run_dir: str | Path,
    *,
    against: str = "reference",
    judge: dict[str, Any] | None = None,
    iterate: str = "last",
    n_prompts: int | None = None,
    progress: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    """Win-rate of one iterate of the run's policy against `against` on held-out prompts;
    writes `eval/<name>.json` and AlpacaEval exports, prints a table, returns the results."""
    return evaluate_iterates(
        run_dir, [iterate], against=against, judge=judge, n_prompts=n_prompts,
        progress=progress, names=None if name is None else [name],
    )[0]


def evaluate_iterates(
    run_dir: str | Path,
    iterates: str | list[str] = "last,average",
    *,
    against: str = "reference",
    judge: dict[str, Any] | None = None,
    n_prompts: int | None = None,
    progress: bool = True,
    names: list[str] | None = None,
) -> list[dict[str, Any]]:
    """`evaluate` for several iterates ("last", "average", "each", "<t>"; a comma list) with
    one model load and one opponent sample; each iterate gets its own eval file. Re-running
    regenerates the same samples (seeded), so every judgement comes from the store's cache."""
    run = open_run(run_dir)
    cfg = run.cfg
    chosen = expand_iterates(run, iterates)
    if any(label == "average" for label, _ in chosen):
        check_average(run)
    other = None if against == "reference" else open_run(against, what="against")
    if other is not None and _base_id(other.cfg) != _base_id(cfg):
        raise NLHFInputError(
            f"against: {other.root} uses base model {_base_id(other.cfg)!r} but {run.root} "
            f"uses {_base_id(cfg)!r}; compare runs trained on the same base model"
        )
    if n_prompts is not None and n_prompts < 1:
        raise NLHFInputError(f"n_prompts: must be >= 1, got {n_prompts}")
    if names is not None and len(names) != len(chosen):
        raise NLHFInputError(f"names: {len(names)} given for {len(chosen)} iterates")
    judge_spec = dict(cfg.judge if judge is None else judge)
    opp_label = "reference" if other is None else _slug(other.name)
    suffix = "" if judge is None else "_" + _slug(judge_spec.get("type", "judge"))
    names = names or [f"{label}_vs_{opp_label}{suffix}" for label, _ in chosen]

    from nlhf.llm.judges import CachedJudge, make_judge
    from nlhf.llm.policy.lm import load_policy
    from nlhf.llm.store import RunStore

    inner_judge = make_judge(judge_spec)  # fails early, before any model is loaded
    out: list[dict[str, Any]] = []
    with RunStore(run.root / "store.sqlite") as store:
        prompts = store.prompts("heldout")[:n_prompts]
        if not prompts:
            raise NLHFInputError(
                f"{run.root / 'store.sqlite'}: no held-out prompts (split 'heldout'); "
                "set data.heldout > 0 and train again"
            )
        start = time.perf_counter()
        policy = load_policy(cfg)
        sampler = _Sampler(
            [policy.encode_prompt(text) for _, text in prompts], cfg.eval.n_samples_per_prompt,
            cfg.eval.max_new_tokens, cfg.eval.temperature, cfg.seed + EVAL_SEED_OFFSET,
            cfg.rollout.batch_size, progress,
        )
        if other is None:
            theirs = sample_reference(policy, sampler, f"{run.name}-reference")
        else:
            opp_policy = policy if _policy_key(other.cfg) == _policy_key(cfg) else None
            slot = "adversary" if opp_policy is not None else "policy"
            opp_policy = opp_policy or load_policy(other.cfg)
            theirs = sample_run(opp_policy, slot, other, "last", (other.iterations[-1],),
                                sampler, f"{other.name}-last")
        shared_seconds = time.perf_counter() - start  # model load + opponent samples
        judged = CachedJudge(inner_judge, store)
        texts = [text for _, text in prompts for _ in range(sampler.n)]
        for (label, iterations), name in zip(chosen, names, strict=True):
            start, hits, misses = time.perf_counter(), judged.hits, judged.misses
            mine = sample_run(policy, "policy", run, label, iterations, sampler,
                              f"{run.name}-{label}")
            probs = judged.prob(texts, [s.text for s in mine.samples],
                                [s.text for s in theirs.samples])
            per_prompt = probs.reshape(len(prompts), sampler.n).mean(axis=1)
            settings = {
                "judge": judge_spec, "judge_identity": inner_judge.identity(),
                "training_judge": judge is None,
                "n_prompts": len(prompts), "n_samples_per_prompt": sampler.n,
                "max_new_tokens": sampler.max_new_tokens, "temperature": sampler.temperature,
                "seed": sampler.seed, "model": cfg.model.name, "ci_level": CI_LEVEL,
                "ci_method": CI_METHOD, "judge_cache_hits": judged.hits - hits,
                "judge_cache_misses": judged.misses - misses,
                "seconds": time.perf_counter() - start, "shared_seconds": shared_seconds,
            }
            results = _results(name, run, other, mine, theirs, prompts, per_prompt, policy,
                               settings)
            _write(run.root / "eval", name, results, prompts, mine, theirs, sampler.n)
            print_table(results)
            out.append(results)
    return out


def _write(out_dir: Path, name: str, results: dict[str, Any], prompts: list[tuple[int, str]],
           mine: Side, theirs: Side, n: int) -> None:
    style: dict[str, Any] = {"indent": 2, "ensure_ascii": False}
    write_json_atomic(out_dir / f"{name}.json", results, **style)
    write_json_atomic(out_dir / f"alpaca_eval_{name}.json",
                      alpaca_records(prompts, mine, n), **style)
    write_json_atomic(out_dir / f"alpaca_eval_{name}_reference.json",
                      alpaca_records(prompts, theirs, n), **style)


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", str(text)).strip("-") or "run"


def _side_summary(side: Side, policy: LMPolicy) -> dict[str, Any]:
    eos = set(policy.eos_token_ids)
    tokens = [len(s.response_ids) - (1 if s.response_ids and s.response_ids[-1] in eos else 0)
              for s in side.samples]
    words = [len(s.text.split()) for s in side.samples]
    out: dict[str, Any] = {
        "label": side.label, "iterate": side.iterate, "iterations": list(side.iterations),
        "mean_tokens": float(np.mean(tokens)), "mean_words": float(np.mean(words)),
        "kl_ref": float(np.mean(side.log_ratio)),
    }
    if side.choices is not None:
        out["iterate_choices"] = side.choices
    return out


def _results(
    name: str, run: RunDir, other: RunDir | None, mine: Side, theirs: Side,
    prompts: list[tuple[int, str]], per_prompt: np.ndarray, policy: LMPolicy,
    settings: dict[str, Any],
) -> dict[str, Any]:
    n = len(per_prompt)
    wins = int(np.sum(per_prompt > 0.5 + _TIE_TOL))
    losses = int(np.sum(per_prompt < 0.5 - _TIE_TOL))
    ties = n - wins - losses
    hard = (wins + 0.5 * ties) / n
    lo, hi = mean_interval(per_prompt, CI_LEVEL, CI_METHOD, bounds=(0.0, 1.0))
    hlo, hhi = wilson_interval(wins + 0.5 * ties, n, CI_LEVEL)
    temperature = settings["temperature"]
    kl_note = (
        "mean of log pi(y) - log ref(y) over policy samples: a KL(pi || ref) estimate"
        if math.isclose(temperature, 1.0)
        else f"mean log-ratio log pi(y) - log ref(y) on samples at temperature {temperature}: "
        "not KL(pi || ref), which needs temperature 1"
    )
    policy_iteration = mine.iterations[0] if len(mine.iterations) == 1 else None
    return {
        "name": name, "run": str(run.root), "run_name": run.name,
        "against": "reference" if other is None else str(other.root),
        "iterate": mine.iterate, "policy_iteration": policy_iteration,
        "win_rate": float(per_prompt.mean()), "win_rate_ci": [lo, hi],
        "wins": wins, "ties": ties, "losses": losses,
        "hard_win_rate": hard, "hard_win_rate_ci": [hlo, hhi],
        "policy": _side_summary(mine, policy), "opponent": _side_summary(theirs, policy),
        "kl_note": kl_note,
        "per_prompt": [{"prompt_id": pid, "p_win": float(p)}
                       for (pid, _), p in zip(prompts, per_prompt, strict=True)],
        "settings": settings,
    }


def alpaca_records(prompts: list[tuple[int, str]], side: Side, n: int) -> list[dict[str, str]]:
    """AlpacaEval's format, one output per instruction (sample 0 of each prompt)."""
    return [
        {"instruction": text, "output": side.samples[i * n].text, "generator": side.label,
         "dataset": ALPACA_DATASET}
        for i, (_, text) in enumerate(prompts)
    ]


def print_table(results: dict[str, Any]) -> None:
    """Policy vs opponent side by side; the opponent's numbers are the mirror image."""
    from rich.console import Console
    from rich.table import Table

    wr, (lo, hi) = results["win_rate"], results["win_rate_ci"]
    w, t, lo_n = results["wins"], results["ties"], results["losses"]
    pol, opp = results["policy"], results["opponent"]
    table = Table(title=f"{results['name']}  ({results['settings']['n_prompts']} prompts)")
    table.add_column("")
    table.add_column(pol["label"], justify="right")
    table.add_column(opp["label"], justify="right")
    table.add_row("win-rate", f"{wr:.3f}", f"{1 - wr:.3f}")
    table.add_row("95% CI", f"[{lo:.3f}, {hi:.3f}]", f"[{1 - hi:.3f}, {1 - lo:.3f}]")
    table.add_row("W / T / L", f"{w} / {t} / {lo_n}", f"{lo_n} / {t} / {w}")
    table.add_row("hard win-rate", f"{results['hard_win_rate']:.3f}",
                  f"{1 - results['hard_win_rate']:.3f}")
    table.add_row("mean tokens", f"{pol['mean_tokens']:.1f}", f"{opp['mean_tokens']:.1f}")
    table.add_row("mean words", f"{pol['mean_words']:.1f}", f"{opp['mean_words']:.1f}")
    table.add_row("KL to ref", f"{pol['kl_ref']:.4f}", f"{opp['kl_ref']:.4f}")
    console = Console()
    console.print(table)
    if not math.isclose(results["settings"]["temperature"], 1.0):
        console.print(f"[dim]KL: {results['kl_note']}[/dim]")
