#!/usr/bin/env bash
# Fetch, on a machine with network, the wheels that scripts/gpu_check.sh installs on a GPU
# machine without network: the nlhf dependencies its image lacks (pydantic and its needs),
# for CPython 3.12 on x86-64 Linux, into .whl/ (git-ignored; carry it to the GPU machine).
#
#   scripts/gpu_wheels.sh            # versions as installed in .venv (else the pins below)
#   PYVER=3.11 scripts/gpu_wheels.sh # another Python on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
PYVER="${PYVER:-3.12}"

version() {  # installed version of $1, else $2
  "$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || echo "$2"
}

mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl \
  "pydantic==$(version pydantic 2.14.4)" \
  "pydantic-core==$(version pydantic-core 2.50.5)" \
  "annotated-types==$(version annotated-types 0.8.0)" \
  "typing-inspection==$(version typing-inspection 0.4.5)" \
  "typing-extensions==$(version typing-extensions 4.16.0)"
ls -l .whl
