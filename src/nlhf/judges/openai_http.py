"""A judge behind an OpenAI-compatible chat/completions endpoint (vLLM's server, hosted APIs).

Why the standard library: urllib is enough for one POST per pair, and the judge then works
wherever nlhf installs. The API key is read from the environment at call time only; it is
never stored in settings, identity, logs or error messages.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.judges.base import Judge
from nlhf.judges.llm_judge import JUDGE_TEMPLATE

_LETTER = re.compile(r"\b([AB])\b")


class JudgeUnavailableError(NLHFInputError):
    """The endpoint did not answer after every retry (down, overloaded, or timing out)."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _NoLogprobs(Exception):
    """The server rejected `logprobs`: ask again for a plain text answer."""


class OpenAIJudge(Judge):
    """Asks "A or B?" for a one-token answer; P(a≻b) from its top log-probs, else its text."""

    name = "openai"
    symmetric = False

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 template: str = JUDGE_TEMPLATE, temperature: float = 0.0, max_tokens: int = 1,
                 logprobs: bool = True, top_logprobs: int = 5, timeout: float = 60.0,
                 max_retries: int = 5, backoff: float = 1.0, max_backoff: float = 30.0,
                 concurrency: int = 4, batch_size: int = 64) -> None:
        if not str(base_url).startswith(("http://", "https://")):
            raise NLHFInputError(f"judge.base_url: must start with http:// or https://, "
                                 f"got {base_url!r}")
        url = str(base_url).rstrip("/")
        self.base_url = url
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = str(model)
        self.api_key_env = api_key_env
        self.template = template
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.logprobs = bool(logprobs)
        self.top_logprobs = int(top_logprobs)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.concurrency = max(1, int(concurrency))
        self.batch_size = batch_size
        self.requests = 0  # HTTP requests sent, retries included

    def settings(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "template": self.template,
                "temperature": self.temperature, "logprobs": self.logprobs}

    # -- HTTP -----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _send(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One POST. Raises _Retryable for transient failures, NLHFInputError for the rest."""
        req = urllib.request.Request(self.url, data=json.dumps(payload).encode(),
                                     headers=self._headers(), method="POST")
        self.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace").replace("\n", " ")
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code}", _retry_after(exc.headers)) from None
            if exc.code == 400 and payload.get("logprobs") and "logprob" in detail.lower():
                raise _NoLogprobs from None
            hint = f"; set ${self.api_key_env}" if exc.code in (401, 403) else ""
            raise NLHFInputError(f"judge endpoint {self.url} rejected the request "
                                 f"(HTTP {exc.code}): {detail}{hint}") from None
        except urllib.error.URLError as exc:
            raise _Retryable(str(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            raise _Retryable("the response was not JSON") from None

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST with exponential backoff on connection errors, timeouts, 429 and 5xx."""
        attempts = self.max_retries + 1
        reason = ""
        for attempt in range(attempts):
            try:
                return self._send(payload)
            except _Retryable as exc:
                reason = str(exc)
                if attempt + 1 < attempts:
                    delay = self.backoff * 2**attempt
                    if exc.retry_after is not None:
                        delay = max(delay, exc.retry_after)
                    time.sleep(min(delay, self.max_backoff))
        raise JudgeUnavailableError(
            f"judge endpoint {self.url} is unreachable after {attempts} attempts: {reason}"
        )

    # -- judging --------------------------------------------------------------------------

    def _ask(self, prompt: str, a: str, b: str) -> float:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user",
                          "content": self.template.format(prompt=prompt, a=a, b=b)}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.logprobs:
            payload |= {"logprobs": True, "top_logprobs": self.top_logprobs}
        try:
            data = self._post(payload)
        except _NoLogprobs:
            self.logprobs = False  # remember: this server does not do log-probs
            return self._ask(prompt, a, b)
        return parse_answer(data)

    def _prob_one_order(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        with ThreadPoolExecutor(self.concurrency) as pool:
            try:
                probs = list(pool.map(self._ask, prompts, a, b))
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return np.asarray(probs, dtype=np.float64)


def _retry_after(headers: Any) -> float | None:
    try:
        return float(headers.get("Retry-After")) if headers else None
    except (TypeError, ValueError):
        return None


def parse_answer(data: dict[str, Any]) -> float:
    """P(A) from the first token's top log-probs when both letters are there, else the text:
    A → 1, B → 0, anything else → 1/2."""
    try:
        choice = data["choices"][0]
    except (KeyError, IndexError, TypeError):
        return 0.5
    content = ((choice.get("logprobs") or {}).get("content")) or []
    if content:
        first = content[0]
        best: dict[str, float] = {}
        for item in [first, *(first.get("top_logprobs") or [])]:
            letter = str(item.get("token", "")).strip().upper()
            if letter in ("A", "B") and item.get("logprob") is not None:
                best[letter] = max(best.get(letter, -math.inf), float(item["logprob"]))
        if len(best) == 2:
            return 1.0 / (1.0 + math.exp(best["B"] - best["A"]))
    text = str((choice.get("message") or {}).get("content") or choice.get("text") or "")
    match = _LETTER.search(text.strip()[:50])
    if match is None:
        return 0.5
    return 1.0 if match.group(1) == "A" else 0.0
