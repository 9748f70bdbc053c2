"""Rollouts from an in-process vLLM engine (``vllm.LLM``) with per-iteration LoRA requests.

GPU only, and untested in this repository's CI (no vLLM, no GPU there): only the import
guard is unit-tested. The engine shares the GPU with the trainer's own model, hence the low
default ``gpu_memory_utilization``. Like the server backend it reads adapters from folders
(``LoRARequest(name, int_id, path)``): each :meth:`load_adapter` gets a fresh integer id,
which is what vLLM caches adapters by, so a re-saved folder is never served stale.
``Sample.logprob`` is None: the trainer computes log-probs with its own forward pass.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nlhf.errors import NLHFInputError
from nlhf.llm.rollout.base import (
    NEUTRAL_SAMPLING,
    Generator,
    eos_ids,
    finish_response,
    lora_folder,
    request_seed,
)
from nlhf.llm.rollout.hf import Sample, Sampling, prompt_lists

MISSING = "rollout.backend: vllm is not installed (GPU only: pip install vllm); use backend: hf"


#: vLLM accepts only these values for max_lora_rank (an adapter of rank r fits any >= r).
LORA_RANK_SLOTS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def lora_rank_slot(r: int) -> int:
    """The smallest rank limit vLLM accepts that holds a rank-``r`` adapter."""
    return next((s for s in LORA_RANK_SLOTS if s >= r), r)


class VLLMGenerator(Generator):
    """``vllm.LLM(model, enable_lora=True)``; adapters as ``LoRARequest``s by folder."""

    backend = "vllm"
    loads_adapters = True

    def __init__(
        self,
        model: str,
        *,
        tokenizer: Any,
        eos_token_ids: Sequence[int] | None = None,
        max_lora_rank: int = 16,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.4,
        max_model_len: int | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if not vllm_available():
            raise NLHFInputError(MISSING)
        try:
            from vllm import LLM
        except ImportError as exc:  # present but broken (no CUDA build, version clash)
            raise NLHFInputError(f"{MISSING} (import failed: {exc})") from None
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_ids(eos_token_ids, tokenizer)
        kwargs: dict[str, Any] = {"max_model_len": max_model_len} if max_model_len else {}
        self.llm = LLM(model=model, enable_lora=True, max_lora_rank=lora_rank_slot(max_lora_rank),
                       max_loras=2, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       **kwargs, **engine_kwargs)
        self._adapters: dict[str, Any] = {}
        self._next_id = 1

    def load_adapter(self, name: str, directory: str | Path) -> None:
        from vllm.lora.request import LoRARequest

        path = lora_folder(directory)
        self._adapters[name] = LoRARequest(name, self._next_id, str(path))
        self._next_id += 1

    def unload_adapter(self, name: str) -> None:
        request = self._adapters.pop(name, None)
        if request is not None:  # best effort: vLLM evicts unused adapters (LRU) anyway
            with contextlib.suppress(Exception):
                self.llm.llm_engine.remove_lora(request.lora_int_id)

    def generate(
        self,
        prompts_ids: Sequence[Sequence[int]],
        adapter: str | None,
        sampling: Sampling = Sampling(),
        *,
        progress: bool = True,
    ) -> list[Sample]:
        from vllm import SamplingParams

        prompts = prompt_lists(prompts_ids)
        lora = None
        if adapter is not None:
            if adapter not in self._adapters:
                raise ValueError(f"adapter {adapter!r} was not loaded; call load_adapter first")
            lora = self._adapters[adapter]
        params = [SamplingParams(n=sampling.n_per_prompt, temperature=sampling.temperature,
                                 top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                                 seed=request_seed(sampling.seed, i),
                                 stop_token_ids=self.eos_token_ids, **NEUTRAL_SAMPLING)
                  for i in range(len(prompts))]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                                    lora_request=lora, use_tqdm=progress)
        samples = []
        for i, out in enumerate(outputs):
            for comp in sorted(out.outputs, key=lambda c: c.index):
                ids = finish_response(comp.token_ids, stopped=comp.finish_reason == "stop",
                                      stop_reason=comp.stop_reason,
                                      eos_token_ids=self.eos_token_ids,
                                      max_new_tokens=sampling.max_new_tokens)
                samples.append(Sample.decoded(self.tokenizer, i, prompts[i], ids))
        return samples

    def close(self) -> None:
        self._adapters.clear()
