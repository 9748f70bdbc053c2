"""GPU check: one ENPO iteration of the real trainer on a random ~1B Llama, with its speeds.

What it does, in order:

1. builds a word-level tokenizer in code (32,000 ids ``<unk> <s> </s> <pad> w4 … w31999``,
   no download) and ``--prompts`` + 1 prompts of ``--prompt-len`` random words (one token
   each; the extra one is the held-out prompt the trainer's config requires);
2. builds a randomly initialised Llama (default: Llama-3.2-1B's shape with that 32k vocab,
   untied head: hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192, ≈1.1B parameters)
   in ``--dtype`` and saves it with the tokenizer as safetensors to a temp folder;
3. times a matmul loop, the measured peak (CUDA: bf16 8192³; CPU: fp32 256³), and warms
   the kernels up (a short generate, forward and backward);
4. runs ``nlhf.llm.loop.train`` for one ENPO iteration on that folder (``model.name`` = the
   folder, LoRA r=16 on q/k/v/o, judge ``criteria`` with the text-only criteria
   ``[length, diversity, structure]``: deterministic, no model, no download);
5. reads the trainer's ``time_*`` metrics and the run store, and reports:

   - generation tokens/s = response tokens kept (EOS included) / ``time_generate``;
   - training tokens/s = prompt + response tokens of every row that went through a
     forward+backward in Step A and Step B / (``time_step_a`` + ``time_step_b`` −
     ``time_step_b_scoring``); each row counted once per epoch;
   - forward (log-prob) tokens/s = rows' tokens of the no-grad passes / ``time_logprobs``;
   - peak GPU memory = ``torch.cuda.max_memory_allocated`` over the trainer's run;
   - MFU = achieved model FLOP/s / peak, with N = parameters outside the input embedding
     (the matmul weights, LM head included) and FLOPs per token: generation 2N, forward 2N,
     LoRA training 4N (forward 2N + backward activation gradients 2N; the frozen base
     computes no weight gradients; attention scores and LoRA matmuls are not counted).
     ``train_mfu_6n`` also gives the 6N convention of full fine-tuning, for comparison.
     Peak: the card's dense bf16 spec (by ``torch.cuda.get_device_name()``: H100 SXM /
     H200 989 TFLOP/s) and the measured matmul peak; MFU is given against both.

``--tiny`` shrinks everything (hidden 64, 2 layers, vocab 512, 4 prompts, 8 new tokens) for
a CPU smoke run in seconds: ``python scripts/gpu_check.py --tiny --device cpu``.
Needs torch, transformers, peft, tokenizers, safetensors, numpy, pydantic, pyyaml, rich.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing nlhf
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")
#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a substring of the device name;
#: the first match wins, so the more specific names come first.
SPEC_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H800", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A10G", 70.0),
)


@dataclass(frozen=True)
class Shape:
    """Model and run sizes of one check."""

    vocab: int = 32000
    hidden: int = 2048
    layers: int = 16
    heads: int = 32
    kv_heads: int = 8
    intermediate: int = 8192
    prompts: int = 64
    prompt_len: int = 64
    max_new_tokens: int = 128
    rollout_batch: int = 64
    train_batch: int = 16
    n_comparators: int = 2


TINY = Shape(vocab=512, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
             prompts=4, prompt_len=8, max_new_tokens=8, rollout_batch=8, train_batch=4)


def spec_peak_tflops(name: str) -> float | None:
    """The card's dense bf16 peak in TFLOP/s, or None for a card not in the table."""
    for key, tflops in SPEC_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, loops: int = 20,
                repeats: int = 3) -> float:
    """Best FLOP/s of ``loops`` back-to-back n×n×n matmuls (2n³ each) over ``repeats``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    sync(device)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            torch.matmul(a, b, out=out)
        sync(device)
        best = max(best, 2.0 * n**3 * loops / (time.perf_counter() - start))
    del a, b, out
    return best


def build_tokenizer(vocab: int) -> Any:
    """A word-level fast tokenizer: ids 0-3 special, then one token per word ``w{i}``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {tok: i for i, tok in enumerate(SPECIALS)}
    words.update({f"w{i}": i for i in range(len(SPECIALS), vocab)})
    core = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", padding_side="left")


def build_model(shape: Shape, dtype: torch.dtype, device: torch.device, seed: int) -> Any:
    """A randomly initialised LlamaForCausalLM of ``shape``, in ``dtype`` on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, max_position_embeddings=4096,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


def param_counts(model: Any) -> dict[str, int]:
    """Total parameters and N = those outside the input embedding (the matmul weights)."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    return {"params_total": total, "params_matmul": total - embed}


def write_prompts(path: Path, n: int, length: int, vocab: int, seed: int) -> None:
    """``n`` prompts of ``length`` random words (random token ids) as JSONL."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIALS), vocab, (n, length), generator=gen).tolist()
    path.write_text("".join(json.dumps({"prompt": " ".join(f"w{i}" for i in row)}) + "\n"
                            for row in ids))


def warm_up(model: Any, shape: Shape, device: torch.device) -> None:
    """A short generate, forward and backward, so CUDA/cuBLAS start-up and the first
    kernel choices are not timed as trainer work."""
    ids = torch.randint(len(SPECIALS), shape.vocab, (shape.rollout_batch, shape.prompt_len),
                        device=device)
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                       max_new_tokens=8, min_new_tokens=8, pad_token_id=3, top_k=0)
    model(input_ids=ids[: shape.train_batch]).logits.float().logsumexp(-1).mean().backward()
    model.zero_grad(set_to_none=True)
    sync(device)


def train_config(shape: Shape, work: Path, dtype: str, seed: int) -> Any:
    """The one-iteration ENPO config of the check (run dir and prompts under ``work``)."""
    from nlhf.llm.config import TrainConfig

    return TrainConfig.model_validate({
        "run_dir": str(work / "run"), "seed": seed, "iterations": 1, "algorithm": "denpo",
        "model": {"name": str(work / "model"), "dtype": dtype, "finetune": "lora",
                  "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
        "hparams": {"eta": 0.05, "tau": 0.005, "alpha": 0.001, "beta": 0.05,
                    "n_comparators": shape.n_comparators, "step_b_candidates": 2,
                    "pairs_per_prompt": 1},
        "data": {"prompts": str(work / "prompts.jsonl"), "prompts_per_iteration": shape.prompts,
                 "heldout": 1, "max_prompt_chars": 100_000},
        "rollout": {"backend": "hf", "max_new_tokens": shape.max_new_tokens,
                    "temperature": 1.0, "top_p": 1.0, "batch_size": shape.rollout_batch},
        # Whole minibatches per forward: a GPU wants big matmuls (micro-batches save memory).
        "train": {"learning_rate": 3e-4, "epochs": 1, "batch_size": shape.train_batch,
                  "micro_batch_size": 0},
        "judge": {"type": "criteria", "criteria": ["length", "diversity", "structure"]},
    })


def token_counts(run_dir: Path, cfg: Any, tokenizer: Any) -> dict[str, int]:
    """Tokens (prompt + response, no padding) that each phase pushed through the model."""
    from nlhf.llm.rundir import RunDir
    from nlhf.llm.store import RunStore

    h = cfg.hparams
    with RunStore(RunDir(run_dir).store) as store:
        prompt_len = {pid: len(tokenizer(text)["input_ids"]) for pid, text in store.prompts()}

        def rows(role: str, keep: Any = None) -> list[int]:
            return [prompt_len[g["prompt_id"]] + len(g["response_ids"])
                    for g in store.get_generations(1, role)
                    if keep is None or keep(g["sample_index"])]

        policy, adversary, comparator = rows("policy"), rows("adversary"), rows("comparator")
        generated = sum(len(g["response_ids"]) for role in ("policy", "adversary", "comparator")
                        for g in store.get_generations(1, role))
        fresh = rows("comparator", lambda j: j == h.n_comparators - 1) if h.alpha > 0 else []
        candidates = rows("comparator", lambda j: j < h.step_b_candidates)
        payload = store.step_payload("it1/generate") or {}
    epochs = cfg.train.epochs
    step_a = epochs * (sum(policy) + sum(adversary) + sum(fresh))
    step_b = epochs * sum(candidates)  # every candidate is a winner or a loser once
    # No-grad passes of the logprobs phase: pi_ref of y and y', pi_t of y' (the generation
    # cache holds pi_t of y and z); Step B scores its candidates once more.
    logprobs = sum(policy) + 2 * sum(adversary)
    return {"generated_tokens": int(payload.get("tokens", generated)),
            "samples": int(payload.get("samples", 0)), "step_a_tokens": step_a,
            "step_b_tokens": step_b, "logprob_tokens": logprobs,
            "step_b_scoring_tokens": sum(candidates),
            "comparator_rows": len(comparator)}


def read_metrics(run_dir: Path) -> dict[str, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {k: float(v) for k, v in json.loads(lines[-1]).items()}


def rates(m: dict[str, float], tokens: dict[str, int], n: int,
          peaks: dict[str, float | None]) -> dict[str, float | None]:
    """Tokens/s and MFU of each part against each peak (FLOP/s; None: unknown)."""
    train_seconds = m["time_step_a"] + m["time_step_b"] - m.get("time_step_b_scoring", 0.0)
    train_tokens = tokens["step_a_tokens"] + tokens["step_b_tokens"]
    fwd_tokens = tokens["logprob_tokens"] + tokens["step_b_scoring_tokens"]
    fwd_seconds = m["time_logprobs"] + m.get("time_step_b_scoring", 0.0)
    out: dict[str, float | None] = {
        "generate_tokens_per_s": tokens["generated_tokens"] / m["time_generate"],
        "train_tokens_per_s": train_tokens / train_seconds,
        "step_a_tokens_per_s": tokens["step_a_tokens"] / m["time_step_a"],
        "forward_tokens_per_s": fwd_tokens / fwd_seconds,
        "train_seconds": train_seconds,
        "forward_seconds": fwd_seconds,
    }
    gen_rate = tokens["generated_tokens"] / m["time_generate"]
    train_rate = train_tokens / train_seconds
    fwd_rate = fwd_tokens / fwd_seconds
    # part -> (key prefix, model FLOP/s)
    flops = {"generate": ("generate", 2.0 * n * gen_rate),
             "train": ("train", 4.0 * n * train_rate),
             "train_6n": ("train", 6.0 * n * train_rate),
             "forward": ("forward", 2.0 * n * fwd_rate)}
    for part, (prefix, value) in flops.items():
        suffix = "_6n" if part == "train_6n" else ""
        out[f"{prefix}_tflops{suffix}"] = value / 1e12
        for peak_name, peak in peaks.items():
            out[f"{prefix}_mfu{suffix}_{peak_name}"] = value / peak if peak else None
    return out


def billions(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.3f}M"


def markdown(result: dict[str, Any]) -> str:
    """A short table of the headline numbers."""
    r = result["results"]

    def pct(key: str) -> str:
        v = r.get(key)
        return "n/a" if v is None else f"{100 * v:.1f}%"

    peak = result["peaks_tflops"]
    spec = "n/a" if peak["spec"] is None else f"{peak['spec']:.0f}"
    measured = "n/a" if peak["measured"] is None else f"{peak['measured']:.3g}"
    lines = [
        f"Device: {result['device_name']} ({result['device']}), torch {result['torch']}, "
        f"transformers {result['transformers']}, peft {result['peft']}; model "
        f"{billions(result['params_total'])} params (N = {billions(result['params_matmul'])} "
        f"outside the input embedding), {result['dtype']}; peak: spec {spec}, measured "
        f"{measured} TFLOP/s ({peak['matmul_n']}³ matmul).",
        "",
        "| part | tokens | seconds | tokens/s | TFLOP/s | MFU (spec) | MFU (measured) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    t, m = result["tokens"], result["metrics"]
    rows = [
        ("generation (2N/token)", t["generated_tokens"], m["time_generate"], "generate",
         "generate_mfu"),
        ("training, Step A + B (4N/token, LoRA)", t["step_a_tokens"] + t["step_b_tokens"],
         r["train_seconds"], "train", "train_mfu"),
        ("log-prob forward (2N/token)", t["logprob_tokens"] + t["step_b_scoring_tokens"],
         r["forward_seconds"], "forward", "forward_mfu"),
    ]
    for label, tokens, seconds, part, mfu in rows:
        rate = tokens / seconds
        lines.append(f"| {label} | {tokens} | {seconds:.2f} | {rate:,.0f} | "
                     f"{r[part + '_tflops']:.3g} | {pct(mfu + '_spec')} | "
                     f"{pct(mfu + '_measured')} |")
    mem = result["peak_memory_gib"]
    lines += ["", f"Peak GPU memory (max allocated): "
              f"{'n/a' if mem is None else f'{mem:.1f} GiB'}; "
              f"iteration {m['time_iteration']:.1f} s (generate {m['time_generate']:.1f}, "
              f"log-probs {m['time_logprobs']:.1f}, judge {m['time_judge']:.1f}, step A "
              f"{m['time_step_a']:.1f}, step B {m['time_step_b']:.1f}); "
              f"training MFU by 6N: {pct('train_mfu_6n_spec')} (spec)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny model and run (CPU smoke test)")
    p.add_argument("--dtype", default=None, help="default: bfloat16 (float32 with --tiny)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--markdown", type=Path, default=None, help="write the table here")
    p.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--matmul-n", type=int, default=None, help="default 8192 (CPU: 256)")
    for name in ("prompts", "max_new_tokens", "rollout_batch", "train_batch", "layers"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, train one iteration, measure; returns the result dictionary."""
    import peft
    import transformers

    import nlhf.llm.policy.lm as lm
    from nlhf.llm.loop import train

    transformers.utils.logging.disable_progress_bar()  # no weight-loading bars in the log
    shape = TINY if args.tiny else Shape()
    over = {k: getattr(args, k) for k in ("prompts", "max_new_tokens", "rollout_batch",
                                          "train_batch", "layers") if getattr(args, k)}
    shape = Shape(**{**asdict(shape), **over})
    dtype_name = args.dtype or ("float32" if args.tiny else "bfloat16")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # The trainer has no device option: LMPolicy takes lm.default_device() (CUDA when
    # present); point it at --device.
    lm.default_device = lambda: device  # type: ignore[assignment]
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="nlhf_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    try:
        from nlhf.llm.policy.loading import torch_dtype

        dtype = torch_dtype(dtype_name)
        start = time.perf_counter()
        tokenizer = build_tokenizer(shape.vocab)
        model = build_model(shape, dtype, device, args.seed)
        counts = param_counts(model)
        print(f"model: {counts['params_total']:,} params ({billions(counts['params_total'])}), "
              f"N = {counts['params_matmul']:,} outside the input embedding; {dtype_name} on "
              f"{device} ({name})", flush=True)
        matmul_n = args.matmul_n or (8192 if cuda else 256)
        measured = matmul_peak(device, dtype if cuda else torch.float32, matmul_n)
        print(f"matmul {matmul_n}³ {dtype_name if cuda else 'float32'}: "
              f"{measured / 1e12:.1f} TFLOP/s", flush=True)
        warm_up(model, shape, device)
        model.save_pretrained(work / "model", safe_serialization=True)
        tokenizer.save_pretrained(work / "model")
        del model
        write_prompts(work / "prompts.jsonl", shape.prompts + 1, shape.prompt_len, shape.vocab,
                      args.seed)
        setup = time.perf_counter() - start
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        cfg = train_config(shape, work, dtype_name, args.seed)
        start = time.perf_counter()
        train(cfg, progress=False)
        train_wall = time.perf_counter() - start
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
        reserved = torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None
        metrics = read_metrics(work / "run")
        tokens = token_counts(work / "run", cfg, tokenizer)
        spec = spec_peak_tflops(name) if cuda else None
        peaks = {"spec": spec * 1e12 if spec else None, "measured": measured}
        result: dict[str, Any] = {
            "device": str(device), "device_name": name, "dtype": dtype_name,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version(),
            "shape": asdict(shape), **counts,
            "peaks_tflops": {"spec": spec, "measured": measured / 1e12 if measured else None,
                             "matmul_n": matmul_n},
            "peak_memory_gib": peak_mem, "peak_reserved_gib": reserved,
            "setup_seconds": setup, "train_wall_seconds": train_wall,
            "metrics": metrics, "tokens": tokens,
            "results": rates(metrics, tokens, counts["params_matmul"], peaks),
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["wall_seconds"] = time.perf_counter() - wall
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    table = markdown(result)
    print(table, end="")
    print(json.dumps(result["results"], indent=1))
    print(f"wall {result['wall_seconds']:.1f} s (setup {result['setup_seconds']:.1f}, "
          f"train() {result['train_wall_seconds']:.1f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
