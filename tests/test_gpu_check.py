"""scripts/gpu_check.py: its CPU smoke path runs the real trainer end to end (so the GPU
check cannot rot between GPU sessions), and its peak table picks the right card."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def _module() -> ModuleType:
    """The script as a module (registered first: its dataclasses look themselves up)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.4),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("Some Other GPU", None),
])
def test_spec_peak_by_device_name(name: str, tflops: float | None) -> None:
    assert _module().spec_peak_tflops(name) == tflops


def test_tiny_cpu_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--threads", "1",
         "--out", str(out), "--markdown", str(tmp_path / "gpu_check.md"),
         "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    shape, tokens, r = result["shape"], result["tokens"], result["results"]
    # ENPO samples 1 policy + 2 comparators (pi_t) and 1 adversary (pihat_t) per prompt.
    assert tokens["samples"] == 4 * shape["prompts"]
    assert 0 < tokens["generated_tokens"] <= 4 * shape["prompts"] * shape["max_new_tokens"]
    assert tokens["step_a_tokens"] > 0 and tokens["step_b_tokens"] > 0
    for key in ("generate_tokens_per_s", "train_tokens_per_s", "forward_tokens_per_s",
                "generate_mfu_measured", "train_mfu_measured"):
        assert r[key] is not None and r[key] > 0, key
    assert r["train_mfu_spec"] is None  # no spec peak for a CPU
    assert result["peak_memory_gib"] is None
    assert result["metrics"]["time_generate"] > 0
    assert not (tmp_path / "work").exists()  # the work folder is removed without --keep
    assert "| generation (2N/token) |" in (tmp_path / "gpu_check.md").read_text()
