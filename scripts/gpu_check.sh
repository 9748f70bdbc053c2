#!/usr/bin/env bash
# GPU check: one ENPO iteration of the real trainer on a random ~1B Llama (bf16, CUDA), with
# generation and training tokens/s, peak GPU memory and MFU (see scripts/gpu_check.py and
# docs/performance.md). Sized for under 8 minutes on one H100; the run is capped at 480 s.
#
#   scripts/gpu_check.sh [extra gpu_check.py args]
#
# Writes gpu_check.json, gpu_check.md and gpu_check.log to $OUT if set, else ./gpu_check_out.
# Needs torch, transformers, peft, tokenizers, safetensors, pyyaml, rich, scipy and pydantic;
# if pydantic is missing and .whl/ holds wheels (scripts/gpu_wheels.sh), they are installed
# to a temp folder first (no network needed).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-./gpu_check_out}"
mkdir -p "$out"
log="$out/gpu_check.log"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

if ! "$PY" -c "import pydantic" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    site="${TMPDIR:-/tmp}/nlhf_gpu_check_site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" .whl/*.whl || exit 2
    export PYTHONPATH="$PYTHONPATH:$site"
  else
    echo "gpu_check: pydantic is missing; run scripts/gpu_wheels.sh where pip works and" \
      "bring .whl/ along" | tee "$log"
    exit 2
  fi
fi

{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit \
      --format=csv
  fi
} 2>&1 | tee "$log"

timeout 480 "$PY" scripts/gpu_check.py --device cuda --out "$out/gpu_check.json" \
  --markdown "$out/gpu_check.md" "$@" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 124 ] && echo "gpu_check: stopped after 480 s" | tee -a "$log"
exit "$rc"
