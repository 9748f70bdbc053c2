"""A judge behind an OpenAI-compatible chat/completions endpoint (vLLM's server, hosted APIs).

HTTP (retries, backoff, timeouts, the API key) is :mod:`nlhf.llm.http_client`'s, shared with the
``openai`` rollout backend: the key is read from the environment at call time only and is
never stored in settings, identity, logs or error messages.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.llm.http_client import JSONClient, require_http_url
from nlhf.llm.judges.base import Judge
from nlhf.llm.judges.llm_judge import JUDGE_TEMPLATE

_LETTER = re.compile(r"\b([AB])\b")


class JudgeUnavailableError(NLHFInputError):
    """The endpoint did not answer after every retry (down, overloaded, or timing out)."""


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
        url = require_http_url(base_url, "judge.base_url").rstrip("/")
        self.base_url = url
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = str(model)
        self.api_key_env = api_key_env
        self.template = template
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.logprobs = bool(logprobs)
        self.top_logprobs = int(top_logprobs)
        self.http = JSONClient(
            api_key_env=api_key_env, timeout=timeout, max_retries=max_retries, backoff=backoff,
            max_backoff=max_backoff, unavailable=JudgeUnavailableError,
            message="judge endpoint {url} is unreachable after {attempts} attempts: {reason}")
        self.concurrency = max(1, int(concurrency))
        self.batch_size = batch_size

    def settings(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "template": self.template,
                "temperature": self.temperature, "logprobs": self.logprobs}

    # -- HTTP -----------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        """HTTP requests sent, retries included."""
        return self.http.requests

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST with retries (:class:`JSONClient`); a rejected request is one line."""
        reply = self.http.post(self.url, payload, decode=True)
        if 200 <= reply.status < 300:
            return reply.data
        detail = reply.detail()
        if reply.status == 400 and payload.get("logprobs") and "logprob" in detail.lower():
            raise _NoLogprobs
        hint = f"; set ${self.api_key_env}" if reply.status in (401, 403) else ""
        raise NLHFInputError(f"judge endpoint {self.url} rejected the request "
                             f"(HTTP {reply.status}): {detail}{hint}")

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
