"""asv: seconds per GEMM (lower is better), one benchmark per GEMM block of every suite
(``gemm.track_<suite>[_<block>]``), whose parameter grid is exactly that block's cells.

Thin: each grid point runs one cell through ``harness.gemm`` in asv's benchmark process (the
code ``nvfp4-bench record`` runs) and hands asv its samples, so asv's statistics, `asv
compare` and `asv continuous` see the same samples a record stores. A cell that cannot run
here raises asv's SkipNotImplemented with the library's reason.
"""

from harness import suite

for _grid in suite.grids("gemm"):
    globals()[_grid.func] = suite.asv_benchmark(_grid)
