"""asv: seconds per decoded token (median step time / batch; lower is better, tokens/s is
its inverse), one benchmark per decode block of every suite
(``decode.track_<suite>[_<block>]``), whose parameter grid is exactly that block's cells.
Thin, as ``gemm.py``."""

from harness import suite

for _grid in suite.grids("decode"):
    globals()[_grid.func] = suite.asv_benchmark(_grid)
