"""Programmatic dependent launch (PDL, SM90 and newer) for the decode step's Triton kernels.

In a decode step at batch 1 every GEMM starts from an idle memory system: its programs issue
their first weight loads only after the kernel before it has drained, and the small kernels
between the GEMMs (norms, the Gated DeltaNet token, attention) are pure latency. A kernel
launched with PDL may start while the kernel before it in the stream is still running:

* every kernel of ours signals ``griddepcontrol.launch_dependents``: the small kernels as they
  start, the GEMMs once their K loop is done. The next kernel is launched as soon as all of
  this one's programs have signalled. (A GEMM that signals as it starts lets the chain run
  ahead: the next GEMM's programs wait on the SMs while this one still streams its weight.
  On an H200 that made a batch-1 Qwen3.6-27B decode step 17% slower; signalling after the
  K loop made it 4% faster, see docs/PERF.md.)
* before its first read of anything an earlier kernel writes (activations, caches, state,
  split-K counters) and before its first write, every kernel of ours executes
  ``griddepcontrol.wait``, which returns once the previous kernel has finished and its writes
  are visible. Loads that no kernel of the step writes (weights and their scales) may be
  issued before it: a GEMM's first ring stages stream in during the previous kernel's tail.
  So may the Gated DeltaNet state, which only its layer's kernel writes, one step earlier (a
  step's first kernels are plain launches, so the step before has finished).

The wait is transitive (the previous kernel could only finish after its own wait returned),
and a kernel is launched only after all programs of the one before it are resident, so a
waiting program never holds a slot that an earlier kernel still needs.

Only the decode engine turns PDL on (``launches``): a GEMM timed on its own keeps the GPU to
itself. A kernel carries the instructions (its ``GDC`` constexpr) exactly when it is launched
with PDL; kernels launched without it have no such instructions.
"""

from __future__ import annotations

import contextlib
import os

import torch

from harness.hardware import compute_capability

_active = False


def supported(device: torch.device) -> bool:
    """PDL needs SM90+ and compiled kernels (not the Triton interpreter)."""
    return (device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"
            and (compute_capability(device) or 0) >= 90)


@contextlib.contextmanager
def launches(on: bool):
    """Launch our kernels with PDL inside this block (where the GPU supports it)."""
    global _active
    previous, _active = _active, on
    try:
        yield
    finally:
        _active = previous


def active() -> bool:
    return _active


def launch_options(device: torch.device) -> dict:
    """Extra Triton launch options for one of our kernels on ``device``: ``launch_pdl`` and
    the kernel's ``GDC`` constexpr, both on inside ``launches(True)`` where supported."""
    return {"launch_pdl": True, "GDC": True} if _active and supported(device) else {}
