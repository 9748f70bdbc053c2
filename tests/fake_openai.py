"""A local OpenAI-compatible server for tests (127.0.0.1 only), vLLM-like.

One implementation shared by the judge, CLI and rollout-backend tests.

``/v1/chat/completions`` (the ``openai`` judge) answers "A" or "B" for the judge template
with P(A) = 0.6 + 0.3·["good" in A] − 0.3·["good" in B] (a position bias of 0.1 that
symmetrising cancels), with top log-probs unless ``state["text_only"]``.

``/v1/completions`` (the ``openai`` rollout backend) samples token ids from an RNG seeded by
(model, prompt, seed, sample index), so it is deterministic; ``model`` must be
``base_model`` or a loaded adapter. ``state["ids"]`` picks how ids come back: ``token_ids``
(vLLM's return_token_ids), ``logprobs`` (``token_id:N`` log-prob tokens) or ``text`` (text
only, made by ``decode``). ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` keep
``state["loaded"]`` (name → folder) like vLLM's runtime LoRA endpoints.

``state`` scripts failures: ``fail`` (HTTP codes to answer first), ``sleep`` (seconds
before answering), ``need_key`` (401 without Authorization), ``no_logprobs`` (400 when
asked for log-probs), ``ignore_logprobs`` (200 without log-probs, as ``transformers serve``),
``replies`` (raw chat bodies to answer first, 200: a str goes out as is, anything else as
JSON), ``echo_auth`` (an HTTP code: answer it with the Authorization header in the error
body, as careless servers do); ``auth``, ``paths``, ``requests`` ((path, body, Authorization)) and
``events`` (load / unload / complete) record what was received.
"""

from __future__ import annotations

import json
import math
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BASE_MODEL = "base-model"
EOS = 2  # SmolLM2's <|im_end|>, the tiny model's EOS: the default stop token

_PAIR = re.compile(r"\[Response A\]\n(.*)\n\n\[Response B\]\n(.*)\n\n", re.S)


class Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        st = self.server.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        with self.server.lock:
            st["auth"].append(auth)
            st["paths"].append(self.path)
            st["requests"].append((self.path, body, auth))
            code = st["fail"].pop(0) if st["fail"] else None
        if code is not None:
            return self._reply(code, {"error": {"message": "busy"}}, {"Retry-After": "0"})
        if st["sleep"]:
            time.sleep(st["sleep"])
        if st.get("echo_auth"):
            return self._reply(st["echo_auth"], {"error": {"message": f"bad credentials: {auth}"}})
        if st.get("need_key") and not auth:
            return self._reply(401, {"error": {"message": "no key"}})
        route = {"/v1/chat/completions": self._chat, "/v1/completions": self._complete,
                 "/v1/load_lora_adapter": self._load,
                 "/v1/unload_lora_adapter": self._unload}.get(self.path)
        if route is None:
            return self._reply(404, {"detail": "Not Found"})
        route(body)

    def _chat(self, body: dict[str, Any]) -> None:
        st = self.server.state
        with self.server.lock:
            raw = st["replies"].pop(0) if st.get("replies") else None
        if raw is not None:
            return self._reply(200, raw, raw=True)
        if st.get("no_logprobs") and body.get("logprobs"):
            return self._reply(400, {"error": {"message": "logprobs are not supported"}})
        match = _PAIR.search(body["messages"][0]["content"])
        first, second = match.groups() if match else ("", "")
        p_a = 0.6 + 0.3 * ("good" in first) - 0.3 * ("good" in second)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant",
                                                          "content": "A" if p_a >= 0.5 else "B"}}
        if body.get("logprobs") and not st.get("text_only") and not st.get("ignore_logprobs"):
            top = [{"token": "A", "logprob": math.log(p_a)},
                   {"token": " B", "logprob": math.log(1 - p_a)}]
            choice["logprobs"] = {"content": [{"token": "A" if p_a >= 0.5 else " B",
                                               "logprob": max(top[0]["logprob"],
                                                              top[1]["logprob"]),
                                               "top_logprobs": top}]}
        self._reply(200, {"choices": [choice]})

    def _load(self, body: dict[str, Any]) -> None:
        st, name, path = self.server.state, body["lora_name"], Path(body["lora_path"])
        with self.server.lock:
            if name in st["loaded"]:
                return self._reply(400, {"message": f"The lora adapter '{name}' has already "
                                                    "been loaded."})
            if not (path / "adapter_config.json").is_file():
                return self._reply(404, {"message": f"No adapter found for {path}"})
            st["loaded"][name] = str(path)
            st["events"].append(("load", name, str(path)))
        self._reply(200, f"Success: LoRA adapter '{name}' added successfully.")

    def _unload(self, body: dict[str, Any]) -> None:
        st, name = self.server.state, body["lora_name"]
        with self.server.lock:
            if st["loaded"].pop(name, None) is None:
                return self._reply(404, {"message": f"The lora adapter '{name}' cannot be "
                                                    "found."})
            st["events"].append(("unload", name))
        self._reply(200, f"Success: LoRA adapter '{name}' removed successfully.")

    def _complete(self, body: dict[str, Any]) -> None:
        """Deterministic in (model, prompt, seed, sample index): a seeded RNG picks tokens."""
        st = self.server.state
        model = body["model"]
        with self.server.lock:
            if model != self.server.base_model and model not in st["loaded"]:
                return self._reply(404, {"message": f"The model `{model}` does not exist."})
            st["events"].append(("complete", model))
        eos = (body.get("stop_token_ids") or [EOS])[0]
        limit = int(body.get("max_tokens", 16))
        choices = []
        for j in range(int(body.get("n", 1))):
            rng = random.Random(f"{model}|{body['prompt']}|{body.get('seed')}|{j}")
            length = rng.randint(0, limit)
            tokens = [rng.randrange(300, 5000) for _ in range(min(length, limit))]
            stopped = length < limit
            ids = [*tokens, eos] if stopped else tokens
            choice: dict[str, Any] = {"index": j, "text": self.server.decode(tokens),
                                      "finish_reason": "stop" if stopped else "length",
                                      "stop_reason": None}
            mode = st["ids"]
            if mode == "token_ids" and body.get("return_token_ids"):
                choice["token_ids"] = ids
            if mode == "logprobs" and body.get("logprobs") is not None \
                    and body.get("return_tokens_as_token_ids"):
                choice["logprobs"] = {"tokens": [f"token_id:{t}" for t in ids],
                                      "token_logprobs": [-1.0] * len(ids)}
            choices.append(choice)
        self._reply(200, {"id": "cmpl-1", "object": "text_completion", "model": model,
                          "choices": choices})

    def _reply(self, code: int, payload: Any, headers: dict[str, str] | None = None,
               raw: bool = False) -> None:
        """JSON, or plain text when ``payload`` is a string (vLLM's LoRA endpoints); ``raw``:
        a string goes out as it is, as a JSON content type (a broken server)."""
        text = isinstance(payload, str)
        data = (payload if text else json.dumps(payload)).encode()
        text = text and not raw
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class FakeOpenAI(ThreadingHTTPServer):
    """The server; ``url`` is its ``/v1`` base URL, ``stop()`` shuts it down.

    ``decode`` turns token ids into the completions' text (default: the ids, space-joined);
    ``base_model`` is the model name completions accept without a loaded adapter.
    """

    daemon_threads = True

    def __init__(self, port: int = 0, *, decode: Callable[[list[int]], str] | None = None,
                 base_model: str = BASE_MODEL) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.lock = threading.Lock()
        self.decode = decode or (lambda ids: " ".join(map(str, ids)))
        self.base_model = base_model
        self.state: dict[str, Any] = {"auth": [], "paths": [], "requests": [], "events": [],
                                      "loaded": {}, "fail": [], "sleep": 0.0, "replies": [],
                                      "ids": "token_ids"}
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (the timeout tests) is expected: no traceback for it."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def completions(self) -> list[dict[str, Any]]:
        """Bodies of the /v1/completions requests received, oldest first."""
        return [b for p, b, _ in self.state["requests"] if p == "/v1/completions"]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def free_port() -> int:
    """A port nothing listens on (now): the URL of an endpoint that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
