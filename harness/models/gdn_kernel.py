"""One Triton kernel for a whole Gated DeltaNet decode token (everything between the layer's
``in_proj`` GEMMs and its ``out_proj``).

The unfused engine spends a dozen small kernels per layer on this (conv window, SiLU, two L2
norms, gates, decay, two state contractions, the rank-1 update, the gated RMSNorm); with 48
such layers per Qwen3.6 step their launches and round trips through global memory cost
milliseconds at batch 1. Here one program owns one (sequence, v-head): it reads its conv
window and its [d, d] state once, writes them once, and emits the gated-normed output row.

The conv state is a ring of ``W`` slots per channel, the token at position ``p`` in slot
``p % W``. The q/k channels of one qk-head are shared by ``v_heads / qk_heads`` programs; with
a ring, the program that writes the new token (slot ``pos % W``) never touches the slots the
others read (the ``W - 1`` before it), so no program can see a half-updated window.
"""

from __future__ import annotations

import torch

from harness import pdl

try:
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - the engine falls back to its torch ops
    triton = None


if triton is not None:

    @triton.jit
    def _gdn_decode_kernel(x_ptr, stride_x, ba_w_ptr, HIDDEN, qkvz_ptr, stride_qkvz, conv_ptr,
                           conv_w_ptr, stride_cw, a_log_ptr, dt_bias_ptr, state_ptr, norm_w_ptr,
                           out_ptr, o_part_ptr, sumsq_ptr, ticket_ptr, pos_ptr, HK, HV, eps,
                           D: tl.constexpr, W: tl.constexpr, RATIO: tl.constexpr,
                           BV: tl.constexpr, BH: tl.constexpr, GDC: tl.constexpr = False):
        if GDC:
            gdc_launch_dependents()
        b = tl.program_id(0)
        h = tl.program_id(1)
        vb = tl.program_id(2)
        NV: tl.constexpr = D // BV
        offs = tl.arange(0, D)
        offv = vb * BV + tl.arange(0, BV)
        # The state slice is read before the PDL wait: only this layer's kernel writes it, in
        # an earlier step, and a step starts after the last one has finished (its first
        # kernels are not PDL launches).
        s_ptrs = state_ptr + (b * HV + h) * D * D + offs[:, None] * D + offv[None, :]
        s = tl.load(s_ptrs)
        if GDC:
            gdc_wait()
        hk = h // RATIO
        C = 2 * HK * D + HV * D
        pos = tl.load(pos_ptr)
        ch_q = hk * D + offs
        ch_k = HK * D + hk * D + offs
        ch_v = 2 * HK * D + h * D + offv
        row = qkvz_ptr + b * stride_qkvz
        ring = conv_ptr + b * C * W
        slot_new = pos % W

        # Causal depthwise conv over [W-1 cached tokens, this token], then SiLU (fp32).
        xq = tl.load(row + ch_q)
        xk = tl.load(row + ch_k)
        xv = tl.load(row + ch_v)
        cq = xq.to(tl.float32) * tl.load(conv_w_ptr + ch_q * stride_cw + (W - 1)).to(tl.float32)
        ck = xk.to(tl.float32) * tl.load(conv_w_ptr + ch_k * stride_cw + (W - 1)).to(tl.float32)
        cv = xv.to(tl.float32) * tl.load(conv_w_ptr + ch_v * stride_cw + (W - 1)).to(tl.float32)
        for j in tl.static_range(W - 1):
            slot = (pos + 1 + j) % W  # oldest first: the token at pos - (W - 1) + j
            cq += (tl.load(ring + ch_q * W + slot).to(tl.float32)
                   * tl.load(conv_w_ptr + ch_q * stride_cw + j).to(tl.float32))
            ck += (tl.load(ring + ch_k * W + slot).to(tl.float32)
                   * tl.load(conv_w_ptr + ch_k * stride_cw + j).to(tl.float32))
            cv += (tl.load(ring + ch_v * W + slot).to(tl.float32)
                   * tl.load(conv_w_ptr + ch_v * stride_cw + j).to(tl.float32))
        owner = ((h % RATIO) == 0) & (vb == 0)  # one program per qk-head stores q/k channels
        tl.store(ring + ch_q * W + slot_new, xq, mask=(offs < D) & owner)
        tl.store(ring + ch_k * W + slot_new, xk, mask=(offs < D) & owner)
        tl.store(ring + ch_v * W + slot_new, xv)
        q = cq / (1.0 + tl.exp(-cq))
        k = ck / (1.0 + tl.exp(-ck))
        v = cv / (1.0 + tl.exp(-cv))
        q = q / tl.maximum(tl.sqrt(tl.sum(q * q, axis=0)), 1e-12)
        k = k / tl.maximum(tl.sqrt(tl.sum(k * k, axis=0)), 1e-12)
        q = q / tl.sqrt(D * 1.0)

        # in_proj_ba (bf16, two rows per v-head), then the gates:
        # beta = sigmoid(b), decay = exp(g), g = -exp(A_log) * softplus(a + dt_bias).
        acc_b = tl.zeros([BH], dtype=tl.float32)
        acc_a = tl.zeros([BH], dtype=tl.float32)
        for k0 in range(0, HIDDEN, BH):
            oh = k0 + tl.arange(0, BH)
            mh = oh < HIDDEN
            xh = tl.load(x_ptr + b * stride_x + oh, mask=mh, other=0.0).to(tl.float32)
            acc_b += xh * tl.load(ba_w_ptr + h * HIDDEN + oh, mask=mh, other=0.0).to(tl.float32)
            acc_a += xh * tl.load(ba_w_ptr + (HV + h) * HIDDEN + oh, mask=mh, other=0.0).to(tl.float32)
        # ba is a bf16 GEMM output in the torch path: round the same way.
        bv = tl.sum(acc_b, axis=0).to(tl.bfloat16).to(tl.float32)
        av = tl.sum(acc_a, axis=0).to(tl.bfloat16).to(tl.float32)
        av = av + tl.load(dt_bias_ptr + h).to(tl.float32)
        softplus = tl.where(av > 20.0, av, tl.log(1.0 + tl.exp(av)))
        decay = tl.exp(-tl.exp(tl.load(a_log_ptr + h).to(tl.float32)) * softplus)
        beta = 1.0 / (1.0 + tl.exp(-bv))

        # Delta rule on S [dk, dv]: S' = e^g S + k (beta (v - e^g k^T S))^T; o = q^T S'.
        ks = tl.sum(k[:, None] * s, axis=0)
        qs = tl.sum(q[:, None] * s, axis=0)
        delta = (v - decay * ks) * beta
        tl.store(s_ptrs, decay * s + k[:, None] * delta[None, :])
        o = decay * qs + tl.sum(q * k, axis=0) * delta

        # Gated RMSNorm per head: rmsnorm(o) * w * silu(z). With the head split over NV
        # programs, each parks its slice and sum of squares; the last to arrive normalises.
        if NV == 1:
            z = tl.load(row + C + h * D + offs).to(tl.float32)
            o = o / tl.sqrt(tl.sum(o * o, axis=0) / D + eps) * tl.load(norm_w_ptr + offs).to(tl.float32)
            tl.store(out_ptr + b * HV * D + h * D + offs, (o * (z / (1.0 + tl.exp(-z)))).to(tl.bfloat16))
        else:
            bh = b * HV + h
            tl.store(o_part_ptr + bh * D + offv, o)
            tl.debug_barrier()  # every lane's slice is written before the release below
            tl.atomic_add(sumsq_ptr + bh, tl.sum(o * o, axis=0), sem="release")
            if tl.atomic_add(ticket_ptr + bh, 1, sem="acq_rel") == NV - 1:
                total = tl.atomic_add(sumsq_ptr + bh, 0.0, sem="acquire")
                # Every other program of this head is done with both: reset for the next token.
                tl.store(sumsq_ptr + bh, 0.0)
                tl.store(ticket_ptr + bh, 0)
                head = tl.load(o_part_ptr + bh * D + offs, cache_modifier=".cg")
                z = tl.load(row + C + h * D + offs).to(tl.float32)
                head = head / tl.sqrt(total / D + eps) * tl.load(norm_w_ptr + offs).to(tl.float32)
                tl.store(out_ptr + b * HV * D + h * D + offs,
                         (head * (z / (1.0 + tl.exp(-z)))).to(tl.bfloat16))


def available() -> bool:
    return triton is not None


class Workspace:
    """Per-engine scratch of the split-head path: head slices, sums of squares and arrival
    tickets. The tickets and sums return to zero after every token (graph replays reuse it)."""

    def __init__(self, batch: int, hv: int, d: int, device: torch.device):
        self.o_part = torch.empty((batch, hv, d), dtype=torch.float32, device=device)
        self.sumsq = torch.zeros(batch * hv, dtype=torch.float32, device=device)
        self.ticket = torch.zeros(batch * hv, dtype=torch.int32, device=device)


COLUMNS = 32  # state columns per program: [d, 32] fp32 stays in registers at 4 warps


def head_split(d: int) -> int:
    """Programs per v-head. Each takes 32 of the state's d columns: more programs stream the
    state at batch 1 (48 heads would leave most SMs idle), and wider column blocks spill."""
    return max(1, d // COLUMNS)


def gdn_decode(x: torch.Tensor, ba_w: torch.Tensor, qkvz: torch.Tensor, conv_state: torch.Tensor,
               conv_w: torch.Tensor, a_log: torch.Tensor, dt_bias: torch.Tensor,
               state: torch.Tensor, norm_w: torch.Tensor, pos: torch.Tensor,
               hk: int, hv: int, d: int, eps: float, work: Workspace | None = None,
               split: int = 1) -> torch.Tensor:
    """One token. ``x`` [B, hidden] is the layer's normed input (for ``in_proj_ba``
    [2 hv, hidden]); ``qkvz`` [B, 2 hk d + 2 hv d] its ``in_proj_qkvz`` -> [B, hv d] bf16.

    Updates ``conv_state`` (ring [B, C, W], slot ``pos % W``) and ``state`` [B, hv, d, d]
    (fp32) in place; ``pos`` is a one-element device tensor (graph-capturable). ``split``
    programs share each v-head (a power of two; > 1 needs ``work``).
    """
    bsz, width, hidden = qkvz.shape[0], conv_state.shape[-1], x.shape[-1]
    assert x.stride(-1) == 1 and qkvz.stride(-1) == 1 and conv_w.stride(-1) == 1
    assert ba_w.is_contiguous() and ba_w.shape == (2 * hv, hidden)
    assert conv_state.is_contiguous() and state.is_contiguous() and state.dtype == torch.float32
    assert hv % hk == 0 and d & (d - 1) == 0, "v-heads must share qk-heads; d a power of two"
    assert split == 1 or (work is not None and d % split == 0)
    out = torch.empty((bsz, hv * d), dtype=torch.bfloat16, device=qkvz.device)
    bv = d // split
    o_part, sumsq, ticket = ((work.o_part, work.sumsq, work.ticket) if work is not None
                             else (out, out, out))  # unused when split == 1
    _gdn_decode_kernel[(bsz, hv, split)](
        x, x.stride(0), ba_w, hidden, qkvz, qkvz.stride(0), conv_state, conv_w, conv_w.stride(0),
        a_log, dt_bias, state, norm_w, out, o_part, sumsq, ticket, pos, hk, hv, eps,
        D=d, W=width, RATIO=hv // hk, BV=bv, BH=min(1024, triton.next_power_of_2(hidden)),
        num_warps=4, **pdl.launch_options(qkvz.device))
    return out
