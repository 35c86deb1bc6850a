"""FP8 W8A8 backends: what a Hopper user runs instead of NVFP4.

Per-tensor e4m3 weights (scale = amax / 448) and per-tensor static e4m3 activations, the
scheme of ModelOpt's and SGLang's FP8 checkpoints. The activation scale comes from the same
calibrated amax as the NVFP4 global scale (``gsf = 448 * 6 / amax``), so ``a_scale = 6 / gsf``.

- ``torch-fp8``: ``torch._scaled_mm`` (cuBLASLt; also runs on the CPU), no tuner.
- ``flashinfer-fp8-cublas`` / ``-cudnn`` / ``-auto``: ``flashinfer.mm_fp8`` on the unprocessed
  [N, K] weight with ``alpha = a_scale * w_scale``; autotune on profiles FlashInfer's tactics
  (cuBLASLt algorithms, cuDNN plans, and for ``auto`` the backends too) inside
  ``flashinfer.autotuner.autotune(True)``.

Activation quantization (scale, clamp, cast) is part of every call, as it is in an engine.
"""

from __future__ import annotations

import torch

from harness import nvfp4
from harness.backends import flashinfer_lib as fil
from harness.backends.base import Availability, GemmBackend, LayerWeights
from harness.hardware import compute_capability

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
# Only for the messages where FlashInfer is absent (flashinfer-python 0.7.2.post1's table).
FALLBACK_SMS = {"cublas": (89, 90, 100, 103, 107, 110, 120, 121),
                "cudnn": (89, 90, 100, 103, 107, 110, 120, 121),
                "auto": (89, 90, 100, 103, 107, 110, 120, 121)}


def quantize(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``t / scale`` as e4m3, saturated at +-448 (a plain cast past it is not defined)."""
    return (t.float() / scale).clamp_(-E4M3_MAX, E4M3_MAX).to(E4M3)


def activation_scale(x_global_scale: torch.Tensor) -> torch.Tensor:
    """The per-tensor FP8 scale of an activation whose NVFP4 global scale is given."""
    return (nvfp4.E2M1_MAX / x_global_scale.float()).reshape(())


def quantize_weight(weights: LayerWeights) -> tuple[torch.Tensor, torch.Tensor]:
    w = weights.unquantized()
    scale = (w.float().abs().amax() / E4M3_MAX).clamp(min=1e-12).reshape(())
    return quantize(w, scale).contiguous(), scale


def w8a8_reference(weights: LayerWeights, x: torch.Tensor, x_global_scale: torch.Tensor):
    """The exact fp32 result of the W8A8 math: both operands as e4m3 with their scales."""
    w8, w_scale = quantize_weight(weights)
    a_scale = activation_scale(x_global_scale)
    a8 = quantize(x, a_scale)
    return (a8.float() @ w8.float().T) * (a_scale * w_scale)


class _FP8(GemmBackend):
    math = "w8a8"
    family = "fp8"
    resident_bytes_per_element = 1.0

    def prepare(self, weights: LayerWeights, autotune: bool = False):
        w8, w_scale = quantize_weight(weights)
        return {"w": w8, "w_scale": w_scale}

    def weight_bytes(self, weights: LayerWeights) -> int:
        return weights.n * weights.k


class TorchFP8(_FP8):
    name = "torch-fp8"
    description = "torch._scaled_mm, per-tensor e4m3 W8A8 (the plain FP8 baseline)"

    def availability(self, device: torch.device) -> Availability:
        if device.type == "cuda" and compute_capability(device) < 89:
            return Availability.no(f"torch._scaled_mm needs FP8 tensor cores (SM89+); this GPU "
                                   f"is SM{compute_capability(device)}")
        return Availability.yes()

    def run(self, prepared, x, x_global_scale):
        a_scale = activation_scale(x_global_scale)
        return self.gemm_alone(prepared, quantize(x, a_scale), a_scale)

    def gemm_alone(self, prepared, a8: torch.Tensor, a_scale: torch.Tensor) -> torch.Tensor:
        """The GEMM without the activation's quantization (``a8`` already e4m3 at
        ``a_scale``): what an FP8 server runs where the previous kernel writes e4m3."""
        return torch._scaled_mm(a8, prepared["w"].t(), scale_a=a_scale, scale_b=prepared["w_scale"],
                                out_dtype=torch.bfloat16)


def _probe_args(device: torch.device):
    """The smallest valid mm_fp8 call, for FlashInfer to refuse."""
    return (torch.zeros((1, 64), dtype=E4M3, device=device),
            torch.zeros((64, 64), dtype=E4M3, device=device),
            torch.ones((1,), dtype=torch.float32, device=device), torch.bfloat16)


class FlashInferFP8(fil.FlashInferGemm, _FP8):
    tunable = True
    api = "mm_fp8"
    fallback_sms = FALLBACK_SMS

    def __init__(self, fi_backend: str):
        self.fi_backend = fi_backend
        self.name = f"flashinfer-fp8-{fi_backend}"
        self.what = f"flashinfer mm_fp8 {fi_backend}"
        self.description = f"flashinfer.mm_fp8(backend={fi_backend!r}), per-tensor e4m3 W8A8"

    def availability(self, device: torch.device) -> Availability:
        refused = self.refused(device, _probe_args)
        return Availability.no(refused) if refused else Availability.yes()

    def prepare(self, weights: LayerWeights, autotune: bool = False):
        p = super().prepare(weights, autotune)
        p["w_scale"] = p["w_scale"].reshape(1)
        return p

    def arguments(self, prepared, x, x_global_scale) -> tuple[tuple, dict]:
        a_scale = activation_scale(x_global_scale)
        a8 = quantize(x, a_scale)
        alpha = (a_scale * prepared["w_scale"]).reshape(1)  # fp32, one element
        return (a8, prepared["w"], alpha, torch.bfloat16), {"backend": self.fi_backend}
