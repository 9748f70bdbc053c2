"""Data-parallel training under ``accelerate launch`` on CPU (gloo), as real subprocesses.

Two processes and one process, same config and global batch, must end the round with the
same adapters and metrics; generation, log-prob passes, judging and the training items must
be split between the ranks (the global batch of 3 leaves a last minibatch of one item, so a
rank also takes steps with no items of its own); and rank 1 must never write into the run
directory. Writes are watched by a Python audit hook (``sitecustomize`` on PYTHONPATH,
test-only): it sees every file open for writing, mkdir, rename and SQLite connect of each
process, whatever code makes them, so the check does not rely on the trainer reporting its
own writes. (Native code that writes by itself, e.g. safetensors, is not audited; adapter
folders are still seen, since they are made by mkdtemp and renamed into place.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

from nlhf.errors import NLHFInputError
from nlhf.llm.distributed import AccelerateDist, Dist, RankZeroStore
from nlhf.llm.fit import micro_batches
from nlhf.llm.store import RunStore

PROMPTS = [
    "Explain why the sky is blue.", "Write a haiku about autumn.", "What is 2+2? Answer briefly.",
    "List three fruits.", "Describe a cat.", "Give one word for happy.",
]

AUDIT_HOOK = '''
import os, sys

_ROOT = os.environ.get("NLHF_AUDIT_ROOT")
_LOG = os.environ.get("NLHF_AUDIT_LOG")
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.rename": 2, "os.mkdir": 1, "os.remove": 1, "os.rmdir": 1,
                "shutil.rmtree": 1, "os.truncate": 1, "sqlite3.connect": 1, "os.link": 2,
                "os.symlink": 2}
_busy = []


def _paths(event, args):
    if event == "open":
        path, mode, flags = args[0], args[1], args[2]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE)
        return [path] if writes else []
    return list(args[: _PATH_EVENTS[event]]) if event in _PATH_EVENTS else []


def _hook(event, args):
    if _busy or not _ROOT:
        return
    for path in _paths(event, args):
        if not isinstance(path, (str, bytes, os.PathLike)):
            continue
        full = os.path.abspath(os.fsdecode(path))
        if full == _ROOT or full.startswith(_ROOT + os.sep):
            _busy.append(1)
            try:
                with open(_LOG, "a") as f:
                    f.write(f"{os.environ.get('RANK', '-')} {event} {full}\\n")
            finally:
                _busy.pop()


sys.addaudithook(_hook)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, name: str) -> Path:
    """4 prompts per round, 1 round, 6 new tokens, global batch 3, three cheap criteria."""
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    raw: dict[str, Any] = {
        "run_dir": str(tmp / name), "seed": 0, "iterations": 1, "algorithm": "denpo",
        "model": {"name": "tiny-random", "lora": {"r": 4, "alpha": 8}},
        "hparams": {"n_comparators": 2, "step_b_candidates": 2},
        "data": {"prompts": str(prompts), "prompts_per_iteration": 4, "heldout": 2},
        "rollout": {"max_new_tokens": 6, "batch_size": 2},
        "train": {"batch_size": 3, "learning_rate": 1e-3},
        "judge": {"type": "criteria", "criteria": ["length", "diversity", "structure"]},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def max_abs_diff(a: Path, b: Path) -> float:
    x, y = (load_file(str(f / "adapter_model.safetensors")) for f in (a, b))
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def generations(run_dir: Path) -> list[tuple[str, int, int, str]]:
    with RunStore(run_dir / "store.sqlite") as store:
        return sorted((role, g["prompt_id"], g["sample_index"], g["response"])
                      for role in ("policy", "comparator", "adversary")
                      for g in store.get_generations(1, role))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 2-process run (audited, traced) and one 1-process run of the same config."""
    tmp = tmp_path_factory.mktemp("dist")
    hook = tmp / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(hook), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("NLHF_TEST_TRACE", None)
    two, one = write_config(tmp, "two"), write_config(tmp, "one")
    launcher = Path(sys.executable).with_name("accelerate")
    # accelerate 1.15 starts one process for `--cpu` (several only through MPI); the torchrun
    # launcher behind --multi_gpu plus ACCELERATE_USE_CPU gives N CPU processes on gloo.
    run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()),
         "-m", "nlhf", "train", "--config", str(two), "--no-progress"],
        {**env, "ACCELERATE_USE_CPU": "true", "NLHF_TEST_TRACE": str(tmp / "trace.jsonl"),
         "NLHF_AUDIT_ROOT": str(tmp / "two"), "NLHF_AUDIT_LOG": str(tmp / "writes.log")})
    run([sys.executable, "-m", "nlhf", "train", "--config", str(one), "--no-progress"], env)
    return {"two": tmp / "two", "one": tmp / "one", "trace": tmp / "trace.jsonl",
            "writes": tmp / "writes.log"}


def test_two_processes_end_with_the_adapters_and_metrics_of_one(runs: dict[str, Path]) -> None:
    assert generations(runs["two"]) == generations(runs["one"])
    for adapter in ("policy", "adversary"):
        folder = f"adapters/iter_1/{adapter}"
        assert max_abs_diff(runs["two"] / folder, runs["one"] / folder) <= 1e-5
        state = load_file(str(runs["one"] / folder / "adapter_model.safetensors"))
        assert any(float(v.abs().max()) > 1e-4 for k, v in state.items() if "lora_B" in k)
    two = json.loads((runs["two"] / "metrics.jsonl").read_text())
    one = json.loads((runs["one"] / "metrics.jsonl").read_text())
    assert two.keys() == one.keys()
    for key, value in one.items():  # losses and grad norms: the global minibatch, global norm
        if not key.startswith("time_"):
            assert two[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key


def test_only_rank_0_writes_the_run_directory(runs: dict[str, Path]) -> None:
    lines = [line.split(" ", 2) for line in runs["writes"].read_text().splitlines()]
    ranks = Counter(rank for rank, _, _ in lines)
    assert set(ranks) == {"0"}, ranks
    events = {(event, Path(path).name) for _, event, path in lines}
    assert ("sqlite3.connect", "store.sqlite") in events  # the hook saw rank 0's writes
    assert any(event == "os.rename" and "adapters" in path for _, event, path in lines)


def test_generation_logprobs_judging_and_training_are_sharded(runs: dict[str, Path]) -> None:
    rows = [json.loads(line) for line in runs["trace"].read_text().splitlines()]
    assert {r["world"] for r in rows} == {2}
    share: dict[tuple[str, str], Counter[int]] = {}
    for r in rows:
        what = r["event"] + ("/" + r["source"] if "source" in r else "")
        count = r.get("samples", r.get("rows", r.get("pairs", r.get("items", 0))))
        share.setdefault((r["event"], what), Counter())[r["rank"]] += count
    # 4 prompts x (1 policy + 2 comparators) from pi_t, 4 adversary samples from pihat_t
    assert sum(share[("generate", "generate/pi_t")].values()) == 12
    assert sum(share[("generate", "generate/pihat_t")].values()) == 4
    for event in ("generate", "logprobs", "judge", "train_items"):
        parts = [c for (e, _), c in share.items() if e == event]
        assert parts, event
        for part in parts:
            total = sum(part.values())
            assert total > 0 and set(part) == {0, 1}, (event, part)
            assert all(total / 4 <= part[r] <= 3 * total / 4 for r in (0, 1)), (event, part)


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_sharded_model_launches_stop_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                   kind: str) -> None:
    """FSDP / ZeRO-3 would shard the model, whose every forward is then a collective; the
    trainer's ranks run different numbers of generation and log-prob batches, so it refuses
    them up front instead of hanging (docs/scaling.md)."""
    import accelerate
    from accelerate.utils import DistributedType

    class FakeAccelerator:
        def __init__(self, **_: Any) -> None:
            self.distributed_type = DistributedType[kind]
            self.mixed_precision = "bf16"

    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    with pytest.raises(NLHFInputError, match="not supported by nlhf train"):
        AccelerateDist()


class Rank(Dist):
    """Rank ``rank`` of ``world`` without processes (broadcast: the identity), enough for the
    splitting rules and for rank 0's side of a collective."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize(("n", "n_extra", "size"), [(1, 2, 0), (3, 5, 2), (4, 0, 1), (7, 3, 3)])
def test_ranks_share_every_minibatch_item_once(world: int, n: int, n_extra: int,
                                               size: int) -> None:
    """Each item and side item goes to exactly one rank's micro-batches, in order; every
    micro-batch carries the whole minibatch (the loss's denominator); side items never go to
    a rank without items; one rank's share is the one-process split."""
    items, extra = list(range(10, 10 + n)), list(range(50, 50 + n_extra))
    parts = [micro_batches(items, extra, size, Rank(r, world)) for r in range(world)]
    assert [i for rank in parts for m in rank for i in m.items] == items
    assert [e for rank in parts for m in rank for e in m.extra] == extra
    for rank in parts:
        assert all(m.items and m.batch == items and m.batch_extra == extra for m in rank)
        assert all(len(m.items) <= size for m in rank) or size == 0
    shares = [sum(len(m.items) for m in rank) for rank in parts]
    assert max(shares) - min(shares) <= 1
    if world == 1:
        assert parts[0] == micro_batches(items, extra, size)


def test_rank_zero_store_has_the_run_store_calls(tmp_path: Path) -> None:
    """Written-out methods with RunStore's signatures, each answered by rank 0's store."""
    import inspect

    names = [n for n, f in vars(RankZeroStore).items() if callable(f) and not n.startswith("_")]
    assert len(names) == 13
    for name in names:
        assert inspect.signature(getattr(RankZeroStore, name)) == inspect.signature(
            getattr(RunStore, name)), name
    with RunStore(tmp_path / "store.sqlite") as own:
        store = RankZeroStore(own, Rank(0, 2))
        ids = store.add_prompts([("train", "a"), ("heldout", "b")])
        assert store.prompts("heldout") == [(ids[1], "b")] == own.prompts("heldout")
        store.mark_done("k", {"x": 1})
        assert store.is_done("k") and store.step_payload("k") == {"x": 1}
        store.add_metrics(1, {"loss": 0.5})
        assert store.metrics("loss") == [(1, "loss", 0.5)]


def test_sum_gradients_adds_the_ranks_gradients_and_losses() -> None:
    """Two ranks in threads, accelerate's reduce replaced by a sum over both buffers: the
    gradients and loss shares add up, a rank without a gradient sends zeros, a parameter
    no rank reached keeps ``grad=None``, and bf16 gradients come back in bf16."""
    import threading

    import torch

    buffers: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(2)

    class SummingAccelerator:
        def __init__(self, rank: int) -> None:
            self.rank = rank

        def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
            assert reduction == "sum"
            buffers[self.rank] = tensor.clone()
            barrier.wait()
            total = buffers[0] + buffers[1]
            barrier.wait()
            return total

    def params() -> list[torch.nn.Parameter]:
        return [torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(4)),
                torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))]

    ranks = [params(), params()]
    ranks[0][0].grad = torch.arange(6.0).reshape(2, 3)
    ranks[1][0].grad = torch.full((2, 3), 0.5)
    ranks[0][2].grad = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    losses = {}

    def run(rank: int) -> None:
        dist = object.__new__(AccelerateDist)
        dist.accelerator = SummingAccelerator(rank)  # type: ignore[assignment]
        losses[rank] = dist.sum_gradients(ranks[rank], [0.25, 1.5][rank])

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert losses == {0: 1.75, 1: 1.75}
    for mine in ranks:
        assert torch.equal(mine[0].grad, torch.arange(6.0).reshape(2, 3) + 0.5)
        assert mine[1].grad is None
        assert mine[2].grad.dtype == torch.bfloat16
        assert torch.equal(mine[2].grad, torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16))
