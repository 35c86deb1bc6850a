#!/usr/bin/env bash
# Create ./.venv (reusing a system torch/triton if there is one) and install nvfp4-bench.
# Sourced by main.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NVFP4_BENCH_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    # --system-site-packages: a GPU box keeps the CUDA torch (and flashinfer) it already has.
    "$PY" -m venv --system-site-packages "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null
if ! python -c "import torch" 2>/dev/null; then
    # No torch yet: the CPU build (a plain 'torch' requirement would fetch a multi-GB CUDA build).
    python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e "$ROOT[$1]"
