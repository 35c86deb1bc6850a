"""Two Triton kernels for a gated-attention decode token (between ``qkv_proj`` and ``o_proj``).

The torch path spends about a dozen kernels per attention layer on one token: q/k RMSNorm,
partial rotary, the cos/sin gather, two KV-cache index copies, the mask, SDPA over the whole
static cache, a transpose copy and the output gate. Here:

1. ``_attn_prep_kernel``, one program per q or kv head: RMSNorm + rotary of q (to a small
   buffer) and of k (into the cache at ``pos``), v into the cache.
2. ``_attn_decode_kernel``, one program per (sequence, kv head, chunk of 64 positions): the
   GQA group's queries against the chunk's keys (online softmax), a partial result per chunk;
   the last program of a (sequence, kv head) to arrive merges the chunks, applies the
   output gate ``sigmoid(gate)`` and writes the heads. Chunks past ``pos`` are empty, so the
   grid is fixed by the cache length and the whole step stays graph-capturable.

Rounding follows the torch path: normed and rotated q/k are bf16, as is the attention output
before the gate.
"""

from __future__ import annotations

import math
import os

import torch

from harness import pdl

try:
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - the engine falls back to its torch ops
    triton = None

CHUNK = 64  # cache positions per program
BLOCK_N = 32  # positions per step inside a program


if triton is not None:

    @triton.jit
    def _attn_prep_kernel(qkv_ptr, stride_qkv, q_norm_ptr, k_norm_ptr, cos_ptr, sin_ptr, pos_ptr,
                          q_ptr, k_cache_ptr, v_cache_ptr, MAX_LEN, eps,
                          HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                          ROT: tl.constexpr, GATE: tl.constexpr, GDC: tl.constexpr = False):
        if GDC:  # a PDL launch (harness.pdl): the next kernel may launch now
            gdc_launch_dependents()
            gdc_wait()
        b = tl.program_id(0)
        h = tl.program_id(1)
        pos = tl.load(pos_ptr)
        QOUT: tl.constexpr = HQ * D * (2 if GATE else 1)
        row = qkv_ptr + b * stride_qkv
        offs = tl.arange(0, D)
        if h < HQ:
            src = row + h * D * (2 if GATE else 1)  # with a gate, q_proj gives [q, gate] per head
            w_ptr = q_norm_ptr
            dst = q_ptr + (b * HQ + h) * D
        else:
            j = h - HQ
            src = row + QOUT + j * D
            w_ptr = k_norm_ptr
            cache_row = ((b * HKV + j) * MAX_LEN + pos) * D
            dst = k_cache_ptr + cache_row
            tl.store(v_cache_ptr + cache_row + offs, tl.load(row + QOUT + HKV * D + j * D + offs))
        x = tl.load(src + offs).to(tl.float32)
        r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
        y = (x * r * tl.load(w_ptr + offs).to(tl.float32)).to(tl.bfloat16).to(tl.float32)
        # Rotary (neox halves) on the first ROT dims: each needs its partner's normed value.
        R2: tl.constexpr = ROT // 2
        partner = tl.where(offs < R2, offs + R2, tl.where(offs < ROT, offs - R2, offs))
        xp = tl.load(src + partner).to(tl.float32)
        yp = (xp * r * tl.load(w_ptr + partner).to(tl.float32)).to(tl.bfloat16).to(tl.float32)
        rot = offs < ROT
        c = tl.load(cos_ptr + pos * R2 + (offs % R2), mask=rot, other=1.0)
        s = tl.load(sin_ptr + pos * R2 + (offs % R2), mask=rot, other=0.0)
        out = tl.where(offs < R2, y * c - yp * s, tl.where(rot, y * c + yp * s, y))
        tl.store(dst + offs, out.to(tl.bfloat16))

    @triton.jit
    def _attn_decode_kernel(q_ptr, k_cache_ptr, v_cache_ptr, qkv_ptr, stride_qkv, out_ptr,
                            part_m_ptr, part_l_ptr, part_acc_ptr, ticket_ptr, pos_ptr, MAX_LEN,
                            scale, NSPLIT,
                            HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                            GP: tl.constexpr, GATE: tl.constexpr, CHUNK: tl.constexpr,
                            BLOCK_N: tl.constexpr, DOT: tl.constexpr, GDC: tl.constexpr = False):
        if GDC:  # a PDL launch (harness.pdl): the next kernel may launch now
            gdc_launch_dependents()
            gdc_wait()
        b = tl.program_id(0)
        j = tl.program_id(1)
        sp = tl.program_id(2)
        G: tl.constexpr = HQ // HKV
        pos = tl.load(pos_ptr)
        offs = tl.arange(0, D)
        g = tl.arange(0, GP)
        gm = g < G
        q = tl.load(q_ptr + (b * HQ + j * G + g)[:, None] * D + offs[None, :], mask=gm[:, None],
                    other=0.0).to(DOT)
        m = tl.full([GP], float("-inf"), tl.float32)
        lsum = tl.zeros([GP], dtype=tl.float32)
        acc = tl.zeros([GP, D], dtype=tl.float32)
        kv = (b * HKV + j) * MAX_LEN
        lo = sp * CHUNK
        hi = tl.minimum(lo + CHUNK, pos + 1)  # positions 0..pos are valid
        for n0 in range(lo, hi, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nm = n < hi
            k = tl.load(k_cache_ptr + (kv + n)[:, None] * D + offs[None, :], mask=nm[:, None],
                        other=0.0)
            v = tl.load(v_cache_ptr + (kv + n)[:, None] * D + offs[None, :], mask=nm[:, None],
                        other=0.0)
            sc = tl.dot(q, tl.trans(k.to(DOT))) * scale
            sc = tl.where(nm[None, :], sc, float("-inf"))
            m_new = tl.maximum(m, tl.max(sc, axis=1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(sc - m_new[:, None])
            lsum = lsum * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.bfloat16).to(DOT), v.to(DOT))
            m = m_new
        part = (b * HKV + j) * NSPLIT + sp
        tl.store(part_m_ptr + part * GP + g, m)
        tl.store(part_l_ptr + part * GP + g, lsum)
        tl.store(part_acc_ptr + (part * GP + g)[:, None] * D + offs[None, :], acc)
        tl.debug_barrier()  # every lane's partials are written before the release below
        bj = b * HKV + j
        if tl.atomic_add(ticket_ptr + bj, 1, sem="acq_rel") == NSPLIT - 1:
            tl.store(ticket_ptr + bj, 0)  # all chunks are in: ready for the next token
            first = bj * NSPLIT
            big = tl.full([GP], float("-inf"), tl.float32)
            for s in range(NSPLIT):
                big = tl.maximum(big, tl.load(part_m_ptr + (first + s) * GP + g, cache_modifier=".cg"))
            tot = tl.zeros([GP], dtype=tl.float32)
            merged = tl.zeros([GP, D], dtype=tl.float32)
            for s in range(NSPLIT):
                ms = tl.load(part_m_ptr + (first + s) * GP + g, cache_modifier=".cg")
                w = tl.exp(ms - big)  # an empty chunk (m = -inf) adds 0
                tot += w * tl.load(part_l_ptr + (first + s) * GP + g, cache_modifier=".cg")
                merged += w[:, None] * tl.load(
                    part_acc_ptr + ((first + s) * GP + g)[:, None] * D + offs[None, :],
                    cache_modifier=".cg")
            o = (merged / tot[:, None]).to(tl.bfloat16).to(tl.float32)
            head = j * G + g
            if GATE:
                gate = tl.load(qkv_ptr + b * stride_qkv + head[:, None] * (2 * D) + D + offs[None, :],
                               mask=gm[:, None], other=0.0).to(tl.float32)
                o = o / (1.0 + tl.exp(-gate))
            tl.store(out_ptr + (b * HQ + head)[:, None] * D + offs[None, :], o.to(tl.bfloat16),
                     mask=gm[:, None])


def available() -> bool:
    return triton is not None


def _dot_dtype():
    # The Triton 3.6 interpreter multiplies bf16 tiles wrongly; fp32 holds bf16 exactly.
    return tl.float32 if os.environ.get("TRITON_INTERPRET") == "1" else tl.bfloat16


def _group_rows(hq: int, hkv: int) -> int:
    # tl.dot wants at least 16 rows: the GQA group is padded.
    return max(16, triton.next_power_of_2(hq // hkv))


class Workspace:
    """Per-engine scratch: per-chunk partial softmax state and arrival tickets (which return
    to zero after every token), and the normed, rotated queries."""

    def __init__(self, batch: int, hq: int, hkv: int, d: int, max_len: int,
                 device: torch.device):
        self.nsplit = math.ceil(max_len / CHUNK)
        gp = _group_rows(hq, hkv)
        self.q = torch.empty((batch, hq, d), dtype=torch.bfloat16, device=device)
        self.part_m = torch.empty((batch, hkv, self.nsplit, gp), dtype=torch.float32, device=device)
        self.part_l = torch.empty_like(self.part_m)
        self.part_acc = torch.empty((batch, hkv, self.nsplit, gp, d), dtype=torch.float32,
                                    device=device)
        self.ticket = torch.zeros(batch * hkv, dtype=torch.int32, device=device)


def attn_decode(qkv: torch.Tensor, q_norm: torch.Tensor, k_norm: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor, work: Workspace,
                hq: int, hkv: int, d: int, rot: int, eps: float, gate: bool) -> torch.Tensor:
    """One token. ``qkv`` [B, q_out + 2 hkv d] is ``qkv_proj``'s output (q_out = hq d, or
    2 hq d with the output gate) -> the gated attention output [B, hq d] bf16.

    Writes k (normed, rotated) and v into the caches [B, hkv, max_len, d] at ``pos`` (a
    one-element device tensor); ``cos``/``sin`` [max_len, rot / 2] fp32.
    """
    bsz, max_len = qkv.shape[0], k_cache.shape[2]
    assert qkv.stride(-1) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    assert cos.is_contiguous() and sin.is_contiguous() and cos.shape[-1] == rot // 2
    assert hq % hkv == 0 and d & (d - 1) == 0 and rot % 2 == 0 and 0 < rot <= d
    launch = pdl.launch_options(qkv.device)
    _attn_prep_kernel[(bsz, hq + hkv)](
        qkv, qkv.stride(0), q_norm, k_norm, cos, sin, pos, work.q, k_cache, v_cache,
        max_len, eps, HQ=hq, HKV=hkv, D=d, ROT=rot, GATE=gate, num_warps=4, **launch)
    out = torch.empty((bsz, hq * d), dtype=torch.bfloat16, device=qkv.device)
    _attn_decode_kernel[(bsz, hkv, work.nsplit)](
        work.q, k_cache, v_cache, qkv, qkv.stride(0), out, work.part_m, work.part_l,
        work.part_acc, work.ticket, pos, max_len, 1.0 / math.sqrt(d), work.nsplit,
        HQ=hq, HKV=hkv, D=d, GP=_group_rows(hq, hkv), GATE=gate, CHUNK=CHUNK,
        BLOCK_N=BLOCK_N, DOT=_dot_dtype(), num_warps=4, **launch)
    return out
