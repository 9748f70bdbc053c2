"""Dry-run plan: what a training run will cost, computed from the config alone.

No model is loaded: generation and judge counts follow from the algorithm's accounting
below, and memory from a parameter count (a known table, or a local ``config.json``).

Accounting per prompt and round (``p`` = pairs_per_prompt, ``n_z`` = n_comparators,
``c`` = step_b_candidates); a *comparison* is one ``P(a ≻ b)``, and judges query both
orders to cancel position bias, so one comparison = 2 judge calls:

- **enpo** (DENPO): generations ``2p`` (``y ~ pi_t``, ``y' ~ pihat_t``) + ``n_z``
  comparators ``z ~ pi_t`` (shared by the prompt's pairs) + ``c`` fresh Step B candidates
  + 1 proximal sample ``z̃ ~ pi_t`` (only if alpha > 0). Comparisons: each of the ``2p``
  responses against each comparator, ``2p·n_z``. Step B asks no oracle. We assume the
  ``m`` pairs labelled per round equal the ``n`` collected (older buffer pairs, if drawn,
  cost the same per pair).
- **inpo / online-dpo / online-ipo**: 2 samples from ``pi_t`` per pair; **nash-md**: 1 from
  ``pi_t`` + 1 from the geometric mixture; **xpo**: 1 from ``pi_t`` + 1 from ``pi_ref``.
  All: ``2p`` generations, ``p`` comparisons (one per pair).
- **sppo**: ``p`` labelled samples + ``n_z`` comparators, all from ``pi_t``; comparisons
  ``p·n_z`` (each labelled sample against each comparator estimates ``P(y ≻ pi_t)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nlhf.llm.config import TrainConfig

UNKNOWN = "unknown"
ASSUMED_PROMPT_TOKENS = 64
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Architecture of models we know without downloading anything (public config.json values).
_SMOLLM2_135M = {
    "params": 134_515_008,
    "hidden": 576,
    "intermediate": 1536,
    "layers": 30,
    "heads": 9,
    "kv_heads": 3,
    "head_dim": 64,
    "vocab": 49152,
}
_LLAMA3_8B = {
    "params": 8_030_261_248,
    "hidden": 4096,
    "intermediate": 14336,
    "layers": 32,
    "heads": 32,
    "kv_heads": 8,
    "head_dim": 128,
    "vocab": 128256,
}
KNOWN_MODELS: dict[str, dict[str, int]] = {
    "smollm2-135m-instruct": _SMOLLM2_135M,
    "smollm2-135m": _SMOLLM2_135M,
    "meta-llama-3-8b-instruct": _LLAMA3_8B,
    "meta-llama-3-8b": _LLAMA3_8B,
    "llama-3-8b": _LLAMA3_8B,
    "llama-3-8b-instruct": _LLAMA3_8B,
    "llama-3.1-8b": _LLAMA3_8B,
    "llama-3.1-8b-instruct": _LLAMA3_8B,
    "meta-llama-3.1-8b": _LLAMA3_8B,
    "meta-llama-3.1-8b-instruct": _LLAMA3_8B,
}


# --------------------------------------------------------------------------- counts


def per_prompt_counts(cfg: TrainConfig) -> dict[str, Any]:
    """Generations (by source), comparisons, scored responses and train sequences per prompt."""
    h = cfg.hparams
    p, nz = h.pairs_per_prompt, h.n_comparators
    algo = cfg.algorithm
    if algo == "enpo":
        gens = {
            "policy (y ~ pi_t)": p,
            "adversary (y' ~ pihat_t)": p,
            "comparators (z ~ pi_t)": nz,
            "step B candidates (~ pi_t)": h.step_b_candidates,
            "proximal (z~ ~ pi_t)": 1 if h.alpha > 0 else 0,
        }
        comparisons = 2 * p * nz
        scored = 2 * p + nz
        train_seqs = 2 * p + gens["proximal (z~ ~ pi_t)"] + h.step_b_candidates
    elif algo == "sppo":
        gens = {"labelled (y ~ pi_t)": p, "comparators (z ~ pi_t)": nz}
        comparisons = p * nz
        scored = p + nz
        train_seqs = p
    else:
        second = {
            "xpo": "reference (y' ~ pi_ref)",
            "nash-md": "mixture (y' ~ pi_t^(1-b) pi_ref^b)",
        }.get(algo, "policy (y' ~ pi_t)")
        gens = {"policy (y ~ pi_t)": p, second: p}
        comparisons = p
        scored = 2 * p
        train_seqs = 2 * p
    return {
        "generations": gens,
        "generations_total": sum(gens.values()),
        "comparisons": comparisons,
        "judge_calls": 2 * comparisons,
        "scored_responses": scored,
        "train_sequences": train_seqs,
    }


# --------------------------------------------------------------------------- memory


def _normalise(name: str) -> str:
    return name.strip().rstrip("/").split("/")[-1].lower()


def _arch_from_config_json(path: Path) -> dict[str, int] | None:
    """Llama-style dims and parameter count from a local HF ``config.json``."""
    try:
        c = json.loads(path.read_text(encoding="utf-8"))
        hidden, layers = int(c["hidden_size"]), int(c["num_hidden_layers"])
        inter, vocab = int(c["intermediate_size"]), int(c["vocab_size"])
        heads = int(c["num_attention_heads"])
        kv = int(c.get("num_key_value_heads") or heads)
        head_dim = int(c.get("head_dim") or hidden // heads)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    attn = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2
    per_layer = attn + 3 * hidden * inter + 2 * hidden
    embed = vocab * hidden
    lm_head = 0 if c.get("tie_word_embeddings", False) else embed
    params = layers * per_layer + embed + lm_head + hidden
    return {
        "params": params,
        "hidden": hidden,
        "intermediate": inter,
        "layers": layers,
        "heads": heads,
        "kv_heads": kv,
        "head_dim": head_dim,
        "vocab": vocab,
    }


def find_architecture(name: str) -> tuple[dict[str, int] | None, str]:
    """(architecture dims or None, where they came from)."""
    arch = KNOWN_MODELS.get(_normalise(name))
    if arch is not None:
        return arch, "known table"
    local = Path(name).expanduser() / "config.json"
    if local.is_file():
        arch = _arch_from_config_json(local)
        if arch is not None:
            return arch, f"{local}"
    return None, UNKNOWN


def lora_params(arch: dict[str, int], r: int, targets: list[str]) -> tuple[int, list[str]]:
    """LoRA adds r·(in + out) per targeted linear layer; unknown names count as hidden×hidden."""
    h, i = arch["hidden"], arch["intermediate"]
    q, kv = arch["heads"] * arch["head_dim"], arch["kv_heads"] * arch["head_dim"]
    shapes = {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    notes = []
    total = 0
    for t in targets:
        d_in, d_out = shapes.get(t, (h, h))
        if t not in shapes:
            notes.append(f"unknown LoRA target '{t}' estimated as hidden x hidden")
        total += r * (d_in + d_out)
    return total * arch["layers"], notes


def estimate_memory(cfg: TrainConfig, prompt_tokens: int = ASSUMED_PROMPT_TOKENS) -> dict[str, Any]:
    """Rough training memory in bytes: weights, adapters, grads, Adam, activations."""
    arch, source = find_architecture(cfg.model.name)
    if arch is None:
        return {
            "params": UNKNOWN,
            "source": UNKNOWN,
            "weights_bytes": UNKNOWN,
            "trainable_params": UNKNOWN,
            "total_bytes": UNKNOWN,
            "notes": [],
        }
    wbytes = DTYPE_BYTES[cfg.model.dtype]
    params = arch["params"]
    enpo = cfg.algorithm == "enpo"
    notes: list[str] = []
    if cfg.model.finetune == "lora":
        trainable, notes = lora_params(arch, cfg.model.lora.r, cfg.model.lora.target_modules)
        adapters = 2 if enpo else 1  # policy (+ adversary) adapters on one frozen base
        copies = 1
        adapter_bytes = adapters * trainable * 4
    else:
        trainable = params
        copies = 3 if enpo else 2  # policy + frozen reference (+ adversary)
        adapter_bytes = 0
    seq = prompt_tokens + cfg.rollout.max_new_tokens
    b = cfg.train.batch_size
    # Korthikanti et al. (2022): ~34·s·b·h + 5·a·s²·b bytes per layer in 16-bit, no
    # recomputation; scaled to the dtype. Plus fp32 logits and their log-softmax.
    per_layer = 34 * seq * b * arch["hidden"] + 5 * arch["heads"] * seq * seq * b
    activations = per_layer * arch["layers"] * wbytes // 2 + 2 * b * seq * arch["vocab"] * 4
    weights = params * wbytes
    grads, optim = trainable * 4, trainable * 8
    total = copies * weights + adapter_bytes + grads + optim + activations
    return {
        "params": params,
        "source": source,
        "dtype": cfg.model.dtype,
        "weights_bytes": weights,
        "model_copies": copies,
        "trainable_params": trainable,
        "adapter_bytes": adapter_bytes,
        "gradient_bytes": grads,
        "optimizer_bytes": optim,
        "activation_bytes": activations,
        "activation_seq_len": seq,
        "total_bytes": total,
        "notes": notes,
    }


# --------------------------------------------------------------------------- plan


def make_plan(
    cfg: TrainConfig,
    n_train_prompts: int | None = None,
    *,
    prompt_tokens: int = ASSUMED_PROMPT_TOKENS,
) -> dict[str, Any]:
    """Counts per round and in total for ``cfg`` (see the module docstring for accounting).

    ``n_train_prompts`` (after the held-out split) caps prompts per round when given;
    ``prompt_tokens`` is the assumed mean prompt length used for token budgets.
    """
    warnings: list[str] = []
    per_round_prompts = cfg.data.prompts_per_iteration
    if n_train_prompts is not None:
        if n_train_prompts < per_round_prompts:
            warnings.append(
                f"only {n_train_prompts} training prompts: each round uses all of them "
                f"instead of data.prompts_per_iteration={per_round_prompts}"
            )
            per_round_prompts = n_train_prompts
        elif n_train_prompts < per_round_prompts * cfg.iterations:
            warnings.append(
                f"{n_train_prompts} training prompts < {per_round_prompts} x {cfg.iterations} "
                "rounds: prompts repeat across rounds"
            )
    rounds = cfg.iterations
    pp = per_prompt_counts(cfg)
    gens_round = pp["generations_total"] * per_round_prompts
    calls_round = pp["judge_calls"] * per_round_prompts
    max_new = cfg.rollout.max_new_tokens
    seq = prompt_tokens + max_new
    tokens = {
        "assumed_prompt_tokens": prompt_tokens,
        "generated_per_round_max": gens_round * max_new,
        "generated_total_max": gens_round * max_new * rounds,
        "prefill_per_round": gens_round * prompt_tokens,
        "train_sequences_per_round": pp["train_sequences"] * per_round_prompts,
        "train_tokens_per_round": pp["train_sequences"]
        * per_round_prompts
        * seq
        * cfg.train.epochs,
        "judge_tokens_per_round_max": calls_round * (prompt_tokens + 2 * max_new),
    }
    sweep_runs = len(cfg.sweep) if cfg.sweep else 1
    return {
        "algorithm": cfg.algorithm,
        "model": cfg.model.name,
        "finetune": cfg.model.finetune,
        "rounds": rounds,
        "n_train_prompts": n_train_prompts,
        "prompts_per_round": per_round_prompts,
        "generations": {
            "per_prompt": pp["generations"],
            "per_prompt_total": pp["generations_total"],
            "per_round": gens_round,
            "total": gens_round * rounds,
        },
        "judge": {
            "type": cfg.judge.get("type"),
            "comparisons_per_prompt": pp["comparisons"],
            "calls_per_prompt": pp["judge_calls"],
            "calls_per_round": calls_round,
            "calls_total": calls_round * rounds,
            "scored_responses_per_round": pp["scored_responses"] * per_round_prompts,
        },
        "tokens": tokens,
        "memory": estimate_memory(cfg, prompt_tokens),
        "sweep_runs": sweep_runs,
        "all_runs": {
            "generations": gens_round * rounds * sweep_runs,
            "judge_calls": calls_round * rounds * sweep_runs,
        },
        "warnings": warnings,
    }


# --------------------------------------------------------------------------- text


def _count(n: Any) -> str:
    if not isinstance(n, int):
        return str(n)
    for div, unit in ((10**9, "B"), (10**6, "M"), (10**3, "k")):
        if abs(n) >= div:
            return f"{n:,} ({n / div:.4g}{unit})"
    return f"{n:,}"


def _bytes(n: Any) -> str:
    if not isinstance(n, int):
        return str(n)
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def format_plan(plan: dict[str, Any]) -> str:
    """Plain aligned text, readable in a terminal and in a log file."""
    g, j, t, m = plan["generations"], plan["judge"], plan["tokens"], plan["memory"]
    rows: list[tuple[str, str]] = [
        ("algorithm", str(plan["algorithm"])),
        ("model", f"{plan['model']} ({plan['finetune']})"),
        ("rounds", str(plan["rounds"])),
        ("prompts per round", _count(plan["prompts_per_round"])),
        ("", ""),
        ("generations per prompt", str(g["per_prompt_total"])),
        *((f"  {k}", str(v)) for k, v in g["per_prompt"].items()),
        ("generations per round", _count(g["per_round"])),
        ("generations total", _count(g["total"])),
        ("", ""),
        (f"judge ({j['type']}) comparisons/prompt", str(j["comparisons_per_prompt"])),
        ("judge calls per round (x2 orders)", _count(j["calls_per_round"])),
        ("judge calls total", _count(j["calls_total"])),
        ("responses scored per round", _count(j["scored_responses_per_round"])),
        ("", ""),
        ("generated tokens/round (max)", _count(t["generated_per_round_max"])),
        ("generated tokens total (max)", _count(t["generated_total_max"])),
        ("train tokens per round", _count(t["train_tokens_per_round"])),
        (f"  (assuming {t['assumed_prompt_tokens']}-token prompts)", ""),
        ("", ""),
        ("parameters", f"{_count(m['params'])} [{m['source']}]"),
        ("trainable parameters", _count(m["trainable_params"])),
        ("weights", _bytes(m["weights_bytes"])),
    ]
    if m["params"] != UNKNOWN:
        rows += [
            ("model copies in memory", str(m["model_copies"])),
            ("adapters", _bytes(m["adapter_bytes"])),
            ("gradients (fp32)", _bytes(m["gradient_bytes"])),
            ("Adam state (2x fp32)", _bytes(m["optimizer_bytes"])),
            (f"activations (seq {m['activation_seq_len']}, rough)", _bytes(m["activation_bytes"])),
        ]
    rows.append(("memory total (rough)", _bytes(m["total_bytes"])))
    if plan["sweep_runs"] > 1:
        rows += [
            ("", ""),
            ("sweep runs", str(plan["sweep_runs"])),
            ("generations, all runs", _count(plan["all_runs"]["generations"])),
            ("judge calls, all runs", _count(plan["all_runs"]["judge_calls"])),
        ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}".rstrip() for k, v in rows]
    lines += [f"warning: {w}" for w in [*plan["warnings"], *m.get("notes", [])]]
    return "\n".join(lines)
