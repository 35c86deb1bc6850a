"""Triton fused MoE for NVFP4 weights and bf16 activations (W4A16), SGLang's structure:

1. ``align``: the (token, slot) pairs sorted by expert, each expert's run padded to a
   multiple of BLOCK_SIZE_M (SGLang's ``moe_align_block_size``; one Triton program for a
   decode batch, torch ops for larger ones; the worst-case length, so nothing waits on the
   host and it can be graph-captured);
2. the up kernel: per BLOCK_SIZE_M block of one expert, rows of x times that expert's
   [2I, H] weight, decoded from NVFP4 in registers, into [M*k, 2I]. The weights are in the
   dense ``triton`` backend's word layout (``shuffle_words``: 8 codes per int32 word,
   decoded by 11 integer instructions and a bf16x2 FMA with the block scale), and the
   decoded tile is the tensor-core dot's A operand (out^T = W x^T), as in that backend;
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


# Pairs up to which the sort runs as one Triton program (the decode sizes: 256 tokens x top 8
# is 2048); larger batches (prefill) take the torch sort.
ALIGN_KERNEL_MAX_PAIRS = 4096


def align(topk_ids: torch.Tensor, experts: int, block_m: int, use_kernel: bool | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted pair ids [EM] int32, padded with M*k; expert of each block [EM/block_m]
    int32; pairs after padding [1] int32). EM is the worst case, M*k + E*(block_m - 1)
    rounded up to block_m: the kernels stop at the real count.

    ``use_kernel`` (default: where Triton runs and the batch is a decode batch) does it in
    one Triton program instead of ~20 torch launches; both give the same arrays."""
    n = topk_ids.numel()
    if use_kernel is None:
        use_kernel = (triton is not None and n <= ALIGN_KERNEL_MAX_PAIRS
                      and (topk_ids.is_cuda or _interpreting()))
    if use_kernel:
        return _align_triton(topk_ids, experts, block_m)
    return align_torch(topk_ids, experts, block_m)


def _em(n: int, experts: int, block_m: int) -> int:
    return -(-(n + experts * (block_m - 1)) // block_m) * block_m


def align_torch(topk_ids: torch.Tensor, experts: int, block_m: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``align`` in torch ops (any batch size; the reference for the Triton program)."""
    flat = topk_ids.flatten().long()
    n = flat.numel()
    dev = flat.device
    em = _em(n, experts, block_m)
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


def _align_triton(topk_ids, experts, block_m):
    flat = topk_ids.flatten().to(torch.int32).contiguous()
    n = flat.numel()
    em = _em(n, experts, block_m)
    dev = flat.device
    sorted_ids = torch.empty(em, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(em // block_m, dtype=torch.int32, device=dev)
    post = torch.empty(1, dtype=torch.int32, device=dev)
    _align_kernel[(1,)](flat, sorted_ids, expert_ids, post, n, em, experts,
                        EP=triton.next_power_of_2(experts), NP=max(16, triton.next_power_of_2(n)),
                        BLOCK_M=block_m, CHUNK=1024, num_warps=4)
    return sorted_ids, expert_ids, post


if triton is not None:
    from harness.backends.triton_w4a16 import _decode_tile, _interpreting

    @triton.jit
    def _align_kernel(ids_ptr, sorted_ptr, expert_ids_ptr, post_ptr, n, EM, E,
                      EP: tl.constexpr, NP: tl.constexpr, BLOCK_M: tl.constexpr,
                      CHUNK: tl.constexpr):
        """``align_torch`` in one program: counts, padded offsets, a stable sort of the pairs
        by expert (one key: expert * NP + pair), each pair to its expert's run; then the
        expert of each block, read back from the block's first pair (every block below the
        padded total starts with a real pair)."""
        i = tl.arange(0, NP)
        live = i < n
        e = tl.load(ids_ptr + i, mask=live, other=0)
        counts = tl.histogram(e, EP, mask=live)
        padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
        starts = tl.cumsum(padded, 0) - padded
        first = tl.cumsum(counts, 0) - counts
        key = tl.sort(tl.where(live, e, EP) * NP + i)  # dead lanes sort last
        se = key // NP
        real = se < EP
        se_c = tl.minimum(se, EP - 1)
        dest = tl.gather(starts, se_c, 0) + (i - tl.gather(first, se_c, 0))
        for off in range(0, EM, CHUNK):
            f = off + tl.arange(0, CHUNK)
            tl.store(sorted_ptr + f, tl.full([CHUNK], 0, tl.int32) + n, mask=f < EM)
        tl.debug_barrier()  # the fill lands before the scatter over it
        tl.store(sorted_ptr + dest, key % NP, mask=real)
        total = tl.sum(padded, 0)
        tl.store(post_ptr, total)
        tl.debug_barrier()  # the scatter is visible to the whole program
        for off in range(0, EM // BLOCK_M, CHUNK):
            b = off + tl.arange(0, CHUNK)
            inside = b * BLOCK_M < total
            pair = tl.load(sorted_ptr + b * BLOCK_M, mask=inside, other=0)
            ex = tl.load(ids_ptr + pair, mask=inside, other=E - 1)
            tl.store(expert_ids_ptr + b, ex, mask=b < EM // BLOCK_M)

    @triton.jit
    def _fused_moe_kernel(a_ptr, w_ptr, s_ptr, gs_ptr, c_ptr, topw_ptr, sorted_ptr, expert_ptr,
                          post_ptr, N, K, EM, num_valid, stride_am, stride_we, stride_wn,
                          stride_se, stride_sn, stride_cm,
                          TOP_K: tl.constexpr, A_PER_TOKEN: tl.constexpr,
                          MUL_ROUTED_WEIGHT: tl.constexpr, USE_ASM: tl.constexpr,
                          BLOCK_SIZE_M: tl.constexpr,
                          BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
                          GROUP_SIZE_M: tl.constexpr):
        # out^T = W x^T per block, as the dense backend's tensor-core path: the decoded
        # weight tile is the dot's A operand as it comes out of the decode, the block's
        # gathered rows of x are B.
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
        W: tl.constexpr = BLOCK_SIZE_K // 8
        offs = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
        pair = tl.load(sorted_ptr + offs)
        valid = pair < num_valid
        expert = tl.load(expert_ptr + pid_m).to(tl.int64)
        rows = (pair // TOP_K) if A_PER_TOKEN else pair
        offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
        n_ok = offs_n < N
        j = tl.arange(0, W)
        kk = tl.arange(0, BLOCK_SIZE_K)
        w_row = w_ptr + expert * stride_we + offs_n.to(tl.int64)[:, None] * stride_wn
        s_row = s_ptr + expert * stride_se + offs_n.to(tl.int64)[:, None] * stride_sn
        xt_col = a_ptr + rows.to(tl.int64)[None, :] * stride_am
        acc = tl.zeros((BLOCK_SIZE_N, BLOCK_SIZE_M), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_SIZE_K):
            kw = k0 // 8 + j
            wmask = n_ok[:, None] & (kw < K // 8)[None, :]
            wv = tl.load(w_row + kw[None, :], mask=wmask, other=0)
            # the block scale of each word (one byte per two words; the repeat hits the cache)
            sb = tl.load(s_row + (kw // 2)[None, :], mask=wmask, other=0).to(tl.int32)
            w = _decode_tile(wv, sb, BLOCK_SIZE_N, W, USE_ASM)  # e2m1 * sf * 2^-7
            xt = tl.load(xt_col + (k0 + kk)[:, None],
                         mask=valid[None, :] & ((k0 + kk) < K)[:, None], other=0.0)
            acc = tl.dot(w, xt.to(w.dtype), acc)
        acc = acc * (128.0 / tl.load(gs_ptr + expert))
        if MUL_ROUTED_WEIGHT:
            acc = acc * tl.load(topw_ptr + pair, mask=valid, other=0.0)[None, :]
        tl.store(c_ptr + pair.to(tl.int64)[None, :] * stride_cm + offs_n[:, None],
                 acc.to(c_ptr.dtype.element_ty), mask=valid[None, :] & n_ok[:, None])


def _launch(a, w, topk_weights, sorted_ids, expert_ids, post, out, cfg: dict, top_k: int,
            a_per_token: bool, mul_routed_weight: bool) -> None:
    words, scales, gs = w
    n, k = words.shape[1], words.shape[2] * 8
    em = sorted_ids.numel()
    bm, bn = cfg["BLOCK_SIZE_M"], cfg["BLOCK_SIZE_N"]
    grid = (triton.cdiv(em, bm) * triton.cdiv(n, bn),)
    _fused_moe_kernel[grid](
        a, words, scales, gs, out, topk_weights, sorted_ids, expert_ids, post,
        n, k, em, topk_weights.numel(), a.stride(0), words.stride(0), words.stride(1),
        scales.stride(0), scales.stride(1), out.stride(0),
        TOP_K=top_k, A_PER_TOKEN=a_per_token, MUL_ROUTED_WEIGHT=mul_routed_weight,
        USE_ASM=not _interpreting(),
        BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=cfg["BLOCK_SIZE_K"],
        GROUP_SIZE_M=cfg["GROUP_SIZE_M"], num_warps=cfg.get("num_warps", 4),
        num_stages=cfg.get("num_stages", 3))


def expert_words(codes: torch.Tensor) -> torch.Tensor:
    """Stacked checkpoint codes (uint8 [E, N, K/2]) -> the dense ``triton`` backend's word
    layout per expert (int32 [E, N, K/8]; ``shuffle_words``), one expert at a time (the
    re-pack's temporaries stay one expert's size)."""
    from harness.backends.triton_w4a16 import shuffle_words
    e, n, half_k = codes.shape
    out = torch.empty((e, n, half_k // 4), dtype=torch.int32, device=codes.device)
    for i in range(e):
        out[i] = shuffle_words(codes[i])
    return out


def _words_of(stacked):
    codes, scales, gs = stacked
    return expert_words(codes), scales.contiguous(), gs.contiguous()


class FusedMoe:
    """The layer prepared for the fused kernels: stacked weights, and one call per batch."""

    def __init__(self, weights: MoeWeights):
        self.shape = weights.shape
        self.w13 = _words_of(weights.stacked("w13"))
        self.w2 = _words_of(weights.stacked("w2"))

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
