"""A causal-LM policy pair for the preference game: trained policy, adversary, frozen reference.

Default (LoRA): one frozen base model carries two LoRA adapters, "policy" and "adversary";
the reference is the base with adapters off, so three policies cost one model in memory.
`finetune="full"` keeps two trainable copies and one frozen copy instead.
"""

from __future__ import annotations

import copy
import inspect
import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from nlhf.atomic import atomic_directory
from nlhf.errors import NLHFInputError
from nlhf.llm.batching import even_batches
from nlhf.llm.policy.loading import DEFAULT_MODEL, load_model_and_tokenizer, render_prompt

if TYPE_CHECKING:
    from nlhf.llm.config import TrainConfig

ADAPTERS = ("policy", "adversary")
FINETUNE_MODES = ("lora", "full")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters shared by both adapters (so weights can be copied between them)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def to_peft(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``rows`` padded on the left to one width."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[b, width - len(row) :] = 1
    return ids, mask


def distinct_prompts(prompts: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[int]]:
    """The distinct prompts (first-seen order) and, for each row, its prompt's index there."""
    index: dict[tuple[int, ...], int] = {}
    owner = [index.setdefault(tuple(p), len(index)) for p in prompts]
    return [list(p) for p in index], owner


def length_groups(lengths: Sequence[int], max_padding: float = 0.2) -> list[list[int]]:
    """Consecutive groups of ``lengths`` (sorted longest first) whose left padding stays
    under ``max_padding`` of each group's tokens: the forward batches of a set of prompts."""
    groups: list[list[int]] = []
    total = 0
    for i, n in enumerate(lengths):
        if groups:
            width = lengths[groups[-1][0]]
            size = len(groups[-1]) + 1
            if width * size - (total + n) <= max_padding * width * size:
                groups[-1].append(i)
                total += n
                continue
        groups.append([i])
        total = n
    return groups


def merge_caches(caches: Sequence[Any], width: int, order: torch.Tensor) -> Any:
    """One KV cache from several batches' caches: keys and values left-padded to ``width``
    (the padding is masked), batches concatenated, then rows taken in ``order``.

    The first cache object is reused, so its type (and any model-specific layers) stays.
    """
    merged = caches[0]
    for layer, parts in enumerate(zip(*(cache_tensors(c) for c in caches), strict=True)):
        keys, values = (
            _join([_pad_left(t, width) for t in tensors])[order]
            for tensors in zip(*parts, strict=True)
        )
        set_cache_tensors(merged, layer, keys, values)
    return merged


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Keys or values (batch, heads, length, dim) zero-padded on the left to ``width``."""
    return t if t.shape[-2] == width else F.pad(t, (0, 0, width - t.shape[-2], 0))


def _join(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def cache_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of each layer of a transformers KV cache, old layout or new."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def set_cache_tensors(cache: Any, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    if hasattr(cache, "layers"):
        cache.layers[layer].keys, cache.layers[layer].values = keys, values
    else:
        cache.key_cache[layer], cache.value_cache[layer] = keys, values


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits upcast for the softmax; float64 (tests) kept as it is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class LMPolicy:
    """Policy, adversary and reference over one tokenizer; log-probs of responses given prompts."""

    def __init__(
        self,
        tokenizer: Any,
        model: nn.Module,
        *,
        finetune: str = "lora",
        lora: LoraSettings | None = None,
        device: str | torch.device | None = None,
        seed: int = 0,
    ) -> None:
        if finetune not in FINETUNE_MODES:
            raise NLHFInputError(f"finetune: unknown {finetune!r}; use 'lora' or 'full'")
        self.tokenizer = tokenizer
        self.finetune = finetune
        self.lora = lora or LoraSettings()
        self.device = torch.device(device) if device is not None else default_device()
        model = model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        # Seeded so LoRA's random A matrices (and so every later step) repeat across runs.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if finetune == "lora":
                from peft import get_peft_model

                with warnings.catch_warnings():  # peft calls a transformers API renamed in v5
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                    self.model: nn.Module = get_peft_model(
                        model, self.lora.to_peft(), adapter_name=ADAPTERS[0]
                    )
                for name in ADAPTERS[1:]:
                    self.model.add_adapter(name, self.lora.to_peft())
                self.model.eval()
                self.copies: dict[str, nn.Module] = {}
            else:
                self.model = model
                self.copies = {name: copy.deepcopy(model) for name in ADAPTERS}
                for m in self.copies.values():
                    m.requires_grad_(True)
        params = inspect.signature(model.forward).parameters
        self._keeps_logits = "logits_to_keep" in params
        # transformers 5.2x renamed `past_key_values` to `cache` (argument and output).
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_name(
        cls,
        name: str = DEFAULT_MODEL,
        *,
        finetune: str = "lora",
        lora: LoraSettings | None = None,
        dtype: str = "float32",
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        seed: int = 0,
    ) -> LMPolicy:
        """Load a model by name (see `load_model_and_tokenizer`) and wrap it."""
        tokenizer, model = load_model_and_tokenizer(
            name, dtype=dtype, trust_remote_code=trust_remote_code, seed=seed
        )
        return cls(tokenizer, model, finetune=finetune, lora=lora, device=device, seed=seed)

    # -- selecting which policy runs -------------------------------------------------------

    def _check(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in ADAPTERS:
            raise ValueError(f"adapter must be one of {ADAPTERS} or None, got {adapter!r}")

    @contextmanager
    def using(self, adapter: str | None) -> Iterator[nn.Module]:
        """Yield the module that computes `adapter` (None: the frozen reference)."""
        self._check(adapter)
        if self.finetune == "full":
            yield self.model if adapter is None else self.copies[adapter]
        elif adapter is None:
            with self.model.disable_adapter():  # type: ignore[operator]
                yield self.model
        else:
            self.model.set_adapter(adapter)  # type: ignore[operator]
            yield self.model

    def trainable_parameters(self, adapter: str) -> list[nn.Parameter]:
        """Parameters of one adapter (or full copy): what its optimizer should own."""
        self._check(adapter)
        if adapter is None:
            raise ValueError("the reference has no trainable parameters")
        if self.finetune == "full":
            return list(self.copies[adapter].parameters())
        return [
            p
            for n, p in self.model.named_parameters()
            if "lora_" in n and f".{adapter}." in f"{n}."
        ]

    # -- tokens and log-probs --------------------------------------------------------------

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_token_ids(self) -> list[int]:
        """End-of-response ids: the generation config's (may be several) or the tokenizer's."""
        ids = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if ids is None:
            ids = self.tokenizer.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a user turn plus the assistant header, via the chat template."""
        return render_prompt(self.tokenizer, text)

    def sequence_logprobs(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        adapter: str | None,
        *,
        grad: bool = False,
        batch_size: int = 8,
    ) -> torch.Tensor:
        """Sum of log-probs of each response's tokens (EOS included if present), in input order.

        Batches are built from length-sorted sequences to cut padding; padding is masked, so a
        sequence's value does not depend on its batch companions. With `grad=True` the result
        is differentiable w.r.t. `trainable_parameters(adapter)`.
        """
        self._check(adapter)
        if len(prompt_ids) != len(response_ids):
            raise ValueError("prompt_ids and response_ids must have the same length")
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("every prompt needs at least one token")
        n = len(prompt_ids)
        if n == 0:
            return torch.zeros(0, device=self.device)
        track = grad and adapter is not None
        out: list[torch.Tensor] = [torch.zeros(())] * n
        with self.using(adapter) as model, torch.set_grad_enabled(track):
            for idx in self.logprob_batches(prompt_ids, response_ids, batch_size):
                values = self._batch_logprobs(
                    model, [prompt_ids[i] for i in idx], [response_ids[i] for i in idx]
                )
                for j, i in enumerate(idx):
                    out[i] = values[j]
        return torch.stack(out)

    @staticmethod
    def logprob_batches(
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        batch_size: int,
    ) -> list[list[int]]:
        """The batches (row indices) that :meth:`sequence_logprobs` runs.

        Rows that share a prompt are kept next to each other (so a batch forwards each prompt
        once, see :meth:`_batch_logprobs`); prompt groups go longest first, to cut padding.
        Public so that data-parallel ranks can split whole batches: a row's value then comes
        from the same batch, bit for bit, whatever the number of processes.
        """
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prompt_ids):
            groups.setdefault(tuple(p), []).append(i)
        for rows in groups.values():
            rows.sort(key=lambda i: -len(response_ids[i]))

        def longest(rows: list[int]) -> int:
            return len(prompt_ids[rows[0]]) + len(response_ids[rows[0]])

        order = [i for rows in sorted(groups.values(), key=lambda g: -longest(g)) for i in rows]
        return even_batches(order, max(1, batch_size))

    def forward_prompts(self, model: nn.Module, prompts: Sequence[Sequence[int]],
                        ) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Forward prompts once: their last position's logits, the KV cache and its mask.

        Rows are in input order, left-padded to the longest prompt. Prompts are forwarded in
        groups of similar length (:func:`length_groups`) and the groups' caches merged, so
        one long prompt does not make every row pay for its padding. Positions count real
        tokens only (0..len-1), as in `generate`, so a continuation of the cache sees the
        positions of one unpadded sequence.
        """
        kwargs: dict[str, Any] = {"logits_to_keep": 1} if self._keeps_logits else {}
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        logits, caches, masks = [], [], []
        for group in length_groups([len(prompts[i]) for i in order]):
            ids, mask = left_pad([prompts[order[i]] for i in group], self.pad_token_id)
            ids, mask = ids.to(self.device), mask.to(self.device)
            out = model(input_ids=ids, attention_mask=mask,
                        position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True,
                        **kwargs)
            logits.append(out.logits[:, -1])
            caches.append(getattr(out, self.cache_arg))
            masks.append(mask)
        width = masks[0].shape[1]  # the first group holds the longest prompt
        back = torch.empty(len(order), dtype=torch.long, device=self.device)
        back[torch.tensor(order, device=self.device)] = torch.arange(len(order),
                                                                    device=self.device)
        mask = torch.cat([F.pad(m, (width - m.shape[1], 0)) for m in masks])[back]
        return torch.cat(logits)[back], merge_caches(caches, width, back), mask

    def _batch_logprobs(
        self,
        model: nn.Module,
        prompts: list[Sequence[int]],
        responses: list[Sequence[int]],
    ) -> torch.Tensor:
        """Log-probs of a batch of rows, each distinct prompt forwarded once.

        Why: in every round several responses share a prompt (pairs, comparators), and the
        prompt is often most of the tokens. Pass 1 runs the distinct prompts (left-padded) and
        keeps their KV cache; pass 2 runs every row's response against its prompt's cache.
        Positions of real tokens are 0..len-1 as when unpadded, and padding is masked, so a
        row's value does not depend on its batch companions (up to float rounding).
        Gradients flow through both passes (the prompt's keys and values depend on LoRA).
        """
        uniq, owner = distinct_prompts(prompts)
        pad = self.pad_token_id
        last_logits, cache, p_mask = self.forward_prompts(model, uniq)
        rows = torch.tensor(owner, device=self.device)
        lengths = torch.tensor([len(r) for r in responses], device=self.device)
        first = torch.tensor([r[0] if len(r) else pad for r in responses], device=self.device)
        first_lp = torch.log_softmax(at_least_fp32(last_logits), dim=-1)[rows, first]
        total = torch.where(lengths > 0, first_lp, torch.zeros_like(first_lp))
        rest = max(len(r) for r in responses) - 1
        if rest <= 0:
            return total
        cache.batch_select_indices(rows)
        r_ids = torch.full((len(responses), rest + 1), pad, dtype=torch.long)
        for b, r in enumerate(responses):
            r_ids[b, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        r_ids = r_ids.to(self.device)
        r_mask = (torch.arange(rest, device=self.device) < (lengths - 1).unsqueeze(-1)).long()
        start = torch.tensor([len(p) for p in prompts], device=self.device)
        logits = model(
            input_ids=r_ids[:, :rest],
            attention_mask=torch.cat([p_mask[rows], r_mask], dim=-1),
            position_ids=start.unsqueeze(-1) + torch.arange(rest, device=self.device),
            use_cache=True,
            **{self.cache_arg: cache},
        ).logits
        logits = at_least_fp32(logits)
        picked = logits.gather(-1, r_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        # logsumexp a few rows at a time: its exp() temporary is as large as the logits.
        token_lp = picked - torch.cat([torch.logsumexp(part, dim=-1) for part in logits.split(4)])
        return total + torch.where(r_mask.bool(), token_lp, torch.zeros_like(token_lp)).sum(-1)

    # -- saving, loading, copying ------------------------------------------------------------

    def save_adapter(self, adapter: str, directory: str | Path) -> Path:
        """Write one adapter (LoRA: peft layout; full: a HF model folder) atomically."""
        self._check(adapter)
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            if self.finetune == "full":
                self.copies[adapter].save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
            else:
                from peft import get_peft_model_state_dict
                from safetensors.torch import save_file

                state = get_peft_model_state_dict(self.model, adapter_name=adapter)
                state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
                save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
                self.model.peft_config[adapter].save_pretrained(str(tmp))  # type: ignore[index]
        return directory

    def load_adapter(self, adapter: str, directory: str | Path) -> None:
        """Overwrite one adapter's weights in place (optimizers keep their parameters)."""
        self._check(adapter)
        directory = Path(directory)
        if self.finetune == "full":
            if not (directory / "config.json").is_file():
                raise NLHFInputError(f"adapter: {directory} holds no saved model (config.json)")
            source = type(self.copies[adapter]).from_pretrained(
                directory,
                dtype=next(self.copies[adapter].parameters()).dtype,
                use_safetensors=True,
            )
            self.copies[adapter].load_state_dict(source.state_dict())
            return
        weights = directory / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise NLHFInputError(f"adapter: {weights} does not exist")
        self._check_lora_config(directory)
        from safetensors.torch import load_file

        self._set_lora_state(adapter, load_file(str(weights), device=str(self.device)))

    def _check_lora_config(self, directory: Path) -> None:
        path = directory / ADAPTER_CONFIG
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        if saved.get("r") != self.lora.r or sorted(saved.get("target_modules") or []) != sorted(
            self.lora.target_modules
        ):
            raise NLHFInputError(
                f"adapter: {directory} has r={saved.get('r')}, "
                f"targets={saved.get('target_modules')}; this policy uses r={self.lora.r}, "
                f"targets={list(self.lora.target_modules)}"
            )

    def _set_lora_state(self, adapter: str, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, state, adapter_name=adapter)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise NLHFInputError(f"adapter: unexpected LoRA weights, e.g. {unexpected[0]}")

    def copy_adapter(self, src: str, dst: str) -> None:
        """Make `dst` compute the same policy as `src` (e.g. pihat_t starts from pi_t)."""
        self._check(src)
        self._check(dst)
        if src == dst:
            return
        if self.finetune == "full":
            self.copies[dst].load_state_dict(self.copies[src].state_dict())
            return
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.model, adapter_name=src)
        self._set_lora_state(dst, {k: v.detach().clone() for k, v in state.items()})

    def merged_model(self, adapter: str | None) -> nn.Module:
        """A standalone HF model computing `adapter` (None: the reference), for export."""
        self._check(adapter)
        if self.finetune == "full":
            source = self.model if adapter is None else self.copies[adapter]
            return copy.deepcopy(source)
        clone = copy.deepcopy(self.model)
        if adapter is None:
            return clone.unload()  # type: ignore[operator]
        clone.set_adapter(adapter)  # type: ignore[operator]
        return clone.merge_and_unload(adapter_names=[adapter])  # type: ignore[operator]


def load_policy(cfg: TrainConfig, device: str | torch.device | None = None) -> LMPolicy:
    """The run's base model with fresh (seeded) adapters: the one loader that training,
    ``nlhf eval`` and ``nlhf export`` share, so all three build the same model.

    ``device``: None for the default one; under several processes each rank passes its GPU.
    """
    m = cfg.model
    lora = LoraSettings(r=m.lora.r, alpha=m.lora.alpha, dropout=m.lora.dropout,
                        target_modules=tuple(m.lora.target_modules))
    return LMPolicy.from_name(m.name, finetune=m.finetune, lora=lora, dtype=m.dtype,
                              trust_remote_code=m.trust_remote_code, seed=cfg.seed,
                              device=device)
