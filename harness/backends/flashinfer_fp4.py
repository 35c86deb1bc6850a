"""``flashinfer-*``: ``flashinfer.mm_fp4`` W4A4 GEMMs (cuDNN, CUTLASS, b12x, CuTe-DSL, auto).

The call follows FlashInfer's contract exactly: activations quantized with
``flashinfer.nvfp4_quantize`` (128x4 swizzled scales), the [N, K/2] weight passed transposed
(``b_fp4.T``, column-major) with its swizzled scales transposed (``b_sf.T``), and
``alpha = 1 / (gsf_a * gsf_b)`` as an fp32 scalar tensor. The weight is quantized by
``harness.nvfp4`` (bit-identical to FlashInfer's quantizer), so ``nvfp4_quantize`` is only
ever called on activations, and only where it runs correctly (SM100 and newer).

Where FlashInfer is installed, what runs where is FlashInfer's own answer: its support table
for the GPU, and its requirement checks for each shape (e.g. CuTe-DSL on SM120 wants N and K
divisible by 64 and CUDA 13; b12x wants CUDA 12.9 as FlashInfer reads it, nvcc first, and
K % 32 == 0), reported in its words as ``skipped`` cells.
"""

from __future__ import annotations

import torch

from harness import nvfp4
from harness.backends import flashinfer_lib as fil
from harness.backends.base import Availability, GemmBackend, LayerWeights
from harness.hardware import compute_capability

# Only for the messages where FlashInfer is absent: the compute capabilities each mm_fp4
# backend lists in flashinfer-python 0.7.2.post1. Where it is installed, its table answers.
FALLBACK_SMS: dict[str, tuple[int, ...]] = {
    "cudnn": (100, 103, 107, 110, 120, 121),
    "cutlass": (100, 103, 107, 110, 120, 121),
    "b12x": (120, 121),
    "cute-dsl": (100, 103, 107, 120, 121),
    "auto": (100, 103, 107, 110, 120, 121),
}
# nvfp4_quantize is compiled for SM100 and newer only: below it, it quantizes to nothing.
MIN_QUANTIZE_SM = 100


def _probe_args(device: torch.device):
    """The smallest valid mm_fp4 call (M=1, N=128, K=64), for FlashInfer to refuse."""
    u8 = dict(dtype=torch.uint8, device=device)
    return (torch.zeros((1, 32), **u8), torch.zeros((128, 32), **u8).T,
            torch.zeros((128, 4), **u8), torch.zeros((128, 4), **u8).T,
            torch.ones((), dtype=torch.float32, device=device), torch.bfloat16)


class FlashInferFP4(fil.FlashInferGemm, GemmBackend):
    math = "w4a4"
    family = "nvfp4"
    tunable = True
    api = "mm_fp4"
    fallback_sms = FALLBACK_SMS

    def __init__(self, fi_backend: str):
        self.fi_backend = fi_backend
        self.name = f"flashinfer-{fi_backend}"
        self.what = f"flashinfer {fi_backend}"
        self.description = f"flashinfer.mm_fp4(backend={fi_backend!r}), NVFP4 W4A4"

    def availability(self, device: torch.device) -> Availability:
        refused = self.refused(device, _probe_args)
        if refused is not None:
            return Availability.no(refused)
        if compute_capability(device) < MIN_QUANTIZE_SM:  # FlashInfer lists none below it
            return Availability.no(f"flashinfer nvfp4_quantize needs SM{MIN_QUANTIZE_SM}+; "
                                   f"this GPU is SM{compute_capability(device)}")
        return Availability.yes()

    def prepare(self, weights: LayerWeights, autotune: bool = False):
        w = weights.fp4
        if w.packed.dim() != 2:
            raise ValueError("mm_fp4 takes a 2-D weight")
        b_sf = nvfp4.swizzle_128x4(w.scales).view(torch.uint8)  # [N128, K/16 rounded to 4]
        return {
            "b_fp4": w.packed.contiguous(),          # [N, K/2] uint8, row-major
            "b_sf": b_sf.contiguous(),
            "inv_w_gsf": (1.0 / w.global_scale.float()).reshape(()),
            "n": w.shape[0],
        }

    def arguments(self, prepared, x, x_global_scale) -> tuple[tuple, dict]:
        """The exact mm_fp4 call for ``x``: activations quantized by FlashInfer."""
        fi = fil.module()
        gsf_a = x_global_scale.float().reshape(1)
        a_fp4, a_sf = fi.nvfp4_quantize(x, gsf_a, sfLayout=fi.SfLayout.layout_128x4,
                                        do_shuffle=False)
        alpha = (prepared["inv_w_gsf"] / gsf_a).reshape(())  # 1 / (gsf_a * gsf_b), fp32
        args = (a_fp4, prepared["b_fp4"].T, a_sf, prepared["b_sf"].T, alpha, torch.bfloat16, None)
        return args, dict(block_size=16, use_8x4_sf_layout=False, backend=self.fi_backend,
                          use_nvfp4=True)
