"""Triton fused MoE for NVFP4 weights and bf16 activations (W4A16), SGLang's structure:

1. ``align``: the (token, slot) pairs sorted by expert, each expert's run padded to a
   multiple of BLOCK_SIZE_M (SGLang's ``moe_align_block_size``; here in torch, with the
   worst-case length so nothing waits on the host and it can be graph-captured);
2. the up kernel: per BLOCK_SIZE_M block of one expert, rows of x times that expert's
   [2I, H] weight, decoded from NVFP4 in registers, into [M*k, 2I];
3. silu(gate) * up;
4. the down kernel: the same blocks times the expert's [H, I] weight, each row scaled by its
   routing weight, into [M*k, H]; 5. the k slots of each token summed.

Each kernel takes a config in SGLang's format (``harness.moe.configs``). Both kernels read
one sort when their BLOCK_SIZE_M agree; when down keeps its own (``force_shared_block_m``
off), it gets a sort of its own.
"""

from __future__ import annotations

import torch

from harness.moe.layer import MoeWeights, silu_and_mul

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a dependency of the gpu and test extras
    triton = None


def align(topk_ids: torch.Tensor, experts: int, block_m: int
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted pair ids [EM] int32, padded with M*k; expert of each block [EM/block_m]
    int32; pairs after padding [1] int32). EM is the worst case, M*k + E*(block_m - 1)
    rounded up to block_m: the kernels stop at the real count."""
    flat = topk_ids.flatten().long()
    n = flat.numel()
    dev = flat.device
    em = -(-(n + experts * (block_m - 1)) // block_m) * block_m
    # scatter_add, not bincount: bincount reads its size back to the host (no graph capture)
    counts = torch.zeros(experts, dtype=torch.long, device=dev).scatter_add_(
        0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    starts = torch.cumsum(padded, 0) - padded
    order = torch.sort(flat, stable=True).indices
    first_of_expert = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=dev) - first_of_expert[flat[order]]
    sorted_ids = torch.full((em,), n, dtype=torch.int32, device=dev)
    sorted_ids[starts[flat[order]] + rank] = order.to(torch.int32)
    block_ends = torch.cumsum(padded // block_m, 0)
    blocks = torch.arange(em // block_m, device=dev)
    expert_ids = torch.searchsorted(block_ends, blocks, right=True).clamp(max=experts - 1)
    return sorted_ids, expert_ids.to(torch.int32), padded.sum().reshape(1).to(torch.int32)


if triton is not None:
    from harness.backends.triton_w4a16 import _e2m1_as_f32, _interpreting, _scale_f32

    @triton.jit
    def _fused_moe_kernel(a_ptr, w_ptr, s_ptr, gs_ptr, c_ptr, topw_ptr, sorted_ptr, expert_ptr,
                          post_ptr, N, K, EM, num_valid, stride_am, stride_we, stride_wn,
                          stride_se, stride_sn, stride_cm,
                          TOP_K: tl.constexpr, A_PER_TOKEN: tl.constexpr,
                          MUL_ROUTED_WEIGHT: tl.constexpr, DOT_F32: tl.constexpr,
                          BLOCK_SIZE_M: tl.constexpr,
                          BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
                          GROUP_SIZE_M: tl.constexpr):
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(EM, BLOCK_SIZE_M)
        num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
        group = GROUP_SIZE_M * num_pid_n
        first_m = (pid // group) * GROUP_SIZE_M
        size_m = min(num_pid_m - first_m, GROUP_SIZE_M)
        pid_m = first_m + (pid % group) % size_m
        pid_n = (pid % group) // size_m
        if pid_m * BLOCK_SIZE_M >= tl.load(post_ptr):
            return
        offs = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
        pair = tl.load(sorted_ptr + offs)
        valid = pair < num_valid
        expert = tl.load(expert_ptr + pid_m).to(tl.int64)
        rows = (pair // TOP_K) if A_PER_TOKEN else pair
        offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
        n_ok = offs_n < N
        acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
        for k0 in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
            offs_k = k0 * BLOCK_SIZE_K + tl.arange(0, BLOCK_SIZE_K)
            k_ok = offs_k < K
            a = tl.load(a_ptr + rows[:, None].to(tl.int64) * stride_am + offs_k[None, :],
                        mask=valid[:, None] & k_ok[None, :], other=0.0)
            wmask = n_ok[:, None] & k_ok[None, :]
            byte = tl.load(w_ptr + expert * stride_we + offs_n[:, None] * stride_wn
                           + (offs_k // 2)[None, :], mask=wmask, other=0).to(tl.int32)
            code = (byte >> ((offs_k % 2) * 4)[None, :]) & 15
            sb = tl.load(s_ptr + expert * stride_se + offs_n[:, None] * stride_sn
                         + (offs_k // 16)[None, :], mask=wmask, other=0).to(tl.int32)
            w = _e2m1_as_f32(code) * _scale_f32(sb)  # e2m1 * sf * 2^-7, exact in bf16
            if DOT_F32:  # the interpreter has no bf16 (numpy): the same values in fp32
                acc += tl.dot(a.to(tl.float32), tl.trans(w))
            else:
                acc += tl.dot(a.to(tl.bfloat16), tl.trans(w.to(tl.bfloat16)))
        acc = acc * (128.0 / tl.load(gs_ptr + expert))
        if MUL_ROUTED_WEIGHT:
            acc = acc * tl.load(topw_ptr + pair, mask=valid, other=0.0)[:, None]
        tl.store(c_ptr + pair[:, None].to(tl.int64) * stride_cm + offs_n[None, :],
                 acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & n_ok[None, :])


def _launch(a, w, topk_weights, sorted_ids, expert_ids, post, out, cfg: dict, top_k: int,
            a_per_token: bool, mul_routed_weight: bool) -> None:
    codes, scales, gs = w
    n, k = codes.shape[1], codes.shape[2] * 2
    em = sorted_ids.numel()
    bm, bn = cfg["BLOCK_SIZE_M"], cfg["BLOCK_SIZE_N"]
    grid = (triton.cdiv(em, bm) * triton.cdiv(n, bn),)
    _fused_moe_kernel[grid](
        a, codes, scales, gs, out, topk_weights, sorted_ids, expert_ids, post,
        n, k, em, topk_weights.numel(), a.stride(0), codes.stride(0), codes.stride(1),
        scales.stride(0), scales.stride(1), out.stride(0),
        TOP_K=top_k, A_PER_TOKEN=a_per_token, MUL_ROUTED_WEIGHT=mul_routed_weight,
        DOT_F32=_interpreting(),
        BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=cfg["BLOCK_SIZE_K"],
        GROUP_SIZE_M=cfg["GROUP_SIZE_M"], num_warps=cfg.get("num_warps", 4),
        num_stages=cfg.get("num_stages", 3))


class FusedMoe:
    """The layer prepared for the fused kernels: stacked weights, and one call per batch."""

    def __init__(self, weights: MoeWeights):
        self.shape = weights.shape
        self.w13 = weights.stacked("w13")
        self.w2 = weights.stacked("w2")

    def __call__(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                 up_cfg: dict, down_cfg: dict) -> torch.Tensor:
        """bf16 [M, H] -> bf16 [M, H] with the given up and down configs."""
        if triton is None:
            raise RuntimeError("triton is not installed")
        m, k = topk_ids.shape
        s = self.shape
        x = x.contiguous()
        tw = topk_weights.contiguous().float().flatten()
        sorted_up, experts_up, post_up = align(topk_ids, s.experts, up_cfg["BLOCK_SIZE_M"])
        h = torch.empty(m * k, 2 * s.intermediate, dtype=torch.bfloat16, device=x.device)
        _launch(x, self.w13, tw, sorted_up, experts_up, post_up, h, up_cfg, k,
                a_per_token=True, mul_routed_weight=False)
        act = silu_and_mul(h).to(torch.bfloat16)
        if down_cfg["BLOCK_SIZE_M"] == up_cfg["BLOCK_SIZE_M"]:
            sorted_dn, experts_dn, post_dn = sorted_up, experts_up, post_up
        else:  # down keeps its own block size: it needs its own sort
            sorted_dn, experts_dn, post_dn = align(topk_ids, s.experts, down_cfg["BLOCK_SIZE_M"])
        y = torch.empty(m * k, s.hidden, dtype=torch.bfloat16, device=x.device)
        _launch(act, self.w2, tw, sorted_dn, experts_dn, post_dn, y, down_cfg, k,
                a_per_token=False, mul_routed_weight=True)
        return y.view(m, k, s.hidden).float().sum(dim=1).to(torch.bfloat16)
