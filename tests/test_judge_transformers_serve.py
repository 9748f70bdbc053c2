"""The openai judge against a real OpenAI-compatible server nobody here wrote:
``transformers serve`` on SmolLM2-135M (offline, CPU).

That server answers 200 but ignores ``logprobs`` / ``top_logprobs`` (SPEC §6): the judge
must notice (one warning), answer from the text, record the mode it used, and its
diagnostics must show what SmolLM2 does as a judge (it answers "A" whatever the order).
Skipped, with the reason, when the server cannot start here.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fake_openai import free_port
from nlhf.llm.judges import CachedJudge, OpenAIJudge
from nlhf.llm.judges.diagnostics import noise_warning
from nlhf.llm.store import RunStore
from test_cli_train import run_cli, tiny_raw, write_config

pytestmark = pytest.mark.slow
START_SECONDS = 150


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, model name) of ``transformers serve`` on SmolLM2, on 127.0.0.1."""
    missing = [m for m in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"transformers serve needs {', '.join(missing)} (pip install -e '.[dev]')")
    cli = Path(sys.executable).with_name("transformers")
    if not cli.is_file():
        pytest.skip(f"no transformers command beside {sys.executable}")
    from nlhf.llm.policy.loading import default_model_dir

    folder = str(default_model_dir())
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([str(cli), "serve", folder, "--host", "127.0.0.1", "--port",
                                 str(port), "--device", "cpu"], stdout=log_file,
                                stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if proc.poll() is not None:
                tail = " | ".join(log_path.read_text().strip().splitlines()[-3:])
                pytest.skip(f"transformers serve exited with {proc.returncode}: {tail}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.skip(f"transformers serve did not answer /health in {START_SECONDS} s")
            time.sleep(1)
        yield url + "/v1", folder
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


PAIRS = (["What is the capital of France?", "Name a fruit.", "What is 2 + 2?"],
         ["The capital of France is Paris.", "An apple.", "2 + 2 = 4."],
         ["Bananas are yellow.", "The moon orbits the Earth.", "It is 5."])


def test_judge_detects_ignored_logprobs_and_reports_diagnostics(served, tmp_path, caplog):
    url, model = served
    judge = OpenAIJudge(url, model, concurrency=1, timeout=60, max_retries=1)
    key = judge.identity()
    with caplog.at_level(logging.WARNING, logger="nlhf.llm.judges.openai_http"), \
            RunStore(tmp_path / "s.sqlite") as store:
        cached = CachedJudge(judge, store)
        before = cached.diagnostics.copy()
        probs = cached.prob(*PAIRS)
        metrics = cached.diagnostics.since(before).metrics() | cached.answer_mode()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without the log-probs it was asked for" in warnings[0]
    assert metrics["judge_logprobs_used"] == 0.0 and judge.identity() == key
    # Text answers only, so each order is 0 or 1 and each pair 0, 1/2 or 1.
    assert set(probs.tolist()) <= {0.0, 0.5, 1.0}
    assert metrics["judge_pairs"] == 3.0
    d = judge.diagnostics
    assert d.consistent + d.follows_position <= d.both_orders == 3 - d.failures
    # SmolLM2-135M answers "A" whatever the order (SPEC §6): the diagnostics say so.
    assert metrics["judge_follows_position"] == 1.0, metrics
    assert metrics["judge_tie_rate"] == 1.0 and probs.tolist() == [0.5, 0.5, 0.5]
    assert "follows position" in (noise_warning(judge.name, metrics) or "")


def test_training_run_records_the_mode_and_diagnostics(served, tmp_path):
    url, model = served
    raw = tiny_raw(tmp_path)
    raw["judge"] = {"type": "openai", "base_url": url, "model": model, "concurrency": 1,
                    "timeout": 60}
    proc = run_cli("train", "--config", str(write_config(tmp_path, raw)), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("answered without the log-probs") == 1, proc.stderr
    assert "follows position" in proc.stderr
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["judge_logprobs_used"] == 0.0
    assert row["judge_follows_position"] == 1.0 and row["judge_pairs"] > 0
