"""The real flashinfer-python, with only what cannot happen without a GPU replaced.

Everything FlashInfer decides before a kernel runs is its own code: the ``@backend_requirement``
support tables and problem-size checks, the ``auto`` heuristics, ``autotune()`` and the
tuner's cache, the exceptions (``BackendSupportedError``, ``ValueError``). Replaced are:
- the device probes (compute capability of a CPU tensor, CUDA / cuDNN versions, whether the
  CuTe DSL is installed), set to the GPU machine a test emulates;
- the kernel launches: ``nvfp4_quantize`` (by ``harness.nvfp4``, bit-identical), the mm_fp4
  runners and the FP8 GEMM, by reference arithmetic that reads its operands in the layout
  the real kernels read (swizzled scales, column-major B), so a wrong layout gives wrong
  numbers; and the tuner's profiler (``AutoTuner.choose_one``), which times kernels.

The package comes from the environment, or from ``./.flashinfer-contract`` where
``scripts/setup.sh test`` installs it apart from the environment (no GPU dependencies).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from harness import nvfp4

CONTRACT_DIR = Path(__file__).resolve().parent.parent / ".flashinfer-contract"
REQUIRE_ENV = "NVFP4_BENCH_REQUIRE_FLASHINFER"
PINNED = "0.7.2.post1"
CUDA_DEVICE_REFUSAL = "SM12x cute-dsl requires tensors on one CUDA device"


def real_flashinfer():
    """The real package, or a skip (a failure where CI requires it)."""
    try:
        return importlib.import_module("flashinfer")
    except ImportError:
        pass
    if CONTRACT_DIR.is_dir() and str(CONTRACT_DIR) not in sys.path:
        sys.path.insert(0, str(CONTRACT_DIR))
        try:
            return importlib.import_module("flashinfer")
        except ImportError as e:
            why = f"flashinfer-python in {CONTRACT_DIR} does not import: {e}"
    else:
        why = f"flashinfer-python is not installed here nor in {CONTRACT_DIR}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{why} ({REQUIRE_ENV}=1)")
    pytest.skip(why)


@dataclass
class Calls:
    """What reached the stand-in kernels and the profiler."""
    fp4: list[dict] = field(default_factory=list)
    fp8: list[dict] = field(default_factory=list)
    choose: list[dict] = field(default_factory=list)


def _unswizzled(sf: torch.Tensor, rows: int, k16: int) -> torch.Tensor:
    return nvfp4.unswizzle_128x4(sf.contiguous().view(torch.float8_e4m3fn), rows, k16)


def _fp4_product(a, b, a_sf, b_sf, alpha, out_dtype):
    """mm_fp4 as the cuDNN/CUTLASS kernels read it: a [M, K/2] row-major, b [K/2, N]
    column-major, a_sf [M128, K/16] and b_sf [K/16, N128] 128x4-swizzled."""
    m, kh = a.shape
    n = b.shape[1]
    if b.stride() != (1, kh):
        raise RuntimeError("the kernel reads b column-major ([K/2, N] with stride (1, K/2))")
    k16 = kh * 2 // 16
    one = torch.ones((), dtype=torch.float32)
    qa = nvfp4.dequantize_unscaled(nvfp4.NVFP4Tensor(a.contiguous(), _unswizzled(a_sf, m, k16), one))
    qb = nvfp4.dequantize_unscaled(nvfp4.NVFP4Tensor(b.T.contiguous(), _unswizzled(b_sf.T, n, k16), one))
    return ((qa @ qb.T) * alpha.float()).to(out_dtype)


def emulate(monkeypatch, sm: int = 120, cuda: str = "13.0", cudnn_backend: int = 91500,
            cute_dsl: bool = True, numeric: bool = True) -> Calls:
    """Make the real flashinfer see CPU tensors as living on an SM``sm`` GPU with CUDA
    ``cuda``; kernel launches compute their reference (``numeric``) or only check shapes."""
    fi = real_flashinfer()
    from packaging.version import Version

    gb = importlib.import_module("flashinfer.gemm.gemm_base")
    utils = importlib.import_module("flashinfer.utils")
    at = importlib.import_module("flashinfer.autotuner")
    calls = Calls()

    original = utils.get_compute_capability

    def capability(device):
        if torch.device(device).type == "cpu":
            return sm // 10, sm % 10
        return original(device)

    for name, mod in list(sys.modules.items()):
        if name.startswith("flashinfer") and getattr(mod, "get_compute_capability", None) is original:
            monkeypatch.setattr(mod, "get_compute_capability", capability)
    monkeypatch.setattr(gb, "get_cuda_version", lambda: Version(cuda))
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(gb, "CUDNN_AVAILABLE", True)
    monkeypatch.setattr(gb, "_check_cudnn_fp4_availability", lambda: None)
    if getattr(gb, "cudnn", None) is not None:
        monkeypatch.setattr(gb.cudnn, "backend_version", lambda: cudnn_backend, raising=False)
    if cute_dsl:
        monkeypatch.setattr(gb, "_check_cute_dsl_availability", lambda: None)
        monkeypatch.setattr(gb, "_check_cute_dsl_arch", lambda device: None)
        # SM12x CuTe-DSL's input check runs whole; its last lines ask for CUDA tensors
        # (device and alignment), which a CPU tensor cannot be: only that refusal is waived.
        sm12x = importlib.import_module("flashinfer.gemm.kernels.sm12x_cute.runner")
        check_inputs = sm12x.check_inputs

        def cpu_check_inputs(a, *rest):
            try:
                return check_inputs(a, *rest)
            except ValueError as e:
                if a.device.type == "cpu" and str(e) == CUDA_DEVICE_REFUSAL:
                    return None
                raise
        monkeypatch.setattr(sm12x, "check_inputs", cpu_check_inputs)

    def quantize(a, a_global_sf, sfLayout=None, do_shuffle=False, sf_vec_size=16, enable_pdl=None):
        if sfLayout != fi.SfLayout.layout_128x4 or do_shuffle or sf_vec_size != 16:
            raise RuntimeError("stand-in nvfp4_quantize: 128x4 scales, no shuffle, block 16 only")
        t = nvfp4.quantize(a, a_global_sf.float().reshape(()))
        return t.packed, nvfp4.swizzle_128x4(t.scales).view(torch.uint8)

    monkeypatch.setattr(fi, "nvfp4_quantize", quantize)

    class ReferenceFP4Runner(at.TunableRunner):
        def __init__(self, backend):
            self.backend = backend

        def get_valid_tactics(self, inputs, profile):
            return [0]

        def forward(self, inputs, tactic=-1, do_preparation=False, **kwargs):
            a, b, a_sf, b_sf, alpha, out_dtype, out, block_size, use_nvfp4, _ = inputs
            calls.fp4.append({"backend": self.backend, "m": a.shape[0], "n": b.shape[1],
                              "k": a.shape[1] * 2, "tuning": at.AutoTuner.get().is_tuning_mode})
            if numeric:
                out.copy_(_fp4_product(a, b, a_sf, b_sf, alpha, out_dtype))
            return out

    monkeypatch.setattr(gb, "_cudnn_gemm_fp4_runner", lambda cfg: ReferenceFP4Runner("cudnn"))
    monkeypatch.setattr(gb, "get_cutlass_fp4_gemm_module", lambda major, minor: type(
        "M", (), {"cutlass_fp4_gemm_runner": staticmethod(lambda: ReferenceFP4Runner("cutlass"))}))
    monkeypatch.setattr(gb, "_b12x_gemm_fp4_runner", lambda *a: ReferenceFP4Runner("b12x"))
    monkeypatch.setattr(gb, "_cute_dsl_gemm_fp4_runner", lambda *a: ReferenceFP4Runner("cute-dsl"))

    def fp8_gemm(a, b, scale_a, scale_b, out, workspace_buffer, runner_names):
        # a [1, M, K], b [1, K, N] (the [N, K] weight transposed), per-tensor scales.
        calls.fp8.append({"runners": list(runner_names), "m": a.shape[1], "n": b.shape[2],
                          "k": a.shape[2], "tuning": at.AutoTuner.get().is_tuning_mode})
        if numeric:
            res = (a[0].float() @ b[0].float()) * (scale_a.float() * scale_b.float())
            out[0].copy_(res.to(out.dtype))

    monkeypatch.setattr(gb, "fp8_gemm_sm100", fp8_gemm)

    def choose_one(self, custom_op, runners, tuning_config, inputs, **kwargs):
        calls.choose.append({"op": custom_op, "tuning": self.is_tuning_mode,
                             "runners": [getattr(r, "backend", type(r).__name__) for r in runners]})
        return runners[0], -1

    monkeypatch.setattr(at.AutoTuner, "choose_one", choose_one)
    return calls
