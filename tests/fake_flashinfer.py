"""A stand-in ``flashinfer`` that enforces the mm_fp4 / nvfp4_quantize contract.

It computes the GEMM from what it is handed (unswizzling the scales itself), so a call
that passes the weight untransposed, linear instead of swizzled scales, or the wrong
alpha either raises here or returns numbers the health check rejects.
"""

from __future__ import annotations

import contextlib
import enum
import sys
import types

import torch

from harness import nvfp4

BACKENDS = ("cudnn", "cutlass", "b12x", "cute-dsl", "auto", "trtllm")
SUPPORTED = {"cudnn": (100, 103, 110, 120, 121), "cutlass": (100, 103, 110, 120, 121),
             "b12x": (120, 121), "cute-dsl": (100, 103, 107, 120, 121), "trtllm": (100, 103)}


class SfLayout(enum.Enum):
    layout_128x4 = 0
    layout_8x4 = 1
    layout_linear = 2


class ContractError(ValueError):
    pass


def _round_up(v, to):
    return (v + to - 1) // to * to


class _Recorder:
    def __init__(self):
        self.mm_calls: list[dict] = []
        self.autotune_entries: list[bool] = []
        self.tuning = False


REC = _Recorder()


def nvfp4_quantize(a, a_global_sf, sfLayout=SfLayout.layout_128x4, do_shuffle=False,
                   sf_vec_size=16, enable_pdl=None):
    if a.dtype not in (torch.bfloat16, torch.float16):
        raise ContractError(f"nvfp4_quantize takes fp16/bf16, got {a.dtype}")
    if a_global_sf.dtype != torch.float32 or a_global_sf.numel() != 1:
        raise ContractError("global scale must be an fp32 tensor of one element")
    if sfLayout != SfLayout.layout_128x4 or do_shuffle:
        raise ContractError("cudnn/cutlass need 128x4 scales without shuffling")
    t = nvfp4.quantize(a, a_global_sf.reshape(()))
    return t.packed, nvfp4.swizzle_128x4(t.scales).view(torch.uint8)


def _mm_fp4(a, b, a_descale, b_descale, alpha=None, out_dtype=torch.bfloat16, out=None,
            block_size=16, use_8x4_sf_layout=False, backend="auto", use_nvfp4=True,
            enable_pdl=True):
    REC.mm_calls.append({"backend": backend, "tuning": REC.tuning})
    if backend not in BACKENDS:
        raise ContractError(f"unknown backend {backend}")
    if a.dtype != torch.uint8 or b.dtype != torch.uint8:
        raise ContractError("a and b must be packed uint8")
    if a.dim() != 2 or b.dim() != 2:
        raise ContractError("2-D operands only")
    m, kh = a.shape
    if not a.is_contiguous():
        raise ContractError("a must be row-major [M, K/2]")
    if b.shape[0] != kh:
        raise ContractError(f"b must be [K/2, N] (the weight transposed); got {tuple(b.shape)}")
    n = b.shape[1]
    if b.stride() != (1, kh):
        raise ContractError("b must be column-major: pass b_fp4.T of a row-major [N, K/2] weight")
    k16 = kh * 2 // 16
    k16p = _round_up(k16, 4)
    if a_descale.dtype not in (torch.uint8, torch.float8_e4m3fn):
        raise ContractError("a_descale must be e4m3 or uint8")
    if tuple(a_descale.shape) != (_round_up(m, 128), k16p):
        raise ContractError(f"a_descale must be 128x4-swizzled [{_round_up(m, 128)}, {k16p}], "
                            f"got {tuple(a_descale.shape)}")
    if tuple(b_descale.shape) != (k16p, _round_up(n, 128)) or b_descale.stride() != (1, k16p):
        raise ContractError("b_descale must be the swizzled weight scales transposed (b_sf.T)")
    if alpha is None or alpha.dtype != torch.float32 or alpha.numel() != 1:
        raise ContractError("alpha must be an fp32 scalar tensor")
    if out_dtype not in (torch.bfloat16, torch.float16) or block_size != 16 or not use_nvfp4:
        raise ContractError("NVFP4 with block 16 and a 16-bit output only")
    if use_8x4_sf_layout:
        raise ContractError("only trtllm reads the 8x4 layout")
    sfa = nvfp4.unswizzle_128x4(a_descale.view(torch.float8_e4m3fn), m, k16)
    sfb = nvfp4.unswizzle_128x4(b_descale.T.contiguous().view(torch.float8_e4m3fn), n, k16)
    one = torch.ones((), dtype=torch.float32)
    qa = nvfp4.dequantize_unscaled(nvfp4.NVFP4Tensor(a, sfa, one))
    qb = nvfp4.dequantize_unscaled(nvfp4.NVFP4Tensor(b.T.contiguous(), sfb, one))
    res = ((qa @ qb.T) * alpha.float()).to(out_dtype)
    if out is not None:
        out.copy_(res)
        return out
    return res


def _is_backend_supported(backend, cc):
    return cc in SUPPORTED.get(backend, ())


_mm_fp4.is_backend_supported = _is_backend_supported


@contextlib.contextmanager
def autotune(tune_mode=True, cache=None):
    REC.autotune_entries.append(bool(tune_mode))
    old, REC.tuning = REC.tuning, bool(tune_mode)
    try:
        yield
    finally:
        REC.tuning = old


def install(monkeypatch) -> _Recorder:
    REC.__init__()
    fi = types.ModuleType("flashinfer")
    fi.__version__ = "0.7.2.post1+fake"
    fi.mm_fp4 = _mm_fp4
    fi.nvfp4_quantize = nvfp4_quantize
    fi.SfLayout = SfLayout
    at = types.ModuleType("flashinfer.autotuner")
    at.autotune = autotune
    fi.autotuner = at
    monkeypatch.setitem(sys.modules, "flashinfer", fi)
    monkeypatch.setitem(sys.modules, "flashinfer.autotuner", at)
    return REC
