"""POST JSON to an OpenAI-compatible server, with retries, backoff and one-line errors.

Shared by the ``openai`` judge and the ``openai`` rollout backend. Standard library only
(urllib): one POST per request needs nothing more, and it works wherever nlhf installs.

- Connection errors, timeouts, HTTP 429 and 5xx are retried with exponential backoff
  (``backoff · 2^attempt`` seconds, at least the server's ``Retry-After``, at most
  ``max_backoff``); when every attempt failed, one line is raised with the caller's
  exception class and message.
- Other answers (2xx, and 4xx for the caller to explain) come back as a :class:`Reply`.
- The API key is read from the environment variable ``api_key_env`` at request time only;
  it is never stored, logged or put into a message.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from nlhf.errors import NLHFInputError


def require_http_url(url: Any, field: str) -> str:
    """``url`` as a string; one that is not http(s) is a one-line error naming ``field``."""
    if not str(url).startswith(("http://", "https://")):
        raise NLHFInputError(f"{field}: must start with http:// or https://, got {url!r}")
    return str(url)


@dataclass(frozen=True)
class Reply:
    """A non-retried answer: its HTTP status, raw body and, if asked for, its decoded JSON."""

    status: int
    body: bytes
    data: Any = None

    def detail(self) -> str:
        """The start of the body on one line, for an error message."""
        return " ".join(self.body[:300].decode("utf-8", "replace").split())


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class JSONClient:
    """Retrying JSON POSTs; ``requests`` counts the HTTP requests sent, retries included.

    ``unavailable`` is raised when every attempt failed, with ``message`` formatted with
    ``url``, ``attempts`` and ``reason`` (one line).
    """

    def __init__(
        self,
        *,
        api_key_env: str | None,
        timeout: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
        unavailable: type[Exception],
        message: str = "{url} is unreachable after {attempts} attempts: {reason}",
    ) -> None:
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.unavailable = unavailable
        self.message = message
        self.requests = 0

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _send(self, url: str, payload: dict[str, Any], decode: bool) -> Reply:
        """One POST; raises _Retryable for transient failures."""
        req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers=self.headers(), method="POST")
        self.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = Reply(int(resp.status), resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code}", _retry_after(exc.headers)) from None
            return Reply(int(exc.code), exc.read())
        except urllib.error.URLError as exc:
            raise _Retryable(str(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        if not decode:
            return reply
        try:
            return Reply(reply.status, reply.body, json.loads(reply.body))
        except json.JSONDecodeError:
            raise _Retryable("the response was not JSON") from None

    def post(self, url: str, payload: dict[str, Any], *, decode: bool = False) -> Reply:
        """POST ``payload`` as JSON, retrying transient failures; a 2xx or 4xx reply.

        ``decode``: also parse a 2xx body as JSON into ``Reply.data``, retrying a body that
        is not JSON (a proxy's error page, a truncated answer).
        """
        attempts = self.max_retries + 1
        reason = ""
        for attempt in range(attempts):
            try:
                return self._send(url, payload, decode)
            except _Retryable as exc:
                reason = " ".join(str(exc).split())
                if attempt + 1 < attempts:
                    delay = self.backoff * 2**attempt
                    if exc.retry_after is not None:
                        delay = max(delay, exc.retry_after)
                    time.sleep(min(delay, self.max_backoff))
        raise self.unavailable(self.message.format(url=url, attempts=attempts, reason=reason))


def _retry_after(headers: Any) -> float | None:
    try:
        return float(headers.get("Retry-After")) if headers else None
    except (TypeError, ValueError):
        return None
