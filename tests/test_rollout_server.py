"""Generation backends: the OpenAI-compatible server backend against a local fake server
(127.0.0.1 only), a tiny training run through it, the HF wrapper and the vLLM import guard."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from fake_openai import BASE_MODEL, EOS, FakeOpenAI, free_port
from nlhf.errors import NLHFInputError
from nlhf.llm.config import TrainConfig, validate_config
from nlhf.llm.rollout import Sampling, generate
from nlhf.llm.rollout.backends import make_generator
from nlhf.llm.rollout.base import HFGenerator, request_seed
from nlhf.llm.rollout.openai_server import GeneratorUnavailableError, OpenAIServerGenerator
from nlhf.llm.store import RunStore

BASE = BASE_MODEL
EOS_FALLBACK = EOS


# --------------------------------------------------------------------------- fake server


@pytest.fixture
def tokenizer(tiny_parts: tuple[Any, Any]) -> Any:
    return tiny_parts[0]


@pytest.fixture
def server(tokenizer: Any) -> Iterator[FakeOpenAI]:
    srv = FakeOpenAI(decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                     base_model=BASE)
    yield srv
    srv.stop()


def client(server: FakeOpenAI, tokenizer: Any, **kwargs: Any) -> OpenAIServerGenerator:
    kwargs.setdefault("eos_token_ids", [EOS_FALLBACK])
    kwargs.setdefault("backoff", 0.01)
    return OpenAIServerGenerator(server.url, BASE, tokenizer=tokenizer, **kwargs)


# --------------------------------------------------------------------------- protocol


def test_sampling_params_and_seeds_pass_through(server, tokenizer, prompts):
    gen = client(server, tokenizer, concurrency=2)
    samples = gen.generate(prompts, None, Sampling(n_per_prompt=3, max_new_tokens=7,
                                                   temperature=0.7, top_p=0.9, seed=11),
                           progress=False)
    sent = sorted(server.completions(), key=lambda b: prompts.index(b["prompt"]))
    assert len(sent) == len(prompts)  # one request per prompt, n samples each
    for i, body in enumerate(sent):
        assert body["prompt"] == prompts[i] and body["model"] == BASE
        assert (body["n"], body["max_tokens"], body["temperature"], body["top_p"]) == (
            3, 7, 0.7, 0.9)
        assert body["seed"] == request_seed(11, i)
        assert body["stop_token_ids"] == [EOS_FALLBACK]
        assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (-1, 0.0, 1.0)
    assert len({b["seed"] for b in sent}) == len(prompts)
    # grouped by prompt in prompt order, like rollout.hf.generate
    assert [s.prompt_index for s in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for s in samples:
        assert s.logprob is None and s.prompt_ids == prompts[s.prompt_index]
        assert len(s.response_ids) <= 7
        assert EOS_FALLBACK not in s.response_ids[:-1]
        assert s.text == tokenizer.decode(s.response_ids, skip_special_tokens=True)
    stopped = [s for s in samples if s.response_ids and s.response_ids[-1] == EOS_FALLBACK]
    assert stopped, "some fake samples stop before max_tokens and must end in EOS"


def test_same_seed_same_samples_and_seed_matters(server, tokenizer, prompts):
    gen = client(server, tokenizer)
    def seeded(seed: int) -> Sampling:
        return Sampling(n_per_prompt=2, max_new_tokens=6, seed=seed)

    a = gen.generate(prompts, None, seeded(5), progress=False)
    b = gen.generate(prompts, None, seeded(5), progress=False)
    c = gen.generate(prompts, None, seeded(6), progress=False)
    assert [s.response_ids for s in a] == [s.response_ids for s in b]
    assert [s.response_ids for s in a] != [s.response_ids for s in c]
    # the n samples of one prompt differ (the server's per-sample streams)
    assert a[0].response_ids != a[1].response_ids or a[2].response_ids != a[3].response_ids


@pytest.mark.parametrize("mode", ["logprobs", "text"])
def test_token_ids_from_logprobs_or_retokenized_text(server, tokenizer, prompts, mode):
    sampling = Sampling(n_per_prompt=2, seed=3, max_new_tokens=6)
    exact = client(server, tokenizer).generate(prompts, None, sampling, progress=False)
    server.state["ids"] = mode
    other = client(server, tokenizer, token_ids=(mode != "text")).generate(
        prompts, None, sampling, progress=False)
    if mode == "logprobs":
        assert [s.response_ids for s in other] == [s.response_ids for s in exact]
    else:  # text only: re-tokenized, EOS appended where the server stopped
        plain = server.completions()[-1]
        assert "stop_token_ids" not in plain and "return_token_ids" not in plain
        assert [s.text for s in other] == [s.text for s in exact]
        assert [s.response_ids[-1:] == [EOS_FALLBACK] for s in other] == \
            [s.response_ids[-1:] == [EOS_FALLBACK] for s in exact]


def test_text_prompts_option(server, tokenizer, prompts):
    client(server, tokenizer, prompt_format="text").generate(prompts[:1], None, Sampling(),
                                                             progress=False)
    body = server.completions()[-1]
    assert body["prompt"] == tokenizer.decode(prompts[0], skip_special_tokens=False)
    assert body["add_special_tokens"] is False


def test_adapter_load_by_path_then_generate_then_unload(server, tokenizer, prompts, tmp_path):
    folder = tmp_path / "adapters" / "iter_2" / "policy"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    gen = client(server, tokenizer)
    gen.load_adapter("policy-it3", folder)
    gen.load_adapter("policy-it3", folder)  # same name again: unloaded first, no 400
    samples = gen.generate(prompts, "policy-it3", Sampling(max_new_tokens=5), progress=False)
    gen.unload_adapter("policy-it3")
    gen.unload_adapter("policy-it3")  # already gone: 404 ignored
    assert server.state["events"] == [
        ("load", "policy-it3", str(folder.resolve())), ("unload", "policy-it3"),
        ("load", "policy-it3", str(folder.resolve())),
        *[("complete", "policy-it3")] * len(prompts), ("unload", "policy-it3")]
    base = gen.generate(prompts, None, Sampling(max_new_tokens=5), progress=False)
    assert [s.response_ids for s in samples] != [s.response_ids for s in base]
    with pytest.raises(NLHFInputError, match="holds no LoRA adapter"):
        gen.load_adapter("x", tmp_path)


def test_unknown_adapter_is_a_one_line_error(server, tokenizer, prompts):
    with pytest.raises(NLHFInputError) as err:
        client(server, tokenizer).generate(prompts, "policy-it9", progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "HTTP 404" in msg and "--enable-lora" in msg


def test_retries_5xx_then_answers(server, tokenizer, prompts):
    server.state["fail"] = [503, 500]
    gen = client(server, tokenizer, concurrency=1)
    assert len(gen.generate(prompts[:1], None, progress=False)) == 1
    assert gen.requests == 3


def test_server_down_is_one_line_and_never_shows_the_key(tokenizer, prompts, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "sk-very-secret")
    url = f"http://127.0.0.1:{free_port()}/v1"
    gen = OpenAIServerGenerator(url, BASE, tokenizer=tokenizer, max_retries=2, backoff=0.01)
    for call in (lambda: gen.generate(prompts, None, progress=False),
                 lambda: gen.unload_adapter("policy-it1")):
        with pytest.raises(GeneratorUnavailableError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and "unreachable after 3 attempts" in msg and url in msg
        assert "sk-very-secret" not in msg and "rollout.backend: hf" in msg


def test_api_key_comes_from_the_env_var_only(server, tokenizer, prompts, monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    client(server, tokenizer, api_key_env="MY_KEY").generate(prompts[:1], None, progress=False)
    monkeypatch.setenv("MY_KEY", "k123")
    client(server, tokenizer, api_key_env="MY_KEY").generate(prompts[:1], None, progress=False)
    auth = [a for p, _, a in server.state["requests"] if p == "/v1/completions"]
    assert auth == [None, "Bearer k123"]


# --------------------------------------------------------------------------- backends


def test_hf_generator_wraps_rollout_hf(tiny_policy, prompts):
    sampling = Sampling(n_per_prompt=2, max_new_tokens=4, seed=1)
    a = HFGenerator(tiny_policy, batch_size=4).generate(prompts, "policy", sampling,
                                                         progress=False)
    b = generate(tiny_policy, prompts, "policy", sampling, batch_size=4, progress=False)
    assert [(s.response_ids, s.logprob) for s in a] == [(s.response_ids, s.logprob) for s in b]
    cfg = validate_config({}).rollout
    assert isinstance(make_generator(cfg, tiny_policy), HFGenerator)


def test_served_backends_need_lora(make_policy):
    """Servers load LoRA folders; full fine-tuning fails at run start with one line."""
    cfg = validate_config({"rollout": {"backend": "openai", "server": {
        "base_url": "http://127.0.0.1:1/v1", "model": "m"}}})
    with pytest.raises(NLHFInputError, match=r"rollout\.backend: openai serves LoRA"):
        make_generator(cfg.rollout, make_policy(finetune="full"))


def test_vllm_backend_without_vllm_is_one_clear_error(tiny_policy, monkeypatch):
    import nlhf.llm.rollout.vllm_engine as engine

    monkeypatch.setattr(engine, "vllm_available", lambda: False)
    expected = ("rollout.backend: vllm is not installed (GPU only: pip install vllm); "
                "use backend: hf")
    with pytest.raises(NLHFInputError) as err:
        engine.VLLMGenerator("some/model", tokenizer=tiny_policy.tokenizer)
    assert str(err.value) == expected
    cfg = validate_config({"rollout": {"backend": "vllm", "vllm": {"model": "some/model"}}})
    with pytest.raises(NLHFInputError, match="vllm is not installed"):
        make_generator(cfg.rollout, tiny_policy)


def test_openai_backend_config_needs_a_server():
    with pytest.raises(NLHFInputError) as err:
        validate_config({"rollout": {"backend": "openai"}})
    assert str(err.value) == ("<config>: field 'rollout.server.base_url': required when "
                              "rollout.backend is 'openai', e.g. http://127.0.0.1:8000/v1")
    with pytest.raises(NLHFInputError, match=r"rollout\.server\.model"):
        validate_config({"rollout": {"backend": "openai",
                                     "server": {"base_url": "http://127.0.0.1:1/v1"}}})


# --------------------------------------------------------------------------- training


def test_training_rounds_through_the_server(server, tmp_path):
    """ENPO, 2 rounds, rollouts from the fake server: adapters go by folder under per-round
    names before each generation, and the trainer computes every log-prob itself."""
    from nlhf.llm.loop import train

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n"
                               for i in range(8)))
    cfg = TrainConfig.model_validate({
        "run_dir": str(tmp_path / "run"), "seed": 0, "iterations": 2, "algorithm": "denpo",
        "model": {"name": "tiny-random", "lora": {"r": 4, "alpha": 8}},
        "hparams": {"n_comparators": 2, "step_b_candidates": 2, "eta": 0.75, "tau": 0.25,
                    "beta": 0.5},
        "data": {"prompts": str(prompts), "prompts_per_iteration": 3, "heldout": 2},
        "rollout": {"backend": "openai", "max_new_tokens": 6, "temperature": 1.0,
                    "server": {"base_url": server.url, "model": BASE, "max_retries": 1}},
        "train": {"batch_size": 2, "learning_rate": 1e-3},
        "judge": {"type": "criteria", "criteria": ["length", "diversity", "structure"]},
    })
    run = train(cfg, progress=False)

    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        m = json.loads(line)
        assert np.isfinite(m["kl_policy_ref"]) and np.isfinite(m["step_a_loss"])
    # Adapters: loaded by absolute folder, a fresh name per round, before that round's
    # completions, unloaded after them. Round 1 samples the initial adapters (iter_0).
    events = server.state["events"]
    loads = [e for e in events if e[0] == "load"]
    names = [e[1] for e in loads]
    assert [n.rsplit("-", 1)[0] for n in names] == [
        "policy-it1", "adversary-it1", "policy-it2", "adversary-it2"]
    assert len(set(names)) == 4
    for (_, name, path), (t, role) in zip(loads, [(0, "policy"), (0, "adversary"),
                                                  (1, "policy"), (1, "adversary")], strict=True):
        assert path == str((run / f"adapters/iter_{t}/{role}").resolve())
        first_use = events.index(("complete", name))
        assert events.index(("load", name, path)) < first_use < events.index(("unload", name))
    assert {e[1] for e in events if e[0] == "complete"} == set(names)  # pi_ref: never sampled
    assert server.state["loaded"] == {}
    for body in server.completions():
        assert body["max_tokens"] == 6 and body["temperature"] == 1.0
    # No cached log-probs from the server: the logprobs phase computed pi_t for every role.
    with RunStore(run / "store.sqlite") as store:
        assert all(g["logprob"] is None for g in store.get_generations(1, "policy"))
        values = (store.step_payload("it1/logprobs") or {})["values"]
        for key in ("policy/pi_t", "adversary/pi_t", "comparator/pi_t", "policy/ref"):
            assert np.isfinite(values[key]).all() and len(values[key]) > 0
