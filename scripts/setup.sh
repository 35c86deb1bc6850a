#!/usr/bin/env bash
# Install nvfp4-bench where it will run; sourced by main.sh and test.sh with the extra to
# install ("gpu" or "test"). Afterwards `python` and `nvfp4-bench` on PATH are that environment's.
#
#   python already has torch, in a venv or conda env  -> install into that environment
#   python already has torch, system-wide              -> ./.venv that sees the system packages
#   no torch, no NVIDIA GPU                            -> ./.venv with the CPU build of torch
#   no torch, an NVIDIA GPU                            -> stop, naming the CUDA build to install
#
# Torch (and triton and numpy where torch is already there) are never replaced: pip runs with
# them pinned to what is installed. Set-up is skipped when nothing changed since the last one.
# PYTHON=... picks the interpreter; NVFP4_BENCH_VENV=DIR forces a venv at DIR;
# NVFP4_BENCH_SETUP_PLAN=1 only says which of the above it would do. Offline machines:
# PIP_FIND_LINKS=DIR PIP_NO_INDEX=1 (wheels of the missing packages in DIR).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRA="${1:-gpu}"
PY="${PYTHON:-python3}"
CPU_TORCH="torch==2.13.0+cpu"

_say() { echo "nvfp4-bench setup: $*" >&2; }

# Whether a module is there, without importing it (importing torch takes seconds on a GPU box).
_has() { "$1" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$2') is None)" 2>/dev/null; }
_has_torch() { _has "$1" torch; }

# 1 when the interpreter runs inside a venv or a conda env (packages go there, not the system).
_in_env() {
    "$1" -c 'import os, sys
conda = os.environ.get("CONDA_PREFIX")
print(int(sys.prefix != sys.base_prefix or bool(conda and os.path.realpath(sys.prefix) == os.path.realpath(conda))))'
}

# Decide first (nothing is created or installed yet), then act:
#   KIND   what this machine is, as the table above names it
#   VENV   a venv to make (or reuse) with VENV_FLAGS, or empty: use ENV_PY as it is
VENV="" VENV_FLAGS="" ENV_PY=""
if [ -n "${NVFP4_BENCH_VENV:-}" ]; then
    KIND="NVFP4_BENCH_VENV" VENV="$NVFP4_BENCH_VENV" VENV_FLAGS="--system-site-packages"
elif _has_torch "$PY" && [ "$(_in_env "$PY")" = 1 ]; then
    KIND="torch in a venv or conda env"
    ENV_PY="$("$PY" -c 'import sys; print(sys.executable)')"
elif _has_torch "$PY"; then
    # A system interpreter: a venv made from it sees its packages (torch, triton, flashinfer).
    KIND="torch system-wide" VENV="$ROOT/.venv" VENV_FLAGS="--system-site-packages"
elif [ -x "$ROOT/.venv/bin/python" ] && _has_torch "$ROOT/.venv/bin/python"; then
    KIND="the ./.venv of an earlier set-up" ENV_PY="$ROOT/.venv/bin/python"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    cuda="$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\.[0-9]*\).*/\1/p' | head -1)"
    cuda="${cuda:-13.0}"
    _say "this machine has an NVIDIA GPU but $PY has no torch."
    _say "install the CUDA build of torch that matches the driver (it supports CUDA $cuda), e.g."
    _say "  $PY -m pip install torch --index-url https://download.pytorch.org/whl/cu${cuda/./}"
    _say "(a CUDA $cuda or older index), then run this again; or set PYTHON to an interpreter"
    _say "that has torch. A plain 'pip install torch' may not match the driver."
    return 1 2>/dev/null || exit 1
else
    KIND="no torch, no GPU" VENV="$ROOT/.venv"
fi
if [ -n "${NVFP4_BENCH_SETUP_PLAN:-}" ]; then  # say what set-up would do, and stop
    echo "nvfp4-bench setup plan: $KIND: ${VENV:+venv $VENV${VENV_FLAGS:+ $VENV_FLAGS}}${ENV_PY:+install into $ENV_PY}"
    return 0 2>/dev/null || exit 0
fi
if [ -n "$VENV" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        # shellcheck disable=SC2086
        "$PY" -m venv $VENV_FLAGS "$VENV"
    fi
    ENV_PY="$VENV/bin/python"
fi
if ! _has_torch "$ENV_PY"; then
    _say "no torch here: installing the CPU build ($CPU_TORCH) into $VENV"
    # Where no index or local wheel has the +cpu build (plain PyPI), PyTorch's CPU index does.
    "$ENV_PY" -m pip install -q "$CPU_TORCH" 2>/dev/null \
        || "$ENV_PY" -m pip install -q "$CPU_TORCH" --index-url https://download.pytorch.org/whl/cpu
fi

ENV_BIN="$(dirname "$ENV_PY")"
export PATH="$ENV_BIN:$PATH"
hash -r

# Pin what the environment already has, so no requirement can replace it.
pins="$ROOT/.setup-pins-$EXTRA"
stamp="$ROOT/.setup-stamp-$EXTRA"
_write_pins() {
    "$ENV_PY" -c 'import sys
from importlib import metadata
with open(sys.argv[1], "w") as f:
    for name in ("torch", "triton", "numpy"):
        try:
            f.write(f"{name}=={metadata.version(name)}\n")
        except metadata.PackageNotFoundError:
            pass' "$pins"
}
_key() { echo "$ENV_PY $(cat "$ROOT/pyproject.toml" "$ROOT"/scripts/*.txt "$pins" | cksum)"; }
_write_pins
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(_key)" ] && _has "$ENV_PY" harness; then
    return 0 2>/dev/null || exit 0  # nothing changed since the last set-up
fi
reqs=("-e" "$ROOT[$EXTRA]")
if [ "$EXTRA" = test ] && ! "$ENV_PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    # No GPU: the tests run Triton kernels under the Triton 3.6 interpreter, which needs
    # numpy < 2.3 (a main set-up before this one may have installed a newer triton: the
    # [gpu] extra takes the newest, which is no use without a GPU).
    sed -i '/^numpy==/d; /^triton==/d' "$pins"
    reqs+=("numpy<2.3" "triton>=3.1,<3.7")
fi
_say "installing nvfp4-bench[$EXTRA] into $("$ENV_PY" -c 'import sys; print(sys.prefix)')"
"$ENV_PY" -m pip install -q --disable-pip-version-check -c "$pins" "${reqs[@]}"
if [ "$EXTRA" = test ]; then
    # SGLang's own argument parsers, apart from this environment (./.sglang-parsers): the tests
    # check every flag the SGLang adapters pass against them. Where they cannot be had (no
    # index), those tests skip.
    rm -rf "$ROOT/.sglang-parsers"
    { "$ENV_PY" -m pip install -q --disable-pip-version-check --no-deps \
          --target "$ROOT/.sglang-parsers" "sglang==0.5.23" \
      && "$ENV_PY" -m pip install -q --disable-pip-version-check \
          --target "$ROOT/.sglang-parsers" -r "$ROOT/scripts/sglang-parsers.txt"; } >/dev/null 2>&1 \
        || _say "SGLang's argument parsers could not be installed; the tests that use them skip"
    # The real FlashInfer, likewise apart (./.flashinfer-contract), for the adapter contract
    # tests; an environment that has FlashInfer installed uses its own.
    rm -rf "$ROOT/.flashinfer-contract"
    { "$ENV_PY" -m pip install -q --disable-pip-version-check --no-deps \
          --target "$ROOT/.flashinfer-contract" "flashinfer-python==0.7.2.post1" \
      && "$ENV_PY" -m pip install -q --disable-pip-version-check --no-deps \
          --target "$ROOT/.flashinfer-contract" -r "$ROOT/scripts/flashinfer-contract.txt"; } >/dev/null 2>&1 \
        || _say "flashinfer-python could not be installed for the contract tests; they skip"
fi
_write_pins  # as installed: what the next set-up compares against
_key > "$stamp"
