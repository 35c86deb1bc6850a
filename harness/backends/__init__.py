"""GEMM backend registry: one module per backend, one interface (``base.GemmBackend``)."""

from __future__ import annotations

import importlib
import os

from harness.backends.base import Availability, GemmBackend, LayerWeights
from harness.backends.flashinfer_fp4 import FlashInferFP4
from harness.backends.fp8 import FlashInferFP8, TorchFP8
from harness.backends.sglang_auto import SGLangAuto
from harness.backends.torch_bf16 import TorchBF16
from harness.backends.torch_dequant import TorchDequant
from harness.backends.torch_ref import TorchRef
from harness.backends.triton_w4a16 import TritonW4A16
from harness.backends.triton_w4a8 import TritonW4A8
from harness.models.configs import UnknownNameError

BACKENDS: dict[str, GemmBackend] = {
    b.name: b
    for b in [
        TorchRef(),
        TorchBF16(),
        TorchDequant(),
        TritonW4A16(),
        TritonW4A8(),
        FlashInferFP4("cudnn"),
        FlashInferFP4("cutlass"),
        FlashInferFP4("b12x"),
        FlashInferFP4("cute-dsl"),
        FlashInferFP4("auto"),
        SGLangAuto(),
        TorchFP8(),
        FlashInferFP8("cublas"),
        FlashInferFP8("cudnn"),
        FlashInferFP8("auto"),
    ]
}

# SGLang's SM120 NVFP4 GEMM default after PR #26496 (``--fp4-gemm-backend auto``).
SGLANG_SM120_DEFAULT = "flashinfer-cutlass"
FLASHINFER_AUTO = "flashinfer-auto"
FLASHINFER_FP8_AUTO = "flashinfer-fp8-auto"


def register(backend: GemmBackend) -> GemmBackend:
    """Add a backend (e.g. from a plugin module named in NVFP4_BENCH_PLUGINS)."""
    if not backend.name:
        raise ValueError("a backend needs a name")
    BACKENDS[backend.name] = backend
    return backend


# Extra backend modules, imported here so that worker processes see them too.
PLUGINS_ENV = "NVFP4_BENCH_PLUGINS"
for _mod in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
    importlib.import_module(_mod)


def get_backend(name: str) -> GemmBackend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise UnknownNameError("backend", name, list(BACKENDS)) from None


def resolve(spec: str | list[str]) -> list[GemmBackend]:
    """``"all"`` or a comma list of names -> backends, in the order given."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return [b for b in BACKENDS.values() if b.native]
    return [get_backend(n) for n in names]


__all__ = ["Availability", "BACKENDS", "GemmBackend", "LayerWeights", "get_backend", "register",
           "resolve",
           "SGLANG_SM120_DEFAULT", "FLASHINFER_AUTO", "FLASHINFER_FP8_AUTO"]
