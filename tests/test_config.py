"""Trainer config: defaults, one-line errors naming the field, overrides, recipe and plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nlhf.errors import NLHFInputError
from nlhf.llm.config import TrainConfig, dump_config, load_config, parse_overrides
from nlhf.llm.plan import format_plan, make_plan

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "llama3-8b-enpo.yaml"


REQUIRED = "run_dir: runs/demo\nalgorithm: denpo\n"


def _cfg(tmp_path: Path, data: object) -> Path:
    """A config file; a dict gets the required fields unless it sets them."""
    path = tmp_path / "c.yaml"
    if isinstance(data, dict):
        data = {"run_dir": "runs/demo", "algorithm": "denpo", **data}
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _error(path: Path, overrides: dict | None = None) -> str:
    with pytest.raises(NLHFInputError) as ei:
        load_config(path, overrides)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


def test_empty_file_names_the_required_fields(tmp_path: Path) -> None:
    msg = _error(_cfg(tmp_path, ""))
    assert "missing required fields 'run_dir', 'algorithm'" in msg
    # The example it gives is itself a valid config (not a renamed algorithm).
    example = msg.split("e.g. ")[1].split(" (see")[0]
    fields = dict(part.split(": ") for part in example.split(" and "))
    assert load_config(_cfg(tmp_path, "".join(f"{k}: {v}\n" for k, v in fields.items())))
    assert "'algorithm'" in _error(_cfg(tmp_path, "run_dir: runs/x\n"))
    # An override counts as setting the field.
    assert load_config(_cfg(tmp_path, "run_dir: runs/x\n"), {"algorithm": "xpo"}).algorithm == "xpo"


def test_required_fields_then_defaults(tmp_path: Path) -> None:
    cfg = load_config(_cfg(tmp_path, REQUIRED))
    assert cfg == TrainConfig()
    assert cfg.algorithm == "denpo" and cfg.iterations == 3
    assert cfg.hparams.eta == 7.5e-3 and cfg.hparams.tau == 2.5e-3
    assert cfg.model.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.judge == {"type": "criteria"}


def test_empty_section_means_defaults(tmp_path: Path) -> None:
    cfg = load_config(_cfg(tmp_path, REQUIRED + "hparams:\nrollout:\n  max_new_tokens: 16\n"))
    assert cfg.hparams == TrainConfig().hparams and cfg.rollout.max_new_tokens == 16


def test_unknown_algorithm_lists_choices(tmp_path: Path) -> None:
    msg = _error(_cfg(tmp_path, {"algorithm": "ppo"}))
    assert "field 'algorithm'" in msg and "'ppo'" in msg
    for choice in ("denpo", "inpo", "xpo", "sppo", "online-dpo", "online-ipo", "nash-md"):
        assert choice in msg


def test_tau_must_be_below_eta(tmp_path: Path) -> None:
    msg = _error(_cfg(tmp_path, {"hparams": {"tau": 0.01, "eta": 0.005}}))
    assert "field 'hparams.tau'" in msg
    assert "tau (0.01) must be < eta (0.005): eta is the inverse step size" in msg
    _error(_cfg(tmp_path, {"hparams": {"tau": 0.005, "eta": 0.005}}))
    # Algorithms without the tau/eta mixture accept it.
    cfg = load_config(_cfg(tmp_path, {"algorithm": "xpo", "hparams": {"tau": 0.01, "eta": 0.005}}))
    assert cfg.algorithm == "xpo"


def test_sweep_is_refused_with_the_way_to_run_one(tmp_path: Path) -> None:
    msg = _error(_cfg(tmp_path, {"sweep": [{"eta": 0.01, "tau": 0.001}]}))
    assert "field 'sweep'" in msg and "own run" in msg


def test_old_algorithm_name_gets_the_new_one(tmp_path: Path) -> None:
    msg = _error(_cfg(tmp_path, {"algorithm": "enpo"}))
    assert "field 'algorithm'" in msg and "'denpo'" in msg


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("hparams", "eta", 0),
        ("hparams", "tau", -1e-3),
        ("hparams", "beta", 0),
        ("hparams", "alpha", -0.1),
        ("hparams", "s", 0),
        ("hparams", "n_comparators", 0),
        ("hparams", "step_b_candidates", 0),
        ("hparams", "pairs_per_prompt", -1),
        ("data", "prompts_per_iteration", 0),
        ("rollout", "top_p", 1.5),
        ("rollout", "temperature", 0),
        ("train", "learning_rate", 0),
        ("train", "weight_decay", -1),
        ("eval", "max_new_tokens", 0),
    ],
)
def test_non_positive_values_name_the_field(
    tmp_path: Path, section: str, key: str, value: float
) -> None:
    msg = _error(_cfg(tmp_path, {section: {key: value}}))
    assert f"field '{section}.{key}'" in msg


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("train:\n  learning_rate: .inf\n", "train.learning_rate", "finite"),
        ("hparams:\n  eta: .inf\n", "hparams.eta", "finite"),
        ("hparams:\n  tau: .nan\n", "hparams.tau", "finite"),
        ("train:\n  max_grad_norm: .inf\n", "train.max_grad_norm", "finite"),
        ("iterations: true\n", "iterations", "valid integer"),
        ("iterations: 2.5\n", "iterations", "valid integer"),
        ("iterations: 1e9\n", "iterations", "valid integer"),  # YAML 1.1 reads a string
        ("iterations: 1000000000\n", "iterations", "less than or equal to 10000"),
        ("rollout:\n  max_new_tokens: 1000000000\n", "rollout.max_new_tokens", "32768"),
        ("eval:\n  max_new_tokens: 1000000000\n", "eval.max_new_tokens", "32768"),
        ("model:\n  lora:\n    r: 100000\n", "model.lora.r", "1024"),
        ("train:\n  learning_rate: 1.0e+30\n", "train.learning_rate", "less than or equal"),
        ("rollout:\n  temperature: 1.0e-30\n", "rollout.temperature", "greater than or equal"),
        ("eval:\n  temperature: 1.0e-30\n", "eval.temperature", "greater than or equal"),
        ("hparams:\n  eta: true\n", "hparams.eta", "valid number"),
        ("seed: 5000000000\n", "seed", "less than"),
    ],
)
def test_non_finite_non_integer_and_absurd_values_are_refused(
    tmp_path: Path, text: str, field: str, words: str
) -> None:
    msg = _error(_cfg(tmp_path, REQUIRED + text))
    assert f"field '{field}'" in msg and words in msg


def test_whole_floats_are_still_numbers(tmp_path: Path) -> None:
    cfg = load_config(_cfg(tmp_path, REQUIRED + "hparams:\n  eta: 1\n  tau: 0.5\n"))
    assert cfg.hparams.eta == 1.0 and isinstance(cfg.hparams.eta, float)


def test_non_positive_iterations(tmp_path: Path) -> None:
    assert "field 'iterations'" in _error(_cfg(tmp_path, {"iterations": 0}))


@pytest.mark.parametrize(
    ("data", "field", "allowed"),
    [
        ({"hparams": {"etta": 0.1}}, "hparams.etta", "eta"),
        ({"model": {"lora": {"rank": 8}}}, "model.lora.rank", "target_modules"),
        ({"itertions": 2}, "itertions", "iterations"),
    ],
)
def test_unknown_field(tmp_path: Path, data: dict, field: str, allowed: str) -> None:
    msg = _error(_cfg(tmp_path, data))
    assert f"field '{field}'" in msg and "unknown field" in msg and allowed in msg


def test_judge_type_required_and_checked(tmp_path: Path) -> None:
    assert "field 'judge.type'" in _error(_cfg(tmp_path, {"judge": {"model": "x"}}))
    msg = _error(_cfg(tmp_path, {"judge": {"type": "oracle"}}))
    assert "field 'judge.type'" in msg and "reward-model" in msg
    cfg = load_config(_cfg(tmp_path, {"judge": {"type": "openai", "url": "http://x"}}))
    assert cfg.judge["url"] == "http://x"


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    msg = _error(_cfg(tmp_path, "hparams:\n  eta: [1, 2\n"))
    assert "not valid YAML" in msg and "line" in msg
    msg = _error(_cfg(tmp_path, "- a\n- b\n"))
    assert "mapping" in msg
    missing = tmp_path / "nope.yaml"
    with pytest.raises(NLHFInputError, match="config file not found"):
        load_config(missing)


def test_overrides_merge(tmp_path: Path) -> None:
    path = _cfg(tmp_path, {"hparams": {"eta": 0.02, "beta": 0.1}, "seed": 4})
    cfg = load_config(path, {"hparams.eta": 0.01, "rollout.backend": "vllm", "iterations": 5})
    assert cfg.hparams.eta == 0.01 and cfg.hparams.beta == 0.1  # sibling kept
    assert cfg.rollout.backend == "vllm" and cfg.iterations == 5 and cfg.seed == 4
    msg = _error(path, {"hparams.tau": 0.5})
    assert "field 'hparams.tau' (set by override)" in msg
    assert "unknown field" in _error(path, {"hparams.nope": 1})


def test_parse_overrides_reads_yaml_values() -> None:
    out = parse_overrides(
        [
            "hparams.eta=0.01",
            "model.lora.target_modules=[q_proj, v_proj]",
            "model.trust_remote_code=true",
            "run_dir=runs/x",
        ]
    )
    assert out == {
        "hparams.eta": 0.01,
        "model.lora.target_modules": ["q_proj", "v_proj"],
        "model.trust_remote_code": True,
        "run_dir": "runs/x",
    }
    with pytest.raises(NLHFInputError, match="key=value"):
        parse_overrides(["hparams.eta"])


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(RECIPE, {"seed": 7})
    out = dump_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(out) == cfg
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_paper_recipe_loads_with_published_settings() -> None:
    cfg = load_config(RECIPE)
    h = cfg.hparams
    assert cfg.algorithm == "denpo" and cfg.iterations == 3
    assert cfg.model.name == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert cfg.model.dtype == "bfloat16" and cfg.rollout.backend == "vllm"
    assert (h.eta, h.tau, h.alpha, h.beta, h.s) == (7.5e-3, 2.5e-3, 1e-3, 0.05, 1.0)
    assert (h.n_comparators, h.step_b_candidates, h.pairs_per_prompt) == (4, 2, 1)
    assert cfg.data.prompts == "hf:openbmb/UltraFeedback:train:instruction"
    assert cfg.data.prompts_per_iteration == 20000
    assert cfg.judge == {
        "type": "reward-model",
        "model": "Skywork/Skywork-Reward-V2-Llama-3.1-8B-40M",
    }


def test_paper_recipe_plan_counts() -> None:
    plan = make_plan(load_config(RECIPE), n_train_prompts=63_000)
    # Per prompt: 1 pair = 2 responses (y, y'), each compared with 4 comparators
    # -> 8 comparisons, each judged in both orders -> 16 calls.
    assert plan["judge"]["comparisons_per_prompt"] == 8
    assert plan["judge"]["calls_per_round"] == 20_000 * 16 == 320_000
    assert plan["judge"]["calls_total"] == 3 * 320_000 == 960_000
    # Generations: y, y' and 4 comparators z ~ pi_t; the comparators double as the 2 Step B
    # candidates and the proximal sample (the trainer's round, counted by PlanRound).
    assert plan["generations"]["per_prompt"] == {
        "policy (~ pi_t)": 1, "comparator (~ pi_t)": 4, "adversary (~ pihat_t)": 1}
    assert plan["generations"]["per_round"] == 120_000
    assert plan["generations"]["total"] == 360_000
    assert plan["hparams"] == {"eta": 7.5e-3, "tau": 2.5e-3, "alpha": 1e-3, "beta": 0.05,
                               "s": 1.0}
    assert plan["judge"]["model"] == "Skywork/Skywork-Reward-V2-Llama-3.1-8B-40M"
    assert plan["memory"]["params"] == 8_030_261_248
    assert plan["memory"]["weights_bytes"] == 8_030_261_248 * 2
    assert plan["warnings"] == []
    text = format_plan(plan)
    assert "960,000" in text and "8.03B" in text and "Skywork-Reward-V2" in text
    assert "eta 0.0075, tau 0.0025, alpha 0.001, beta 0.05" in text
    assert "memory per GPU" in text


def test_paper_recipe_memory_per_gpu_shrinks_with_gpus() -> None:
    one = make_plan(load_config(RECIPE))["memory"]
    eight = make_plan(load_config(RECIPE), gpus=8)["memory"]
    # Step A forwards y, y' and a proximal sample per item: 3 rows per item.
    assert one["activation_sequences"] == 8 * 3 and eight["activation_sequences"] == 3
    assert eight["per_gpu_bytes"] < one["per_gpu_bytes"]
    assert eight["per_gpu_bytes"] - eight["activation_bytes"] == (
        one["per_gpu_bytes"] - one["activation_bytes"])


def test_plan_counts_what_the_trainer_runs(tmp_path: Path) -> None:
    """The plan's counts equal what a real tiny run generates and asks the judge."""
    from nlhf.llm.loop import train
    from nlhf.llm.store import RunStore
    from test_train import tiny_config

    cfg = tiny_config(tmp_path, "denpo", iterations=1, hparams={"n_comparators": 3})
    plan = make_plan(cfg)
    run = train(cfg, progress=False)
    with RunStore(run / "store.sqlite") as store:
        made = sum(len(store.get_generations(1, role))
                   for role in ("policy", "adversary", "comparator"))
        assert made == plan["generations"]["per_round"]
        assert store.count_judge_calls() <= plan["judge"]["calls_per_round"]


@pytest.mark.parametrize(
    ("algorithm", "gens", "calls"),
    [
        ("inpo", 2, 2),
        ("online-dpo", 2, 2),
        ("online-ipo", 2, 2),
        ("nash-md", 2, 2),
        ("xpo", 2, 2),
        ("sppo", 1 + 4, 2 * 4),
    ],
)
def test_plan_accounting_per_algorithm(algorithm: str, gens: int, calls: int) -> None:
    plan = make_plan(TrainConfig(algorithm=algorithm))
    assert plan["prompts_per_round"] == 64
    assert plan["generations"]["per_prompt_total"] == gens
    assert plan["judge"]["calls_per_round"] == 64 * calls
    assert plan["judge"]["calls_total"] == 3 * 64 * calls


def test_plan_default_small_model_lora_memory() -> None:
    plan = make_plan(TrainConfig(), n_train_prompts=40)
    assert plan["prompts_per_round"] == 40 and plan["warnings"]
    mem = plan["memory"]
    assert mem["params"] == 134_515_008 and mem["weights_bytes"] == 134_515_008 * 4
    # LoRA r=16 on q,k,v,o: 16*((576+576)*2 + (576+192)*2) per layer, 30 layers.
    assert mem["trainable_params"] == 16 * (2304 + 1536) * 30
    assert mem["optimizer_bytes"] == 8 * mem["trainable_params"]


def test_plan_unknown_model(tmp_path: Path) -> None:
    plan = make_plan(TrainConfig(model={"name": str(tmp_path / "nothing")}))
    assert plan["memory"]["params"] == "unknown"
    assert "unknown" in format_plan(plan)


def test_plan_reads_local_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        '{"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,'
        ' "vocab_size": 49152, "num_attention_heads": 9, "num_key_value_heads": 3,'
        ' "tie_word_embeddings": true}'
    )
    plan = make_plan(TrainConfig(model={"name": str(tmp_path)}))
    assert plan["memory"]["params"] == 134_515_008


@pytest.mark.parametrize(
    ("algorithm", "hparams", "expected"),
    [("denpo-explore", None, "token"),  # written before the key existed: tokens were tempered
     ("denpo-explore", {"explore_sampling": "response"}, "response"),
     ("denpo-explore", {"eta": 0.1}, "token"),
     ("denpo", None, "response")],
)
def test_a_saved_run_config_keeps_what_older_versions_ran(tmp_path, algorithm, hparams, expected):
    from nlhf.llm.config import load_run_config

    raw = {"run_dir": str(tmp_path / "run"), "algorithm": algorithm}
    if hparams is not None:
        raw["hparams"] = hparams
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_run_config(path).hparams.explore_sampling == expected
    assert load_config(path).hparams.explore_sampling == (  # a user's config: today's default
        hparams or {}).get("explore_sampling", "response")
