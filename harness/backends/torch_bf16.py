"""``torch-bf16``: plain bf16 ``F.linear`` on the unquantized weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.backends.base import GemmBackend, LayerWeights


class TorchBF16(GemmBackend):
    name = "torch-bf16"
    math = "bf16"
    resident_bytes_per_element = 2.0
    description = "bf16 weights, F.linear (what runs without FP4)"

    def prepare(self, weights: LayerWeights, autotune: bool = False):
        return weights.unquantized().to(torch.bfloat16).contiguous()

    def run(self, prepared, x, x_global_scale):
        return F.linear(x, prepared)

    def weight_bytes(self, weights: LayerWeights) -> int:
        return weights.n * weights.k * 2
