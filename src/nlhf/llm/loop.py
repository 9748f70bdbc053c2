"""``nlhf train``: iterative NLHF on a causal LM, resumable after a kill at any instant.

Each round t runs resumable phases, each marked done in the run store with a small payload:
``it{t}/generate`` (samples stored), ``it{t}/logprobs`` (forward passes stored),
``it{t}/judge`` (labels; every comparison is also cached by the judge wrapper), the
algorithm's training phases (``it{t}/step_a`` + ``it{t}/step_b`` for ENPO, ``it{t}/train``
otherwise; each saves its adapter under ``adapters/iter_{t}/``) and ``it{t}/saved`` (metrics
and state written). A resumed run loads the adapters of the last finished round, skips the
finished phases and re-runs an unfinished one from the same weights and seed, so on one
machine it ends with the same metrics and weights as an uninterrupted run, and it never asks
the judge again for a stored comparison.

Run-directory layout and the average-iterate helpers (:func:`policy_iterates`,
:func:`sample_average_iterate`, for ``nlhf eval``): see :mod:`nlhf.llm.rundir`.
Test hook: with ``NLHF_TEST_KILL_AFTER=<checkpoint>`` in the environment the process SIGKILLs
itself at that checkpoint (a phase key, ``it{t}/<phase>/step{k}`` after optimizer step k, or
``it{t}/judge/chunk{k}`` after judge chunk k); without it the hook does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.llm.algorithms import Algorithm, Round, make_algorithm
from nlhf.llm.config import TrainConfig, dump_config
from nlhf.llm.distributed import Dist, ShardedJudge, make_dist, shared_store
from nlhf.llm.judges.diagnostics import noise_warning
from nlhf.llm.policy.lm import load_policy
from nlhf.llm.preflight import Checked, preflight
from nlhf.llm.prompts import load_prompts, split_prompts
from nlhf.llm.resume import record_creation, verify_resume
from nlhf.llm.rundir import (
    RunDir,
    policy_iterates,
    read_state,
    remove_partial_writes,
    require_writable,
    run_lock,
    sample_average_iterate,
    write_metrics,
    write_state,
)
from nlhf.llm.samples import round_prompts
from nlhf.llm.store import RunStore
from nlhf.llm.tracking import open_tracker

if TYPE_CHECKING:
    from nlhf.llm.judges import Judge
    from nlhf.llm.policy.lm import LMPolicy

__all__ = ["KILL_ENV", "checkpoint", "policy_iterates", "sample_average_iterate", "train"]

KILL_ENV = "NLHF_TEST_KILL_AFTER"
log = logging.getLogger(__name__)


def checkpoint(key: str) -> None:
    """Test hook: die like a SIGKILLed run exactly at checkpoint ``key`` (inert by default)."""
    if os.environ.get(KILL_ENV) == key:
        os.kill(os.getpid(), signal.SIGKILL)


def _prepare(cfg: TrainConfig, resume: bool, judge: Judge | None = None
             ) -> tuple[TrainConfig, RunDir, Checked | None]:
    """Check the run dir; a new run passes :func:`preflight` and then writes its config
    first, a resumed one passes :func:`verify_resume` (nlhf.llm.resume)."""
    run = RunDir(Path(cfg.run_dir))
    if resume:
        if not run.config.is_file():
            raise NLHFInputError(
                f"run_dir: {run.root} has no config.yaml, so there is no run to resume; "
                "start it without --resume"
            )
        return verify_resume(run, cfg), run, None  # config, store, state, adapters agree
    if run.root.exists() and (not run.root.is_dir() or any(run.root.iterdir())):
        raise NLHFInputError(
            f"run_dir: {run.root} already exists; pass --resume to continue it or choose "
            "another run_dir"
        )
    require_writable(run.root)
    checked = preflight(cfg, judge)  # bad input fails here, before the run's first file
    dump_config(cfg, run.config)
    record_creation(run, cfg)
    return cfg, run, checked


def _ensure_prompts(cfg: TrainConfig, store: RunStore,
                    checked: Checked | None = None) -> list[tuple[int, str]]:
    """Train prompts from the store; the first start loads and splits the source once."""
    if not store.prompts():
        if checked is not None:
            train, heldout = checked.train_prompts, checked.heldout_prompts
        else:
            d = cfg.data
            train, heldout = split_prompts(
                load_prompts(d.prompts, d.field, d.max_prompt_chars), d.heldout, d.split_seed)
        store.add_prompts([("train", p) for p in train] + [("heldout", p) for p in heldout])
    return store.prompts("train")


def _restore(policy: LMPolicy, run: RunDir, iteration: int) -> None:
    """Load the adapters saved after round ``iteration`` (0: keep the seeded initial ones)."""
    if iteration < 1:
        return
    for adapter in ("policy", "adversary"):
        path = run.adapter(iteration, adapter)
        if path.exists():
            policy.load_adapter(adapter, path)


def _finite(values: dict[str, float]) -> dict[str, float]:
    """Undefined metrics (e.g. a phase with no step) are left out, loudly: a non-finite
    loss or gradient already stopped training (:func:`nlhf.llm.resume.require_finite_step`)."""
    dropped = sorted(k for k, v in values.items() if not np.isfinite(v))
    if dropped:
        log.warning("metrics left out as non-finite: %s", ", ".join(dropped))
    return {k: float(v) for k, v in values.items() if np.isfinite(v)}


def _round(r: Round, algo: Algorithm) -> dict[str, float]:
    """One iteration: the algorithm's round, then the metrics every algorithm reports."""
    metrics = algo.round(r) | r.judge_diagnostics
    if r.dist.is_main and (warning := noise_warning(r.judge_.name, metrics)):
        log.warning(warning)
    assert r.data is not None, f"{algo.name}'s round sampled nothing"
    pol = r.data.roles["policy"]
    metrics["kl_policy_ref"] = float(np.mean(pol.logp["pi_t"] - pol.logp["ref"]))
    for name, role in r.data.roles.items():
        key = "response_len" if name == "policy" else f"response_len_{name}"
        metrics[key] = float(np.mean([len(ids) for ids in role.response_ids]))
    metrics["prompts"] = float(len(r.prompts))
    metrics["judge_calls_total"] = float(r.store.count_judge_calls())
    metrics.update({f"time_{phase}": seconds for phase, seconds in r.timings.items()})
    metrics["time_iteration"] = sum(r.timings.values())
    return _finite(metrics)


def _finish_round(ctx: Round, metrics: dict[str, float]) -> dict[str, float]:
    """Metrics into the store (once), metrics.jsonl and state.json rewritten (rank 0),
    round marked."""
    t, store = ctx.iteration, ctx.store
    if not any(i == t for i, _, _ in store.metrics()):
        store.add_metrics(t, metrics)
    rows = store.metrics()
    if ctx.dist.is_main:
        write_metrics(ctx.run, rows)
        saved = [str(ctx.run.adapter(s, "policy").relative_to(ctx.run.root))
                 for s in range(1, t + 1)]
        write_state(ctx.run, {"last_completed_iteration": t, "iterations": ctx.cfg.iterations,
                              "algorithm": ctx.cfg.algorithm,
                              "finetune": ctx.cfg.model.finetune, "policy_iterates": saved})
    store.mark_done(ctx.key("saved"))
    ctx.checkpoint(ctx.key("saved"))
    return {name: value for i, name, value in rows if i == t}


def _banner(cfg: TrainConfig, run: RunDir, n_train: int) -> str:
    """The start-up line: what the whole run costs (nlhf.llm.plan), so an absurd but legal
    size is visible before the work, not after."""
    from nlhf.llm.plan import make_plan

    plan = make_plan(cfg, n_train)
    mem = plan["memory"]
    if mem.get("params") == "unknown":
        saved = "unknown size"
    else:
        each = (mem["adapter_bytes"] if cfg.model.finetune == "lora" else
                mem["weights_bytes"] * (2 if cfg.algorithm == "enpo" else 1))
        saved = f"{each / 2**20:,.1f} MiB/round, {each * plan['rounds'] / 2**20:,.1f} MiB in all"
    return (f"nlhf train {run.root}: {cfg.algorithm}, {plan['rounds']} rounds x "
            f"{plan['prompts_per_round']} prompts; ~{plan['generations']['total']:,} generations "
            f"(<= {plan['tokens']['generated_total_max']:,} new tokens), "
            f"~{plan['judge']['calls_total']:,} judge calls; saved weights {saved}")


def _summary(t: int, total: int, m: dict[str, float]) -> str:
    parts = [f"iter {t}/{total}"]
    for key, fmt in (("score_policy", "{:.3f}"), ("score_adversary", "{:.3f}"),
                     ("kl_policy_ref", "{:.3g}"), ("response_len", "{:.1f}"),
                     ("step_a_loss", "{:.4g}"), ("step_b_loss", "{:.4g}"),
                     ("train_loss", "{:.4g}"), ("time_iteration", "{:.1f}s")):
        if key in m:
            parts.append(f"{key} {fmt.format(m[key])}")
    return "  ".join(parts)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
          judge: Judge | None = None) -> Path:
    """Run (or, with ``resume``, continue) a training run; returns the run directory.

    ``judge``: a judge built in Python, used instead of building ``cfg.judge`` (which should
    describe it: ``nlhf.train`` writes it so for a preference function).

    Under ``accelerate launch`` (several processes) every rank calls this; rank 0 alone
    checks, locks and writes the run directory (see :mod:`nlhf.llm.distributed`).
    """
    dist = make_dist()
    cfg, run, checked = dist.on_main(lambda: _prepare(cfg, resume, judge),
                                     share=lambda r: (r[0], r[1], None))
    with ExitStack() as main_only:
        dist.on_main(lambda: main_only.enter_context(run_lock(run)), share=lambda _: None)
        if resume:
            dist.on_main(lambda: remove_partial_writes(run), share=lambda _: None)
        _run(cfg, run, progress, checked, dist, judge)
    return run.root


def _run(cfg: TrainConfig, run: RunDir, progress: bool, checked: Checked | None,
         dist: Dist, given_judge: Judge | None = None) -> None:
    own = dist.on_main(lambda: RunStore(run.store), share=lambda _: None)
    store = shared_store(own, dist)
    progress = progress and dist.is_main
    try:
        train_prompts = dist.on_main(lambda: _ensure_prompts(cfg, own, checked))
        if dist.is_main:
            print(_banner(cfg, run, len(train_prompts)), flush=True)
        done = dist.on_main(lambda: int(read_state(run.root).get("last_completed_iteration", 0)))
        if done >= cfg.iterations:
            return
        from rich.console import Console

        from nlhf.llm.judges import CachedJudge, make_judge
        from nlhf.llm.rollout.backends import make_generator

        console = Console(stderr=True, quiet=not progress)
        tracker = open_tracker(cfg.report_to, run.root, cfg.model_dump(mode="json"),
                               enabled=dist.is_main)  # report_to: tensorboard, trackio, wandb
        policy = load_policy(cfg, dist.device)
        inner = checked.judge if checked else given_judge or make_judge(cfg.judge)
        judge = CachedJudge(ShardedJudge(inner, dist) if dist.world > 1 else inner, store)
        algo = make_algorithm(cfg.algorithm, cfg.hparams)
        _restore(policy, run, done)
        # rollout.backend: hf, vllm, openai; under several processes rank 0 alone drives a
        # server or engine (see llm.samples.sample_source)
        generator = (make_generator(cfg.rollout, policy)
                     if dist.is_main or cfg.rollout.backend == "hf" else None)
        for t in range(done + 1, cfg.iterations + 1):
            start = time.perf_counter()
            prompts = round_prompts(train_prompts, cfg.data.prompts_per_iteration, cfg.seed, t)
            r = Round(policy=policy, cfg=cfg, iteration=t, store=store, run=run, judge=judge,
                      prompts=prompts, progress=progress, checkpoint=checkpoint,
                      generator=generator, dist=dist)
            metrics = _finish_round(r, _round(r, algo))
            tracker.log(t, metrics)
            console.print(_summary(t, cfg.iterations, metrics), soft_wrap=True,
                          end=f"  (wall {time.perf_counter() - start:.1f}s)\n")
        tracker.close()
    finally:
        store.close()
