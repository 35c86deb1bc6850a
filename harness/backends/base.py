"""The one interface every GEMM backend implements."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness import nvfp4
from harness.nvfp4 import NVFP4Tensor


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""

    @classmethod
    def yes(cls) -> "Availability":
        return cls(True, "")

    @classmethod
    def no(cls, reason: str) -> "Availability":
        return cls(False, reason)


@dataclass
class LayerWeights:
    """One linear layer's weight: always NVFP4, plus the bf16 original when it exists.

    ``quantized`` False: a checkpoint keeps this layer unquantized (its quantization config
    excludes it); ``fp4`` is then derived from ``bf16`` and engines run the layer in bf16, as
    serving engines run excluded modules."""

    fp4: NVFP4Tensor
    bf16: torch.Tensor | None = None
    quantized: bool = True

    def unquantized(self) -> torch.Tensor:
        """The weight for the backends that do not run NVFP4 (bf16, FP8): the bf16 original,
        or where a checkpoint holds none, its dequantized weight (the closest stand-in)."""
        return self.bf16 if self.bf16 is not None else nvfp4.dequantize(self.fp4)

    @property
    def n(self) -> int:
        return self.fp4.shape[0]

    @property
    def k(self) -> int:
        return self.fp4.shape[1]


class GemmBackend:
    """``y[M, N] = x[M, K] @ W[N, K]^T`` in bf16 through one implementation.

    ``math`` names what the backend computes, so health is checked against the exact
    reference of that math: ``w4a4`` (activations quantized to NVFP4 too), ``w4a16``
    (NVFP4 weight, bf16 activation), ``w4a8`` (the NVFP4 weight and the activation each
    rounded to e4m3), ``w8a8`` (FP8 weight and activation) or ``bf16`` (the unquantized
    weight).
    """

    name: str = ""
    math: str = "w4a4"
    # The weight format a serving engine would pick between: "nvfp4", "fp8", or "" for the
    # peers every choice map compares against (bf16, references).
    family: str = ""
    tunable: bool = False
    # A reference is not a serving option and never wins the choice map.
    candidate: bool = True
    # False: a name for an external engine's own choice, with no GEMM here (`all` skips it).
    native: bool = True
    # Relative Frobenius error allowed against the exact reference of ``math``: bf16 output
    # rounding plus a different summation order stays far below this.
    tolerance: float = 2e-2
    description: str = ""
    # Bytes per weight element the prepared layer keeps in GPU memory (for memory checks).
    resident_bytes_per_element: float = nvfp4.BYTES_PER_ELEMENT

    def availability(self, device: torch.device) -> Availability:
        return Availability.yes()

    def prepare(self, weights: LayerWeights, autotune: bool = False) -> object:
        """Everything done once per layer at load (layouts, copies); never per call."""
        raise NotImplementedError

    def run(self, prepared: object, x: torch.Tensor, x_global_scale: torch.Tensor) -> torch.Tensor:
        """One GEMM. ``x_global_scale`` is the activation's static NVFP4 global scale."""
        raise NotImplementedError

    def tune(self, prepared: object, x: torch.Tensor, x_global_scale: torch.Tensor) -> None:
        """A warm pass with the backend's tuner on; later calls keep the tuned choice."""

    def fresh_tuning(self) -> str:
        """Forget what the tuner chose so far, so a cell tunes from nothing; returns the
        tuning-cache state to record with the cell ("" where there is nothing to say)."""
        return ""

    def weight_bytes(self, weights: LayerWeights) -> int:
        """Bytes of weight one GEMM must read from memory in this backend's format."""
        return weights.fp4.nbytes()
