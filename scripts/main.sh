#!/usr/bin/env bash
# The main job: record the suites this machine can run into the asv histories, import the
# pytest-benchmark hot-path suite, check the claims, publish asv's site and our report.
#   GPU SM120/SM121: gemm-sm120, decode-sm120, claim-pr26496   GPU SM80-SM90: hopper
#   no GPU: smoke (tiny models; every stage of the pipeline)
# NVFP4_BENCH_SUITE="a b" overrides the choice. Exit status: 1 when a claim fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=setup.sh
. "$ROOT/scripts/setup.sh" gpu
cd "$ROOT"
SM="$(python -c 'import torch; c = torch.cuda.get_device_capability() if torch.cuda.is_available() else None; print(c[0] * 10 + c[1] if c else 0)')"
if [ -n "${NVFP4_BENCH_SUITE:-}" ]; then
    SUITES="$NVFP4_BENCH_SUITE"
elif [ "$SM" -ge 120 ]; then
    SUITES="gemm-sm120 decode-sm120 claim-pr26496"
elif [ "$SM" -ge 80 ]; then
    SUITES="hopper"
else
    SUITES="smoke"
fi
echo "nvfp4-bench main job: SM${SM:-none}, suites: $SUITES" >&2
for s in $SUITES; do
    nvfp4-bench record --suite "$s"
done
mkdir -p results
python -m pytest -q -p no:cacheprovider bench/pytest --benchmark-json=results/pytest-benchmark.json \
    --benchmark-save-data --benchmark-max-time=0.5 --benchmark-min-rounds=10
nvfp4-bench import-pytest-benchmark results/pytest-benchmark.json
gate_rc=0
nvfp4-bench gate --json results/gate.json || gate_rc=$?
nvfp4-bench publish
nvfp4-bench report --output results/report
exit "$gate_rc"
