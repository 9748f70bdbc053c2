"""Evaluation of trained runs (on fake run directories); intervals: tests/test_stats.py."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nlhf.errors import NLHFInputError
from nlhf.llm.config import TrainConfig, dump_config

# Three criteria without the MiniLM one: a real vote, no model load.
CHEAP_JUDGE = {"type": "criteria", "criteria": ["length", "diversity", "structure"]}
HELDOUT = [
    "Hi", "What is the capital of France?", "Write a haiku about autumn.",
    "Explain gravity briefly.", "List three fruits.", "Why is the sky blue?",
]


# --------------------------------------------------------------------------- fake runs


def _perturb(policy: Any, adapter: str, seed: int, scale: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.trainable_parameters(adapter):
            p.add_(scale * torch.randn(p.shape, generator=gen))


def make_run(root: Path, *, iterations: int = 3, **overrides: Any) -> Path:
    """A run directory laid out as `nlhf.llm.loop` writes it, with perturbed tiny adapters."""
    from nlhf.llm.policy import load_policy
    from nlhf.llm.store import RunStore

    raw: dict[str, Any] = {
        "run_dir": str(root), "seed": 0, "iterations": iterations,
        "model": {"name": "tiny-random", "lora": {"r": 4}},
        "data": {"heldout": len(HELDOUT)}, "judge": CHEAP_JUDGE,
        "eval": {"n_samples_per_prompt": 2, "max_new_tokens": 8, "temperature": 1.0},
    }
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    cfg = TrainConfig.model_validate(raw)
    dump_config(cfg, root / "config.yaml")
    with RunStore(root / "store.sqlite") as store:
        store.add_prompts([("train", "Say hello."), *(("heldout", p) for p in HELDOUT)])
    policy = load_policy(cfg)
    for t in range(1, iterations + 1):
        _perturb(policy, "policy", seed=t)
        policy.save_adapter("policy", root / "adapters" / f"iter_{t}" / "policy")
        policy.save_adapter("adversary", root / "adapters" / f"iter_{t}" / "adversary")
    _write_state(root, iterations)
    with open(root / "metrics.jsonl", "w") as f:
        for t in range(1, iterations + 1):
            f.write(json.dumps({"iteration": t, "loss_policy": 1.0 / t, "loss_adversary": 0.5,
                                "kl_policy_ref": 0.01 * t, "mean_response_length": 8 - t})
                    + "\n")
    return root


def _write_state(root: Path, done: int) -> None:
    """state.json with the trainer's keys (`nlhf.llm.loop._finish_round`)."""
    iterates = [f"adapters/iter_{t}/policy" for t in range(1, done + 1)]
    (root / "state.json").write_text(json.dumps(
        {"last_completed_iteration": done, "policy_iterates": iterates}))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "enpo-tiny")


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("eval", "plots", "report.md"))
    return dst


# --------------------------------------------------------------------------- evaluate


def test_last_vs_reference(run_dir: Path) -> None:
    from nlhf.llm.evaluate import evaluate

    res = evaluate(run_dir, progress=False)
    assert res["name"] == "last_vs_reference"
    assert res["iterate"] == "last" and res["policy_iteration"] == 3
    lo, hi = res["win_rate_ci"]
    assert 0.0 <= lo <= res["win_rate"] <= hi <= 1.0
    assert res["wins"] + res["ties"] + res["losses"] == len(HELDOUT)
    assert 0.0 <= res["hard_win_rate_ci"][0] <= res["hard_win_rate"] <= res["hard_win_rate_ci"][1]
    assert len(res["per_prompt"]) == len(HELDOUT)
    assert res["win_rate"] == pytest.approx(np.mean([r["p_win"] for r in res["per_prompt"]]))
    pol, opp = res["policy"], res["opponent"]
    assert pol["label"] == "enpo-tiny-last" and opp["label"] == "enpo-tiny-reference"
    assert 0 < pol["mean_tokens"] <= 8 and pol["mean_words"] >= 0
    assert math.isfinite(pol["kl_ref"]) and pol["kl_ref"] != 0.0 and opp["kl_ref"] == 0.0
    assert "KL(pi || ref) estimate" in res["kl_note"]
    s = res["settings"]
    assert s["n_samples_per_prompt"] == 2 and s["max_new_tokens"] == 8 and s["training_judge"]
    assert s["judge"] == CHEAP_JUDGE and s["judge_cache_misses"] > 0

    saved = json.loads((run_dir / "eval" / "last_vs_reference.json").read_text())
    assert saved["win_rate"] == res["win_rate"]
    for suffix, generator in (("", "enpo-tiny-last"), ("_reference", "enpo-tiny-reference")):
        rows = json.loads((run_dir / "eval" / f"alpaca_eval_last_vs_reference{suffix}.json")
                          .read_text())
        assert isinstance(rows, list) and len(rows) == len(HELDOUT)
        assert [r["instruction"] for r in rows] == HELDOUT
        for r in rows:
            assert set(r) == {"instruction", "output", "generator", "dataset"}
            assert r["generator"] == generator and r["dataset"] == "nlhf-heldout"
            assert isinstance(r["output"], str)
    assert not list((run_dir / "eval").glob(".*.tmp"))

    # Same seed, same samples: the second evaluation is served by the store's judge cache.
    again = evaluate(run_dir, progress=False)
    assert again["win_rate"] == res["win_rate"]
    assert again["settings"]["judge_cache_misses"] == 0


def test_average_iterate_draws_per_sample(run_dir: Path) -> None:
    """Each of the 6 x 2 samples picks its own iterate (SPEC §2: s uniform, then y ~ pi_s)."""
    from nlhf.llm.evaluate import evaluate
    from nlhf.llm.rundir import sample_average_iterate

    res = evaluate(run_dir, iterate="average", n_prompts=6, progress=False)
    choices = res["policy"]["iterate_choices"]
    assert res["name"] == "average_vs_reference" and res["policy_iteration"] is None
    assert len(choices) == 12 and set(choices) == {1, 2, 3}
    expected = sample_average_iterate(run_dir, 12, seed=res["settings"]["seed"])
    assert choices == [int(p.parent.name.split("_")[1]) for p in expected]
    assert any(choices[2 * i] != choices[2 * i + 1] for i in range(6))  # not one per prompt
    assert res["policy"]["iterations"] == [1, 2, 3]
    assert math.isfinite(res["policy"]["kl_ref"])
    again = evaluate(run_dir, iterate="average", n_prompts=6, progress=False)
    assert again["policy"]["iterate_choices"] == choices  # seeded
    assert again["win_rate"] == res["win_rate"]
    assert again["settings"]["judge_cache_misses"] == 0


def test_average_iterate_samples_are_the_mixture(run_dir: Path) -> None:
    """The mixture's log-ratio is log mean_t pi_t(y) - log ref(y) on the very samples drawn,
    and a sample drawn from iterate s is what iterate s alone draws for that prompt."""
    from nlhf.llm.evaluate import _Sampler, open_run, sample_average
    from nlhf.llm.policy import load_policy

    run = open_run(run_dir)
    policy = load_policy(run.cfg)
    ids = [policy.encode_prompt(p) for p in HELDOUT[:3]]
    sampler = _Sampler(ids, 2, 6, 1.0, 11, 4, False)
    side = sample_average(policy, "policy", run, "average", sampler, "avg")
    assert [s.prompt_index for s in side.samples] == [0, 0, 1, 1, 2, 2]
    per_t = []
    for t in (1, 2, 3):
        policy.load_adapter("policy", run.adapter(t))
        per_t.append(policy.sequence_logprobs(
            [s.prompt_ids for s in side.samples], [s.response_ids for s in side.samples],
            "policy").double().numpy())
    ref = policy.sequence_logprobs(
        [s.prompt_ids for s in side.samples], [s.response_ids for s in side.samples],
        None).double().numpy()
    expected = np.log(np.exp(np.stack(per_t)).mean(axis=0)) - ref
    np.testing.assert_allclose(side.log_ratio, expected, rtol=1e-5, atol=1e-5)
    assert all(s.prompt_ids == ids[s.prompt_index] for s in side.samples)


def test_each_iterate_and_the_cache(run_dir: Path, tmp_path: Path) -> None:
    """Per-iteration evaluation: one file per saved iterate; a second pass asks no judge."""
    from nlhf.llm.evaluate import evaluate_iterates

    run = _copy_run(run_dir, tmp_path / "each")
    first = evaluate_iterates(run, "each,last,average", n_prompts=3, progress=False)
    assert [r["name"] for r in first] == [
        "iter1_vs_reference", "iter2_vs_reference", "iter3_vs_reference",
        "last_vs_reference", "average_vs_reference"]
    assert [r["policy_iteration"] for r in first] == [1, 2, 3, 3, None]
    for r in first:
        assert (run / "eval" / f"{r['name']}.json").is_file()
        assert r["settings"]["seconds"] > 0 and r["settings"]["shared_seconds"] > 0
        lo, hi = r["win_rate_ci"]
        assert 0.0 <= lo <= r["win_rate"] <= hi <= 1.0
    # last is iteration 3 with the same seed: same samples, so its judgements were cached
    assert first[3]["win_rate"] == first[2]["win_rate"]
    assert first[3]["settings"]["judge_cache_misses"] == 0
    again = evaluate_iterates(run, "each,average", n_prompts=3, progress=False)
    assert [r["win_rate"] for r in again] == [r["win_rate"] for r in first[:3] + first[4:]]
    assert all(r["settings"]["judge_cache_misses"] == 0 for r in again)


def test_given_iterate_and_n_prompts(run_dir: Path) -> None:
    from nlhf.llm.evaluate import evaluate

    res = evaluate(run_dir, iterate="2", n_prompts=3, progress=False)
    assert res["name"] == "iter2_vs_reference" and res["policy_iteration"] == 2
    assert res["settings"]["n_prompts"] == 3 and len(res["per_prompt"]) == 3
    assert (run_dir / "eval" / "iter2_vs_reference.json").is_file()
    rows = json.loads((run_dir / "eval" / "alpaca_eval_iter2_vs_reference.json").read_text())
    assert rows[0]["generator"] == "enpo-tiny-iter2" and len(rows) == 3


def test_self_play_is_exactly_half(run_dir: Path, tmp_path: Path) -> None:
    """A run against itself: same seed and batching give identical responses, and every
    judge scores identical texts 1/2 exactly. A tempered run also flags its KL number."""
    from nlhf.llm.evaluate import evaluate

    hot = _copy_run(run_dir, tmp_path / "tempered")
    cfg = TrainConfig.model_validate({**json.loads(json.dumps(_raw(hot))),
                                      "eval": {"n_samples_per_prompt": 2, "max_new_tokens": 8,
                                               "temperature": 0.7}})
    dump_config(cfg, hot / "config.yaml")
    res = evaluate(hot, against=str(hot), progress=False)
    assert res["win_rate"] == 0.5 and res["win_rate_ci"] == [0.5, 0.5]
    assert (res["wins"], res["ties"], res["losses"]) == (0, len(HELDOUT), 0)
    assert res["hard_win_rate"] == 0.5
    assert res["name"] == "last_vs_tempered"
    assert res["opponent"]["label"] == "tempered-last"
    assert res["policy"]["kl_ref"] == pytest.approx(res["opponent"]["kl_ref"])
    assert "temperature 0.7" in res["kl_note"] and "not KL" in res["kl_note"]
    assert res["settings"]["judge_cache_misses"] == 0


def _raw(run: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def test_judge_override_names_the_file(run_dir: Path) -> None:
    """The MiniLM criteria judge (~4 s to load) instead of the training one."""
    from nlhf.llm.evaluate import evaluate

    res = evaluate(run_dir, judge={"type": "criteria"}, n_prompts=2, progress=False)
    assert res["name"] == "last_vs_reference_criteria"
    assert not res["settings"]["training_judge"]
    assert "relevance" in res["settings"]["judge_identity"]
    assert (run_dir / "eval" / "last_vs_reference_criteria.json").is_file()


# --------------------------------------------------------------------------- bad input


def test_bad_run_dirs(tmp_path: Path, run_dir: Path) -> None:
    from nlhf.llm.evaluate import evaluate

    def one_line(exc: pytest.ExceptionInfo[NLHFInputError]) -> str:
        msg = str(exc.value)
        assert "\n" not in msg
        return msg

    with pytest.raises(NLHFInputError) as e:
        evaluate(tmp_path / "nope", progress=False)
    assert "nope" in one_line(e) and "nlhf train" in one_line(e)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NLHFInputError) as e:
        evaluate(empty, progress=False)
    assert "config.yaml" in one_line(e) and str(empty) in one_line(e)

    dump_config(TrainConfig(), empty / "config.yaml")
    with pytest.raises(NLHFInputError) as e:
        evaluate(empty, progress=False)
    assert "adapters" in one_line(e) and "train at least one iteration" in one_line(e)

    with pytest.raises(NLHFInputError, match="saved iterations: 1, 2, 3"):
        evaluate(run_dir, iterate="9", progress=False)
    with pytest.raises(NLHFInputError, match="'last', 'average'"):
        evaluate(run_dir, iterate="best", progress=False)
    from nlhf.llm.evaluate import evaluate_iterates

    with pytest.raises(NLHFInputError, match="at least one"):
        evaluate_iterates(run_dir, " , ", progress=False)
    with pytest.raises(NLHFInputError, match="n_prompts"):
        evaluate(run_dir, n_prompts=0, progress=False)
    with pytest.raises(NLHFInputError) as e:
        evaluate(run_dir, against=str(tmp_path / "missing"), progress=False)
    assert one_line(e).startswith("against:")


def test_against_other_base_model(tmp_path: Path, run_dir: Path) -> None:
    from nlhf.llm.evaluate import evaluate

    other = _copy_run(run_dir, tmp_path / "other")
    dump_config(TrainConfig.model_validate({**_raw(other), "seed": 5}), other / "config.yaml")
    with pytest.raises(NLHFInputError) as e:
        evaluate(run_dir, against=str(other), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "same base model" in msg and str(other) in msg


def test_report_reads_real_evals(run_dir: Path) -> None:
    from nlhf.llm.evaluate import evaluate
    from nlhf.llm.report import report

    evaluate(run_dir, iterate="1", n_prompts=2, progress=False)
    md = report(run_dir).read_text()
    assert "iter1_vs_reference" in md
    assert (run_dir / "plots" / "win_rate.png").is_file()


def test_against_run_with_other_lora_shape(run_dir: Path, tmp_path: Path) -> None:
    """Same base, different LoRA rank: the opponent gets its own model instead of a slot."""
    from nlhf.llm.evaluate import evaluate

    wide = make_run(tmp_path / "wide", iterations=1,
                    model={"name": "tiny-random", "lora": {"r": 8}})
    res = evaluate(run_dir, against=str(wide), n_prompts=2, progress=False)
    assert res["name"] == "last_vs_wide" and res["against"] == str(wide)
    assert res["opponent"]["label"] == "wide-last" and res["opponent"]["iterations"] == [1]
    assert res["opponent"]["kl_ref"] != 0.0
    rows = json.loads((run_dir / "eval" / "alpaca_eval_last_vs_wide_reference.json").read_text())
    assert rows[0]["generator"] == "wide-last"


def test_state_json_caps_the_iterates(run_dir: Path, tmp_path: Path) -> None:
    """An adapter saved for a round that never completed is not an iterate yet."""
    from nlhf.llm.evaluate import open_run, resolve_iterate

    run = _copy_run(run_dir, tmp_path / "killed")
    _write_state(run, 2)
    opened = open_run(run)
    assert opened.iterations == (1, 2)
    assert resolve_iterate(opened, "last") == ("last", (2,))
    assert resolve_iterate(opened, "average") == ("average", (1, 2))


def test_average_needs_the_iterates_in_state_json(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old-style state.json (no policy_iterates): one line, before any model loads."""
    import nlhf.llm.evaluate as ev
    import nlhf.llm.policy.lm as lm

    run = _copy_run(run_dir, tmp_path / "old")
    (run / "state.json").write_text(json.dumps({"completed_iteration": 3}))
    monkeypatch.setattr(lm, "load_policy", lambda cfg: pytest.fail("model loaded"))
    with pytest.raises(NLHFInputError) as e:
        ev.evaluate(run, iterate="average", progress=False)
    assert "\n" not in str(e.value) and "state.json" in str(e.value)
    assert "policy_iterates lists []" in str(e.value) and "--iterate last" in str(e.value)
    assert not (run / "eval").exists()
