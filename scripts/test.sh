#!/usr/bin/env bash
# The test suite: CPU everywhere (Triton kernels under the interpreter); on a GPU box the
# tests in tests/test_triton_gpu.py run the real kernels too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=setup.sh
. "$ROOT/scripts/setup.sh" test
cd "$ROOT"
python -m pytest -q -p no:cacheprovider "$@"
