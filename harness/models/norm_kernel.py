"""Triton kernels for the two small ops between a decode step's GEMMs: the residual add with
the next RMSNorm, and the MLP's SiLU-mul.

torch.compile fuses each into one kernel too; these exist so that every kernel between two
GEMMs is one of ours and can take part in programmatic dependent launch (``harness.pdl``):
the next GEMM's weight stream starts while they run. Rounding follows the eager torch ops
(``engine.add_rms_norm``, ``engine.silu_mul``): the sum and SiLU are rounded to bf16 where
torch rounds them.
"""

from __future__ import annotations

import torch

from harness import pdl

try:
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - the engine keeps its torch ops
    triton = None

SILU_BLOCK = 1024  # elements of the MLP's intermediate per program


if triton is not None:

    @triton.jit
    def _add_rms_norm_kernel(x_ptr, y_ptr, w_ptr, sum_ptr, out_ptr, H, eps,
                             BLOCK: tl.constexpr, GDC: tl.constexpr = False):
        if GDC:
            gdc_launch_dependents()
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        ok = offs < H
        w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)  # a weight: no kernel writes it
        if GDC:
            gdc_wait()
        x = tl.load(x_ptr + row * H + offs, mask=ok, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + row * H + offs, mask=ok, other=0.0).to(tl.float32)
        s = (x + y).to(tl.bfloat16)
        tl.store(sum_ptr + row * H + offs, s, mask=ok)
        sf = s.to(tl.float32)
        r = 1.0 / tl.sqrt(tl.sum(sf * sf, axis=0) / H + eps)
        tl.store(out_ptr + row * H + offs, (sf * r * w).to(tl.bfloat16), mask=ok)

    @triton.jit
    def _silu_mul_kernel(gu_ptr, out_ptr, I, BLOCK: tl.constexpr, GDC: tl.constexpr = False):
        if GDC:
            gdc_launch_dependents()
            gdc_wait()
        row = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < I
        g = tl.load(gu_ptr + row * 2 * I + offs, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * 2 * I + I + offs, mask=ok, other=0.0).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(tl.bfloat16).to(tl.float32)
        tl.store(out_ptr + row * I + offs, (act * u).to(tl.bfloat16), mask=ok)


def available() -> bool:
    return triton is not None


def add_rms_norm(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + y, rms_norm(x + y) * w)`` over the last axis, bf16 in and out."""
    if x.shape != y.shape or x.dtype != torch.bfloat16 or y.dtype != torch.bfloat16:
        raise ValueError(f"x {x.dtype} {tuple(x.shape)} and y {y.dtype} {tuple(y.shape)} "
                         "must be bf16 of one shape")
    h = x.shape[-1]
    if w.shape != (h,):
        raise ValueError(f"norm weight {tuple(w.shape)} does not match hidden size {h}")
    x, y = x.contiguous(), y.contiguous()
    total, out = torch.empty_like(x), torch.empty_like(x)
    rows = x.numel() // h
    if rows:
        launch = pdl.launch_options(x.device)
        _add_rms_norm_kernel[(rows,)](x, y, w, total, out, h, eps,
                                      BLOCK=triton.next_power_of_2(h),
                                      num_warps=8 if h > 2048 else 4, **launch)
    return total, out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``gate_up`` = [..., gate | up], bf16."""
    if gate_up.dtype != torch.bfloat16 or gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up must be bf16 [..., 2 I], got {gate_up.dtype} "
                         f"{tuple(gate_up.shape)}")
    gate_up = gate_up.contiguous()
    i = gate_up.shape[-1] // 2
    out = torch.empty((*gate_up.shape[:-1], i), dtype=torch.bfloat16, device=gate_up.device)
    rows = gate_up.numel() // (2 * i) if i else 0
    if rows:
        launch = pdl.launch_options(gate_up.device)
        _silu_mul_kernel[(rows, triton.cdiv(i, SILU_BLOCK))](gate_up, out, i, BLOCK=SILU_BLOCK,
                                                               num_warps=4, **launch)
    return out
