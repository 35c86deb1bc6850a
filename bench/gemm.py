"""asv: seconds per GEMM for every GEMM cell of every suite (lower is better).

Thin: each parameter combination runs one cell through ``harness.gemm`` (the same code
``nvfp4-bench record`` runs, which is how histories are normally written).
"""

from harness import suite

_NAMES, _VALUES = suite.param_space("gemm")


def track_seconds_per_gemm(model, layer, m, backend, autotune):
    return suite.run_one("gemm", (model, layer, m, backend, autotune))


track_seconds_per_gemm.params = _VALUES
track_seconds_per_gemm.param_names = _NAMES
track_seconds_per_gemm.unit = "seconds"
track_seconds_per_gemm.version = "1"
track_seconds_per_gemm.timeout = 3600
