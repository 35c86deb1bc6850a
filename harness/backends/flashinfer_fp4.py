"""``flashinfer-*``: ``flashinfer.mm_fp4`` W4A4 GEMMs (cuDNN, CUTLASS, b12x, CuTe-DSL, auto).

The call follows FlashInfer's contract exactly: activations quantized with
``flashinfer.nvfp4_quantize`` (128x4 swizzled scales), the [N, K/2] weight passed transposed
(``b_fp4.T``, column-major) with its swizzled scales transposed (``b_sf.T``), and
``alpha = 1 / (gsf_a * gsf_b)`` as an fp32 scalar tensor. The weight is quantized by
``harness.nvfp4`` (bit-identical to FlashInfer's quantizer), so ``nvfp4_quantize`` is only
ever called on activations, and only where it runs correctly (SM100 and newer).
"""

from __future__ import annotations

import importlib

import torch

from harness import nvfp4
from harness.backends.base import Availability, GemmBackend, LayerWeights
from harness.hardware import compute_capability

# Compute capabilities each mm_fp4 backend supports (flashinfer-python 0.7.2.post1).
SUPPORTED_SM: dict[str, tuple[int, ...]] = {
    "cudnn": (100, 103, 107, 110, 120, 121),
    "cutlass": (100, 103, 107, 110, 120, 121),
    "b12x": (120, 121),
    "cute-dsl": (100, 103, 107, 120, 121),
    # auto tries b12x, cutlass, cudnn on SM120; it runs wherever one of them does.
    "auto": (100, 103, 107, 110, 120, 121),
}
# The smallest quantizer-capable capability: below it nvfp4_quantize compiles to nothing.
MIN_QUANTIZE_SM = 100


def _sm_list(sms: tuple[int, ...]) -> str:
    return "/".join(f"SM{s}" for s in sms)


def _flashinfer():
    return importlib.import_module("flashinfer")


class FlashInferFP4(GemmBackend):
    math = "w4a4"
    tunable = True

    def __init__(self, fi_backend: str):
        self.fi_backend = fi_backend
        self.name = f"flashinfer-{fi_backend}"
        self.description = f"flashinfer.mm_fp4(backend={fi_backend!r}), NVFP4 W4A4"

    def availability(self, device: torch.device) -> Availability:
        sms = SUPPORTED_SM[self.fi_backend]
        if device.type != "cuda":
            return Availability.no(f"flashinfer {self.fi_backend} needs an NVIDIA GPU "
                                   f"({_sm_list(sms)}); this machine has none")
        sm = compute_capability(device)
        if sm not in sms:
            return Availability.no(f"flashinfer {self.fi_backend} needs {_sm_list(sms)}; "
                                   f"this GPU is SM{sm}")
        if sm < MIN_QUANTIZE_SM:  # unreachable with the lists above; kept as a hard guard
            return Availability.no(f"flashinfer nvfp4_quantize needs SM{MIN_QUANTIZE_SM}+")
        if self.fi_backend == "b12x":
            cuda = torch.version.cuda or "0"
            if tuple(int(p) for p in cuda.split(".")[:2]) < (12, 9):
                return Availability.no(f"flashinfer b12x needs CUDA >= 12.9; torch has CUDA {cuda}")
        try:
            fi = _flashinfer()
        except Exception as e:  # noqa: BLE001 - any import failure is a reason to skip
            return Availability.no(f"flashinfer-python is not importable ({type(e).__name__}: {e}); "
                                   "install it with: pip install 'nvfp4-bench[flashinfer]'")
        check = getattr(fi.mm_fp4, "is_backend_supported", None)
        if self.fi_backend != "auto" and check is not None and not check(self.fi_backend, sm):
            return Availability.no(f"flashinfer {fi.__version__ if hasattr(fi, '__version__') else ''}"
                                   f" reports mm_fp4 backend {self.fi_backend!r} unsupported on SM{sm}")
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

    def run(self, prepared, x, x_global_scale):
        fi = _flashinfer()
        gsf_a = x_global_scale.float().reshape(1)
        a_fp4, a_sf = fi.nvfp4_quantize(x, gsf_a, sfLayout=fi.SfLayout.layout_128x4,
                                        do_shuffle=False)
        alpha = (prepared["inv_w_gsf"] / gsf_a).reshape(())  # 1 / (gsf_a * gsf_b), fp32
        return fi.mm_fp4(a_fp4, prepared["b_fp4"].T, a_sf, prepared["b_sf"].T, alpha,
                         torch.bfloat16, None, block_size=16, use_8x4_sf_layout=False,
                         backend=self.fi_backend, use_nvfp4=True)

    def tune(self, prepared, x, x_global_scale):
        autotune = importlib.import_module("flashinfer.autotuner").autotune
        with autotune(True):
            for _ in range(3):
                self.run(prepared, x, x_global_scale)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
