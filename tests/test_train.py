"""The LLM training loop on the tiny random model: every algorithm, the run-dir layout, errors,
and one exact Step A step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import nlhf.llm.loop
from nlhf.errors import NLHFInputError
from nlhf.llm.algorithms.denpo import DENPO, rank_pairs
from nlhf.llm.config import TrainConfig, dump_config, load_config
from nlhf.llm.fit import fit
from nlhf.llm.loop import policy_iterates, sample_average_iterate, train
from nlhf.llm.rundir import RunDir, run_lock
from nlhf.llm.samples import RoleSamples, RoundData
from nlhf.llm.store import RunStore
from nlhf.losses import Pairs, Samples, enpo_step_a_loss

PROMPTS = [
    "Explain why the sky is blue.", "Write a haiku about autumn.", "What is 2+2? Answer briefly.",
    "List three fruits.", "Describe a cat.", "Give one word for happy.", "Why do birds sing?",
    "Compare tea and coffee.", "Tell me a joke.", "What is rain?",
]
# Three text criteria: no MiniLM to load, still a non-transitive majority vote.
CHEAP_JUDGE = {"type": "criteria", "criteria": ["length", "diversity", "structure"]}


def write_prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def tiny_config(tmp_path: Path, algorithm: str = "denpo", iterations: int = 2,
                **sections: Any) -> TrainConfig:
    raw: dict[str, Any] = {
        "run_dir": str(tmp_path / f"run-{algorithm}"),
        "seed": 0,
        "iterations": iterations,
        "algorithm": algorithm,
        "model": {"name": "tiny-random", "lora": {"r": 4, "alpha": 8}},
        "hparams": {"n_comparators": 2, "step_b_candidates": 2, "eta": 0.75, "tau": 0.25,
                    "beta": 0.5},
        "data": {"prompts": str(write_prompts(tmp_path / "prompts.jsonl")),
                 "prompts_per_iteration": 4, "heldout": 2},
        "rollout": {"max_new_tokens": 8, "batch_size": 8},
        "train": {"batch_size": 2, "learning_rate": 1e-3},
        "judge": CHEAP_JUDGE,
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return TrainConfig.model_validate(raw)


def lora_b_norm(folder: Path) -> float:
    state = load_file(str(folder / "adapter_model.safetensors"))
    return sum(float(v.abs().sum()) for k, v in state.items() if "lora_B" in k)


@pytest.mark.parametrize(
    "algorithm", ["denpo", "inpo", "nash-md", "online-dpo", "online-ipo", "xpo", "sppo"]
)
def test_each_algorithm_runs_a_round_and_moves_the_policy(tmp_path: Path, algorithm: str) -> None:
    run = train(tiny_config(tmp_path, algorithm, iterations=1), progress=False)
    # LoRA B starts at zero: any non-zero B means the round trained the policy adapter.
    assert lora_b_norm(run / "adapters/iter_1/policy") > 0
    assert (run / "adapters/iter_1/adversary").exists() == (algorithm == "denpo")
    (line,) = (run / "metrics.jsonl").read_text().splitlines()
    m = json.loads(line)
    assert m["iteration"] == 1 and 0 <= m["score_policy"] <= 1
    assert np.isfinite(m["kl_policy_ref"]) and 1 <= m["response_len"] <= 8
    loss_key = "step_a_loss" if algorithm == "denpo" else "train_loss"
    assert np.isfinite(m[loss_key]) and m["time_iteration"] > 0


def test_enpo_edge_settings_and_full_finetune(tmp_path: Path, tiny_parts: Any) -> None:
    """Fewer comparators than Step B candidates (extras generated), 2 pairs per prompt,
    soft Step B labels, and full fine-tuning (model folders instead of LoRA adapters)."""
    cfg = tiny_config(tmp_path, iterations=1, model={"finetune": "full"},
                      hparams={"n_comparators": 1, "step_b_candidates": 3,
                               "pairs_per_prompt": 2, "step_b_labels": "soft"})
    run = train(cfg, progress=False)
    m = json.loads((run / "metrics.jsonl").read_text())
    assert m["step_b_pairs"] == 4  # 4 prompts x floor(3 / 2)
    assert m["judge_calls_total"] <= 4 * 2 * 2 * 1
    with RunStore(run / "store.sqlite") as store:
        assert len(store.get_generations(1, "comparator")) == 4 * 3
        assert len(store.get_generations(1, "adversary")) == 4 * 2
    base = tiny_parts[1].state_dict()
    for adapter in ("policy", "adversary"):
        moved = load_file(str(run / f"adapters/iter_1/{adapter}/model.safetensors"))
        assert any(not torch.equal(base[k], v) for k, v in moved.items()), adapter


def test_enpo_run_directory_layout(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    run = train(cfg, progress=False)
    assert load_config(run / "config.yaml") == cfg
    for t in (1, 2):
        for adapter in ("policy", "adversary"):
            assert (run / f"adapters/iter_{t}/{adapter}/adapter_model.safetensors").is_file()
    assert lora_b_norm(run / "adapters/iter_1/adversary") > 0  # Step B trained it
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [1, 2]
    for m in lines:
        for key in ("score_policy", "score_adversary", "kl_policy_ref", "response_len",
                    "step_a_loss", "step_b_loss", "time_generate", "time_logprobs",
                    "time_judge", "time_step_a", "time_step_b", "judge_calls_total"):
            assert key in m, key
    state = json.loads((run / "state.json").read_text())
    assert state["last_completed_iteration"] == 2
    assert state["policy_iterates"] == ["adapters/iter_1/policy", "adapters/iter_2/policy"]
    assert policy_iterates(run) == [run / "adapters/iter_1/policy", run / "adapters/iter_2/policy"]
    assert set(sample_average_iterate(run, 50, seed=1)) == set(policy_iterates(run))
    with RunStore(run / "store.sqlite") as store:
        assert len(store.prompts("heldout")) == 2 and len(store.prompts("train")) == 8
        heldout = {p for _, p in store.prompts("heldout")}
        for t in (1, 2):
            for key in ("generate", "logprobs", "judge", "step_a", "step_b", "saved"):
                assert store.is_done(f"it{t}/{key}")
            rows = store.get_generations(t, "policy")
            assert len(rows) == 4 and all(r["logprob"] is not None for r in rows)
            assert not {store_text(store, r["prompt_id"]) for r in rows} & heldout
        # 4 prompts x (1 pair = 2 responses) x 2 comparators per round, none asked twice.
        assert store.count_judge_calls() <= 2 * 16
    # A finished run resumes to a no-op, and an existing run dir needs --resume.
    assert train(cfg, resume=True, progress=False) == run
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(NLHFInputError, match=r"already exists; pass --resume"):
        train(cfg, progress=False)


def store_text(store: RunStore, prompt_id: int) -> str:
    return dict(store.prompts())[prompt_id]


def test_resume_needs_a_config_and_a_free_run_dir(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    with pytest.raises(NLHFInputError, match=r"no config\.yaml"):
        train(cfg, resume=True, progress=False)
    dump_config(cfg, Path(cfg.run_dir) / "config.yaml")
    with run_lock(RunDir(cfg.run_dir)), pytest.raises(NLHFInputError, match="in use"):
        train(cfg, resume=True, progress=False)


def test_rank_pairs_best_with_worst() -> None:
    scores = np.array([0.1, 0.5, -0.2, 0.3, 9.0, 1.0])
    assert rank_pairs(scores, 3, 1.0) == ([1, 4], [2, 3])
    assert rank_pairs(scores, 3, -1.0) == ([2, 3], [1, 4])
    assert rank_pairs(scores, 2, 1.0) == ([1, 3, 4], [0, 2, 5])


class FixedRound:
    """A round's services over fixed data: given samples, given judgements, the real fit."""

    def __init__(self, policy: Any, cfg: TrainConfig, data: RoundData,
                 answers: list[np.ndarray]) -> None:
        self.policy, self.cfg, self.data, self.answers = policy, cfg, data, answers
        self.fits: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}

    def sample(self, *sources: Any) -> RoundData:
        return self.data

    def logprobs(self, data: RoundData, needs: Any) -> None:
        return None

    def judge(self, data: RoundData, *questions: Any) -> list[np.ndarray]:
        return self.answers

    def score(self, data: RoundData, role: str, idx: list[int], model: str) -> torch.Tensor:
        with torch.no_grad():
            return self.policy.sequence_logprobs(*data.seqs(role, idx), "policy")

    def policy_logprobs(self, data: RoundData, groups: Any, *, adapter: str) -> torch.Tensor:
        p_ids: list[Any] = []
        r_ids: list[Any] = []
        for role, idx in groups:
            p, r = data.seqs(role, idx)
            p_ids, r_ids = p_ids + p, r_ids + r
        return self.policy.sequence_logprobs(p_ids, r_ids, adapter, grad=True,
                                             batch_size=len(p_ids))

    def fit(self, name: str, adapter: str, loss_fn: Any, n_items: int,
            n_extra: int = 0) -> dict[str, Any]:
        self.fits[name] = fit(self.policy, adapter, n_items, loss_fn, self.cfg.train, 0,
                              n_extra=n_extra)
        return self.fits[name]

    def copy_adapter(self, src: str, dst: str) -> None:
        self.policy.copy_adapter(src, dst)

    def tensor(self, values: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=torch.float32)


def test_one_step_a_step_decreases_the_denpo_loss(make_policy: Any, prompts: Any,
                                                  tmp_path: Path) -> None:
    """DENPO's own round on exact tiny data, one full-batch AdamW step: its Step A loss is
    ENPO's loss at the start, and goes down."""
    policy = make_policy(lora=None)
    pair_a = [[10, 11, 12, 0], [20, 21, 0], [30, 31, 32, 33, 0]]
    pair_b = [[40, 41, 0], [50, 51, 52, 0], [60, 0]]
    comparators = [[70, 71, 0], [72, 0], [80, 81, 0], [82, 83, 0], [90, 0], [91, 92, 0]]

    def role(name: str, responses: list[list[int]], per_prompt: int) -> RoleSamples:
        return RoleSamples(name, "pi_t", per_prompt,
                           [i // per_prompt for i in range(len(responses))],
                           responses, [str(r) for r in responses])

    data = RoundData(1, [1, 2, 3], ["a", "b", "c"], prompts,
                     {"policy": role("policy", pair_a, 1),
                      "adversary": role("adversary", pair_b, 1),
                      "comparator": role("comparator", comparators, 2)})
    for name, rs in data.roles.items():
        for model, adapter in (("pi_t", "policy"), ("ref", None)):
            p_ids, r_ids = data.seqs(name, range(len(rs)))
            rs.logp[model] = policy.sequence_logprobs(p_ids, r_ids, adapter).double().numpy()
    # Judge rows: each response against its prompt's 2 comparators.
    wins_y = np.array([[0.9, 0.9], [0.2, 0.2], [0.6, 0.6]])
    wins_y2 = np.array([[0.1, 0.1], [0.7, 0.7], [0.5, 0.5]])
    cfg = tiny_config(tmp_path, train={"batch_size": 3, "learning_rate": 1e-2},
                      hparams={"alpha": 0.1})
    h = cfg.hparams
    fresh = [1, 3, 5]  # comparator n_z − 1 = 1 of each prompt

    def loss() -> float:
        idx = [0, 1, 2]
        with torch.no_grad():
            la = policy.sequence_logprobs(*data.seqs("policy", idx), "policy")
            lb = policy.sequence_logprobs(*data.seqs("adversary", idx), "policy")
            lf = policy.sequence_logprobs(*data.seqs("comparator", fresh), "policy")
        pairs = Pairs(la, lb, data.logp("policy", "ref"), data.logp("adversary", "ref"),
                      data.logp("policy", "pi_t"), data.logp("adversary", "pi_t"))
        gap = torch.tensor(wins_y.mean(1) - wins_y2.mean(1), dtype=torch.float32)
        return float(enpo_step_a_loss(pairs, gap, eta=h.eta, tau=h.tau, alpha=h.alpha,
                                      fresh=Samples(lf)))

    before = loss()
    r = FixedRound(policy, cfg, data, [wins_y, wins_y2])
    metrics = DENPO(h).round(r)  # type: ignore[arg-type]
    after = loss()
    assert r.fits["step_a"]["steps"] == 1 and metrics["step_a_steps"] == 1
    assert metrics["step_a_loss"] == pytest.approx(before, rel=1e-4)
    assert after < before
    assert metrics["step_b_pairs"] == 3  # one best-vs-worst pair of 2 candidates per prompt


@pytest.mark.parametrize("algorithm", ["denpo", "nash-md", "xpo", "sppo", "online-dpo"])
def test_micro_batches_give_the_minibatch_gradient(tmp_path: Path, algorithm: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradient accumulation over micro-batches of one pair gives the whole minibatch's
    gradient: each micro-batch's loss takes the minibatch's denominator (Nash-MD's importance
    weights, XPO's and ENPO's second means included). Compared at the first optimizer step,
    where both runs start from the same weights (later, Adam amplifies float rounding)."""
    grads: dict[int, list[torch.Tensor]] = {}
    clip = torch.nn.utils.clip_grad_norm_

    def recording(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        if micro not in grads:
            grads[micro] = [p.grad.detach().clone() for p in params]
        return clip(params, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    # float64 weights and log-probs, so that float rounding cannot hide a wrong denominator;
    # pi_t != pi_ref from the start, so that Nash-MD's importance weights are not all 1.
    load = nlhf.llm.loop.load_policy

    def double(*args: Any, **kwargs: Any) -> Any:
        policy = load(*args, **kwargs)
        policy.model.double()
        gen = torch.Generator().manual_seed(0)
        for p in policy.trainable_parameters("policy"):
            p.data = 0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype)
        return policy

    monkeypatch.setattr(nlhf.llm.loop, "load_policy", double)
    for micro in (0, 1):
        (tmp_path / f"micro{micro}").mkdir()
        cfg = tiny_config(tmp_path / f"micro{micro}", algorithm, iterations=1,
                          hparams={"alpha": 0.05},
                          train={"batch_size": 3, "micro_batch_size": micro})
        train(cfg, progress=False)
    whole, parts = torch.cat([g.flatten() for g in grads[0]]), torch.cat(
        [g.flatten() for g in grads[1]])
    assert float(whole.norm()) > 0
    # Measured: 2e-8 relative (float32 was 2e-4); a wrong denominator for any term is off
    # by the share of the micro-batch, i.e. by 1e-2 or more.
    assert float((whole - parts).norm()) <= 1e-6 * float(whole.norm())
