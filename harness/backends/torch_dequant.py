"""``torch-dequant``: dequantize the NVFP4 weight to bf16 on every call, then matmul."""

from __future__ import annotations

import torch.nn.functional as F
import torch

from harness import nvfp4
from harness.backends.base import GemmBackend, LayerWeights


class TorchDequant(GemmBackend):
    name = "torch-dequant"
    math = "w4a16"
    family = "nvfp4"
    description = "NVFP4 weight dequantized to bf16 per call (naive W4A16)"

    def prepare(self, weights: LayerWeights, autotune: bool = False):
        return weights.fp4

    def run(self, prepared, x, x_global_scale):
        return F.linear(x, nvfp4.dequantize(prepared, torch.bfloat16))
