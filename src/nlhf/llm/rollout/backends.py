"""Which generator ``rollout.backend`` names: the one place that knows every backend.

Why its own module: the backends import the :class:`~nlhf.llm.rollout.base.Generator`
interface, so the choice among them cannot live beside it without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nlhf.errors import NLHFInputError
from nlhf.llm.rollout.base import Generator, HFGenerator, base_model_path

if TYPE_CHECKING:
    from nlhf.llm.config import RolloutConfig
    from nlhf.llm.policy.lm import LMPolicy


def make_generator(cfg: RolloutConfig, policy: LMPolicy) -> Generator:
    """The generator that ``rollout.backend`` names, built from its config section."""
    if cfg.backend == "hf":
        return HFGenerator(policy, batch_size=cfg.batch_size)
    if policy.finetune != "lora":
        raise NLHFInputError(
            f"rollout.backend: {cfg.backend} serves LoRA adapters only; set model.finetune: "
            "lora or use backend: hf"
        )
    if cfg.backend == "openai":
        from nlhf.llm.rollout.openai_server import OpenAIServerGenerator

        s = cfg.server
        if not s.base_url:
            raise NLHFInputError(
                "rollout.server.base_url: required for rollout.backend 'openai' "
                "(e.g. http://127.0.0.1:8000/v1)"
            )
        return OpenAIServerGenerator(
            s.base_url, s.model or "", tokenizer=policy.tokenizer,
            eos_token_ids=policy.eos_token_ids, api_key_env=s.api_key_env, timeout=s.timeout,
            max_retries=s.max_retries, concurrency=s.concurrency,
            prompt_format=s.prompt_format, token_ids=s.token_ids, adapter_url=s.adapter_url,
        )
    if cfg.backend == "vllm":
        from nlhf.llm.rollout.vllm_engine import VLLMGenerator

        v = cfg.vllm
        model = v.model or base_model_path(policy)
        if not model:
            raise NLHFInputError(
                "rollout.vllm.model: this base model exists only in memory (e.g. tiny-random); "
                "give a model folder or Hub id that vLLM can load, or use backend: hf"
            )
        return VLLMGenerator(
            model, tokenizer=policy.tokenizer, eos_token_ids=policy.eos_token_ids,
            max_lora_rank=policy.lora.r, dtype=v.dtype,
            gpu_memory_utilization=v.gpu_memory_utilization, max_model_len=v.max_model_len,
        )
    raise NLHFInputError(f"rollout.backend: unknown {cfg.backend!r}; use hf, vllm or openai")
