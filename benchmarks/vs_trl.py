"""One online-DPO round and one ENPO round of nlhf against TRL's OnlineDPOTrainer.

All systems run the same model, the same N prompts, batch, lengths, LoRA, learning rate,
thread count and judge, each in its own fresh subprocess (one after the other), so that the
peak RSS of each is its own (``os.wait4`` rusage of that child). Prints a table and writes
JSON (default ``benchmarks/results/vs_trl.json``).

    .venv/bin/python benchmarks/vs_trl.py                      # the full comparison
    .venv/bin/python benchmarks/vs_trl.py --model tiny-random --prompts 4 --batch 2

Systems:

- ``trl``: ``trl.experimental.online_dpo.OnlineDPOTrainer``, one epoch over the N prompts
  (2 completions per prompt), LoRA via ``peft_config``, ``gradient_checkpointing=False``.
- ``online-dpo``: ``nlhf.llm.loop.train`` with ``algorithm: online-dpo``, one iteration.
- ``enpo``: the same with ``algorithm: enpo`` (DENPO: Step A + Step B), one iteration.

The judge is the criteria judge (``make_judge({"type": "criteria"})``) in every system. TRL's
online DPO takes a reward per completion and ranks the two completions of a prompt; its
reward function here asks the judge P(a ≻ b) for the two completions of each prompt (TRL
lays them out as [first completions; second completions]) and returns p for a and 1 − p for
b, so TRL's chosen one is exactly the judge's preferred one, with one judge call per pair as
in nlhf. Pairs = prompts × pairs per prompt (1 in all three).

Throughput is pairs / seconds of the *round* (TRL: ``trainer.train()``; nlhf: the round
function with its store writes, i.e. ``time_iteration`` plus book-keeping), and also pairs /
seconds end to end (model load, judge set-up, trainer set-up and the round; not the Python
imports). The per-phase split comes from timers wrapped around the same call sites in both
(HF ``generate``, the log-prob forward passes with and without grad, the judge,
``Tensor.backward``, ``AdamW.step``); "other" is the rest of the round.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchjson import write_result

SYSTEMS = ("trl", "online-dpo", "enpo")
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """What every system gets, identically."""

    model: str = "smollm2-135m-instruct"
    prompts: int = 16
    batch: int = 4
    max_new_tokens: int = 32
    threads: int = 1
    lr: float = 5e-4
    beta: float = 0.05
    lora_r: int = 16
    lora_alpha: int = 32
    seed: int = 0
    heldout: int = 64
    #: glibc MALLOC_MMAP_THRESHOLD_ for every child (0: the allocator's default). A fixed
    #: threshold stops glibc from keeping freed activation buffers, see docs/performance.md.
    malloc_mmap_threshold: int = 0
    #: Sequences per nlhf generate call (0: nlhf's default, rollout.batch_size). TRL's call
    #: sees 2·batch and cannot change without changing its training batch; nlhf's can.
    nlhf_gen_batch: int = 0


# --------------------------------------------------------------------------- shared helpers


def pick_prompts(s: Settings) -> list[str]:
    """The N prompts that nlhf's round 1 trains on (same split and draw as ``nlhf.llm.loop``)."""
    from nlhf.llm.prompts import load_prompts, split_prompts
    from nlhf.llm.samples import round_prompts

    train, _ = split_prompts(load_prompts("builtin"), s.heldout, s.seed)
    return [text for _, text in round_prompts(list(enumerate(train)), s.prompts, s.seed, 1)]


class Timers:
    """Wall time per named call site, accumulated over a run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        #: CPU seconds of the whole process (all threads) while the call ran.
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth: dict[str, int] = defaultdict(int)
        #: Names of the timed calls now running, innermost last (for RSS attribution).
        self.active: list[str] = []

    def wrap(self, owner: Any, attr: str, name: Callable[..., str] | str) -> None:
        """Replace ``owner.attr`` by a timed version; re-entrant calls count once."""
        original = getattr(owner, attr)
        timers = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            key = name(*args, **kwargs) if callable(name) else name
            if timers._depth[key]:
                return original(*args, **kwargs)
            timers._depth[key] += 1
            timers.active.append(key)
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                timers.active.pop()
                timers._depth[key] -= 1
                timers.seconds[key] += time.perf_counter() - start
                timers.cpu[key] += time.process_time() - cpu
                timers.calls[key] += 1

        setattr(owner, attr, timed)

    def report(self) -> dict[str, Any]:
        return {
            "seconds": dict(self.seconds),
            "cpu_seconds": dict(self.cpu),
            "calls": dict(self.calls),
        }


def common_timers() -> Timers:
    """Timers on what both systems call: HF generate, backward, the AdamW step."""
    import torch
    from transformers.generation.utils import GenerationMixin

    from nlhf.llm.judges.base import Judge

    t = Timers()
    t.wrap(GenerationMixin, "generate", "hf_generate")
    t.wrap(Judge, "prob", "judge")  # the criteria judge itself (nlhf's cache wrapper overrides)
    t.wrap(torch.Tensor, "backward", "backward")
    t.wrap(torch.optim.AdamW, "step", "optimizer")
    return t


class PhaseRss:
    """Samples this process's RSS (/proc/self/statm) every few ms from a thread and keeps
    the peak seen while each timed call was the innermost one running."""

    def __init__(self, timers: Timers, every: float = 0.02) -> None:
        import threading

        self.timers = timers
        self.peak_mb: dict[str, float] = defaultdict(float)
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        self._done = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        with open("/proc/self/statm") as f:
            while not self._done.is_set():
                f.seek(0)
                rss = int(f.read().split()[1]) * self._page_mb
                active = self.timers.active
                where = active[-1] if active else "outside"
                self.peak_mb[where] = max(self.peak_mb[where], rss)
                self._done.wait(self._every)

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peak_mb.items()}


PHASES = ("generate", "logprobs_nograd", "judge", "forward_grad", "backward", "optimizer")


def cpu_phases(timers: Timers, round_cpu: float) -> dict[str, float]:
    """The round's CPU seconds by the same call sites in both systems; "other" is the rest."""
    c = timers.cpu
    keys = dict(
        zip(
            PHASES,
            ("hf_generate", "forward_nograd", "judge", "forward_grad", "backward", "optimizer"),
            strict=True,
        )
    )
    out = {phase: c.get(key, 0.0) for phase, key in keys.items()}
    out["other"] = round_cpu - sum(out.values())
    return out


def self_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# --------------------------------------------------------------------------- the children


def child_trl(s: Settings, prompts: list[str], workdir: Path) -> dict[str, Any]:
    """TRL's OnlineDPOTrainer, one epoch over the prompts."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from nlhf.llm.judges import make_judge
    from nlhf.llm.policy.loading import load_model_and_tokenizer

    set_threads(s.threads)
    timers = common_timers()
    rss = PhaseRss(timers)
    rss_imports = self_maxrss_mb()
    start = time.perf_counter()
    tokenizer, model = load_model_and_tokenizer(s.model, seed=s.seed)
    judge = make_judge({"type": "criteria"})
    judge_calls = [0]

    def judge_reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        """p = P(a ≻ b) for the two completions of each prompt: rewards [p; 1 − p]."""
        n = len(completions) // 2
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        users = [p[-1]["content"] if isinstance(p, list) else p for p in prompts[:n]]
        p = judge.prob(users, texts[:n], texts[n:])
        judge_calls[0] += n
        return [float(v) for v in p] + [1.0 - float(v) for v in p]

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    args = OnlineDPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=s.batch,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        learning_rate=s.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        max_new_tokens=s.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=s.beta,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=s.seed,
    )
    lora = LoraConfig(
        r=s.lora_r,
        lora_alpha=s.lora_alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    trainer = OnlineDPOTrainer(
        model=model,
        reward_funcs=judge_reward,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora,
    )
    timers.wrap(trainer, "_generate", "generate_phase")
    timers.wrap(
        trainer,
        "_forward",
        lambda *a, **k: "forward_grad" if torch.is_grad_enabled() else "forward_nograd",
    )
    setup = time.perf_counter() - start
    rss_setup = self_maxrss_mb()
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = trainer.train()
    round_s = time.perf_counter() - t0
    round_cpu = time.process_time() - cpu0
    total = time.perf_counter() - start
    sec = timers.seconds
    phases = {
        "generate": sec.get("generate_phase", 0.0),
        "logprobs_nograd": sec.get("forward_nograd", 0.0),
        "judge": sec.get("judge", 0.0),
        "forward_grad": sec.get("forward_grad", 0.0),
        "backward": sec.get("backward", 0.0),
        "optimizer": sec.get("optimizer", 0.0),
    }
    phases["other"] = round_s - sum(phases.values())
    return {
        "system": "trl",
        "pairs": len(prompts),
        "round_seconds": round_s,
        "round_cpu_seconds": round_cpu,
        "phases_cpu": cpu_phases(timers, round_cpu),
        "setup_seconds": setup,
        "total_seconds": total,
        "phases": phases,
        "timers": timers.report(),
        "judge_pairs": judge_calls[0],
        "optimizer_steps": int(out.global_step),
        "train_loss": float(out.training_loss),
        "rss_after_imports_mb": rss_imports,
        "rss_after_setup_mb": rss_setup,
        "rss_self_peak_mb": self_maxrss_mb(),
        "rss_peak_by_phase_mb": rss.stop(),
        "torch_threads": torch.get_num_threads(),
    }


def nlhf_config(s: Settings, algorithm: str, run_dir: Path) -> dict[str, Any]:
    """The run config: demo-style DENPO hparams, everything else from ``s``."""
    return {
        "run_dir": str(run_dir),
        "seed": s.seed,
        "iterations": 1,
        "algorithm": algorithm,
        "model": {
            "name": s.model,
            "finetune": "lora",
            "lora": {
                "r": s.lora_r,
                "alpha": s.lora_alpha,
                "dropout": 0.0,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            },
        },
        "hparams": {
            "eta": 0.05,
            "tau": 0.01,
            "alpha": 0.001,
            "beta": s.beta,
            "s": 1.0,
            "n_comparators": 2,
            "step_b_candidates": 2,
            "pairs_per_prompt": 1,
        },
        "data": {"prompts": "builtin", "prompts_per_iteration": s.prompts, "heldout": s.heldout},
        # Generation batch: nlhf's default unless --nlhf-gen-batch is given (TRL's generate
        # call always sees its training batch, 2 completions × batch prompts).
        "rollout": {
            "max_new_tokens": s.max_new_tokens,
            "temperature": 1.0,
            "top_p": 1.0,
            **({"batch_size": s.nlhf_gen_batch} if s.nlhf_gen_batch else {}),
        },
        "train": {
            "learning_rate": s.lr,
            "epochs": 1,
            "batch_size": s.batch,
            "max_grad_norm": 1.0,
            "weight_decay": 0.0,
        },
        "judge": {"type": "criteria"},
    }


def used_prompts(run_dir: Path) -> list[str]:
    """The prompt texts of round 1's policy samples, read back from the run store."""
    from nlhf.llm.rundir import RunDir
    from nlhf.llm.store import RunStore

    store = RunStore(RunDir(run_dir).store)
    try:
        text = dict(store.prompts())
        ids = dict.fromkeys(g["prompt_id"] for g in store.get_generations(1, "policy"))
        return [text[i] for i in ids]
    finally:
        store.close()


def child_nlhf(s: Settings, algorithm: str, prompts: list[str], workdir: Path) -> dict[str, Any]:
    """``nlhf.llm.loop.train`` for one iteration of ``algorithm``."""
    import torch

    import nlhf.llm.loop
    from nlhf.llm.config import validate_config
    from nlhf.llm.loop import train
    from nlhf.llm.policy.lm import LMPolicy

    set_threads(s.threads)
    timers = common_timers()
    timers.wrap(
        LMPolicy,
        "sequence_logprobs",
        lambda *a, **k: "forward_grad" if k.get("grad") else "forward_nograd",
    )
    # The round's wall time: its phases plus reading/writing the store around them (private
    # names: without them the round time falls back to the trainer's time_iteration).
    for attr, key in (("_round", "round"), ("_finish_round", "finish_round")):
        if hasattr(nlhf.llm.loop, attr):
            timers.wrap(nlhf.llm.loop, attr, key)
    rss = PhaseRss(timers)
    rss_imports = self_maxrss_mb()
    run_dir = workdir / algorithm
    cfg = validate_config(nlhf_config(s, algorithm, run_dir), "vs_trl")
    start = time.perf_counter()
    train(cfg, progress=False)
    total = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    got = used_prompts(run_dir)
    if sorted(got) != sorted(prompts):
        raise RuntimeError(f"{algorithm}: trained on other prompts than TRL was given")
    sec = timers.seconds
    if "round" in sec:
        round_s = sec["round"] + sec.get("finish_round", 0.0)
        round_cpu = timers.cpu["round"] + timers.cpu.get("finish_round", 0.0)
    else:
        round_s = round_cpu = float(metrics["time_iteration"])
    train_s = sum(
        float(v) for k, v in metrics.items() if k in ("time_train", "time_step_a", "time_step_b")
    )
    phases = {
        "generate": float(metrics["time_generate"]),
        # reference / pi_t passes and ENPO's Step B scoring pass
        "logprobs_nograd": sec.get("forward_nograd", 0.0),
        "judge": float(metrics["time_judge"]),
        "forward_grad": sec.get("forward_grad", 0.0),
        "backward": sec.get("backward", 0.0),
        "optimizer": sec.get("optimizer", 0.0),
    }
    phases["other"] = round_s - sum(phases.values())
    pairs = int(metrics["prompts"])  # pairs_per_prompt = 1
    return {
        "system": algorithm,
        "pairs": pairs,
        "round_seconds": round_s,
        "round_cpu_seconds": round_cpu,
        "phases_cpu": cpu_phases(timers, round_cpu),
        "setup_seconds": total - round_s,
        "total_seconds": total,
        "phases": phases,
        "trainer_times": {k: float(v) for k, v in metrics.items() if k.startswith("time_")},
        "train_phase_seconds": train_s,
        "timers": timers.report(),
        "judge_pairs": int(metrics.get("judge_calls_total", 0)),
        "response_len": float(metrics.get("response_len", float("nan"))),
        "rss_after_imports_mb": rss_imports,
        "rss_self_peak_mb": self_maxrss_mb(),
        "rss_peak_by_phase_mb": rss.stop(),
        "torch_threads": torch.get_num_threads(),
    }


def child_main(
    system: str,
    s: Settings,
    prompts: list[str],
    workdir: Path,
    out: Path,
    profile: Path | None = None,
) -> None:
    """Run one system; with ``profile``, under cProfile (top functions to a text file)."""

    def body() -> dict[str, Any]:
        if system == "trl":
            return child_trl(s, prompts, workdir)
        return child_nlhf(s, system, prompts, workdir)

    if profile is None:
        result = body()
    else:
        import cProfile
        import importlib
        import io
        import pstats

        # Import first, so the profile shows the run, not module loading.
        for module in (
            "torch",
            "transformers.generation.utils",
            "peft",
            "nlhf.llm.loop",
            "nlhf.llm.judges.criteria",
            *(("datasets", "trl.experimental.online_dpo") if system == "trl" else ()),
        ):
            importlib.import_module(module)
        prof = cProfile.Profile()
        result = prof.runcall(body)
        profile.mkdir(parents=True, exist_ok=True)
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text).strip_dirs()
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)
        (profile / f"{system}.txt").write_text(text.getvalue())
    out.write_text(json.dumps(result))


# --------------------------------------------------------------------------- the parent


class RssSampler:
    """Polls a process's RSS with psutil (when installed) in a thread; keeps the peak."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        import threading

        self.peak_mb: float | None = None
        self._done = threading.Event()
        try:
            import psutil
        except ImportError:
            return
        self._proc = psutil.Process(pid)
        self._every = every
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.is_set():
            try:
                rss = self._proc.memory_info().rss / 2**20
            except Exception:  # the process ended (or became a zombie) between two polls
                return
            self.peak_mb = max(self.peak_mb or 0.0, rss)
            self._done.wait(self._every)

    def stop(self) -> None:
        self._done.set()


def run_child(
    system: str, s: Settings, prompts: list[str], workdir: Path, profile: Path | None = None
) -> dict[str, Any]:
    """Run one system in a fresh interpreter; its peak RSS comes from its own rusage."""
    spec = workdir / f"{system}.in.json"
    out = workdir / f"{system}.out.json"
    spec.write_text(json.dumps({"settings": asdict(s), "prompts": prompts}))
    env = dict(os.environ)
    threads = str(s.threads)
    env.update(
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONWARNINGS="ignore",
    )
    if s.malloc_mmap_threshold > 0:
        env["MALLOC_MMAP_THRESHOLD_"] = str(s.malloc_mmap_threshold)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        system,
        "--spec",
        str(spec),
        "--child-out",
        str(out),
        "--workdir",
        str(workdir),
    ]
    if profile is not None:
        cmd += ["--profile", str(profile.resolve())]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT))
    sampled = RssSampler(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    sampled.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{system}: child exited with {proc.returncode}")
    result = json.loads(out.read_text())
    result["peak_rss_mb"] = usage.ru_maxrss / 1024.0  # KiB on Linux: the kernel's high-water
    result["peak_rss_sampled_mb"] = sampled.peak_mb  # psutil every 0.1 s, a cross-check
    result["process_wall_seconds"] = wall
    result["pairs_per_second"] = result["pairs"] / result["round_seconds"]
    result["pairs_per_cpu_second"] = result["pairs"] / result["round_cpu_seconds"]
    result["child_cpu_seconds"] = usage.ru_utime + usage.ru_stime
    result["pairs_per_second_end_to_end"] = result["pairs"] / result["total_seconds"]
    return result


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _ratio(r: dict[str, Any], base: dict[str, Any] | None, key: str) -> str:
    return "" if base is None else f"{r[key] / base[key]:.2f}"


def print_table(results: dict[str, dict[str, Any]]) -> None:
    base = results.get("trl")
    print(
        f"\n{'system':<11} {'pairs':>5} {'round s':>8} {'pairs/s':>8} {'×TRL':>5} "
        f"{'CPU s':>7} {'p/CPU-s':>8} {'×TRL':>5} {'e2e s':>7} {'e2e p/s':>8} {'×TRL':>5} "
        f"{'peak RSS MB':>11} {'×TRL':>5}"
    )
    for name, r in results.items():
        print(
            f"{name:<11} {r['pairs']:>5} {r['round_seconds']:>8.1f} "
            f"{r['pairs_per_second']:>8.3f} {_ratio(r, base, 'pairs_per_second'):>5} "
            f"{r['round_cpu_seconds']:>7.1f} {r['pairs_per_cpu_second']:>8.3f} "
            f"{_ratio(r, base, 'pairs_per_cpu_second'):>5} {r['total_seconds']:>7.1f} "
            f"{r['pairs_per_second_end_to_end']:>8.3f} "
            f"{_ratio(r, base, 'pairs_per_second_end_to_end'):>5} "
            f"{r['peak_rss_mb']:>11.0f} {_ratio(r, base, 'peak_rss_mb'):>5}"
        )
    keys = (*PHASES, "other")
    for title, field in (("wall seconds", "phases"), ("CPU seconds (all threads)", "phases_cpu")):
        print(
            f"\n{title} per phase of the round\n{'system':<12} "
            + " ".join(f"{k:>15}" for k in keys)
        )
        for name, r in results.items():
            print(f"{name:<12} " + " ".join(f"{r[field][k]:>15.2f}" for k in keys))
    where = (
        "outside",
        "hf_generate",
        "forward_nograd",
        "judge",
        "forward_grad",
        "backward",
        "optimizer",
    )
    print(
        f"\npeak RSS (MB) while each call was running (sampled every 20 ms)\n{'system':<12} "
        + " ".join(f"{k:>15}" for k in where)
    )
    for name, r in results.items():
        peaks = r.get("rss_peak_by_phase_mb", {})
        print(f"{name:<12} " + " ".join(f"{peaks.get(k, float('nan')):>15.0f}" for k in where))


def ratios_vs_trl(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each nlhf system's figures over TRL's from the same repetition."""
    base = results.get("trl")
    if base is None:
        return {}
    return {
        name: {
            "throughput_vs_trl": r["pairs_per_second"] / base["pairs_per_second"],
            "throughput_per_cpu_second_vs_trl": (
                r["pairs_per_cpu_second"] / base["pairs_per_cpu_second"]
            ),
            "throughput_end_to_end_vs_trl": (
                r["pairs_per_second_end_to_end"] / base["pairs_per_second_end_to_end"]
            ),
            "peak_rss_vs_trl": r["peak_rss_mb"] / base["peak_rss_mb"],
        }
        for name, r in results.items() if name != "trl"
    }


def summarise(per_rep: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Median, min and max of every ratio over the repetitions."""
    import statistics

    out: dict[str, dict[str, Any]] = {}
    for name in per_rep[0] if per_rep else []:
        out[name] = {}
        for key in per_rep[0][name]:
            values = [rep[name][key] for rep in per_rep]
            out[name][key] = {"median": statistics.median(values), "min": min(values),
                              "max": max(values), "values": values}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = Settings()
    parser.add_argument("--model", default=d.model)
    parser.add_argument("--prompts", type=int, default=d.prompts)
    parser.add_argument("--batch", type=int, default=d.batch, help="prompts per step")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    parser.add_argument("--threads", type=int, default=d.threads)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=0,
        help="set glibc's MALLOC_MMAP_THRESHOLD_ (bytes) in every child",
    )
    parser.add_argument(
        "--nlhf-gen-batch",
        type=int,
        default=0,
        help="sequences per nlhf generate call (default: nlhf's rollout.batch_size)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the systems this many times, interleaved (trl, online-dpo, enpo, trl, ...);"
        " ratios are taken within each repetition and summarised by their median",
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--out", default="benchmarks/results/vs_trl.json")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run each system under cProfile; top functions to DIR/<system>.txt"
        " (slows Python-heavy code: do not compare timings of such runs)",
    )
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        child_main(
            args.child,
            Settings(**spec["settings"]),
            spec["prompts"],
            Path(args.workdir),
            Path(args.child_out),
            args.profile,
        )
        return
    s = Settings(
        model=args.model,
        prompts=args.prompts,
        batch=args.batch,
        max_new_tokens=args.max_new_tokens,
        threads=args.threads,
        lr=args.lr,
        malloc_mmap_threshold=args.malloc_mmap_threshold,
        nlhf_gen_batch=args.nlhf_gen_batch,
    )
    systems = [x for x in args.systems.split(",") if x]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    prompts = pick_prompts(s)
    load_before = loadavg()
    repetitions: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="nlhf-vs-trl-") as tmp:
        for rep in range(max(1, args.repeat)):
            results: dict[str, dict[str, Any]] = {}
            for system in systems:
                print(f"running {system} (repetition {rep + 1}/{args.repeat}) ...", flush=True)
                (Path(tmp) / f"rep{rep}").mkdir(exist_ok=True)
                results[system] = run_child(system, s, prompts, Path(tmp) / f"rep{rep}",
                                            args.profile)
            repetitions.append(results)
            print_table(results)
    load_after = loadavg()
    print(f"\nload average (1, 5, 15 min): before {load_before}, after {load_after}")
    per_rep = [ratios_vs_trl(results) for results in repetitions]
    summary = summarise(per_rep)
    if summary:
        print(f"\nratios to TRL over {len(per_rep)} repetition(s): median [min, max]")
        for name, keys in summary.items():
            print(f"{name:<11} " + "  ".join(
                f"{k} {v['median']:.2f} [{v['min']:.2f}, {v['max']:.2f}]"
                for k, v in keys.items()))
    payload = {
        "settings": asdict(s),
        "prompts": prompts,
        "results": repetitions[0],
        "ratios": per_rep[0],
        "repetitions": repetitions,
        "ratios_per_repetition": per_rep,
        "ratios_summary": summary,
        "goals": {"throughput_vs_trl": ">= 1.5", "peak_rss_vs_trl": "<= 0.7"},
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    write_result(args.out, payload, ("transformers", "trl", "peft"))


if __name__ == "__main__":
    main()
