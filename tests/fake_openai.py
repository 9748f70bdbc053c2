"""A local OpenAI-compatible chat-completions server for tests (127.0.0.1 only).

One implementation shared by the judge tests and the CLI tests. It answers "A" or "B" for
the judge template with P(A) = 0.6 + 0.3·["good" in A] − 0.3·["good" in B] (a position bias
of 0.1 that symmetrising cancels), with top log-probs unless ``state["text_only"]``.
``state`` also scripts failures: ``fail`` (HTTP codes to answer first), ``sleep`` (seconds
before answering), ``need_key`` (401 without Authorization), ``no_logprobs`` (400 when
asked for log-probs); ``auth`` and ``paths`` record what was received.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PAIR = re.compile(r"\[Response A\]\n(.*)\n\n\[Response B\]\n(.*)\n\n", re.S)


class Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        st = self.server.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        st["auth"].append(self.headers.get("Authorization"))
        st["paths"].append(self.path)
        if st["fail"]:
            code = st["fail"].pop(0)
            return self._reply(code, {"error": "busy"}, {"Retry-After": "0"})
        if st["sleep"]:
            time.sleep(st["sleep"])
        if st.get("need_key") and not self.headers.get("Authorization"):
            return self._reply(401, {"error": {"message": "no key"}})
        if st.get("no_logprobs") and body.get("logprobs"):
            return self._reply(400, {"error": {"message": "logprobs are not supported"}})
        match = _PAIR.search(body["messages"][0]["content"])
        first, second = match.groups() if match else ("", "")
        p_a = 0.6 + 0.3 * ("good" in first) - 0.3 * ("good" in second)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant",
                                                          "content": "A" if p_a >= 0.5 else "B"}}
        if body.get("logprobs") and not st.get("text_only"):
            top = [{"token": "A", "logprob": math.log(p_a)},
                   {"token": " B", "logprob": math.log(1 - p_a)}]
            choice["logprobs"] = {"content": [{"token": "A" if p_a >= 0.5 else " B",
                                               "logprob": max(top[0]["logprob"],
                                                              top[1]["logprob"]),
                                               "top_logprobs": top}]}
        self._reply(200, {"choices": [choice]})

    def _reply(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class FakeOpenAI(ThreadingHTTPServer):
    """The server; ``url`` is its ``/v1`` base URL, ``stop()`` shuts it down."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.state: dict[str, Any] = {"auth": [], "paths": [], "fail": [], "sleep": 0.0}
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def free_port() -> int:
    """A port nothing listens on (now): the URL of an endpoint that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
