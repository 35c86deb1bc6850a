"""``torch-ref``: exact W4A4 emulation, the numerical reference (any device)."""

from __future__ import annotations

import torch

from harness import nvfp4
from harness.backends.base import GemmBackend, LayerWeights


def w4a4_reference(w_operand: torch.Tensor, w_global_scale: torch.Tensor, x: torch.Tensor,
                   x_global_scale: torch.Tensor, validate: bool = True) -> torch.Tensor:
    """fp32 ``alpha * (qa*sfa) @ (qb*sfb)^T`` with ``alpha = 1/(gsf_a*gsf_b)``."""
    xq = nvfp4.quantize(x, x_global_scale, validate=validate)
    a = nvfp4.dequantize_unscaled(xq)
    alpha = 1.0 / (x_global_scale.float() * w_global_scale.float())
    return (a @ w_operand.T) * alpha


class TorchRef(GemmBackend):
    name = "torch-ref"
    math = "w4a4"
    family = "nvfp4"
    candidate = False
    tolerance = 1e-2
    resident_bytes_per_element = 4.0
    description = "NVFP4 W4A4 emulated in fp32 (reference)"

    def prepare(self, weights: LayerWeights, autotune: bool = False):
        return {"b": nvfp4.dequantize_unscaled(weights.fp4), "gsf": weights.fp4.global_scale}

    def run(self, prepared, x, x_global_scale):
        # No host read-backs: the call is timed and captured in a CUDA graph.
        return w4a4_reference(prepared["b"], prepared["gsf"], x, x_global_scale,
                              validate=False).to(torch.bfloat16)
