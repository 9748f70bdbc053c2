"""Evaluate a trained run: win-rate against the reference or another run, with intervals.

Why these choices:
- Both sides sample with the same seed and batching (common random numbers): a policy
  compared with an identical one gets identical responses, hence exactly 1/2.
- The average iterate is the mixture policy that NLHF's last-iterate-free guarantees are
  about: each prompt draws one saved iterate uniformly (seeded), and its KL to the
  reference uses the mixture's log-probability log (1/T) Σ_t π_t(y).
- Judging goes through `CachedJudge` on the run's store, so re-evaluating costs no calls.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nlhf.atomic import write_json_atomic
from nlhf.errors import NLHFInputError
from nlhf.llm.config import TrainConfig, load_config
from nlhf.llm.resume import check_readable
from nlhf.llm.rundir import RunDir
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


@dataclass(frozen=True)
class Run:
    """A run directory that has been checked: its config and the iterations it saved."""

    path: Path
    cfg: TrainConfig
    iterations: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def adapter_dir(self, t: int, role: str = "policy") -> Path:
        return self.path / "adapters" / f"iter_{t}" / role


def open_run(run_dir: str | Path, what: str = "run", *, need_adapters: bool = True) -> Run:
    """Check a run directory and read its config; every failure is one line with the fix."""
    path = Path(run_dir)
    if not path.is_dir():
        raise NLHFInputError(
            f"{what}: {path} is not a directory; pass a run directory written by `nlhf train`"
        )
    if not (path / "config.yaml").is_file():
        raise NLHFInputError(
            f"{what}: {path} has no config.yaml; pass a run directory written by `nlhf train`"
        )
    cfg = load_config(path / "config.yaml")
    check_readable(RunDir(path), cfg.model.finetune)  # corrupt or NaN files: one line
    saved = _saved_iterations(path)
    if not saved and need_adapters:
        raise NLHFInputError(
            f"{what}: {path / 'adapters'} holds no policy adapters (iter_<t>/policy); "
            "train at least one iteration first"
        )
    return Run(path, cfg, saved)


def _saved_iterations(path: Path) -> tuple[int, ...]:
    """Iterations with a saved policy, capped at state.json's completed_iteration if present."""
    found = []
    root = path / "adapters"
    if root.is_dir():
        for child in root.iterdir():
            m = re.fullmatch(r"iter_(\d+)", child.name)
            if m and (child / "policy").is_dir():
                found.append(int(m.group(1)))
    done = completed_iteration(path)
    if done is not None:
        found = [t for t in found if t <= done]
    return tuple(sorted(t for t in found if t >= 1))


def completed_iteration(path: Path) -> int | None:
    """The last completed round from state.json (either key the trainer may write), or None."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    for key in ("completed_iteration", "last_completed_iteration"):
        if isinstance(state.get(key), int):
            return int(state[key])
    return None


def resolve_iterate(run: Run, iterate: str | int) -> tuple[str, tuple[int, ...]]:
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
                f"iterate: {run.adapter_dir(t)} not found; saved iterations: {have}"
            )
        return f"iter{t}", (t,)
    raise NLHFInputError(
        f"iterate: expected 'last', 'average' or an iteration number, got {iterate!r}"
    )


def _base_id(cfg: TrainConfig) -> str:
    """What must match for two runs to share a reference (tiny-random's weights follow the seed)."""
    from nlhf.llm.policy.loading import TINY_MODEL

    name = cfg.model.name
    return f"{name} (seed {cfg.seed})" if name == TINY_MODEL else name


def _policy_key(cfg: TrainConfig) -> tuple[Any, ...]:
    """Runs with equal keys can load their adapters into one in-memory model."""
    m = cfg.model
    return (_base_id(cfg), m.dtype, m.trust_remote_code, m.finetune, m.lora.model_dump_json())


def load_policy(cfg: TrainConfig) -> LMPolicy:
    """The run's base model with fresh adapters, built as the trainer builds it."""
    from nlhf.llm.policy.lm import LMPolicy, LoraSettings

    m = cfg.model
    lora = LoraSettings(
        r=m.lora.r, alpha=m.lora.alpha, dropout=m.lora.dropout,
        target_modules=tuple(m.lora.target_modules),
    )
    return LMPolicy.from_name(
        m.name, finetune=m.finetune, lora=lora, dtype=m.dtype,
        trust_remote_code=m.trust_remote_code, seed=cfg.seed,
    )


# --------------------------------------------------------------------------- sampling


@dataclass
class Side:
    """One side's samples (grouped by prompt, n per prompt) and log π(y) − log π_ref(y)."""

    label: str
    iterate: str
    iterations: tuple[int, ...]
    samples: list[Sample]
    log_ratio: np.ndarray
    choices: list[int] | None = None  # average iterate: the iteration drawn for each prompt


@dataclass
class _Sampler:
    prompt_ids: list[list[int]]
    n: int
    max_new_tokens: int
    temperature: float
    seed: int
    batch_size: int
    progress: bool

    def draw(self, policy: LMPolicy, slot: str | None, rows: list[int]) -> list[Sample]:
        from nlhf.llm.rollout.hf import generate

        return generate(
            policy, [self.prompt_ids[i] for i in rows], slot, n_per_prompt=self.n,
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=1.0,
            seed=self.seed, batch_size=self.batch_size, progress=self.progress,
        )


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
    policy: LMPolicy, slot: str, run: Run, iterate: str, iterations: tuple[int, ...],
    sampler: _Sampler, label: str,
) -> Side:
    """Sample from one saved iterate, or from the uniform mixture over `iterations`."""
    n_prompts = len(sampler.prompt_ids)
    bs = sampler.batch_size
    if len(iterations) == 1:
        policy.load_adapter(slot, run.adapter_dir(iterations[0]))
        samples = sampler.draw(policy, slot, list(range(n_prompts)))
        ratio = _logprobs(policy, slot, samples, bs) - _logprobs(policy, None, samples, bs)
        return Side(label, iterate, iterations, samples, ratio)
    rng = np.random.default_rng([sampler.seed, n_prompts])
    choices = [iterations[int(k)] for k in rng.integers(0, len(iterations), size=n_prompts)]
    by_prompt: list[list[Sample]] = [[] for _ in range(n_prompts)]
    for t in sorted(set(choices)):
        rows = [i for i, c in enumerate(choices) if c == t]
        policy.load_adapter(slot, run.adapter_dir(t))
        drawn = sampler.draw(policy, slot, rows)
        for s in drawn:
            s.prompt_index = rows[s.prompt_index]
            by_prompt[s.prompt_index].append(s)
    samples = [s for group in by_prompt for s in group]
    # log of the mixture's probability: log mean_t π_t(y), one forward pass per iterate.
    per_iterate = []
    for t in iterations:
        policy.load_adapter(slot, run.adapter_dir(t))
        per_iterate.append(_logprobs(policy, slot, samples, bs))
    stacked = np.stack(per_iterate)
    top = stacked.max(axis=0)
    mixture = top + np.log(np.exp(stacked - top).mean(axis=0))
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
    """Win-rate of the run's policy against `against` on held-out prompts; writes
    `eval/<name>.json` and AlpacaEval exports, prints a table, returns the results."""
    run = open_run(run_dir)
    cfg = run.cfg
    label, iterations = resolve_iterate(run, iterate)
    other = None if against == "reference" else open_run(against, what="against")
    if other is not None and _base_id(other.cfg) != _base_id(cfg):
        raise NLHFInputError(
            f"against: {other.path} uses base model {_base_id(other.cfg)!r} but {run.path} "
            f"uses {_base_id(cfg)!r}; compare runs trained on the same base model"
        )
    if n_prompts is not None and n_prompts < 1:
        raise NLHFInputError(f"n_prompts: must be >= 1, got {n_prompts}")
    judge_spec = dict(cfg.judge if judge is None else judge)
    opp_label = "reference" if other is None else _slug(other.name)
    if name is None:
        suffix = "" if judge is None else "_" + _slug(judge_spec.get("type", "judge"))
        name = f"{label}_vs_{opp_label}{suffix}"

    from nlhf.llm.judges import CachedJudge, make_judge
    from nlhf.llm.store import RunStore

    inner_judge = make_judge(judge_spec)  # fails early, before any model is loaded
    with RunStore(run.path / "store.sqlite") as store:
        prompts = store.prompts("heldout")[:n_prompts]
        if not prompts:
            raise NLHFInputError(
                f"{run.path / 'store.sqlite'}: no held-out prompts (split 'heldout'); "
                "set data.heldout > 0 and train again"
            )
        policy = load_policy(cfg)
        sampler = _Sampler(
            [policy.encode_prompt(text) for _, text in prompts], cfg.eval.n_samples_per_prompt,
            cfg.eval.max_new_tokens, cfg.eval.temperature, cfg.seed + EVAL_SEED_OFFSET,
            cfg.rollout.batch_size, progress,
        )
        mine = sample_run(policy, "policy", run, label, iterations, sampler,
                          f"{run.name}-{label}")
        if other is None:
            theirs = sample_reference(policy, sampler, f"{run.name}-reference")
        else:
            opp_policy = policy if _policy_key(other.cfg) == _policy_key(cfg) else None
            slot = "adversary" if opp_policy is not None else "policy"
            opp_policy = opp_policy or load_policy(other.cfg)
            theirs = sample_run(opp_policy, slot, other, "last", (other.iterations[-1],),
                                sampler, f"{other.name}-last")
        judged = CachedJudge(inner_judge, store)
        texts = [text for _, text in prompts for _ in range(sampler.n)]
        probs = judged.prob(texts, [s.text for s in mine.samples], [s.text for s in theirs.samples])
        per_prompt = probs.reshape(len(prompts), sampler.n).mean(axis=1)

    settings = {
        "judge": judge_spec, "judge_identity": inner_judge.identity(),
        "training_judge": judge is None,
        "n_prompts": len(prompts), "n_samples_per_prompt": sampler.n,
        "max_new_tokens": sampler.max_new_tokens, "temperature": sampler.temperature,
        "seed": sampler.seed, "model": cfg.model.name, "ci_level": CI_LEVEL,
        "ci_method": CI_METHOD, "judge_cache_hits": judged.hits,
        "judge_cache_misses": judged.misses,
    }
    results = _results(name, run, other, mine, theirs, prompts, per_prompt, policy, settings)
    out_dir = run.path / "eval"
    style: dict[str, Any] = {"indent": 2, "ensure_ascii": False}
    write_json_atomic(out_dir / f"{name}.json", results, **style)
    write_json_atomic(out_dir / f"alpaca_eval_{name}.json",
                      alpaca_records(prompts, mine, sampler.n), **style)
    write_json_atomic(out_dir / f"alpaca_eval_{name}_reference.json",
                      alpaca_records(prompts, theirs, sampler.n), **style)
    print_table(results)
    return results


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
    name: str, run: Run, other: Run | None, mine: Side, theirs: Side,
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
        "name": name, "run": str(run.path), "run_name": run.name,
        "against": "reference" if other is None else str(other.path),
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
