#!/usr/bin/env bash
# The test suite. Without a GPU the Triton kernels run under Triton's interpreter; on a GPU
# box the real kernels run (tests/test_triton_gpu.py and the engine tests).
#   bash scripts/test.sh          everything but the tests marked slow (multi-process,
#                                 torch.compile, whole-suite records, the model-shape cases
#                                 of the GPU kernel-config sweeps): the quick check
#   bash scripts/test.sh --all    every test (what CI runs)
# Further arguments go to pytest (e.g. -k checkpoint, -x). The 15 slowest tests are listed at
# the end (--durations), so a machine where the run is long shows where the time went.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
select=(-m "not slow")
if [ "${1:-}" = "--all" ]; then
    select=()
    shift
fi
# shellcheck source=setup.sh
. "$ROOT/scripts/setup.sh" test
cd "$ROOT"
python -m pytest -q -p no:cacheprovider --durations=15 "${select[@]}" "$@"
