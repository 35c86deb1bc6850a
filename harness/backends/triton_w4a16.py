"""``triton``: W4A16 NVFP4 GEMM for GPUs without FP4 tensor cores (SM80 and newer).

At load the backend re-packs the checkpoint's codes (uint8 [N, K/2], two e2m1 nibbles per
byte) into its own word layout (int32 [N, K/8], same bytes, same K order; the e4m3
[N, K/16] block scales are used as they are): within each 32-bit word the 8 codes are
placed so that an AND, a shift and an AND, or three shifts and three LOP3s turn a word into
a bf16x2 register of two neighbouring elements, both lanes at once (``e2m1 * 2^-126`` as
bf16 bits, subnormal for the two smallest codes; see ``shuffle_words``). On the GPU the
decode is 11 integer instructions per word and one bf16x2 FMA per element pair applies the
block scale, giving ``e2m1 * sf * 2^-7`` exactly in bf16; the epilogue multiplies by
``2^7 / gsf``. bf16 weights meet the bf16 activations as they are: no per-call conversion
of the activations. Under the Triton interpreter the same values come from plain Triton ops.

Paths:
* ``swap_ab`` (M <= 64 on a GPU, K a multiple of 128; ``triton_swap_ab``): the weight is
  the ``mma.sync`` A operand, decoded in registers straight into its fragment (Gluon); on
  SM90 with autotune on and M > 8 its warpgroup-MMA variant (``triton_wgmma``: the same
  A fragment, the batch tile staged once per CTA in shared memory) is tuned beside it, as
  is that variant on activations reordered into the MMA's K order by a small kernel just
  before it (``wgmma-ordered``), and the fastest kept per (N, K, M bucket);
* ``gemm`` (larger M): bf16 ``tl.dot`` on tensor cores;
* ``gemv`` (M == 1 where ``swap_ab`` cannot run, e.g. under the interpreter): CUDA-core dot
  products over [BLOCK_N, BLOCK_K/8] tiles of int32 words, reduced over K once at the end.
All split K across programs when M is small, so the whole GPU streams the weight; the
last program to finish an output tile sums the partials in a fixed order (deterministic,
one launch, no atomics on data).

Autotune ``on`` searches a config space keyed on (N, K, M bucket); ``off`` uses one fixed
config per path.
"""

from __future__ import annotations

import functools
import os
import time
import warnings
import weakref

import torch

from harness import pdl
from harness.backends import triton_launch, triton_swap_ab, triton_wgmma
from harness.backends.base import Availability, GemmBackend, LayerWeights
from harness.hardware import compute_capability

try:
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # the backend reports itself unavailable
    triton = None
    tl = None

# Decoded weights are e2m1 * sf * 2^-7 (at most 21, at least 2^-17: normal bf16, exact); the
# epilogue undoes it.
DECODE_FACTOR = float(2 ** 7)
MAX_SPLIT_K = 16
# Split-K pays only while M is small; above this the M x N tiles fill the GPU.
SPLIT_K_MAX_M = 64


# Above this M every tile is full and split-K is off: one tuned config serves all M.
M_BUCKET_CAP = 256


def _block_b(m: int) -> int:
    """Batch columns of one swapped-operand tile: the MMA's n (8) up to 32 (registers)."""
    return 8 if m <= 8 else (16 if m <= 16 else 32)


def _wgmma_block_b(m: int) -> int:
    """Batch rows of one warpgroup-MMA tile (its N): 16, 32 or 64."""
    return 16 if m <= 16 else (32 if m <= 32 else 64)


def _m_bucket(m: int) -> int:
    """Autotune key for M: next power of two (capped), so ragged batches share a config."""
    return 1 if m <= 1 else min(1 << (m - 1).bit_length(), M_BUCKET_CAP)


if triton is not None:

    @triton.jit
    def _e2m1_as_f32(code):
        """4-bit e2m1 code (int32) -> fp32 value * 2^-14 (exact, via fp16 bits)."""
        bits = ((code & 7) << 9) | ((code & 8) << 12)
        return bits.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)

    @triton.jit
    def _scale_f32(sb):
        """e4m3fn scale bytes (int32) -> fp32 ``sf * 2^7`` (exact)."""
        bits = ((sb & 0x7F) << 7) | ((sb & 0x80) << 8)  # fp16 bits of sf * 2^-8
        return bits.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32) * 32768.0

    # One word and its block scale S = sf * 2^119 -> its 8 elements in K order (bf16).
    _DECODE_ASM = tl.constexpr(triton_swap_ab.DECODE_ASM)

    @triton.jit
    def _scale_bf16(sb):
        """e4m3fn scale bytes (int32) -> bf16 ``sf * 2^119`` (exact), the decode's S."""
        bits = ((sb & 0x7F) << 7) | ((sb & 0x80) << 8)  # fp16 bits of sf * 2^-8
        sf = bits.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        return (sf * 1.7014118346046923e38).to(tl.bfloat16)  # sf * 2^-8 * 2^127

    @triton.jit
    def _decode_tile(wv, sb, BLOCK_N: tl.constexpr, W: tl.constexpr, USE_ASM: tl.constexpr):
        """Words [BN, W] and their scale bytes [BN, W] (int32) -> [BN, 8 W] weights in K order,
        ``e2m1 * sf * 2^-7``: bf16 on the GPU, fp32 (same values) under the interpreter."""
        if USE_ASM:
            e0, e1, e2, e3, e4, e5, e6, e7 = tl.inline_asm_elementwise(
                _DECODE_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r,h", [wv, _scale_bf16(sb)],
                dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)
        else:
            d0, d1, d2, d3, d4, d5, d6, d7 = _decode_word(wv)
            sf = _scale_f32(sb)
            e0, e1, e2, e3 = d0 * sf, d1 * sf, d2 * sf, d3 * sf
            e4, e5, e6, e7 = d4 * sf, d5 * sf, d6 * sf, d7 * sf
        # Each join appends its axis last, so the element axis comes out bit-reversed.
        w = tl.join(tl.join(tl.join(e0, e1), tl.join(e2, e3)),
                    tl.join(tl.join(e4, e5), tl.join(e6, e7)))
        w = tl.permute(tl.reshape(w, [BLOCK_N, W, 2, 2, 2]), [0, 1, 4, 3, 2])
        return tl.reshape(w, [BLOCK_N, W * 8])

    @triton.jit
    def _finish_tile(acc, ws_ptr, cnt_ptr, out_ptr, scale, rm, rn, M, N, stride_om,
                     pid_tile, pid_k, SPLIT_K: tl.constexpr):
        """Write one [BM, BN] fp32 tile; with split-K the last program reduces and stores."""
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        # 64-bit offsets: past 2^31 output elements (M=65,536 x N=34,816) int32 ones wrap.
        rows = rm.to(tl.int64)[:, None]
        out_ptrs = out_ptr + rows * stride_om + rn[None, :]
        if SPLIT_K == 1:
            tl.store(out_ptrs, (acc * scale).to(tl.bfloat16), mask=mask)
        else:
            plane = M * N  # split-K runs at small M only (SPLIT_K_MAX_M)
            ws_ptrs = ws_ptr + rows * N + rn[None, :]
            tl.store(ws_ptrs + pid_k * plane, acc, mask=mask)
            # acq_rel: partials above are visible to whoever sees the count reach SPLIT_K.
            arrived = tl.atomic_add(cnt_ptr + pid_tile, 1)
            if arrived == SPLIT_K - 1:
                total = tl.zeros_like(acc)
                for s in range(SPLIT_K):
                    total += tl.load(ws_ptrs + s * plane, mask=mask, other=0.0,
                                     cache_modifier=".cg")
                tl.store(out_ptrs, (total * scale).to(tl.bfloat16), mask=mask)
                tl.store(cnt_ptr + pid_tile, 0)  # ready for the next launch (graph replay)

    @triton.jit
    def _code_at(wv, lane: tl.constexpr, slot: tl.constexpr):
        """The 4-bit e2m1 code stored in one (16-bit lane, slot) of the word layout: element
        ``2 * slot + lane`` of the word (see ``shuffle_words``)."""
        base: tl.constexpr = 16 * lane
        if slot == 3:  # m, e0 at bits 10-11, e1 at 13, sign at 14
            mag = ((wv >> (base + 10)) & 3) | (((wv >> (base + 13)) & 1) << 2)
            sign = (wv >> (base + 14)) & 1
        else:  # magnitude (e1 e0 m) at bits 6, 3, 0 and sign at 15, 12, 9
            mag = (wv >> (base + 6 - 3 * slot)) & 7
            sign = (wv >> (base + 15 - 3 * slot)) & 1
        return mag | (sign << 3)

    @triton.jit
    def _decode_word(wv):
        """int32 words of the backend layout -> 8 fp32 tensors (elements 0..7 of each word),
        ``e2m1 * 2^-14``."""
        d0 = _e2m1_as_f32(_code_at(wv, 0, 0))
        d1 = _e2m1_as_f32(_code_at(wv, 1, 0))
        d2 = _e2m1_as_f32(_code_at(wv, 0, 1))
        d3 = _e2m1_as_f32(_code_at(wv, 1, 1))
        d4 = _e2m1_as_f32(_code_at(wv, 0, 2))
        d5 = _e2m1_as_f32(_code_at(wv, 1, 2))
        d6 = _e2m1_as_f32(_code_at(wv, 0, 3))
        d7 = _e2m1_as_f32(_code_at(wv, 1, 3))
        return d0, d1, d2, d3, d4, d5, d6, d7

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, s_ptr, out_ptr, ws_ptr, cnt_ptr, scale_ptr,
                     M, N, K, stride_xm, stride_om, M_BUCKET, stride_wn,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                     GDC: tl.constexpr = False):
        if GDC:  # a PDL launch (harness.pdl): the previous kernel wrote x
            gdc_wait()
        # The tile is [BLOCK_N, words] of int32 (8 nibbles each). Products accumulate
        # elementwise and the sum over K happens once, after the loop: no cross-thread
        # reduction per step. One layout conversion per step is left (scales vs words).
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        W: tl.constexpr = BLOCK_K // 8
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        j = tl.arange(0, W)
        g = tl.arange(0, W // 2)
        n_ok = rn < N
        kw_total = K // 8
        iters = tl.cdiv(kw_total, SPLIT_K * W)
        # Word offsets as multiples of W: the compiler can prove 16-byte alignment.
        kw_lo = pid_k * iters * W
        acc = tl.zeros([BLOCK_N, W], dtype=tl.float32)
        w_row = w_ptr + rn.to(tl.int64)[:, None] * stride_wn
        s_row = s_ptr + rn.to(tl.int64)[:, None] * (K // 16)
        for it in range(0, iters):
            kw = kw_lo + it * W + j
            ok = kw < kw_total
            mask = n_ok[:, None] & ok[None, :]
            wv = tl.load(w_row + kw[None, :], mask=mask, other=0)
            # One scale byte per two words: load them contiguously, then duplicate in registers.
            kg = kw_lo // 2 + it * (W // 2) + g
            sg = tl.load(s_row + kg[None, :], mask=n_ok[:, None] & (kg < kw_total // 2)[None, :],
                         other=0).to(tl.int32)
            sb = tl.reshape(tl.join(sg, sg), [BLOCK_N, W])
            sf = _scale_f32(sb)
            xb = x_ptr + kw * 8
            d0, d1, d2, d3, d4, d5, d6, d7 = _decode_word(wv)
            part = d0 * tl.load(xb, mask=ok, other=0.0).to(tl.float32)[None, :]
            part += d1 * tl.load(xb + 1, mask=ok, other=0.0).to(tl.float32)[None, :]
            part += d2 * tl.load(xb + 2, mask=ok, other=0.0).to(tl.float32)[None, :]
            part += d3 * tl.load(xb + 3, mask=ok, other=0.0).to(tl.float32)[None, :]
            part += d4 * tl.load(xb + 4, mask=ok, other=0.0).to(tl.float32)[None, :]
            part += d5 * tl.load(xb + 5, mask=ok, other=0.0).to(tl.float32)[None, :]
            part += d6 * tl.load(xb + 6, mask=ok, other=0.0).to(tl.float32)[None, :]
            part += d7 * tl.load(xb + 7, mask=ok, other=0.0).to(tl.float32)[None, :]
            acc += part * sf
        if GDC:  # the next kernel may launch while this one finishes
            gdc_launch_dependents()
        scale = tl.load(scale_ptr)
        rm = tl.arange(0, 1)
        _finish_tile(tl.sum(acc, axis=1)[None, :], ws_ptr, cnt_ptr, out_ptr, scale, rm, rn, M, N,
                     stride_om, pid_n, pid_k, SPLIT_K)

    @triton.jit
    def _tile_span(M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
        """A (M, N, split-K) grid program's batch rows, weight rows, K range
        ``[k_lo, k_lo + k_chunk)`` and output tile index."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        k_chunk = (K + SPLIT_K * BLOCK_K - 1) // (SPLIT_K * BLOCK_K) * BLOCK_K
        return rm, rn, tl.program_id(2) * k_chunk, k_chunk, pid_m * tl.num_programs(1) + pid_n

    @triton.jit
    def _weight_tile(w_row, s_ptr, rn, n_ok, k0, KW, K, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, SCALE_WORDS: tl.constexpr, USE_ASM: tl.constexpr):
        """Rows ``rn`` (``n_ok``: inside N) x K ``[k0, k0 + BLOCK_K)`` of the weight, decoded
        (``_decode_tile``); ``w_row``: each row's first word, ``KW``: words per row (K / 8)."""
        W: tl.constexpr = BLOCK_K // 8
        kw = k0 // 8 + tl.arange(0, W)
        w_mask = n_ok[:, None] & (kw < KW)[None, :]
        wv = tl.load(w_row + kw[None, :], mask=w_mask, other=0)
        sb = _block_scales(s_ptr, rn, n_ok, k0, kw, w_mask, K, BLOCK_N, W, SCALE_WORDS)
        return _decode_tile(wv, sb, BLOCK_N, W, USE_ASM)

    @triton.jit
    def _block_scales(s_ptr, rn, n_ok, k0, kw, w_mask, K, BLOCK_N: tl.constexpr,
                      W: tl.constexpr, SCALE_WORDS: tl.constexpr):
        """The e4m3 block scale byte (int32) of each word of a [BLOCK_N, W] tile of words
        ``kw``, rows ``rn``: one byte per two words, [N, K/16] bytes at ``s_ptr``.

        Triton's pipeline copies a load ahead of its use only in pieces of 4 bytes or more;
        byte loads stay synchronous and stalled every K step on DRAM. With ``SCALE_WORDS``
        (K a multiple of 64, so each row's scales start on a 4-byte boundary) the scales are
        read as int32 words of four, each word once where the tile spans whole ones, and
        spread over their 8 weight words in registers."""
        if SCALE_WORDS:
            s_row = (s_ptr.to(tl.pointer_type(tl.int32), bitcast=True)
                     + rn.to(tl.int64)[:, None] * (K // 64))
            if W >= 8:
                sj = k0 // 64 + tl.arange(0, W // 8)
                sw = tl.load(s_row + sj[None, :], mask=n_ok[:, None] & (sj < K // 64)[None, :],
                             other=0)
                sw = tl.reshape(tl.broadcast_to(sw[:, :, None], [BLOCK_N, W // 8, 8]),
                                [BLOCK_N, W])
            else:
                sw = tl.load(s_row + (kw // 8)[None, :], mask=w_mask, other=0)
            sb = (sw >> ((kw // 2) % 4 * 8)[None, :]) & 0xFF
        else:
            s_row = s_ptr + rn.to(tl.int64)[:, None] * (K // 16)
            sb = tl.load(s_row + (kw // 2)[None, :], mask=w_mask, other=0).to(tl.int32)
        return sb

    @triton.jit
    def _round_e4m3(v):
        """fp32 -> the nearest e4m3 value (ties to even), still fp32. Only for the
        interpreter, whose fp32 -> fp8 cast truncates a carry out of the mantissa
        (1.96 -> 1.0); on the GPU the cast is ``cvt.rn.satfinite``."""
        # Normal range: Veltkamp's split keeps the top 4 significant bits, rounded.
        c = v * 1048577.0  # 2^20 + 1: 24 - 4 bits split off
        hi = c - (c - v)
        # Subnormal range (|v| < 2^-6): multiples of 2^-9, by adding and removing 1.5 * 2^14.
        lo = (v + 24576.0) - 24576.0
        return tl.where(tl.abs(v) < 0.015625, lo, hi)

    @triton.jit
    def _plain_tile(x_ptr, w_ptr, s_ptr, M, N, K, KW, stride_xm, to_e4m3,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    SPLIT_K: tl.constexpr, SCALE_WORDS: tl.constexpr, USE_ASM: tl.constexpr,
                    E4M3: tl.constexpr):
        """The K loop of one (M, N, split-K) program of the plain tensor-core kernels (this
        backend's M > 64 path; ``triton-w4a8`` with ``E4M3``) -> (the fp32 [BLOCK_N, BLOCK_M]
        tile of out^T = W x^T over the program's K range, rm, rn, tile) for ``_finish_tile``.

        ``KW`` = K / 8 words per weight row, an argument of its own so that Triton sees its
        divisibility and copies whole rows of a tile in 16-byte pieces (from K // 8 it cannot
        tell, and copies 8 bytes at a time). With ``E4M3`` the decoded weight is scaled by
        ``to_e4m3`` and rounded to e4m3, and x is already e4m3: an FP8 dot."""
        rm, rn, k_lo, k_chunk, tile = _tile_span(M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K)
        kk = tl.arange(0, BLOCK_K)
        m_ok = rm < M
        n_ok = rn < N
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        w_row = w_ptr + rn.to(tl.int64)[:, None] * KW
        xt_col = x_ptr + rm.to(tl.int64)[None, :] * stride_xm
        for k0 in range(k_lo, k_lo + k_chunk, BLOCK_K):
            w = _weight_tile(w_row, s_ptr, rn, n_ok, k0, KW, K, BLOCK_N, BLOCK_K,
                             SCALE_WORDS, USE_ASM)
            if E4M3:
                w = w.to(tl.float32) * to_e4m3
                if not USE_ASM:
                    w = _round_e4m3(w)
            # out^T = W x^T: the decoded tile is the A operand as it is, K-major as the MMA
            # wants it (a transposed register tile trips Triton's dot-operand pass on SM90);
            # x^T [BK, BM] is K-contiguous in memory, the B operand's order.
            xt = tl.load(xt_col + k0 + kk[:, None], mask=m_ok[None, :] & ((k0 + kk) < K)[:, None],
                         other=0.0)
            if E4M3:
                acc = tl.dot(w.to(tl.float8e4nv), xt, acc)
            else:
                acc = tl.dot(w, xt.to(w.dtype), acc)
        return acc, rm, rn, tile

    @triton.jit
    def _gemm_kernel(x_ptr, w_ptr, s_ptr, out_ptr, ws_ptr, cnt_ptr, scale_ptr,
                     M, N, K, stride_xm, stride_om, M_BUCKET, KW,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     SPLIT_K: tl.constexpr, USE_ASM: tl.constexpr = False,
                     GDC: tl.constexpr = False, SCALE_WORDS: tl.constexpr = False):
        # KW = K / 8 words per weight row (see ``_plain_tile``).
        if GDC:  # a PDL launch (harness.pdl): the previous kernel wrote x
            gdc_wait()
        acc, rm, rn, tile = _plain_tile(x_ptr, w_ptr, s_ptr, M, N, K, KW, stride_xm, 1.0,
                                        BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, SCALE_WORDS, USE_ASM,
                                        False)
        if GDC:  # the next kernel may launch while this one finishes
            gdc_launch_dependents()
        scale = tl.load(scale_ptr)
        _finish_tile(tl.trans(acc), ws_ptr, cnt_ptr, out_ptr, scale, rm, rn, M, N, stride_om,
                     tile, tl.program_id(2), SPLIT_K)

    # ---- configurations ----------------------------------------------------------------

    GEMV_DEFAULT = triton.Config({"BLOCK_N": 32, "BLOCK_K": 256, "SPLIT_K": 4}, num_warps=4,
                                 num_stages=2)
    GEMM_DEFAULT = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": 1},
                                 num_warps=4, num_stages=3)

    def _gemv_space() -> list:
        return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, num_warps=w,
                              num_stages=2)
                for bn in (16, 32, 64, 128) for bk in (256, 512) for sk in (1, 2, 4, 8, 16)
                for w in (4,)]

    def _gemm_space() -> list:
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk},
                              num_warps=w, num_stages=3)
                for bm in (16, 32, 64, 128) for bn in (64, 128) for bk in (128,)
                for sk in (1, 2, 4, 8) for w in (4,)]

    # Swapped-operand tensor-core path (M <= 64; Gluon, GPU only). The batch tile follows M.
    SWAP_AB_DEFAULT = triton.Config({"BLOCK_N": 64, "BLOCK_K": 256, "SPLIT_K": 4,
                                     "PREFETCH": False, "STAGES": 0}, num_warps=2, num_stages=1)

    def _swap_ab_space() -> list:
        # (BLOCK_N, warps): 2 or 4 row tiles of 16 per warp; more rows per warp share each
        # activation conversion, fewer give more programs in flight. STAGES 0 loads into
        # registers (PREFETCH: one step ahead); STAGES 2 streams through shared memory
        # (deeper rings never won on H200: the decode, not the memory latency, is the limit).
        # Stream-K grids (the kernel's STREAM_K) are no candidates: faster alone on some
        # shapes, they made the decode step slower (docs/PERF.md).
        return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk, "PREFETCH": pf,
                               "STAGES": st}, num_warps=w, num_stages=1)
                for bn, w in ((64, 2), (128, 2), (128, 4)) for bk in (128, 256)
                for sk in (1, 2, 4, 8) for pf, st in ((False, 0), (True, 0), (False, 2))]

    def _swap_ab_fits(kw: dict, num_warps: int, m: int, k: int) -> bool:
        """Config constraints of the kernel's layouts and of its register budget."""
        bn, bk, sk = kw["BLOCK_N"], kw["BLOCK_K"], kw["SPLIT_K"]
        bb = _block_b(m)
        return (16 * num_warps <= bn <= 64 * num_warps and k % bk == 0 and k // bk >= sk
                # each thread holds its batch rows' activations for the whole BLOCK_K
                and bb * bk <= 32 * 256 and (bb < 32 or bn * bk <= 128 * 256)
                # the ring's activation copy splits the tile over the warps in 16-byte pieces
                and (not kw.get("STAGES") or num_warps * 8 * 128 <= 4 * bb * bk))

    def _prune_swap_ab(configs, named_args):
        m, n, k = named_args["M"], named_args["N"], named_args["K"]
        sms = _sms()
        keep = []
        for c in configs:
            if (_swap_ab_fits(c.kwargs, c.num_warps, m, k)
                    and _small_m_grid_ok(c.kwargs, m, n, k, _block_b(m), sms)):
                keep.append(c)
        # The fixed config of autotune=off is always a candidate: tuning never loses to it
        # except by timing noise.
        default = _swap_ab_default(k)
        if not any(c.kwargs == default.kwargs and c.num_warps == default.num_warps
                   for c in keep):
            keep.append(default)
        return keep

    def _swap_ab_default(k: int):
        if k % SWAP_AB_DEFAULT.kwargs["BLOCK_K"] == 0:
            return SWAP_AB_DEFAULT
        return triton.Config(dict(SWAP_AB_DEFAULT.kwargs, BLOCK_K=triton_swap_ab.K_GROUP),
                             num_warps=SWAP_AB_DEFAULT.num_warps, num_stages=1)

    @functools.lru_cache(maxsize=None)
    def _swap_ab_tuned():
        return triton.autotune(_swap_ab_space(), key=_KEY,
                               prune_configs_by={"early_config_prune": _pruner(_prune_swap_ab)},
                               **_tuning_bench())(triton_swap_ab.swap_ab_kernel)

    # Warpgroup-MMA variant of the swapped-operand path (SM90a; ``triton_wgmma``), tuned
    # beside it: (BLOCK_N, warps) puts 16-row slices of the weight tile on each warp.
    WGMMA_DEFAULT = triton.Config({"BLOCK_N": 128, "BLOCK_K": 128, "SPLIT_K": 2,
                                   "STAGES": 4}, num_warps=8, num_stages=1)

    def _wgmma_space() -> list:
        # STAGES 0: words in registers one step ahead; 3-4: a cp.async ring two or three
        # steps ahead, the activations beside it in registers or (ACT_RING) in the ring too.
        # The kernel's ASYNC variant is no candidate: tuned beside these on the H200 it was
        # kept on no row (docs/PERF.md). The one-warpgroup 64-row tiles fit two or three CTAs
        # per SM, whose steps overlap where one 8-warp CTA per SM waits on its own barriers.
        # ACT_RING only where it won a forced-config sweep on the H200 (M = 16-32 on down,
        # o_proj, qkv, gdn_in): its 4-byte copies lose at M = 64 (docs/PERF.md).
        # No stream-K grids, as in _swap_ab_space.
        return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk, "STAGES": st,
                               "ACT_RING": ring}, num_warps=w, num_stages=1)
                for bn, w, bk, st, ring in (
                    (64, 4, 128, 0, False), (64, 4, 128, 4, False), (64, 4, 128, 3, True),
                    (128, 4, 128, 0, False), (128, 4, 128, 4, False), (128, 4, 256, 4, False),
                    (128, 8, 128, 0, False), (128, 8, 128, 4, False), (128, 8, 256, 4, False),
                    (128, 8, 256, 4, True), (256, 8, 128, 0, False), (256, 8, 128, 4, False))
                for sk in (1, 2, 4, 8)]

    # Registers per thread of a warp-specialized tile (CONSUMERS -> maxnreg): two CTAs of
    # 8 warps, or one of 12, fill the SM's 64K registers.
    WS_MAXNREG = {1: 128, 2: 168}
    # One MMA warpgroup at three CTAs per SM (three 63 KB rings at STAGES 3): maxnreg and
    # the copy warpgroup's registers (the MMA warpgroup then gets 120). A candidate above
    # M = 32 only: forced on the H100 it won on gate_up at M = 64 (72.4 us against 81.0 at
    # two per SM and 87.0 for the tuned ring) and lost on every M = 32 row (docs/PERF.md).
    WS_3_PER_SM = {"maxnreg": 80, "COPY_REGS": 40}
    WS_3_PER_SM_MIN_M = 33

    # The ring configs again, on activations reordered into the MMA's K order first
    # (``reorder_then``: one small kernel per call): 16-byte copies into the ring
    # where the reorder in the copy takes 4-byte ones. Forced on the H100 at M = 64 they beat
    # every config of the space above, the reorder included (docs/PERF.md).
    # With them, the warp-specialized tile of one MMA warpgroup of 64 rows and a copy
    # warpgroup (``CONSUMERS`` = 1) at two CTAs per SM (128 registers a thread) or three
    # (80). Two MMA warpgroups (one CTA per SM) were slower on every forced row of the
    # H100, so they stay a forced-config capability (docs/PERF.md).
    def _wgmma_ordered_space() -> list:
        ordered = {"ACT_RING": True, "ACT_ORDERED": True}
        ws = {"BLOCK_N": 64, "BLOCK_K": 128, "CONSUMERS": 1, **ordered}
        return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk, "STAGES": st,
                               **ordered}, num_warps=w, num_stages=1)
                for bn, w, bk, st in ((64, 4, 128, 3), (64, 4, 128, 4), (128, 4, 128, 4),
                                      (128, 8, 128, 4), (128, 8, 256, 4), (256, 8, 128, 4))
                for sk in (1, 2, 4, 8)] + [
            triton.Config(dict(ws, SPLIT_K=sk, STAGES=4), num_warps=4, num_stages=1,
                          maxnreg=WS_MAXNREG[1])
            for sk in (1, 2, 4)] + [
            triton.Config(dict(ws, SPLIT_K=sk, STAGES=3, COPY_REGS=WS_3_PER_SM["COPY_REGS"]),
                          num_warps=4, num_stages=1, maxnreg=WS_3_PER_SM["maxnreg"])
            for sk in (1, 2)]

    WGMMA_ORDERED_DEFAULT = triton.Config({"BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": 1,
                                           "STAGES": 3, "ACT_RING": True, "ACT_ORDERED": True},
                                          num_warps=4, num_stages=1)

    # Shared memory one CTA may take on SM90 (227 KB).
    SM90_SMEM_BYTES = 232448

    def _wgmma_smem(kw: dict, m: int) -> int:
        """Bytes of shared memory the kernel allocates: the batch tile (two slots with
        ASYNC, beside two slots of the decoded tile; one per ring slot with ACT_RING) and
        the word and scale ring."""
        bn, bk, st = kw["BLOCK_N"], kw["BLOCK_K"], kw.get("STAGES", 0)
        bb = _wgmma_block_b(m)
        if kw.get("ASYNC"):
            tiles = 2 * (bb * bk + bn * bk) * 2
        else:
            tiles = (st if kw.get("ACT_RING") and st else 1) * bb * bk * 2
        return tiles + st * (bn * bk // 2 + bn * bk // 16)

    def _wgmma_fits(kw: dict, num_warps: int, m: int, k: int) -> bool:
        """Layout constraints, and the 32-bit registers per thread that the accumulator,
        the decoded A tile, the activation (not with ACT_RING) and (STAGES = 0) word tiles
        with their prefetch take: at 192 ptxas still fits them without spills (sm_90a,
        Triton 3.6: 229-231 registers), at 224 it spills (``test_swap_ab_layout`` compiles
        both)."""
        bn, bk, sk = kw["BLOCK_N"], kw["BLOCK_K"], kw["SPLIT_K"]
        if not (k % bk == 0 and k // bk >= sk and _wgmma_smem(kw, m) <= SM90_SMEM_BYTES):
            return False
        if kw.get("CONSUMERS"):  # registers set per partition (WS_MAXNREG), ptxas-checked
            three_per_sm = kw.get("COPY_REGS") == WS_3_PER_SM["COPY_REGS"]
            return (bn == 64 * kw["CONSUMERS"] and num_warps == 4
                    and (m >= WS_3_PER_SM_MIN_M or not three_per_sm))
        bb = _wgmma_block_b(m)
        threads = 32 * num_warps
        in_registers = bn * bk // 4 if not kw.get("STAGES") else 0  # words and their prefetch
        acts = 0 if kw.get("ACT_RING") and kw.get("STAGES") else bb * bk  # and their prefetch
        words = (bn * bb + bn * bk // 2 + acts + in_registers) // threads
        return 16 * num_warps <= bn <= 64 * num_warps and words <= 192

    def _prune_wgmma(configs, named_args):
        m, n, k = named_args["M"], named_args["N"], named_args["K"]
        sms = _sms()
        keep = []
        for c in configs:
            if (_wgmma_fits(c.kwargs, c.num_warps, m, k)
                    and _small_m_grid_ok(c.kwargs, m, n, k, _wgmma_block_b(m), sms)):
                keep.append(c)
        return keep or [WGMMA_DEFAULT]

    @functools.lru_cache(maxsize=None)
    def _wgmma_tuned():
        return triton.autotune(_wgmma_space(), key=_KEY,
                               prune_configs_by={"early_config_prune": _pruner(_prune_wgmma)},
                               **_tuning_bench())(triton_wgmma.wgmma_kernel)

    def _prune_wgmma_ordered(configs, named_args):
        return [c for c in _prune_wgmma(configs, named_args)
                if c.kwargs.get("ACT_ORDERED")] or [WGMMA_ORDERED_DEFAULT]

    @functools.lru_cache(maxsize=None)
    def _wgmma_ordered_tuned():
        # Each candidate is timed behind its reorder kernel (``_reorder_before_candidate``),
        # as every call runs it: timed alone, a tile that is fast on activations reordered
        # beforehand was kept where it lost up to 12 us behind the reorder (docs/PERF.md).
        prune = _pruner(_prune_wgmma_ordered)
        return triton.autotune(_wgmma_ordered_space(), key=_KEY,
                               prune_configs_by={"early_config_prune": prune},
                               pre_hook=_reorder_before_candidate,
                               **_tuning_bench())(triton_wgmma.wgmma_kernel)

    def _sms() -> int:
        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
        return 132

    def _fills_gpu(programs: int, sms: int) -> bool:
        """The tuners' bound on grids: 1/2 to 16 waves of programs over the SMs."""
        return sms // 2 <= programs <= 16 * sms

    def _prune_gemv(configs, named_args):
        """Keep configs whose grid is between 1/2 and 16 waves of programs over the SMs."""
        n, k = named_args["N"], named_args["K"]
        sms = _sms()
        keep = []
        for c in configs:
            kw = c.kwargs
            if kw["BLOCK_K"] * kw["SPLIT_K"] > k:
                continue
            progs = triton.cdiv(n, kw["BLOCK_N"]) * kw["SPLIT_K"]
            if _fills_gpu(progs, sms):
                keep.append(c)
        return keep or [GEMV_DEFAULT]

    def plain_grid_ok(kw: dict, m: int, n: int, k: int, sms: int, min_programs: int,
                      top_split: int) -> bool:
        """The rules of a (M, N, split-K) grid of the plain ``tl.dot`` kernels (this
        backend's M > 64 path and ``triton-w4a8``): a grid under ``min_programs`` programs is
        dropped where a larger split (up to ``top_split``) would fill the SMs."""
        bm, sk = kw["BLOCK_M"], kw["SPLIT_K"]
        bucket = _m_bucket(m)
        if bm > 16 and bm >= 2 * bucket:
            return False  # mostly padding
        if bm < min(bucket, 64) // 2:
            return False  # decodes the weight too often
        if sk > 1 and m > SPLIT_K_MAX_M:
            return False
        if kw["BLOCK_K"] * sk > k:
            return False
        progs = triton.cdiv(m, bm) * triton.cdiv(n, kw["BLOCK_N"]) * sk
        if progs < min_programs and sk < top_split and m <= SPLIT_K_MAX_M:
            return False
        return not (sk > 1 and progs > 16 * sms)

    def _prune_gemm(configs, named_args):
        m, n, k = named_args["M"], named_args["N"], named_args["K"]
        sms = _sms()
        keep = [c for c in configs
                if plain_grid_ok(c.kwargs, m, n, k, sms, sms // 2, MAX_SPLIT_K)]
        return keep or [GEMM_DEFAULT]

    _KEY = ["N", "K", "M_BUCKET"]

    def _interpreting() -> bool:
        return os.environ.get("TRITON_INTERPRET") == "1"

    def _cpu_do_bench(fn, quantiles=None, **kwargs):
        """Interpreter stand-in for do_bench (there is no GPU driver to time with)."""
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        med = sorted(times)[len(times) // 2]
        return [med] * len(quantiles) if quantiles else med

    def _gpu_do_bench(fn, quantiles=None, **kwargs):
        """The tuner's timer: the harness's own cold-L2 method (a read flushes the L2 before
        each CUDA-graph replay), so the config the tuner keeps is the one the harness's cells
        then measure fastest. Triton's default flushes by a write, whose write-back lands in
        the timed kernel and favoured other configs on some shapes. Events, not the kernel
        span: their launch latency is the same for every config and needs no profiler."""
        from harness.measure import time_gpu

        timing = time_gpu(fn, samples=15, warmup=3, cold_l2=True, kernel_clock=False)
        if not timing.method.startswith("cuda-graph"):
            # Timed eagerly, the host's launch overhead is in the figure: not comparable with
            # the graph-timed candidates it is ranked against.
            warnings.warn(f"triton tuner: a candidate was timed without a CUDA graph "
                          f"({timing.method}); its time includes host launch overhead",
                          RuntimeWarning, stacklevel=2)
        ms = sorted(t * 1e3 for t in timing.samples_s)

        def at(q):
            return ms[min(len(ms) - 1, int(q * len(ms)))]
        return [at(q) for q in quantiles] if quantiles else at(0.5)

    def _tuning_bench() -> dict:
        return {"do_bench": _cpu_do_bench if _interpreting() else _gpu_do_bench}

    def _pruner(rule):
        def prune(configs, named_args, **kwargs):
            kept = rule(configs, named_args)
            # Under the interpreter a search is about correctness, not speed: keep it short.
            return kept[:2] if _interpreting() else kept
        return prune

    @functools.lru_cache(maxsize=None)
    def _kernels(autotune: bool):
        if not autotune:
            return _fixed(_gemv_kernel, GEMV_DEFAULT), _fixed(_gemm_kernel, GEMM_DEFAULT)
        gemv = triton.autotune(_gemv_space(), key=_KEY,
                               prune_configs_by={"early_config_prune": _pruner(_prune_gemv)},
                               **_tuning_bench())(_gemv_kernel)
        gemm = triton.autotune(_gemm_space(), key=_KEY,
                               prune_configs_by={"early_config_prune": _pruner(_prune_gemm)},
                               **_tuning_bench())(_gemm_kernel)
        return gemv, gemm

    class _fixed:
        """A kernel launched with one config; grid lambdas see the same meta dict."""

        def __init__(self, kernel, config):
            self.kernel, self.config = kernel, config

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                meta = dict(self.config.kwargs)
                g = grid(meta) if callable(grid) else grid
                cap = {"maxnreg": self.config.maxnreg} if self.config.maxnreg else {}
                return self.kernel[g](*args, **kwargs, **meta, num_warps=self.config.num_warps,
                                      num_stages=self.config.num_stages, **cap)
            return launch


class _Workspace:
    """Split-K partials and per-tile arrival counters, one set per device, grown on demand.

    Sized before CUDA-graph capture by the eager warm-up calls; counters reset themselves.
    """

    def __init__(self):
        self.ws: dict[torch.device, torch.Tensor] = {}
        self.cnt: dict[torch.device, torch.Tensor] = {}
        self.acts: dict[torch.device, torch.Tensor] = {}

    def get(self, device: torch.device, m: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        # The small-M kernels store whole [BLOCK_N, BLOCK_B] partial tiles (up to 256 rows,
        # the batch padded to its tile); the plain kernels M x N planes, never more.
        rows = min(m, SPLIT_K_MAX_M)
        need_ws = MAX_SPLIT_K * max(8, _wgmma_block_b(rows)) * triton.cdiv(n, 256) * 256
        need_cnt = triton.cdiv(max(m, 1), 16) * triton.cdiv(n, 16)
        ws, cnt = self.ws.get(device), self.cnt.get(device)
        if ws is None or ws.numel() < need_ws:
            ws = torch.empty(need_ws, dtype=torch.float32, device=device)
            self.ws[device] = ws
        if cnt is None or cnt.numel() < need_cnt:
            cnt = torch.zeros(need_cnt, dtype=torch.int32, device=device)
            self.cnt[device] = cnt
        return ws, cnt

    def ordered_acts(self, device: torch.device, m: int, k: int) -> torch.Tensor:
        """bf16 [m, k] for activations in the MMA's K order (the ordered path's reorder
        writes it, its GEMM reads it). One buffer per device, as the partials: launches on one
        stream are ordered, and under PDL the reorder writes only after the GEMM before it has
        finished (``triton_wgmma.mma_k_order_kernel``)."""
        buf = self.acts.get(device)
        if buf is None or buf.numel() < m * k:
            buf = torch.empty(m * k, dtype=torch.bfloat16, device=device)
            self.acts[device] = buf
        return buf[:m * k].view(m, k)


_WORKSPACE = _Workspace()


# Word layout: slot q of 16-bit lane l holds element 2q + l of the word, so slot q of both
# lanes is the neighbouring pair (2q, 2q + 1). Code bits (m, e0, e1) of slots 0-2 sit at lane
# bits (6, 7, 8) - 3q with the sign 9 bits above: a left shift by 3q puts both where bf16
# wants them (magnitude at bits 8..6 = exponent low bits and top mantissa bit, i.e.
# e2m1 * 2^-126; sign at 15) in both lanes at once. The three slots tile bits 0-9, 12 and
# 15; slot 3 takes the rest: (m, e0) at 10-11 (right shift 4), e1 at 13 (right shift 5),
# sign at 14 (left shift 1). No tiling gives slot 3 fewer than three shifts.
_SLOT_BITS = (((6, 7, 8), 15), ((3, 4, 5), 12), ((0, 1, 2), 9), ((10, 11, 13), 14))


def shuffle_words(packed: torch.Tensor) -> torch.Tensor:
    """Checkpoint codes (uint8 [N, K/2], element 2i in the low nibble of byte i) -> the
    backend's int32 [N, K/8] word layout. Same bytes, same K order of words."""
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] % 4:
        raise ValueError(f"packed codes must be uint8 [N, K/2] with K % 8 == 0, "
                         f"got {packed.dtype} {tuple(packed.shape)}")
    words = packed.contiguous().view(torch.int32)
    out = torch.zeros_like(words)
    for lane in range(2):
        for slot, (mag_bits, sign_bit) in enumerate(_SLOT_BITS):
            code = (words >> (4 * (2 * slot + lane))) & 15
            for i, bit in enumerate(mag_bits):
                out |= ((code >> i) & 1) << (16 * lane + bit)
            out |= (code >> 3) << (16 * lane + sign_bit)
    return out


def w4a16_matmul(x: torch.Tensor, words: torch.Tensor, scales_u8: torch.Tensor,
                 epilogue_scale: torch.Tensor, autotune: bool,
                 config: dict | None = None) -> torch.Tensor:
    """``x[M, K] bf16 @ dequant(W)[N, K]^T`` -> bf16 [M, N].

    ``config`` forces one kernel config: the meta-parameters of the plain path M selects
    (the gemv at M = 1, the ``tl.dot`` kernel above), with ``num_warps`` (4) and
    ``num_stages`` (2), and for the ``tl.dot`` kernel ``SCALE_WORDS`` (on where K allows it:
    off reads the block scales by byte, as before they were read in words).
    """
    if words.dtype != torch.int32:
        raise ValueError("the triton backend takes its own word layout (shuffle_words)")
    if x.dim() != 2 or x.shape[1] != words.shape[1] * 8:
        raise ValueError(f"x {tuple(x.shape)} does not match the weight words {tuple(words.shape)}")
    x = x.contiguous()
    m, k = x.shape
    n = words.shape[0]
    fast_key = None
    if (config is None and x.is_cuda and triton_launch.enabled()
            and x.data_ptr() % 16 == 0):  # Triton specializes pointers on 16-byte alignment
        # One resolved launch per (layer, M, PDL state): see harness.backends.triton_launch.
        # x's dtype too: the cached launch passes an address, with no type of its own.
        fast_key = (id(words), m, n, k, x.stride(0), x.dtype, autotune, pdl.active())
        cached = _FAST.get(fast_key)
        if cached is not None:
            fast, reorder, xo = cached
            out = torch.empty((m, n), dtype=torch.bfloat16, device=fast.torch_device)
            if reorder is not None:  # the ordered path: x into the buffer the GEMM reads
                reorder(x)
                x = xo
            fast(x, out, words, scales_u8, epilogue_scale)
            return out
    out = torch.empty((m, n), dtype=torch.bfloat16, device=x.device)
    if m == 0:
        return out
    ws, cnt = _WORKSPACE.get(x.device, m, n)
    gemv, gemm = _kernels(autotune)
    scale_words = k % 64 == 0  # the block scales of each row start on a 4-byte boundary
    if config is not None:
        meta = dict(config)
        scale_words = scale_words and bool(meta.pop("SCALE_WORDS", True))
        warps, stages = meta.pop("num_warps", 4), meta.pop("num_stages", 2)
        forced = triton.Config(meta, num_warps=warps, num_stages=stages)
        gemv = gemm = None
        if m == 1:
            gemv = _fixed(_gemv_kernel, forced)
        else:
            gemm = _fixed(_gemm_kernel, forced)
    args = (x, words, scales_u8, out, ws, cnt, epilogue_scale, m, n, k, x.stride(0),
            out.stride(0), _m_bucket(m))
    use_asm = not _interpreting()
    launch = pdl.launch_options(x.device)

    def gemv_grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    def gemm_grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    def run_gemv():
        gemv[gemv_grid](*args, words.stride(0), **launch)
        return gemv, (*args, words.stride(0)), dict(launch), gemv_grid

    def run_gemm():
        gemm_args = (*args, k // 8)  # words contiguous: K / 8 a row
        gemm[gemm_grid](*gemm_args, USE_ASM=use_asm, SCALE_WORDS=scale_words, **launch)
        return (gemm, gemm_args, dict(USE_ASM=use_asm, SCALE_WORDS=scale_words, **launch),
                gemm_grid)

    if config is None and _swap_ab_ok(x, m, k):
        ran = run_small_m(x, words, args, autotune, launch)
    elif m > 1 or gemv is None:
        ran = run_gemm()
    elif gemm is None or not autotune or config is not None:
        ran = run_gemv()
    else:
        path = _M1_PATH.get((n, k))
        if path is None:  # tune both kernels, then keep the faster path for this shape
            run_gemv()
            run_gemm()
            # The tensor-core path must win clearly to replace the natural M=1 path.
            t_gemv, t_gemm = _best_alternating(run_gemv, run_gemm)
            path = "gemm" if t_gemm < 0.97 * t_gemv else "gemv"
            _M1_PATH[(n, k)] = path
        ran = run_gemv() if path == "gemv" else run_gemm()
    if fast_key is not None and not torch.cuda.is_current_stream_capturing():
        kernel, kargs, kwargs, grid_fn = ran[:4]
        if isinstance(kernel, _fixed):
            jit, kw = triton_launch.resolved_kwargs(kernel.kernel, kwargs, kernel.config)
        else:
            jit, kw = triton_launch.resolved_kwargs(kernel, kwargs)
        # kargs[0]: the activations the kernel read (the reorder's buffer for ACT_ORDERED,
        # which the cached reorder writes again on every call).
        reorder = None
        if len(ran) > 4:
            r_jit, r_args, r_kw, r_grid = ran[4]
            reorder = triton_launch.Launch(r_jit, r_args, r_kw, r_grid, (x,))
        _FAST[fast_key] = (triton_launch.Launch(jit, kargs, kw, tuple(grid_fn(kw)),
                                                (kargs[0], out, words, scales_u8,
                                                 epilogue_scale)),
                           reorder, kargs[0] if reorder is not None else None)
        if id(words) not in _FAST_OWNERS:  # the layer's entries go with its weights
            _FAST_OWNERS.add(id(words))
            weakref.finalize(words, _forget, id(words))
    return out


def path_times(n: int, k: int, m: int) -> dict[str, float] | None:
    """The small-M path chooser's time (s) of each path for this GEMM, the best of its
    alternating rounds, or None where it has not chosen (M <= 8, no wgmma, not tuned yet):
    beside ``tuned_choice``, why that path runs."""
    times = _SMALL_M_PATH_S.get((n, k, _m_bucket(m)))
    return dict(times) if times is not None else None


def tuned_choice(n: int, k: int, m: int) -> str | None:
    """What the tuned ``triton`` backend runs for this GEMM once tuned, in words (kernel and
    config), or None before tuning: for the performance log next to the time."""
    if triton is None:
        return None
    bucket = _m_bucket(m)
    candidates = []  # in the order w4a16_matmul routes: small-M kernels where they run
    if m <= triton_swap_ab.MAX_M:
        small = _SMALL_M_PATH.get((n, k, bucket), "mma")
        if small == "wgmma":
            candidates.append(("wgmma", _wgmma_tuned()))
        elif small == "wgmma-ordered":  # its config says ACT_ORDERED
            candidates.append(("wgmma", _wgmma_ordered_tuned()))
        else:
            candidates.append(("mma.sync swap-ab", _swap_ab_tuned()))
    path = _M1_PATH.get((n, k), "gemv") if m == 1 else "gemm"
    candidates.append((path, _kernels(True)[0 if path == "gemv" else 1]))
    for name, tuner in candidates:
        for key, config in tuner.cache.items():
            if tuple(key[:3]) == (n, k, bucket):
                return f"{name} {config}"
    return None


def _forget(owner: int) -> None:
    _FAST_OWNERS.discard(owner)
    for key in [k for k in _FAST if k[0] == owner]:
        del _FAST[key]


# (id of the layer's words, M, N, K, x row stride, x dtype, autotune, PDL) -> (the resolved
# launch; for the ordered path the resolved reorder before it and the buffer between them)
_FAST: dict[tuple, tuple[triton_launch.Launch, triton_launch.Launch | None,
                         torch.Tensor | None]] = {}
_FAST_OWNERS: set[int] = set()
_M1_PATH: dict[tuple[int, int], str] = {}
# (N, K, M bucket) -> "mma", "wgmma" or "wgmma-ordered": the fastest small-M path, after
# each was tuned
_SMALL_M_PATH: dict[tuple[int, int, int], str] = {}
# The same key -> each path's time (s) as the chooser saw it: why that path was kept
_SMALL_M_PATH_S: dict[tuple[int, int, int], dict[str, float]] = {}


def _swap_ab_ok(x: torch.Tensor, m: int, k: int) -> bool:
    """The swapped-operand path runs for M <= 64 on a CUDA GPU when Gluon is present."""
    return (triton_swap_ab.gluon is not None and x.is_cuda and not _interpreting()
            and m <= triton_swap_ab.MAX_M and k % triton_swap_ab.K_GROUP == 0
            and compute_capability(x.device) >= 80)


def _wgmma_ok(x: torch.Tensor) -> bool:
    """The warpgroup-MMA variant needs SM90 exactly (``wgmma`` is sm_90a-only)."""
    return triton_wgmma.gluon is not None and compute_capability(x.device) == 90


def run_small_m(x, words, args, autotune: bool, launch: dict | None = None):
    """M <= 64: the ``mma.sync`` swapped-operand kernel, or on SM90 with tuning on and M > 8,
    whichever of it and the warpgroup-MMA kernel is faster for the (N, K, M bucket), each
    tuned first. Without tuning the fixed ``mma.sync`` config runs (the autotune-off
    baseline)."""
    m, n, k = args[7], args[8], args[9]
    # Up to 8 rows the mma.sync kernel's 8-column tile is the whole batch, where a wgmma
    # tile would be 16 columns: it is not a candidate there.
    if not (autotune and m > 8 and _wgmma_ok(x)):
        return run_swap_ab(x, words, args, autotune, launch)
    key = (n, k, _m_bucket(m))
    paths = {"mma": lambda: run_swap_ab(x, words, args, True, launch),
             "wgmma": lambda: run_wgmma(x, words, args, launch),
             "wgmma-ordered": lambda: run_wgmma_ordered(x, words, args, launch)}
    path = _SMALL_M_PATH.get(key)
    if path is None:
        for run in paths.values():  # each tuner's own search first
            run()
        times = _best_alternating(*paths.values())
        path = min(zip(times, paths))[1]
        _SMALL_M_PATH[key] = path
        _SMALL_M_PATH_S[key] = {p: t * 1e-3 for p, t in zip(paths, times)}  # do_bench's ms
    return paths[path]()


def run_wgmma(x, words, args, launch: dict | None = None):
    """Launch the tuned warpgroup-MMA kernel on ``args``; returns what ran, as
    ``run_swap_ab`` does."""
    return _launch_swapped(_wgmma_tuned(), _wgmma_block_b(args[7]), x, words, args, launch)


def run_wgmma_ordered(x, words, args, launch: dict | None = None):
    """The warpgroup-MMA kernel's ``ACT_ORDERED`` configs, tuned, on ``x`` copied into the
    MMA's K order by the reorder kernel just before it, every call (``reorder_then``);
    returns what ran: the GEMM's launch, and the reorder's as its fifth item."""
    return reorder_then(_wgmma_ordered_tuned(), _wgmma_block_b(args[7]), x, words, args,
                        launch)


# Whether the ordered GEMM starts with its reorder kernel (programmatic dependent launch,
# ``triton_wgmma.AFTER_REORDER``) or after it in stream order. Stream order: in the decode
# graph it gave batch 64 +1.7% and batch 32 the same (Qwen3.6-27B, H100, two runs each),
# though a single GEMM of the same config alone is ~1 us slower without PDL's overlap, and
# the forced configs that PDL had cost 10-33 us are not the ones the tuner keeps
# (docs/PERF.md, "The reorder's hand-off in stream order").
ORDERED_HANDOFF_PDL = False


def reorder_then(kernel, block_b: int, x, words, args, launch: dict | None,
                 pdl: bool | None = None):
    """``x`` into the MMA's K order (``triton_wgmma.launch_mma_k_order``, into the
    workspace's buffer), then the ``ACT_ORDERED`` ``kernel`` on it: with ``pdl`` launched to
    start with the reorder (``triton_wgmma.AFTER_REORDER``), else with the caller's ``launch``
    options behind it (in stream order unless they ask for PDL, as a batch-1 decode's do);
    ``None``: ``ORDERED_HANDOFF_PDL``. Returns the GEMM's
    (kernel, arguments, keywords, grid) and the reorder's, as a fifth item. While ``kernel``
    (a tuner) searches, it times each candidate behind a reorder of this ``x``
    (``_reorder_before_candidate``)."""
    launch = launch or {}
    pdl = ORDERED_HANDOFF_PDL if pdl is None else pdl
    xo = _WORKSPACE.ordered_acts(x.device, *x.shape)
    reorder = triton_wgmma.launch_mma_k_order(x, xo, launch)
    _REORDER_SOURCE.append((x, launch))
    try:
        ran = _launch_swapped(kernel, block_b, xo, words, (xo, *args[1:]),
                              {**launch, **triton_wgmma.AFTER_REORDER} if pdl else launch)
    finally:
        _REORDER_SOURCE.pop()
    return (*ran, reorder)


# The activations (physical K order) and launch options of the ``reorder_then`` call under
# way: what the ordered tuner's candidates are timed behind.
_REORDER_SOURCE: list[tuple] = []


def _reorder_before_candidate(nargs: dict, reset_only: bool = False) -> None:
    """The ordered tuner's hook, run before each timed launch of a candidate (Triton's
    autotuner calls it in its benchmark only): the reorder kernel of the call being tuned,
    into the candidate's activations and with the call's launch options, so the candidate is
    timed as the call runs it, launched behind the reorder. Whether a tile keeps its speed
    there depends on how its CTAs are placed while the reorder's still hold the SMs, which
    timing it alone does not show. ``reset_only`` (after the search): nothing to reset."""
    if reset_only or not _REORDER_SOURCE:
        return
    x, launch = _REORDER_SOURCE[-1]
    triton_wgmma.launch_mma_k_order(x, nargs["x_ptr"], launch)


def run_swap_ab(x, words, args, autotune: bool, launch: dict | None = None):
    """Launch the swapped-operand kernel on ``args`` (the shared argument tuple);
    ``launch``: extra launch options (``harness.pdl``). Returns what ran (kernel, arguments,
    keywords, grid function), for the cached launch."""
    kernel = (_swap_ab_tuned() if autotune
              else _fixed(triton_swap_ab.swap_ab_kernel, _swap_ab_default(args[9])))
    return _launch_swapped(kernel, _block_b(args[7]), x, words, args, launch)


def _launch_swapped(kernel, block_b: int, x, words, args, launch: dict | None):
    """One launch of a swapped-operand kernel (``mma.sync`` or ``wgmma``: same arguments)
    over batch tiles of ``block_b`` rows -> (kernel, arguments, keywords, grid function)."""
    m, n = args[7], args[8]
    scales = args[2]
    kernel_args = (x, words, scales, *args[3:12], words.stride(0), scales.stride(0), args[12])

    def grid(meta):
        if meta.get("STREAM_K"):
            return (_stream_k_programs(meta, m, n, args[9], block_b, _sms()), 1, 1)
        return (triton.cdiv(m, block_b), triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    extra = {"BLOCK_B": block_b, "FP8_CVT": _has_fp8_cvt(x.device), **(launch or {})}
    kernel[grid](*kernel_args, **extra)
    return kernel, kernel_args, extra, grid


def _stream_k_programs(kw: dict, m: int, n: int, k: int, block_b: int, sms: int) -> int:
    """Grid of a stream-K config (``STREAM_K`` programs per SM) of a small-M kernel."""
    return triton_swap_ab.stream_k_programs(kw["STREAM_K"], sms,
                                            *_tiles_steps(kw, m, n, k, block_b))


def _tiles_steps(kw: dict, m: int, n: int, k: int, block_b: int) -> tuple[int, int]:
    """(output tiles, K steps per tile) of a small-M kernel's config."""
    return triton.cdiv(m, block_b) * triton.cdiv(n, kw["BLOCK_N"]), k // kw["BLOCK_K"]


def _small_m_grid_ok(kw: dict, m: int, n: int, k: int, block_b: int, sms: int) -> bool:
    """The bound on a small-M config's grid (the tuners', and forced configs' in sweeps):
    1/2 to 16 waves of programs; a stream-K grid (one wave by construction) must share no
    tile among more programs than the workspace has planes for."""
    tiles, steps = _tiles_steps(kw, m, n, k, block_b)
    if kw.get("STREAM_K"):
        progs = _stream_k_programs(kw, m, n, k, block_b, sms)
        return (_fills_gpu(progs, sms)
                and triton_swap_ab.stream_k_segments(tiles, steps, progs) <= MAX_SPLIT_K)
    return _fills_gpu(tiles * kw["SPLIT_K"], sms)


def _has_fp8_cvt(device: torch.device) -> bool:
    """SM89+ converts e4m3 pairs to f16x2 in one instruction; Triton rejects e4m3 below."""
    return compute_capability(device) >= 89


def _bench(fn) -> float:
    return _tuning_bench()["do_bench"](fn)


def _best_alternating(*launches, rounds: int = 3) -> tuple[float, ...]:
    """Each launch's best time over ``rounds`` alternating timings: one noisy timing must
    not decide between paths (seen on H200: o_proj M=1 once went to the 1.6x slower path on
    single timings)."""
    times = [[] for _ in launches]
    for _ in range(rounds):
        for fn, t in zip(launches, times):
            t.append(_bench(fn))
    return tuple(min(t) for t in times)


class TritonW4A16(GemmBackend):
    name = "triton"
    math = "w4a16"
    family = "nvfp4"
    tunable = True
    description = "Triton W4A16: NVFP4 weight decoded in-kernel, bf16 tensor-core dot"

    def availability(self, device: torch.device) -> Availability:
        if triton is None:
            return Availability.no("triton is not installed (pip install 'nvfp4-bench[gpu]')")
        if device.type != "cuda":
            import os
            if os.environ.get("TRITON_INTERPRET") == "1":
                return Availability.yes()
            return Availability.no("the triton backend needs an NVIDIA GPU (SM80+) or "
                                   "TRITON_INTERPRET=1; this machine has no GPU")
        sm = compute_capability(device)
        if sm < 80:
            return Availability.no(f"the triton backend needs SM80 or newer; this GPU is SM{sm}")
        return Availability.yes()

    def prepare(self, weights: LayerWeights, autotune: bool = False):
        w = weights.fp4
        return {
            "words": shuffle_words(w.packed),
            "scales": w.scales.view(torch.uint8).contiguous(),
            "epilogue": (DECODE_FACTOR / w.global_scale.float()).reshape(1).contiguous(),
            "autotune": autotune,
        }

    def run(self, prepared, x, x_global_scale):
        return w4a16_matmul(x, prepared["words"], prepared["scales"], prepared["epilogue"],
                            prepared["autotune"])

    def tune(self, prepared, x, x_global_scale):
        if prepared["autotune"]:
            self.run(prepared, x, x_global_scale)  # the first call of a key runs the search
