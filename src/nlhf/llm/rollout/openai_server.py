"""Rollouts from an OpenAI-compatible completions server (``vllm serve --enable-lora``, ...).

Why a server: a serving engine batches and pages the KV cache far better than HF
``generate``, and it can run on other GPUs than the trainer. What keeps it exact:

- prompts go out as the trainer's token ids (vLLM and SGLang accept ``prompt: [ids]``), so
  the server never re-applies a chat template or adds a BOS of its own;
- every sampling knob is sent explicitly (top-k, min-p and repetition penalty off too, where
  the server takes them), so a model's ``generation_config`` defaults cannot change sampling;
- the response's token ids come back as ids (vLLM: ``return_token_ids``, or log-prob tokens
  written ``token_id:N``); only a server that returns text alone gets re-tokenized;
- per-iteration LoRA adapters are loaded by folder through ``/load_lora_adapter`` under a
  new name each round, so a server that caches adapters by name never serves stale weights;
- ``Sample.logprob`` stays None: the trainer's own forward pass computes the log-probs its
  losses use (the server's numerics, e.g. bf16 kernels, are not the trainer's).

HTTP (retries, backoff, timeouts, the API key) is :mod:`nlhf.llm.http_client`'s, shared with the
``openai`` judge: the key is read from the environment at request time; it is never stored,
logged or put in an error message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal

from nlhf.errors import NLHFInputError
from nlhf.llm.http_client import JSONClient, Reply, require_http_url
from nlhf.llm.rollout.base import (
    NEUTRAL_SAMPLING,
    Generator,
    eos_ids,
    finish_response,
    lora_folder,
    request_seed,
)
from nlhf.llm.rollout.hf import Sample, Sampling, prompt_lists
from nlhf.progress import progress_bar

_NOT_LOADED = ("not found", "cannot be found", "does not exist")


class GeneratorUnavailableError(NLHFInputError):
    """The generation server did not answer after every retry (down, overloaded, timing out)."""


class OpenAIServerGenerator(Generator):
    """Samples through ``POST {base_url}/completions``; adapters through the LoRA endpoints."""

    backend = "openai"
    loads_adapters = True

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        tokenizer: Any,
        eos_token_ids: Sequence[int] | None = None,
        api_key_env: str | None = "VLLM_API_KEY",
        timeout: float = 300.0,
        max_retries: int = 5,
        concurrency: int = 8,
        prompt_format: Literal["tokens", "text"] = "tokens",
        token_ids: bool = True,
        adapter_url: str | None = None,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        for key, url in (("base_url", base_url), ("adapter_url", adapter_url)):
            if url is not None:
                require_http_url(url, f"rollout.server.{key}")
        if not model:
            raise NLHFInputError("rollout.server.model: required: the base model's name on the "
                                 "server (GET /v1/models lists it)")
        if prompt_format not in ("tokens", "text"):
            raise NLHFInputError(f"rollout.server.prompt_format: use tokens or text, got "
                                 f"{prompt_format!r}")
        base = str(base_url).rstrip("/").removesuffix("/completions")
        self.base_url = base
        self.completions_url = base + "/completions"
        adapters = str(adapter_url or base).rstrip("/")
        self.load_url = adapters + "/load_lora_adapter"
        self.unload_url = adapters + "/unload_lora_adapter"
        self.model = str(model)
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_ids(eos_token_ids, tokenizer)
        self.api_key_env = api_key_env
        self.http = JSONClient(
            api_key_env=api_key_env, timeout=timeout, max_retries=max_retries, backoff=backoff,
            max_backoff=max_backoff, unavailable=GeneratorUnavailableError,
            message="rollout.server: {url} is unreachable after {attempts} attempts ({reason}); "
                    "start the server (see docs/rollout.md) or set rollout.backend: hf")
        self.concurrency = max(1, int(concurrency))
        self.prompt_format = prompt_format
        self.token_ids = bool(token_ids)

    # -- HTTP -----------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        """HTTP requests sent, retries included."""
        return self.http.requests

    def _fail(self, what: str, reply: Reply) -> NLHFInputError:
        status, hint = reply.status, ""
        if status in (401, 403):
            hint = f"; set ${self.api_key_env} to the server's API key"
        elif status == 404:
            hint = ("; is the model name right and the server started with --enable-lora "
                    "(and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)?")
        return NLHFInputError(f"rollout.server: {what} failed (HTTP {status}): "
                              f"{reply.detail()}{hint}")

    # -- adapters -------------------------------------------------------------------------

    def load_adapter(self, name: str, directory: str | Path) -> None:
        """Register the LoRA folder ``directory`` as model ``name`` (re-registering if held).

        The server reads the folder itself, so it must see the same path (same machine or a
        shared mount); the path is sent absolute.
        """
        path = lora_folder(directory)
        self.unload_adapter(name)
        reply = self.http.post(self.load_url, {"lora_name": name, "lora_path": str(path)})
        if reply.status >= 400:
            raise self._fail(f"loading adapter {name!r} from {path}", reply)

    def unload_adapter(self, name: str) -> None:
        """Drop adapter ``name``; an adapter the server does not hold is not an error."""
        reply = self.http.post(self.unload_url, {"lora_name": name})
        if reply.status == 404 or (reply.status == 400 and any(
                s in reply.body.decode("utf-8", "replace").lower() for s in _NOT_LOADED)):
            return
        if reply.status >= 400:
            raise self._fail(f"unloading adapter {name!r}", reply)

    # -- sampling -------------------------------------------------------------------------

    def payload(self, prompt_ids: Sequence[int], adapter: str | None, *, n: int,
                max_new_tokens: int, temperature: float, top_p: float, seed: int
                ) -> dict[str, Any]:
        """The completions request of one prompt (public so tests and docs can show it)."""
        prompt: list[int] | str = list(prompt_ids)
        if self.prompt_format == "text":
            prompt = self.tokenizer.decode(list(prompt_ids), skip_special_tokens=False)
        body: dict[str, Any] = {
            "model": adapter or self.model, "prompt": prompt, "n": n,
            "max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
            "seed": seed, "stream": False,
        }
        if self.token_ids:  # vLLM / SGLang extensions: exact ids, exact sampler, HF's EOS set
            body |= {"return_token_ids": True, "logprobs": 0, "return_tokens_as_token_ids": True,
                     "stop_token_ids": self.eos_token_ids, **NEUTRAL_SAMPLING}
            if self.prompt_format == "text":
                body["add_special_tokens"] = False
        return body

    def response_ids(self, choice: dict[str, Any], max_new_tokens: int) -> list[int]:
        """Token ids of one choice, up to and including its EOS when the model stopped.

        Text-only answers are re-tokenized with the policy's tokenizer: approximate (BPE may
        split the text differently from how it was sampled, even into more than
        ``max_new_tokens`` tokens, which are kept so that ids and text agree).
        """
        limit = max_new_tokens
        ids = choice.get("token_ids")
        if not isinstance(ids, list):
            ids = _ids_from_logprobs(choice.get("logprobs"))
        if ids is None:
            text = str(choice.get("text") or "")
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
            limit = max(limit, len(ids) + 1)
        return finish_response(ids, stopped=choice.get("finish_reason") == "stop",
                               stop_reason=choice.get("stop_reason"),
                               eos_token_ids=self.eos_token_ids, max_new_tokens=limit)

    def _complete(self, index: int, prompt_ids: list[int], adapter: str | None,
                  sampling: Sampling) -> list[Sample]:
        n, max_new_tokens = sampling.n_per_prompt, sampling.max_new_tokens
        body = self.payload(prompt_ids, adapter, n=n, max_new_tokens=max_new_tokens,
                            temperature=sampling.temperature, top_p=sampling.top_p,
                            seed=request_seed(sampling.seed, index))
        reply = self.http.post(self.completions_url, body)
        if reply.status >= 400:
            raise self._fail(f"completion with model {body['model']!r}", reply)
        try:
            choices = json.loads(reply.body)["choices"]
        except (ValueError, KeyError, TypeError):
            raise NLHFInputError(f"rollout.server: {self.completions_url} answered without "
                                 "'choices'; is it an OpenAI-compatible completions API?"
                                 ) from None
        if not isinstance(choices, list) or len(choices) != n:
            got = len(choices) if isinstance(choices, list) else 0
            raise NLHFInputError(f"rollout.server: asked n={n} completions, got {got}; the "
                                 "server must support 'n'")
        choices = sorted(choices, key=lambda c: int(c.get("index", 0)))
        return [Sample.decoded(self.tokenizer, index, prompt_ids,
                               self.response_ids(choice, max_new_tokens))
                for choice in choices]

    def generate(
        self,
        prompts_ids: Sequence[Sequence[int]],
        adapter: str | None,
        sampling: Sampling = Sampling(),
        *,
        progress: bool = True,
    ) -> list[Sample]:
        """One request per prompt (``n`` samples each), ``concurrency`` of them in flight."""
        prompts = prompt_lists(prompts_ids)
        groups: list[list[Sample]] = [[] for _ in prompts]
        if not prompts:
            return []
        pool = ThreadPoolExecutor(min(self.concurrency, len(prompts)))
        try:
            with progress_bar(progress) as bar:
                task = bar.add_task(f"generate ({adapter or self.model}, server)",
                                    total=len(prompts) * sampling.n_per_prompt)
                futures: dict[Future[list[Sample]], int] = {
                    pool.submit(self._complete, i, p, adapter, sampling): i
                    for i, p in enumerate(prompts)
                }
                for fut in as_completed(futures):
                    groups[futures[fut]] = fut.result()
                    bar.advance(task, sampling.n_per_prompt)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return [s for group in groups for s in group]


def _ids_from_logprobs(logprobs: Any) -> list[int] | None:
    """Ids from log-prob tokens written ``token_id:N`` (vLLM's return_tokens_as_token_ids)."""
    tokens = (logprobs or {}).get("tokens") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list):
        return None
    ids = []
    for tok in tokens:
        head, sep, tail = str(tok).partition("token_id:")
        if head or not sep or not tail.isdigit():
            return None
        ids.append(int(tail))
    return ids
