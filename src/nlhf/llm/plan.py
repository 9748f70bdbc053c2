"""Dry-run plan: what a training run will cost, computed from the config alone.

No model is loaded. The counts come from running the algorithm's own round
(:meth:`~nlhf.llm.algorithms.round.Algorithm.round`) on one prompt against
:class:`PlanRound`, which answers the round's services with placeholders and counts what
they would do: generations per (sampler, role), judge comparisons, no-grad scored responses
and training rows. So the plan can never disagree with the trainer. A *comparison* is one
P(a ≻ b); judges query both orders to cancel position bias, so one comparison = 2 judge
calls. Memory follows from a parameter count (a known table, or a local ``config.json``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nlhf.llm.algorithms import make_algorithm
from nlhf.llm.algorithms.round import Question, answer_shape, comparisons
from nlhf.llm.config import TrainConfig
from nlhf.llm.fit import Micro
from nlhf.llm.samples import RoleSamples, RoundData, Source

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


class PlanRound:
    """The services of :class:`~nlhf.llm.algorithms.round.Round` without a model: each
    answers with placeholders (log-probs 0, judgements 1/2) and counts its work."""

    def __init__(self, cfg: TrainConfig, n_prompts: int = 1) -> None:
        self.cfg, self.n_prompts = cfg, n_prompts
        self.generations: Counter[str] = Counter()
        self.comparisons = 0
        self.scored = 0
        self.train_rows: dict[str, int] = {}
        self.adapters: set[str] = set()
        self.data: RoundData | None = None
        self.timings: dict[str, float] = {}
        self._rows = 0
        self.rows_per_item = 0.0

    def sample(self, *sources: Source) -> RoundData:
        n, new = self.n_prompts, [0] * self.cfg.rollout.max_new_tokens
        roles: dict[str, RoleSamples] = {}
        for src in sources:
            for role, k in src.roles:
                self.generations[f"{role} (~ {src.model})"] += k * n
                rs = RoleSamples(role, src.model, k, [i // k for i in range(n * k)],
                                 [list(new) for _ in range(n * k)], [""] * (n * k))
                rs.logp[src.model] = np.zeros(n * k)
                roles[role] = rs
        self.data = RoundData(0, list(range(n)), [""] * n, [[0] * ASSUMED_PROMPT_TOKENS] * n,
                              roles)
        return self.data

    def logprobs(self, data: RoundData, needs: Sequence[tuple[str, str]]) -> None:
        for role, model in dict.fromkeys([*needs, ("policy", "pi_t"), ("policy", "ref")]):
            rs = data.roles[role]
            if model not in rs.logp:
                self.scored += len(rs)
                rs.logp[model] = np.zeros(len(rs))

    def judge(self, data: RoundData, *questions: Question) -> list[np.ndarray]:
        self.comparisons += sum(len(comparisons(data, q)) for q in questions)
        return [np.full(answer_shape(data, q), 0.5) for q in questions]

    def seed(self, name: str) -> int:
        return 0

    def score(self, data: RoundData, role: str, idx: Sequence[int], model: str) -> torch.Tensor:
        self.scored += len(idx)
        return torch.zeros(len(idx))

    def policy_logprobs(self, data: RoundData, groups: Sequence[tuple[str, Sequence[int]]], *,
                        adapter: str) -> torch.Tensor:
        rows = sum(len(idx) for _, idx in groups)
        self._rows += rows
        return torch.zeros(rows, requires_grad=True)

    def fit(self, name: str, adapter: str, loss_fn: Callable[[Micro], torch.Tensor],
            n_items: int, n_extra: int = 0) -> dict[str, Any]:
        """One pass of the loss over every item: the rows one epoch forwards."""
        self._rows = 0
        items, extra = list(range(n_items)), list(range(n_extra))
        if n_items:
            loss_fn(Micro(items, extra, items, extra))
        self.train_rows[name] = self._rows
        self.rows_per_item = max(self.rows_per_item, self._rows / max(1, n_items))
        self.adapters.add(adapter)
        return {}

    def copy_adapter(self, src: str, dst: str) -> None:
        self.adapters.add(dst)

    def tensor(self, values: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=torch.float32)


def per_prompt_counts(cfg: TrainConfig) -> dict[str, Any]:
    """Generations (by role and sampler), comparisons, scored responses, training rows and
    trained adapters per prompt and round, from the algorithm's own round."""
    r = PlanRound(cfg)
    make_algorithm(cfg.algorithm, cfg.hparams).round(r)  # type: ignore[arg-type]
    return {
        "generations": dict(r.generations),
        "generations_total": sum(r.generations.values()),
        "comparisons": r.comparisons,
        "judge_calls": 2 * r.comparisons,
        "scored_responses": r.scored,
        "train_sequences": sum(r.train_rows.values()),
        "train_rows_by_phase": dict(r.train_rows),
        "adapters": len(r.adapters),
        "train_rows_per_item": r.rows_per_item,
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


def estimate_memory(cfg: TrainConfig, prompt_tokens: int = ASSUMED_PROMPT_TOKENS, *,
                    adapters: int = 1, rows_per_item: float = 2.0, gpus: int = 1
                    ) -> dict[str, Any]:
    """Rough training memory per GPU in bytes: weights, adapters, grads, Adam, activations.

    Under data parallelism (accelerate, docs/scaling.md) every GPU holds the whole model,
    the adapters and their optimizer state, and forwards its share of each minibatch in
    micro-batches: the activations are those of one micro-batch of ``rows_per_item`` rows per
    item (e.g. DENPO Step A: y, y' and a proximal sample).
    """
    arch, source = find_architecture(cfg.model.name)
    if arch is None:
        return {
            "params": UNKNOWN,
            "source": UNKNOWN,
            "weights_bytes": UNKNOWN,
            "trainable_params": UNKNOWN,
            "total_bytes": UNKNOWN,
            "per_gpu_bytes": UNKNOWN,
            "notes": [],
        }
    wbytes = DTYPE_BYTES[cfg.model.dtype]
    params = arch["params"]
    notes: list[str] = []
    if cfg.model.finetune == "lora":
        trainable, notes = lora_params(arch, cfg.model.lora.r, cfg.model.lora.target_modules)
        copies = 1  # the adapters sit on one frozen base
        adapter_bytes = adapters * trainable * 4
    else:
        trainable = params
        copies = 1 + adapters  # frozen reference + one full copy per trained policy
        adapter_bytes = 0
    seq = prompt_tokens + cfg.rollout.max_new_tokens
    t = cfg.train
    share = -(-t.batch_size // max(1, gpus))  # items of a minibatch on one GPU
    items = min(share, t.micro_batch_size) if t.micro_batch_size else share
    b = max(1, int(np.ceil(items * rows_per_item)))  # sequences per forward
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
        "activation_sequences": b,
        "gpus": gpus,
        "per_gpu_bytes": total,
        "total_bytes": total * gpus,
        "notes": notes,
    }


# --------------------------------------------------------------------------- plan


def make_plan(
    cfg: TrainConfig,
    n_train_prompts: int | None = None,
    *,
    prompt_tokens: int = ASSUMED_PROMPT_TOKENS,
    gpus: int = 1,
) -> dict[str, Any]:
    """Counts per round and in total for ``cfg`` (see the module docstring for accounting).

    ``n_train_prompts`` (after the held-out split) caps prompts per round when given;
    ``prompt_tokens`` is the assumed mean prompt length used for token budgets; ``gpus`` the
    data-parallel processes the memory per GPU assumes.
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
    h = cfg.hparams
    return {
        "algorithm": cfg.algorithm,
        "hparams": {"eta": h.eta, "tau": h.tau, "alpha": h.alpha, "beta": h.beta, "s": h.s},
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
            "model": cfg.judge.get("model") or cfg.judge.get("function"),
            "comparisons_per_prompt": pp["comparisons"],
            "calls_per_prompt": pp["judge_calls"],
            "calls_per_round": calls_round,
            "calls_total": calls_round * rounds,
            "scored_responses_per_round": pp["scored_responses"] * per_round_prompts,
        },
        "tokens": tokens,
        "memory": estimate_memory(cfg, prompt_tokens, adapters=pp["adapters"],
                                  rows_per_item=pp["train_rows_per_item"], gpus=gpus),
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
        ("hyper-parameters", ", ".join(f"{k} {v:g}" for k, v in plan["hparams"].items())),
        ("model", f"{plan['model']} ({plan['finetune']})"),
        ("rounds", str(plan["rounds"])),
        ("prompts per round", _count(plan["prompts_per_round"])),
        ("", ""),
        ("generations per prompt", str(g["per_prompt_total"])),
        *((f"  {k}", str(v)) for k, v in g["per_prompt"].items()),
        ("generations per round", _count(g["per_round"])),
        ("generations total", _count(g["total"])),
        ("", ""),
        ("judge", f"{j['type']}" + (f" ({j['model']})" if j.get("model") else "")),
        ("judge comparisons per prompt", str(j["comparisons_per_prompt"])),
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
            (f"activations ({m['activation_sequences']} seqs x {m['activation_seq_len']} tokens)",
             _bytes(m["activation_bytes"])),
        ]
    rows.append((f"memory per GPU (rough, {m.get('gpus', 1)} GPU data-parallel)",
                 _bytes(m["per_gpu_bytes"])))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}".rstrip() for k, v in rows]
    lines += [f"warning: {w}" for w in [*plan["warnings"], *m.get("notes", [])]]
    return "\n".join(lines)
