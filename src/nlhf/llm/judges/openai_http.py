"""A judge behind an OpenAI-compatible chat/completions endpoint (vLLM's server, hosted APIs,
``transformers serve``).

HTTP (retries, backoff, timeouts, the API key, redaction) is :mod:`nlhf.llm.http_client`'s,
shared with the ``openai`` rollout backend: the key is read from the environment at call time
only and never reaches settings, identity, logs or error messages.

Replies are read defensively (:func:`parse_answer`): any shape that is not a usable answer
(no choices, a choice that is not an object, a text naming neither A nor B, log-probs that
are not numbers) is asked again up to ``answer_retries`` times, then counted as a failure
(NaN), never turned into 1/2.

Whether log-probs are used is configured (``logprobs``, part of the cache key); whether the
server gives them is found out at run time: a server that rejects them (HTTP 400) or answers
200 without them (``transformers serve`` ignores the field) gets text questions from then
on, with one warning, and :meth:`OpenAIJudge.answer_mode` reports the mode actually used.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.llm.http_client import JSONClient, redact, require_http_url
from nlhf.llm.judges.base import Judge
from nlhf.llm.judges.llm_judge import JUDGE_TEMPLATE

log = logging.getLogger(__name__)
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
                 concurrency: int = 4, batch_size: int = 64, answer_retries: int = 2) -> None:
        url = require_http_url(base_url, "judge.base_url").rstrip("/")
        self.base_url = url
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = str(model)
        self.api_key_env = api_key_env
        self.template = template
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.logprobs = bool(logprobs)  # configured: part of the identity, never changed
        self.top_logprobs = int(top_logprobs)
        self.answer_retries = max(0, int(answer_retries))
        self.http = JSONClient(
            api_key_env=api_key_env, timeout=timeout, max_retries=max_retries, backoff=backoff,
            max_backoff=max_backoff, unavailable=JudgeUnavailableError,
            message="judge endpoint {url} is unreachable after {attempts} attempts: {reason}")
        self.concurrency = max(1, int(concurrency))
        self.batch_size = batch_size
        #: Found at run time: None until the first answer, then True (log-probs) or False.
        self.logprobs_used: bool | None = None
        self.last_failure = ""
        self._lock = threading.Lock()

    def settings(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "template": self.template,
                "temperature": self.temperature, "logprobs": self.logprobs}

    def answer_mode(self) -> dict[str, float]:
        if self.logprobs_used is None:
            return {}
        return {"judge_logprobs_used": float(self.logprobs_used)}

    # -- HTTP -----------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        """HTTP requests sent, retries included."""
        return self.http.requests

    def _post(self, payload: dict[str, Any]) -> Any:
        """POST with retries (:class:`JSONClient`); a rejected request is one line."""
        reply = self.http.post(self.url, payload, decode=True)
        if 200 <= reply.status < 300:
            return reply.data
        detail = reply.detail()
        if reply.status == 400 and payload.get("logprobs") and "logprob" in detail.lower():
            raise _NoLogprobs
        hint = f"; set ${self.api_key_env}" if reply.status in (401, 403) else ""
        raise NLHFInputError(f"judge endpoint {redact(self.url)} rejected the request "
                             f"(HTTP {reply.status}): {detail}{hint}")

    def _text_mode(self, why: str) -> None:
        """Switch to text answers for the rest of the run, saying so once."""
        with self._lock:
            if self.logprobs_used is False:
                return
            self.logprobs_used = False
        log.warning("judge openai: %s %s; using its text answers (A → 1, B → 0) instead of "
                    "log-probs", redact(self.url), why)

    # -- judging --------------------------------------------------------------------------

    def _payload(self, prompt: str, a: str, b: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user",
                          "content": self.template.format(prompt=prompt, a=a, b=b)}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.logprobs and self.logprobs_used is not False:
            payload |= {"logprobs": True, "top_logprobs": self.top_logprobs}
        return payload

    def _ask(self, prompt: str, a: str, b: str) -> float:
        """P(first shown wins) for one order; NaN when no reply was usable."""
        tries = 0
        while tries <= self.answer_retries:
            payload = self._payload(prompt, a, b)
            try:
                data = self._post(payload)
            except _NoLogprobs:  # asked again at once, without log-probs (no loop: see _payload)
                self._text_mode("rejects `logprobs` (HTTP 400)")
                continue
            tries += 1
            self._note_mode(bool(payload.get("logprobs")), data)
            p = parse_answer(data)
            if p is not None:
                return p
            self.last_failure = f"unusable reply {_excerpt(data)}"
        return math.nan

    def _note_mode(self, asked: bool, data: Any) -> None:
        """The first reply tells whether this server gives log-probs at all."""
        if self.logprobs_used is not None:
            return
        if not asked:
            self.logprobs_used = False  # logprobs: false in the config
        elif has_logprobs(data):
            with self._lock:
                if self.logprobs_used is None:
                    self.logprobs_used = True
        elif first_choice(data) is not None:
            self._text_mode("answered without the log-probs it was asked for")

    def _prob_one_order(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        with ThreadPoolExecutor(self.concurrency) as pool:
            try:
                probs = list(pool.map(self._ask, prompts, a, b))
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return np.asarray(probs, dtype=np.float64)


def first_choice(data: Any) -> dict[str, Any] | None:
    """The first choice of a chat reply when it is an object, else None."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    return choices[0]


def has_logprobs(data: Any) -> bool:
    """Whether the reply carries per-token log-probs at all (some servers drop them)."""
    choice = first_choice(data)
    logprobs = choice.get("logprobs") if choice else None
    return isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list) \
        and bool(logprobs["content"])


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) or value == math.inf else value


def _sigmoid(x: float) -> float:
    """1 / (1 + e^−x) without overflow for any x (log-probs of −9999 happen)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _logprob_answer(choice: dict[str, Any]) -> float | None:
    """P(A) from the first token's top log-probs when both letters are there with numbers."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        return None
    first = content[0]
    tops = first.get("top_logprobs")
    best: dict[str, float] = {}
    for item in [first, *(tops if isinstance(tops, list) else [])]:
        if not isinstance(item, dict):
            continue
        letter = str(item.get("token", "")).strip().upper()
        value = _number(item.get("logprob"))
        if letter in ("A", "B") and value is not None:
            best[letter] = max(best.get(letter, -math.inf), value)
    if len(best) < 2 or best["A"] == best["B"] == -math.inf:
        return None
    return _sigmoid(best["A"] - best["B"])


def _text_answer(choice: dict[str, Any]) -> float | None:
    """A → 1, B → 0 from the first letter A or B in the answer's start; else None."""
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str) or not text.strip():
        text = choice.get("text")
    if not isinstance(text, str):
        return None
    match = _LETTER.search(text.strip()[:50])
    if match is None:
        return None
    return 1.0 if match.group(1) == "A" else 0.0


def parse_answer(data: Any) -> float | None:
    """P(A) from a chat reply: top log-probs when both letters are there, else the text.
    None for an unusable reply (any shape, never an exception)."""
    choice = first_choice(data)
    if choice is None:
        return None
    p = _logprob_answer(choice)
    return p if p is not None else _text_answer(choice)


def _excerpt(data: Any) -> str:
    return redact(" ".join(repr(data).split())[:120])
