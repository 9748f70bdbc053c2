"""One interface over every way of sampling responses: in-process HF, vLLM, or a server.

Why an interface: the trainer only needs "samples of adapter X for these prompts, seeded";
where they come from is a deployment choice (``rollout.backend``). Backends that cannot see
the policy's in-memory adapters (a server, a separate vLLM engine) set ``loads_adapters``:
the trainer then saves the current iterate to a folder and calls :meth:`load_adapter` with a
per-iteration name before generating, so no weights are copied by hand.

Log-probs: only the HF backend can fill ``Sample.logprob`` exactly (it sees the trainer's own
logits). The others return None and the trainer computes the log-probs it needs with its own
forward pass (``trainer.data.missing_logprobs`` treats None as missing).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.llm.rollout.hf import (
    Sample,
    Sampling,
    _cut_at_eos,
    generate,
    generate_batches,
    plan_batches,
)

if TYPE_CHECKING:
    from nlhf.llm.policy.lm import LMPolicy


class Generator(ABC):
    """Samples responses to tokenized prompts from a named adapter (None: the reference)."""

    #: The ``rollout.backend`` value that selects this generator.
    backend: ClassVar[str]
    #: True: ``generate`` sees only adapters given to :meth:`load_adapter` (by folder);
    #: False: it samples the policy's in-memory adapters ("policy", "adversary") directly.
    loads_adapters: ClassVar[bool] = False

    @abstractmethod
    def generate(
        self,
        prompts_ids: Sequence[Sequence[int]],
        adapter: str | None,
        sampling: Sampling = Sampling(),
        *,
        progress: bool = True,
    ) -> list[Sample]:
        """``sampling.n_per_prompt`` samples per prompt, grouped by prompt in prompt order.

        Same arguments, same samples (as far as the backend is deterministic). Each response
        ends with an EOS token when the model stopped, and is cut at ``max_new_tokens``.
        """

    @abstractmethod
    def load_adapter(self, name: str, directory: str | Path) -> None:
        """After this call, ``generate(..., adapter=name)`` samples the weights in ``directory``."""

    def unload_adapter(self, name: str) -> None:  # noqa: B027 - optional hook, default no-op
        """Free adapter ``name`` (servers keep a bounded set); a no-op where nothing is held."""

    def close(self) -> None:  # noqa: B027 - optional hook, default no-op
        """Release connections or engines."""


class HFGenerator(Generator):
    """In-process Hugging Face ``generate`` on the policy itself (:func:`rollout.hf.generate`)."""

    backend = "hf"
    loads_adapters = False

    def __init__(self, policy: LMPolicy, *, batch_size: int = 8) -> None:
        self.policy = policy
        self.batch_size = batch_size

    def generate(
        self,
        prompts_ids: Sequence[Sequence[int]],
        adapter: str | None,
        sampling: Sampling = Sampling(),
        *,
        progress: bool = True,
    ) -> list[Sample]:
        return generate(self.policy, prompts_ids, adapter, sampling,
                        batch_size=self.batch_size, progress=progress)

    def generate_shard(
        self,
        prompts_ids: Sequence[Sequence[int]],
        adapter: str | None,
        rank: int,
        world: int,
        sampling: Sampling = Sampling(),
        *,
        progress: bool = True,
    ) -> dict[int, Sample]:
        """This rank's part of :meth:`generate`: batches b with b % world == rank, as
        {index in generate's output: sample}. The union over ranks equals ``generate``'s
        output exactly (same batches, same seeds), whatever ``world`` is."""
        jobs, batches = plan_batches(prompts_ids, sampling.n_per_prompt, self.batch_size)
        mine = [b for b in range(len(batches)) if b % world == rank]
        return generate_batches(self.policy, jobs, batches, mine, adapter, sampling,
                                progress=progress)

    def load_adapter(self, name: str, directory: str | Path) -> None:
        """Overwrite the in-memory adapter ``name`` ("policy" or "adversary") from a folder."""
        self.policy.load_adapter(name, directory)


#: Request seeds stay below 2**31: every server takes them (vLLM adds the sample index).
SEED_LIMIT = 2**31


def request_seed(seed: int, prompt_index: int) -> int:
    """The sampling seed of one prompt's request: a pure function of (seed, prompt index)."""
    state = np.random.SeedSequence([seed % 2**63, prompt_index, 0x5EED]).generate_state(1)
    return int(state[0]) % SEED_LIMIT


#: Sampler knobs that servers and vLLM would otherwise take from the model's
#: ``generation_config``: all off, so the samples follow temperature and top-p alone.
NEUTRAL_SAMPLING: dict[str, Any] = {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}


def eos_ids(eos_token_ids: Sequence[int] | None, tokenizer: Any) -> list[int]:
    """The stop token ids of a served backend (default: the tokenizer's EOS); none is an error."""
    eos = list(eos_token_ids) if eos_token_ids else [tokenizer.eos_token_id]
    ids = [int(e) for e in eos if e is not None]
    if not ids:
        raise NLHFInputError("tokenizer: no EOS token id; the server could not stop")
    return ids


def lora_folder(directory: str | Path) -> Path:
    """``directory`` as an absolute path, checked to hold a LoRA adapter: a server or engine
    reads the folder itself, so it gets the absolute path."""
    path = Path(directory).resolve()
    if not (path / "adapter_config.json").is_file():
        raise NLHFInputError(f"adapter: {path} holds no LoRA adapter (adapter_config.json)")
    return path


def finish_response(ids: Sequence[int], *, stopped: bool, stop_reason: Any,
                    eos_token_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """A served response in the HF backend's form: cut after its first EOS, at most
    ``max_new_tokens`` long, and ending in EOS when the model stopped.

    Servers differ on whether the EOS token is in the returned ids; ``stop_reason`` (vLLM)
    names the stop token when it was one of ``stop_token_ids``.
    """
    eos = list(eos_token_ids)
    out = _cut_at_eos([int(t) for t in ids], set(eos))[:max_new_tokens]
    if stopped and (not out or out[-1] not in eos) and len(out) < max_new_tokens:
        out.append(stop_reason if isinstance(stop_reason, int) and stop_reason in eos
                   else eos[0])
    return out


def base_model_path(policy: LMPolicy) -> str:
    """Where the policy's base weights were loaded from ("" for in-memory models)."""
    model: Any = policy.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return str(getattr(getattr(base, "config", None), "_name_or_path", "") or "")
