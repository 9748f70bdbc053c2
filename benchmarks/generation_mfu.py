"""Generation speed of SmolLM2 against this machine's measured fp32 matmul peak (MFU).

First the peak: the best FLOP/s of ``torch.matmul`` on n×n fp32 matrices (2n³ FLOPs each)
over a few timed loops, at the same thread count, measured before and after the generation
runs (the better of the two is the peak: a cold or contended first try only lowers it).
Then HF ``generate`` on SmolLM2 for batch sizes 1..32: fixed prompts (the first ones of the
built-in set, chat template, left padded), sampling at temperature 1 with a fixed seed,
``min_new_tokens = max_new_tokens`` so every row makes exactly that many tokens, KV cache
on. Then

    MFU = new tokens/s × 2 × n_params / peak FLOP/s

(2·n_params FLOPs per decoded token, the tied LM head counted once as a matmul; attention
and the prompt prefill are not counted, so this slightly understates the work done).
Prints a table and writes JSON (default ``benchmarks/results/generation_mfu.json``).

    .venv/bin/python benchmarks/generation_mfu.py [--threads 2] [--batches 1,2,4,8,16,32]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch

from benchjson import write_result
from nlhf.llm.policy.loading import load_model_and_tokenizer
from nlhf.llm.prompts import load_prompts


def matmul_peak(n: int = 2048, loops: int = 8, repeats: int = 3) -> dict[str, float]:
    """Best fp32 FLOP/s of ``loops`` back-to-back n×n matmuls, over ``repeats`` tries."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    out = torch.empty(n, n)
    torch.matmul(a, b, out=out)  # warm-up
    best = 0.0
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            torch.matmul(a, b, out=out)
        seconds = time.perf_counter() - start
        rate = 2.0 * n**3 * loops / seconds
        rates.append(rate)
        best = max(best, rate)
    return {
        "n": n,
        "loops": loops,
        "flops_best": best,
        "flops_median": sorted(rates)[len(rates) // 2],
    }


def prompt_batch(tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-templated prompts, left padded."""
    rendered = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]
    enc = tokenizer(
        rendered, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    )
    return enc["input_ids"], enc["attention_mask"]


def time_generate(
    model: Any, tokenizer: Any, texts: list[str], new_tokens: int, seed: int
) -> dict[str, float]:
    from transformers import GenerationConfig

    ids, mask = prompt_batch(tokenizer, texts)
    config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    seconds = time.perf_counter() - start
    made = int(out.shape[1] - ids.shape[1]) * len(texts)
    return {
        "seconds": seconds,
        "new_tokens": made,
        "prompt_tokens": int(mask.sum()),
        "prompt_width": int(ids.shape[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,2,4,8,16,32")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/generation_mfu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    wall = time.perf_counter()
    peak = matmul_peak(args.matmul_n)
    tokenizer, model = load_model_and_tokenizer(args.model, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    batches = [int(b) for b in args.batches.split(",") if b]
    texts = load_prompts("builtin")[: max(batches)]
    time_generate(model, tokenizer, texts[:1], 4, args.seed)  # warm-up
    rows = []
    for b in batches:
        r = time_generate(model, tokenizer, texts[:b], args.max_new_tokens, args.seed)
        tps = r["new_tokens"] / r["seconds"]
        flops = tps * 2.0 * n_params
        rows.append({"batch": b, **r, "tokens_per_second": tps, "model_flops": flops})
    peak_matmul_after = matmul_peak(args.matmul_n, loops=4, repeats=2)
    peak_flops = max(peak["flops_best"], peak_matmul_after["flops_best"])
    for row in rows:
        row["mfu"] = row["model_flops"] / peak_flops
    load_after = [round(x, 2) for x in os.getloadavg()]
    print(
        f"fp32 matmul {args.matmul_n}×{args.matmul_n}, {args.threads} threads: peak "
        f"{peak_flops / 1e9:.1f} GFLOP/s (before the runs: best "
        f"{peak['flops_best'] / 1e9:.1f}, median {peak['flops_median'] / 1e9:.1f}; after: "
        f"best {peak_matmul_after['flops_best'] / 1e9:.1f})"
    )
    print(
        f"{args.model}: {n_params / 1e6:.1f}M parameters, {args.max_new_tokens} new tokens "
        "per row, sampling, KV cache on\n"
    )
    print(f"{'batch':>5} {'seconds':>8} {'new tok/s':>10} {'GFLOP/s':>8} {'MFU':>7}")
    for r in rows:
        print(
            f"{r['batch']:>5} {r['seconds']:>8.2f} {r['tokens_per_second']:>10.1f} "
            f"{r['model_flops'] / 1e9:>8.2f} {100 * r['mfu']:>6.2f}%"
        )
    print(
        f"\nload average (1, 5, 15 min): before {load_before}, after {load_after}; "
        f"wall {time.perf_counter() - wall:.0f} s"
    )
    write_result(
        args.out,
        {
            "model": args.model,
            "n_params": n_params,
            "threads": args.threads,
            "max_new_tokens": args.max_new_tokens,
            "peak_flops": peak_flops,
            "matmul_peak": peak,
            "matmul_peak_after": peak_matmul_after,
            "rows": rows,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
    )


if __name__ == "__main__":
    main()
