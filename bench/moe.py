"""asv: seconds per MoE layer call (lower is better), one benchmark per MoE block of every
suite (``moe.track_<suite>[_<block>]``), whose parameter grid is exactly that block's cells.
Thin, as ``gemm.py``."""

from harness import suite

for _grid in suite.grids("moe"):
    globals()[_grid.func] = suite.asv_benchmark(_grid)
