#!/usr/bin/env bash
# The main job. With a GPU: the Qwen3.6-27B GEMM backend comparison (every backend, autotune
# on and off, M = 1, 16, 128). Without one: the same pipeline on the tiny CPU model.
# Results land in results/<machine>/gemm.json. Extra arguments go to `nvfp4-bench gemm`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=setup.sh
. "$ROOT/scripts/setup.sh" gpu
cd "$ROOT"
MACHINE="$(python -c 'from harness.hardware import detect; print(detect(False).machine_name())')"
mkdir -p "results/$MACHINE"
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    nvfp4-bench gemm --model qwen3.6-27b --m 1,16,128 --backends all --autotune on,off \
        --json "results/$MACHINE/gemm.json" "$@"
else
    nvfp4-bench gemm --model tiny --m 1,3,16 --backends torch-ref,torch-bf16,torch-dequant,flashinfer-cudnn,flashinfer-cutlass \
        --autotune on,off --samples 20 --json "results/$MACHINE/gemm.json" "$@"
fi
