"""POST JSON to an OpenAI-compatible server with httpx: retries, backoff, redacted errors.

Shared by the ``openai`` judge and the ``openai`` rollout backend. httpx does the HTTP
(connection pool, timeouts); what stays here is the policy both callers need and httpx does
not have: which failures are retried, how long to wait, and that no secret reaches a message.

- Connection errors, timeouts, HTTP 429 and 5xx are retried with exponential backoff
  (``backoff · 2^attempt`` seconds, at least the server's ``Retry-After``, at most
  ``max_backoff``); when every attempt failed, one line is raised with the caller's
  exception class and message.
- Other answers (2xx, and 4xx for the caller to explain) come back as a :class:`Reply`.
- The API key is read from the environment variable ``api_key_env`` at request time only;
  it is never stored, and :func:`redact` strips it (and any bearer token, ``sk-`` key or
  URL password) from every text that goes into a message.
"""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx

from nlhf.errors import NLHFInputError

_SECRETS = re.compile(
    r"(?i)(bearer\s+|authorization[\"']?\s*[:=]\s*[\"']?|api[_-]?key[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"',;}]+"
    r"|\bsk-[A-Za-z0-9_\-]{4,}"
    r"|(?<=://)[^/\s:@]+:[^/\s@]+@"
)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with the given secrets and anything shaped like a credential replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")

    def hide(m: re.Match[str]) -> str:
        prefix = m.group(1)
        return f"{prefix}[redacted]" if prefix else ("[redacted]@" if "@" in m.group(0)
                                                     else "[redacted]")

    return _SECRETS.sub(hide, text)


def require_http_url(url: Any, field: str) -> str:
    """``url`` as a string: http(s), with a host and a valid port, else one line naming
    ``field`` (``http:/v1`` and ``http://h:99999`` are errors here, not at the first call)."""
    text = str(url) if isinstance(url, str) else ""
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port  # raises for a port out of 0..65535 or not a number
    except ValueError as exc:
        raise NLHFInputError(f"{field}: not a valid URL ({exc}), got {redact(text)!r}") from None
    if parts.scheme not in ("http", "https"):
        raise NLHFInputError(f"{field}: must start with http:// or https://, got "
                             f"{redact(str(url))!r}")
    if not parts.hostname:
        raise NLHFInputError(f"{field}: has no host, got {redact(text)!r}; write it as "
                             "http://HOST:PORT/v1")
    if port == 0:
        raise NLHFInputError(f"{field}: port must be 1-65535, got {redact(text)!r}")
    return text


@dataclass(frozen=True)
class Reply:
    """A non-retried answer: its HTTP status, raw body and, if asked for, its decoded JSON."""

    status: int
    body: bytes
    data: Any = None
    secret: str | None = None

    def detail(self) -> str:
        """The start of the body on one line, redacted, for an error message."""
        text = " ".join(self.body[:300].decode("utf-8", "replace").split())
        return redact(text, self.secret)


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class JSONClient:
    """Retrying JSON POSTs; ``requests`` counts the HTTP requests sent, retries included.

    ``unavailable`` is raised when every attempt failed, with ``message`` formatted with
    ``url``, ``attempts`` and ``reason`` (one line). One httpx client (one connection pool)
    serves every thread.
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
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None

    def _key(self) -> str:
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    def headers(self) -> dict[str, str]:
        key = self._key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=httpx.Timeout(self.timeout),
                                            follow_redirects=False)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _send(self, url: str, payload: dict[str, Any], decode: bool) -> Reply:
        """One POST; raises _Retryable for transient failures."""
        key = self._key()
        with self._lock:
            self.requests += 1
        try:
            resp = self._http().post(url, json=payload, headers=self.headers())
        except httpx.HTTPError as exc:  # connect errors, timeouts, resets, protocol errors
            raise _Retryable(redact(f"{type(exc).__name__}: {exc}", key)) from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}", _retry_after(resp.headers))
        reply = Reply(resp.status_code, resp.content, secret=key or None)
        if not decode or not 200 <= reply.status < 300:
            return reply
        try:
            return Reply(reply.status, reply.body, resp.json(), secret=key or None)
        except ValueError:
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
        raise self.unavailable(redact(
            self.message.format(url=url, attempts=attempts, reason=reason), self._key()))


def _retry_after(headers: Any) -> float | None:
    """Retry-After in seconds (the HTTP-date form is ignored: backoff applies)."""
    try:
        value = float(headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None
