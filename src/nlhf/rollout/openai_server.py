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

Standard library only (urllib), like the ``openai`` judge. The API key is read from the
environment at request time; it is never stored, logged or put in an error message.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal

from nlhf.errors import NLHFInputError
from nlhf.rollout.base import Generator, finish_response, request_seed
from nlhf.rollout.hf import Sample, _progress

_NOT_LOADED = ("not found", "cannot be found", "does not exist")


class GeneratorUnavailableError(NLHFInputError):
    """The generation server did not answer after every retry (down, overloaded, timing out)."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


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
            if url is not None and not str(url).startswith(("http://", "https://")):
                raise NLHFInputError(f"rollout.server.{key}: must start with http:// or "
                                     f"https://, got {url!r}")
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
        eos = list(eos_token_ids) if eos_token_ids else [tokenizer.eos_token_id]
        self.eos_token_ids = [int(e) for e in eos if e is not None]
        if not self.eos_token_ids:
            raise NLHFInputError("tokenizer: no EOS token id; the server could not stop")
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.concurrency = max(1, int(concurrency))
        self.prompt_format = prompt_format
        self.token_ids = bool(token_ids)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.requests = 0  # HTTP requests sent, retries included

    # -- HTTP -----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _send(self, url: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        """One POST: (status, body) for 2xx and 4xx; _Retryable for transient failures."""
        req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers=self._headers(), method="POST")
        self.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code}", _retry_after(exc.headers)) from None
            return int(exc.code), exc.read()
        except urllib.error.URLError as exc:
            raise _Retryable(str(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None

    def _post(self, url: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        """POST with exponential backoff on connection errors, timeouts, 429 and 5xx."""
        attempts = self.max_retries + 1
        reason = ""
        for attempt in range(attempts):
            try:
                return self._send(url, payload)
            except _Retryable as exc:
                reason = " ".join(str(exc).split())
                if attempt + 1 < attempts:
                    delay = self.backoff * 2**attempt
                    if exc.retry_after is not None:
                        delay = max(delay, exc.retry_after)
                    time.sleep(min(delay, self.max_backoff))
        raise GeneratorUnavailableError(
            f"rollout.server: {url} is unreachable after {attempts} attempts ({reason}); "
            "start the server (see docs/rollout.md) or set rollout.backend: hf"
        )

    def _fail(self, what: str, status: int, body: bytes) -> NLHFInputError:
        detail = " ".join(body[:300].decode("utf-8", "replace").split())
        hint = ""
        if status in (401, 403):
            hint = f"; set ${self.api_key_env} to the server's API key"
        elif status == 404:
            hint = ("; is the model name right and the server started with --enable-lora "
                    "(and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)?")
        return NLHFInputError(f"rollout.server: {what} failed (HTTP {status}): {detail}{hint}")

    # -- adapters -------------------------------------------------------------------------

    def load_adapter(self, name: str, directory: str | Path) -> None:
        """Register the LoRA folder ``directory`` as model ``name`` (re-registering if held).

        The server reads the folder itself, so it must see the same path (same machine or a
        shared mount); the path is sent absolute.
        """
        path = Path(directory).resolve()
        if not (path / "adapter_config.json").is_file():
            raise NLHFInputError(f"adapter: {path} holds no LoRA adapter (adapter_config.json)")
        self.unload_adapter(name)
        status, body = self._post(self.load_url, {"lora_name": name, "lora_path": str(path)})
        if status >= 400:
            raise self._fail(f"loading adapter {name!r} from {path}", status, body)

    def unload_adapter(self, name: str) -> None:
        """Drop adapter ``name``; an adapter the server does not hold is not an error."""
        status, body = self._post(self.unload_url, {"lora_name": name})
        if status == 404 or (status == 400 and any(
                s in body.decode("utf-8", "replace").lower() for s in _NOT_LOADED)):
            return
        if status >= 400:
            raise self._fail(f"unloading adapter {name!r}", status, body)

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
                     "stop_token_ids": self.eos_token_ids, "top_k": -1, "min_p": 0.0,
                     "repetition_penalty": 1.0}
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

    def _complete(self, index: int, prompt_ids: list[int], adapter: str | None, n: int,
                  max_new_tokens: int, temperature: float, top_p: float, seed: int
                  ) -> list[Sample]:
        body = self.payload(prompt_ids, adapter, n=n, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, seed=request_seed(seed, index))
        status, raw = self._post(self.completions_url, body)
        if status >= 400:
            raise self._fail(f"completion with model {body['model']!r}", status, raw)
        try:
            choices = json.loads(raw)["choices"]
        except (ValueError, KeyError, TypeError):
            raise NLHFInputError(f"rollout.server: {self.completions_url} answered without "
                                 "'choices'; is it an OpenAI-compatible completions API?"
                                 ) from None
        if not isinstance(choices, list) or len(choices) != n:
            got = len(choices) if isinstance(choices, list) else 0
            raise NLHFInputError(f"rollout.server: asked n={n} completions, got {got}; the "
                                 "server must support 'n'")
        choices = sorted(choices, key=lambda c: int(c.get("index", 0)))
        out = []
        for choice in choices:
            response = self.response_ids(choice, max_new_tokens)
            out.append(Sample(
                prompt_index=index, prompt_ids=prompt_ids, response_ids=response,
                text=self.tokenizer.decode(response, skip_special_tokens=True), logprob=None,
            ))
        return out

    def generate(
        self,
        prompts_ids: Sequence[Sequence[int]],
        adapter: str | None,
        *,
        n_per_prompt: int = 1,
        max_new_tokens: int = 48,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        progress: bool = True,
    ) -> list[Sample]:
        """One request per prompt (``n`` samples each), ``concurrency`` of them in flight."""
        if any(len(p) == 0 for p in prompts_ids):
            raise ValueError("every prompt needs at least one token")
        prompts = [list(p) for p in prompts_ids]
        groups: list[list[Sample]] = [[] for _ in prompts]
        if not prompts:
            return []
        pool = ThreadPoolExecutor(min(self.concurrency, len(prompts)))
        try:
            with _progress(progress) as bar:
                task = bar.add_task(f"generate ({adapter or self.model}, server)",
                                    total=len(prompts) * n_per_prompt)
                futures: dict[Future[list[Sample]], int] = {
                    pool.submit(self._complete, i, p, adapter, n_per_prompt, max_new_tokens,
                                temperature, top_p, seed): i
                    for i, p in enumerate(prompts)
                }
                for fut in as_completed(futures):
                    groups[futures[fut]] = fut.result()
                    bar.advance(task, n_per_prompt)
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


def _retry_after(headers: Any) -> float | None:
    try:
        return float(headers.get("Retry-After")) if headers else None
    except (TypeError, ValueError):
        return None
