"""Hopper path of the ``triton`` backend's small-M GEMM: the swapped-operand kernel on
warpgroup MMA (``wgmma``, SM90a), written in Gluon.

The weight is still the MMA's A operand, decoded in registers straight into the fragment
(``triton_swap_ab``'s word layout, decode and K permutation: a warp's A fragment of
``wgmma`` m64nNk16 is the ``mma.sync`` m16n8k16 one). What changes is B: ``wgmma`` reads it
from shared memory, so the batch tile is staged once per CTA and shared by every warp (the
``mma.sync`` kernel loads it into each warp's registers, per 32-row batch tile), the whole
batch of up to 64 rows is one tile (each weight word decoded once per call, not once per
32 rows), and one ``wgmma`` m64n64k16 does the work of eight ``mma.sync`` m16n8k16.

``ASYNC = False``: the decoded A tile stays in registers and the ``wgmma`` is synchronous,
so within a CTA the decode of step i + 1 waits for the MMA of step i (an asynchronous
``wgmma`` reading A from registers gave non-finite results on the H200: docs/PERF.md).
``ASYNC = True``: the decoded tile is stored to shared memory beside the batch tile, two
slots of each, and the ``wgmma`` reads both from there asynchronously with one group left in
flight, so the tensor cores run step i while the same warps load and decode step i + 1.
It is correct on the H200 but 1.2-1.4x slower on Hopper (docs/PERF.md), so the backend's
tuner does not try it.

The activations arrive in the physical K order of the weight words and ``wgmma`` wants them
in the MMA's K order (``triton_swap_ab.logical_column``): per 128-wide group, the physical
element ``32t + 2u + p`` goes to row ``8u + 2t + p`` of the staged tile (u = 4c + 2s + h).
The load takes 16-byte vectors in physical order and the store to shared memory writes them
in MMA order; nothing else moves. ``ACT_RING = True`` (with a weight ring, synchronous MMA):
the batch tile takes a slot of the ring too, filled by cp.async from source pointers already
in MMA order, so no activation passes through registers; the permutation leaves pairs as the
longest runs, so those copies are 4 bytes each, and at M = 64 they arrive late enough to
make it the slower path (docs/PERF.md). ``ACT_ORDERED = True`` (with ``ACT_RING``): the
activations arrive in MMA K order already, so the ring takes them by 16-byte copies of
consecutive elements. The backend reorders them just before the launch with
``mma_k_order_kernel`` (``in_mma_k_order`` is the same permutation in torch), and launches the
GEMM to start with it: the GEMM's first weight stages stream in while the reorder runs.
``CONSUMERS`` = 1 or 2 (with ``ACT_ORDERED``): the same ring, warp-specialized
(``gl.warp_specialize``): a copy warpgroup fills it and one or two MMA warpgroups of 64 rows
each decode and multiply, completion on mbarriers instead of CTA barriers, so no warpgroup
waits for another's decode or MMA, and two share one batch tile per step.
"""

from __future__ import annotations

from harness.backends import triton_swap_ab as swap_ab

gluon = swap_ab.gluon  # None without Gluon: the backend keeps its other paths
K_GROUP = swap_ab.K_GROUP


def act_staging_order(block_k: int) -> list[int]:
    """Physical K offset (within a step of ``block_k``) of each row of the staged B tile,
    in MMA order: the permutation the kernel's register permute and store carry out."""
    order = []
    for row in range(block_k):
        group, col = divmod(row, K_GROUP)
        u, rest = divmod(col, 8)
        t, p = divmod(rest, 2)
        order.append(group * K_GROUP + 32 * t + 2 * u + p)
    return order


def in_mma_k_order(x):
    """Activations [M, K] (torch, K a multiple of 128) in physical K order -> a contiguous
    copy in the MMA's K order (``act_staging_order``): what an ``ACT_ORDERED`` launch reads.
    Per 128-wide group the physical element ``32t + 2u + p`` moves to ``8u + 2t + p``."""
    m, k = x.shape
    if k % K_GROUP:
        raise ValueError(f"K must be a multiple of {K_GROUP}, got {k}")
    return x.reshape(m, k // K_GROUP, 4, 16, 2).permute(0, 1, 3, 2, 4).reshape(m, k)


# 128-wide K groups per program of ``mma_k_order_kernel`` (2 KB of bf16: a 16-byte vector per
# thread of its four warps).
REORDER_GROUPS = 8
# Launch options of a GEMM that reads what ``mma_k_order_kernel`` wrote just before it: it
# starts as the reorder starts (programmatic dependent launch) and requests the weights of its
# first ring stages while the reorder runs; its ``griddepcontrol.wait`` precedes every read of
# the reordered activations and every write (``harness.pdl``).
AFTER_REORDER = {"launch_pdl": True, "GDC": True}
# Warps of the copy partition of a warp-specialized tile (``CONSUMERS``): a warpgroup, the
# unit in which registers are allotted, so that its pointer tiles take few registers each.
WS_COPY_WARPS = 4


if gluon is not None:
    try:
        from triton.experimental.gluon.language.nvidia.hopper import (
            fence_async_shared, mbarrier, warpgroup_mma, warpgroup_mma_wait)
    except ImportError:  # a Gluon without its Hopper module: the mma.sync kernel only
        gluon = None

if gluon is not None:
    import triton
    import triton.language as tl
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    _WS_COPY_WARPS = gl.constexpr(WS_COPY_WARPS)

    @triton.jit
    def mma_k_order_kernel(x_ptr, y_ptr, K, stride_xm, GROUPS: tl.constexpr,
                           WAIT: tl.constexpr):
        """``in_mma_k_order`` as one kernel: program (row, chunk) moves GROUPS 128-wide
        groups of one row of x into the contiguous y [M, K], in 16-byte loads and stores.
        It lets the GEMM behind it launch at once (that GEMM waits for this kernel's writes
        before it reads them); ``WAIT``: launched with PDL itself, so it waits for the kernel
        before it (which wrote x) before reading x."""
        gdc_launch_dependents()
        row = tl.program_id(0).to(tl.int64)
        start = tl.program_id(1) * (GROUPS * 128)
        r = tl.arange(0, GROUPS * 128)
        ok = start + r < K  # whole groups: the same mask before and after the permute
        if WAIT:
            gdc_wait()
        v = tl.load(x_ptr + row * stride_xm + start + r, mask=ok)
        v = tl.reshape(tl.permute(tl.reshape(v, [GROUPS, 4, 16, 2]), [0, 2, 1, 3]),
                       [GROUPS * 128])
        tl.store(y_ptr + row * K + start + r, v, mask=ok)

    def launch_mma_k_order(x, y, launch: dict) -> tuple:
        """``y`` <- x [M, K] in the MMA's K order, by ``mma_k_order_kernel``; ``launch``: the
        launch options of the caller's GEMM (``harness.pdl``: with PDL on, this kernel is a
        PDL launch too). Returns (kernel, arguments, keywords, grid), for a cached launch."""
        m, k = x.shape
        grid = (m, triton.cdiv(k // K_GROUP, REORDER_GROUPS))
        kwargs = {"GROUPS": REORDER_GROUPS, "WAIT": bool(launch.get("GDC")), "num_warps": 4}
        if launch.get("launch_pdl"):
            kwargs["launch_pdl"] = True
        args = (x, y, k, x.stride(0))
        mma_k_order_kernel[grid](*args, **kwargs)
        return mma_k_order_kernel, args, kwargs, grid

    @gluon.jit
    def _in_mma_order(xv, BLOCK_B: gl.constexpr, BLOCK_K: gl.constexpr):
        """Activations [BB, BK] in physical K order -> MMA order: (t, u, p) -> (u, t, p)
        inside each 128-wide group, a register renaming (``act_staging_order``)."""
        G: gl.constexpr = BLOCK_K // 128
        xt = gl.reshape(xv, [BLOCK_B, G, 4, 16, 2])
        return gl.reshape(gl.permute(xt, [0, 1, 3, 2, 4]), [BLOCK_B, BLOCK_K])

    @gluon.jit
    def _stage_acts(x_smem, xv, BLOCK_B: gl.constexpr, BLOCK_K: gl.constexpr):
        """Activations [BB, BK] in physical K order -> the shared B tile in MMA order, then
        the fence that makes the store visible to wgmma."""
        xt = _in_mma_order(xv, BLOCK_B, BLOCK_K)
        swap_ab.cta_barrier()  # the previous step's wgmma (synchronous) has read x_smem
        x_smem.store(xt)
        fence_async_shared()
        swap_ab.cta_barrier()

    @gluon.jit
    def _async_mma(acc, a, xv, x_slot, a_slot, BLOCK_B: gl.constexpr, BLOCK_K: gl.constexpr):
        """ASYNC = True: the batch tile (MMA K order, as ``_stage_acts``) and the decoded A
        tile into this step's slots, then the ``wgmma`` on both, leaving it in flight; the
        wait retires the previous step's. The caller's barrier before the decode made the
        slots free: every warpgroup had retired the ``wgmma`` of two steps back."""
        x_slot.store(_in_mma_order(xv, BLOCK_B, BLOCK_K))
        a_slot.store(a)
        fence_async_shared()
        swap_ab.cta_barrier()  # B is read by every warpgroup: all its rows are stored
        acc = warpgroup_mma(a_slot, x_slot.permute([1, 0]), acc, is_async=True)
        return warpgroup_mma_wait(num_outstanding=1, deps=(acc,))

    @gluon.jit
    def _act_ring_src(x_ptr, stride_xm, M, pid_b, BLOCK_B: gl.constexpr,
                      BLOCK_K: gl.constexpr, nw: gl.constexpr, ORDERED: gl.constexpr):
        """Source pointers [BB, BK] of the first step's batch tile in MMA K order: element
        (b, r) is the activation at physical offset ``act_staging_order(BK)[r]``, so a
        cp.async of these pointers into the staged tile is the permute and the store at
        once. The order keeps element pairs (p) adjacent: 4-byte copies. ``ORDERED``: the
        activations are in MMA K order already (``in_mma_k_order``), so the copies are
        16-byte vectors of consecutive elements. Rows past M are masked (zero-filled
        without reading)."""
        if ORDERED:
            XV: gl.constexpr = _act_load_layout(BLOCK_K, nw)
            rb = pid_b * BLOCK_B + gl.arange(0, BLOCK_B, layout=gl.SliceLayout(1, XV))
            r = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, XV))
            return x_ptr + rb[:, None] * stride_xm + r[None, :], rb[:, None] < M
        else:
            XC: gl.constexpr = gl.BlockedLayout([1, 2], [1, 32], [nw, 1], [1, 0])
            rb = pid_b * BLOCK_B + gl.arange(0, BLOCK_B, layout=gl.SliceLayout(1, XC))
            r = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, XC))
            c = r % 128
            phys = r - c + 32 * ((c % 8) // 2) + 2 * (c // 8) + c % 2
            phys = gl.max_contiguous(gl.multiple_of(phys, 2), 2)
            return x_ptr + rb[:, None] * stride_xm + phys[None, :], rb[:, None] < M

    @gluon.jit
    def _act_ring_loop(acc, x_ptr, stride_xm, M, pid_b, w_smem, s_smem, w_src, s_src,
                       first, last, A_LAYOUT: gl.constexpr, BLOCK_N: gl.constexpr,
                       BLOCK_K: gl.constexpr, BLOCK_B: gl.constexpr, STAGES: gl.constexpr,
                       FP8_CVT: gl.constexpr, GDC: gl.constexpr, ORDERED: gl.constexpr):
        """The K loop with the batch tile in the ring too (ACT_RING = True): each step's
        activations are copied by cp.async straight into its slot, in MMA K order, with the
        step's words and scales, STAGES - 1 steps ahead. No activation passes through
        registers: no loads carried across the loop, no shared stores, no permute."""
        nw: gl.constexpr = gl.num_warps()
        XS: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_B, BLOCK_K], gl.bfloat16)
        x_ring = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_B, BLOCK_K], XS)
        x_src, x_ok = _act_ring_src(x_ptr, stride_xm, M, pid_b, BLOCK_B, BLOCK_K, nw, ORDERED)
        # Under PDL the weights of the first steps are requested before the wait, the
        # activations (the previous kernel's output) after it.
        for j in gl.static_range(STAGES - 1):
            swap_ab._issue_weights(w_smem, s_smem, w_src, s_src, j, first + j,
                                   first + j < last, BLOCK_K)
        if GDC:
            swap_ab._gdc_wait()
        for j in gl.static_range(STAGES - 1):
            swap_ab._issue_acts(x_ring, x_src, x_ok, j, first + j, first + j < last, BLOCK_K)
        for step in range(first, last):
            i = step - first
            async_copy.wait_group(STAGES - 2)  # this thread's copies of `step` landed
            fence_async_shared()  # cp.async wrote through the generic proxy; wgmma reads async
            # ...everyone's, and the synchronous wgmma of step - 1 is done in every
            # warpgroup: slot (i - 1) % STAGES is free.
            swap_ab.cta_barrier()
            ahead = step + STAGES - 1
            slot_ahead = (i + STAGES - 1) % STAGES
            swap_ab._issue_weights(w_smem, s_smem, w_src, s_src, slot_ahead, ahead,
                                   ahead < last, BLOCK_K)
            swap_ab._issue_acts(x_ring, x_src, x_ok, slot_ahead, ahead, ahead < last, BLOCK_K)
            wv, sb = swap_ab._read_slot(w_smem, s_smem, i % STAGES, BLOCK_N, BLOCK_K)
            a = swap_ab._a_fragment(wv, sb, BLOCK_N, BLOCK_K, A_LAYOUT, FP8_CVT)
            acc = warpgroup_mma(a, x_ring.index(i % STAGES).permute([1, 0]), acc)
        async_copy.wait_group(0)
        return acc

    @gluon.jit
    def _wgmma_unit(x_ptr, w_ptr, s_ptr, M, N, stride_xm, stride_wn, stride_sn, pid_b, pid_n,
                    steps, first, last, x_smem, a_smem, BLOCK_N: gl.constexpr,
                    BLOCK_K: gl.constexpr, BLOCK_B: gl.constexpr, FP8_CVT: gl.constexpr,
                    STAGES: gl.constexpr, ASYNC: gl.constexpr, GDC: gl.constexpr,
                    ACT_RING: gl.constexpr, ACT_ORDERED: gl.constexpr):
        """K steps ``[first, last)`` of the [BLOCK_N, BLOCK_B] tile (pid_n, pid_b) of out^T
        -> its fp32 accumulator (layout ``_wgmma_layout``), every ``wgmma`` retired."""
        nw: gl.constexpr = gl.num_warps()
        WL: gl.constexpr = swap_ab._word_layout(BLOCK_N, BLOCK_K, nw)
        SL: gl.constexpr = swap_ab._scale_layout(BLOCK_N, BLOCK_K, nw)
        MMA: gl.constexpr = _wgmma_layout(BLOCK_B, nw)
        A_LAYOUT: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
        XL: gl.constexpr = _act_load_layout(BLOCK_K, nw)
        rb = pid_b * BLOCK_B + gl.arange(0, BLOCK_B, layout=gl.SliceLayout(1, XL))
        jk = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, XL))
        x_ptrs = x_ptr + rb[:, None] * stride_xm + jk[None, :]
        x_ok = rb[:, None] < M
        acc = gl.zeros([BLOCK_N, BLOCK_B], gl.float32, layout=MMA)
        # A split past the end of K has no steps; its first loads stay in bounds.
        head = gl.minimum(first, steps - 1)
        if STAGES > 0:
            w_smem, s_smem, w_src, s_src = swap_ab._weight_ring(
                w_ptr, stride_wn, s_ptr, stride_sn, pid_n, N, BLOCK_N, BLOCK_K, STAGES)
        gl.static_assert(ACT_RING or not ACT_ORDERED, "ACT_ORDERED is an ACT_RING option")
        if STAGES > 0 and ACT_RING:
            gl.static_assert(not ASYNC, "ACT_RING is a synchronous-wgmma path")
            acc = _act_ring_loop(acc, x_ptr, stride_xm, M, pid_b, w_smem, s_smem, w_src, s_src,
                                 first, last, A_LAYOUT, BLOCK_N, BLOCK_K, BLOCK_B, STAGES,
                                 FP8_CVT, GDC, ACT_ORDERED)
        elif STAGES > 0:
            for j in gl.static_range(STAGES - 1):
                swap_ab._issue_weights(w_smem, s_smem, w_src, s_src, j, first + j,
                                       first + j < last, BLOCK_K)
                async_copy.commit_group()
            if GDC:
                swap_ab._gdc_wait()
            xv = gl.load(x_ptrs + head * BLOCK_K, mask=x_ok, other=0.0)
            for step in range(first, last):
                i = step - first
                nxt = gl.minimum(step + 1, last - 1)
                xv_next = gl.load(x_ptrs + nxt * BLOCK_K, mask=x_ok, other=0.0)
                async_copy.wait_group(STAGES - 2)  # this thread's copies of `step` landed
                # The barrier (in _stage_acts when synchronous): everyone's copies landed,
                # and slot (i - 1) % STAGES is free.
                if ASYNC:
                    swap_ab.cta_barrier()
                else:
                    _stage_acts(x_smem, xv, BLOCK_B, BLOCK_K)
                ahead = step + STAGES - 1
                swap_ab._issue_weights(w_smem, s_smem, w_src, s_src, (i + STAGES - 1) % STAGES,
                                       ahead, ahead < last, BLOCK_K)
                async_copy.commit_group()
                wv, sb = swap_ab._read_slot(w_smem, s_smem, i % STAGES, BLOCK_N, BLOCK_K)
                a = swap_ab._a_fragment(wv, sb, BLOCK_N, BLOCK_K, A_LAYOUT, FP8_CVT)
                if ASYNC:
                    acc = _async_mma(acc, a, xv, x_smem.index(i % 2), a_smem.index(i % 2),
                                     BLOCK_B, BLOCK_K)
                else:
                    acc = warpgroup_mma(a, x_smem.permute([1, 0]), acc)
                xv = xv_next
            async_copy.wait_group(0)
        else:
            rw = gl.minimum(pid_n * BLOCK_N
                            + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, WL)), N - 1)
            rs = gl.minimum(pid_n * BLOCK_N
                            + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, SL)), N - 1)
            jw = gl.arange(0, BLOCK_K // 8, layout=gl.SliceLayout(0, WL))
            js = gl.arange(0, BLOCK_K // 16, layout=gl.SliceLayout(0, SL))
            w_ptrs = w_ptr + rw.to(gl.int64)[:, None] * stride_wn + jw[None, :]
            s_ptrs = s_ptr + rs.to(gl.int64)[:, None] * stride_sn + js[None, :]
            wv = gl.load(w_ptrs + head * (BLOCK_K // 8))
            sb = gl.load(s_ptrs + head * (BLOCK_K // 16))
            if GDC:
                swap_ab._gdc_wait()
            xv = gl.load(x_ptrs + head * BLOCK_K, mask=x_ok, other=0.0)
            for step in range(first, last):
                nxt = gl.minimum(step + 1, last - 1)
                wv_next = gl.load(w_ptrs + nxt * (BLOCK_K // 8))
                sb_next = gl.load(s_ptrs + nxt * (BLOCK_K // 16))
                xv_next = gl.load(x_ptrs + nxt * BLOCK_K, mask=x_ok, other=0.0)
                if ASYNC:
                    swap_ab.cta_barrier()  # the slots of step - 2 are free (see _async_mma)
                    a = swap_ab._a_fragment(wv, sb, BLOCK_N, BLOCK_K, A_LAYOUT, FP8_CVT)
                    i = step - first
                    acc = _async_mma(acc, a, xv, x_smem.index(i % 2), a_smem.index(i % 2),
                                     BLOCK_B, BLOCK_K)
                else:
                    _stage_acts(x_smem, xv, BLOCK_B, BLOCK_K)
                    a = swap_ab._a_fragment(wv, sb, BLOCK_N, BLOCK_K, A_LAYOUT, FP8_CVT)
                    acc = warpgroup_mma(a, x_smem.permute([1, 0]), acc)
                wv, sb, xv = wv_next, sb_next, xv_next
        if ASYNC:
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        return acc

    @gluon.jit
    def _ws_produce(ptrs, dims, bufs, BLOCK_K: gl.constexpr, BLOCK_B: gl.constexpr,
                    STAGES: gl.constexpr, FP8_CVT: gl.constexpr, GDC: gl.constexpr,
                    SPLIT_K: gl.constexpr, CONSUMERS: gl.constexpr):
        """The copy partition of ``CONSUMERS``: each K step's words, scales and (MMA-ordered)
        activations into ring slot ``step % STAGES`` by cp.async, once every consumer has
        released the slot; each thread's copies arrive on the slot's ``ready`` barrier as
        they land. Under PDL the first STAGES steps' weights are requested before the wait,
        every activation after it. (Worker partitions share one signature: the epilogue's
        arguments pass through unused.)"""
        x_ptr, w_ptr, s_ptr = ptrs[0], ptrs[1], ptrs[2]
        M, N, stride_xm, stride_wn, stride_sn = dims[0], dims[1], dims[2], dims[4], dims[5]
        pid_b, pid_n, first, last = dims[6], dims[7], dims[9], dims[10]
        w_smem, s_smem, x_ring, ready, free = bufs
        BLOCK_N: gl.constexpr = 64 * CONSUMERS
        nw: gl.constexpr = gl.num_warps()
        w_src, s_src = swap_ab._weight_src(w_ptr, stride_wn, s_ptr, stride_sn, pid_n, N,
                                           BLOCK_N, BLOCK_K)
        x_src, x_ok = _act_ring_src(x_ptr, stride_xm, M, pid_b, BLOCK_B, BLOCK_K, nw, True)
        for j in gl.static_range(STAGES):
            swap_ab._issue_weights(w_smem, s_smem, w_src, s_src, j, first + j,
                                   first + j < last, BLOCK_K)
        if GDC:
            swap_ab._gdc_wait()
        for step in range(first, last):
            i = step - first
            slot = i % STAGES
            if i >= STAGES:
                # Free once every consumer has released use i // STAGES - 1 of the slot.
                mbarrier.wait(free.index(slot), ((i // STAGES) & 1) ^ 1)
                swap_ab._issue_weights(w_smem, s_smem, w_src, s_src, slot, step, step < last,
                                       BLOCK_K)
            swap_ab.async_load(x_ring.index(slot), x_src + step * BLOCK_K, mask=x_ok)
            async_copy.mbarrier_arrive(ready.index(slot), increment_count=False)
        # The prologue's copies past the split's last step (masked: zero fills) land before
        # the warps exit.
        async_copy.commit_group()
        async_copy.wait_group(0)

    @gluon.jit
    def _ws_consume(ptrs, dims, bufs, ROW: gl.constexpr, BLOCK_K: gl.constexpr,
                    BLOCK_B: gl.constexpr, STAGES: gl.constexpr, FP8_CVT: gl.constexpr,
                    GDC: gl.constexpr, SPLIT_K: gl.constexpr, CONSUMERS: gl.constexpr):
        """One MMA warpgroup of ``CONSUMERS``: rows [ROW, ROW + 64) of the CTA's weight tile.
        Per K step it waits for the slot's copies, decodes its rows of the words into the A
        fragment, runs the ``wgmma`` on the shared batch tile and releases the slot once the
        ``wgmma`` has read it; then stores its 64 rows of out^T as a tile of its own (split-K
        partials included). No barrier spans the warpgroups: each waits only for the copies.
        The ``wgmma`` is retired before the next step decodes: left in flight, its A
        registers were the next decode's destination (sm_90a SASS of Triton 3.6 and ptxas:
        the wait's deps keep the bf16 elements alive, not the packed registers the wgmma
        reads), and a graph replay then gave other bits (docs/PERF.md)."""
        out_ptr, ws_ptr, cnt_ptr, scale_ptr = ptrs[3], ptrs[4], ptrs[5], ptrs[6]
        M, N, stride_om = dims[0], dims[1], dims[3]
        pid_b, pid_n, pid_k, first, last = dims[6], dims[7], dims[8], dims[9], dims[10]
        w_smem, s_smem, x_ring, ready, free = bufs
        SUB: gl.constexpr = 64
        nw: gl.constexpr = gl.num_warps()
        MMA: gl.constexpr = _wgmma_layout(BLOCK_B, nw)
        A_LAYOUT: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
        acc = gl.zeros([SUB, BLOCK_B], gl.float32, layout=MMA)
        for step in range(first, last):
            i = step - first
            slot = i % STAGES
            mbarrier.wait(ready.index(slot), (i // STAGES) & 1)
            fence_async_shared()  # cp.async wrote through the generic proxy; wgmma reads async
            wv, sb = swap_ab._read_words(w_smem.index(slot).slice(ROW, SUB, dim=1),
                                         s_smem.index(slot).slice(ROW, SUB, dim=0), SUB, BLOCK_K)
            a = swap_ab._a_fragment(wv, sb, SUB, BLOCK_K, A_LAYOUT, FP8_CVT)
            acc = warpgroup_mma(a, x_ring.index(slot).permute([1, 0]), acc)
            mbarrier.arrive(free.index(slot))  # the synchronous wgmma has read the slot
        if GDC:
            swap_ab._gdc_wait()  # writes follow the previous kernel (also with no K steps)
        nb = gl.num_programs(0)
        sub_n = pid_n * CONSUMERS + ROW // SUB
        swap_ab.store_tile(acc, out_ptr, ws_ptr, cnt_ptr, scale_ptr, M, N, stride_om, sub_n,
                           pid_b, sub_n * nb + pid_b, nb * gl.num_programs(1) * CONSUMERS,
                           pid_k, SPLIT_K, SUB, BLOCK_B, MMA)

    @gluon.jit
    def _ws_first(ptrs, dims, bufs, BLOCK_K: gl.constexpr, BLOCK_B: gl.constexpr,
                  STAGES: gl.constexpr, FP8_CVT: gl.constexpr, GDC: gl.constexpr,
                  SPLIT_K: gl.constexpr, CONSUMERS: gl.constexpr):
        """The default partition: the consumer of rows [0, 64); it lets the next kernel launch
        once its K loop is done, as the other kernels do before their epilogue."""
        _ws_consume(ptrs, dims, bufs, 0, BLOCK_K, BLOCK_B, STAGES, FP8_CVT, GDC, SPLIT_K,
                    CONSUMERS)
        if GDC:
            swap_ab._gdc_launch_dependents()

    @gluon.jit
    def _ws_second(ptrs, dims, bufs, BLOCK_K: gl.constexpr, BLOCK_B: gl.constexpr,
                   STAGES: gl.constexpr, FP8_CVT: gl.constexpr, GDC: gl.constexpr,
                   SPLIT_K: gl.constexpr, CONSUMERS: gl.constexpr):
        """A worker partition: the consumer of rows [64, 128)."""
        _ws_consume(ptrs, dims, bufs, 64, BLOCK_K, BLOCK_B, STAGES, FP8_CVT, GDC, SPLIT_K,
                    CONSUMERS)

    @gluon.jit
    def _ws_tile(x_ptr, w_ptr, s_ptr, out_ptr, ws_ptr, cnt_ptr, scale_ptr, M, N, K, stride_xm,
                 stride_om, stride_wn, stride_sn, BLOCK_K: gl.constexpr, BLOCK_B: gl.constexpr,
                 SPLIT_K: gl.constexpr, FP8_CVT: gl.constexpr, STAGES: gl.constexpr,
                 GDC: gl.constexpr, CONSUMERS: gl.constexpr, COPY_REGS: gl.constexpr,
                 MMA_REGS: gl.constexpr):
        """``CONSUMERS`` > 0: the CTA's tile of 64 * CONSUMERS weight rows by warp
        specialization. One copy warpgroup (``_ws_produce``) fills the ring; each MMA
        warpgroup (``_ws_consume``) decodes its 64 rows of every slot against the one batch
        tile of the slot, so the activations are read from L2 once per CTA for all its
        rows. Completion travels on mbarriers (a ``ready`` and a ``free`` barrier per slot)
        instead of CTA barriers: the warpgroups wait on the copies, not on each other."""
        BLOCK_N: gl.constexpr = 64 * CONSUMERS
        XS: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_B, BLOCK_K], gl.bfloat16)
        pid_b = gl.program_id(0)
        pid_n = gl.program_id(1)
        pid_k = gl.program_id(2)
        steps, first, last = swap_ab.split_range(K, BLOCK_K, SPLIT_K, pid_k)
        w_smem, s_smem = swap_ab._weight_slots(BLOCK_N, BLOCK_K, STAGES)
        x_ring = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_B, BLOCK_K], XS)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for j in gl.static_range(STAGES):
            mbarrier.init(ready.index(j), count=_WS_COPY_WARPS * 32)  # every copying thread
            mbarrier.init(free.index(j), count=CONSUMERS)  # one arrival per warpgroup
        # Runtime values only in the named tuples; the constexprs go in each partition's
        # arguments (in Triton 3.6 a tuple bound to a name turns its constexprs to tensors).
        ptrs = (x_ptr, w_ptr, s_ptr, out_ptr, ws_ptr, cnt_ptr, scale_ptr)
        dims = (M, N, stride_xm, stride_om, stride_wn, stride_sn, pid_b, pid_n, pid_k, first,
                last)
        bufs = (w_smem, s_smem, x_ring, ready, free)
        if CONSUMERS == 1:
            gl.warp_specialize([
                (_ws_first, (ptrs, dims, bufs, BLOCK_K, BLOCK_B, STAGES, FP8_CVT, GDC, SPLIT_K,
                             CONSUMERS)),
                (_ws_produce, (ptrs, dims, bufs, BLOCK_K, BLOCK_B, STAGES, FP8_CVT, GDC,
                               SPLIT_K, CONSUMERS)),
            ], [_WS_COPY_WARPS], [COPY_REGS])
        else:
            gl.static_assert(CONSUMERS == 2, "one or two MMA warpgroups")
            gl.warp_specialize([
                (_ws_first, (ptrs, dims, bufs, BLOCK_K, BLOCK_B, STAGES, FP8_CVT, GDC, SPLIT_K,
                             CONSUMERS)),
                (_ws_produce, (ptrs, dims, bufs, BLOCK_K, BLOCK_B, STAGES, FP8_CVT, GDC,
                               SPLIT_K, CONSUMERS)),
                (_ws_second, (ptrs, dims, bufs, BLOCK_K, BLOCK_B, STAGES, FP8_CVT, GDC,
                              SPLIT_K, CONSUMERS)),
            ], [_WS_COPY_WARPS, 4], [COPY_REGS, MMA_REGS])

    @gluon.constexpr_function
    def _wgmma_layout(block_b, num_warps):
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                         instr_shape=[16, block_b, 16])

    @gluon.constexpr_function
    def _act_load_layout(block_k, num_warps):
        """Activations: 16-byte vectors along K, lanes along K then batch rows."""
        lanes_k = block_k // 8 if block_k // 8 < 32 else 32
        return gl.BlockedLayout([1, 8], [32 // lanes_k, lanes_k], [num_warps, 1], [1, 0])

    @gluon.jit
    def wgmma_kernel(x_ptr, w_ptr, s_ptr, out_ptr, ws_ptr, cnt_ptr, scale_ptr,
                     M, N, K, stride_xm, stride_om, stride_wn, stride_sn, M_BUCKET,
                     BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, BLOCK_B: gl.constexpr,
                     SPLIT_K: gl.constexpr, FP8_CVT: gl.constexpr, STAGES: gl.constexpr = 0,
                     ASYNC: gl.constexpr = False, GDC: gl.constexpr = False,
                     ACT_RING: gl.constexpr = False, STREAM_K: gl.constexpr = 0,
                     ACT_ORDERED: gl.constexpr = False, CONSUMERS: gl.constexpr = 0,
                     COPY_REGS: gl.constexpr = 64, MMA_REGS: gl.constexpr = 208):
        # STAGES = 0: the weight words and scales go to registers one step ahead; STAGES > 0:
        # through a ring of STAGES shared-memory slots filled by cp.async, STAGES - 1 steps
        # ahead (more bytes in flight per SM; on the H200 the tuner keeps it on some shapes
        # at M = 16-32, the register path at M = 64).
        # Each warp owns 16-row slices of the weight tile (4 warps: one warpgroup per 64 rows
        # of each wgmma); the batch tile of BLOCK_B rows is the wgmma's N.
        # STREAM_K (programs per SM; 0: off): as in ``triton_swap_ab.swap_ab_kernel``.
        # CONSUMERS (1 or 2; 0: off): the warp-specialized tile of ``_ws_tile`` (num_warps 4:
        # the first MMA warpgroup; COPY_REGS / MMA_REGS: the registers per thread of the copy
        # partition and of the second MMA warpgroup; the first takes what maxnreg leaves).
        nw: gl.constexpr = gl.num_warps()
        if CONSUMERS:
            gl.static_assert(STAGES > 0 and ACT_RING and ACT_ORDERED and not ASYNC
                             and not STREAM_K and BLOCK_N == 64 * CONSUMERS and nw == 4,
                             "a warp-specialized tile: ordered ring, 64 rows per warpgroup")
            _ws_tile(x_ptr, w_ptr, s_ptr, out_ptr, ws_ptr, cnt_ptr, scale_ptr, M, N, K,
                     stride_xm, stride_om, stride_wn, stride_sn, BLOCK_K, BLOCK_B, SPLIT_K,
                     FP8_CVT, STAGES, GDC, CONSUMERS, COPY_REGS, MMA_REGS)
            return
        MMA: gl.constexpr = _wgmma_layout(BLOCK_B, nw)
        XS: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_B, BLOCK_K], gl.bfloat16)
        if ASYNC:
            AS: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K],
                                                                    gl.bfloat16)
            x_smem = gl.allocate_shared_memory(gl.bfloat16, [2, BLOCK_B, BLOCK_K], XS)
            a_smem = gl.allocate_shared_memory(gl.bfloat16, [2, BLOCK_N, BLOCK_K], AS)
        else:
            x_smem = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_B, BLOCK_K], XS)
            a_smem = x_smem  # unused
        if STREAM_K:
            b_tiles, tiles, steps, it, end, per, units = swap_ab.stream_k_range(
                M, N, K, BLOCK_B, BLOCK_N, BLOCK_K)
            for _ in tl.range(0, units, disable_licm=True):  # as in swap_ab_kernel
                tile, first, last, seg, nseg = swap_ab.stream_k_unit(it, end, steps, per)
                pid_b = tile % b_tiles
                pid_n = tile // b_tiles
                swap_ab.cta_barrier()  # every warp is done with the last unit's shared tiles
                acc = _wgmma_unit(x_ptr, w_ptr, s_ptr, M, N, stride_xm, stride_wn, stride_sn,
                                  pid_b, pid_n, steps, first, last, x_smem, a_smem, BLOCK_N,
                                  BLOCK_K, BLOCK_B, FP8_CVT, STAGES, ASYNC, GDC, ACT_RING,
                                  ACT_ORDERED)
                swap_ab.store_tile(acc, out_ptr, ws_ptr, cnt_ptr, scale_ptr, M, N, stride_om,
                                   pid_n, pid_b, tile, tiles, seg, nseg, BLOCK_N, BLOCK_B,
                                   MMA)
                it += last - first
            if GDC:
                swap_ab._gdc_launch_dependents()
        else:
            pid_b = gl.program_id(0)
            pid_n = gl.program_id(1)
            pid_k = gl.program_id(2)
            steps, first, last = swap_ab.split_range(K, BLOCK_K, SPLIT_K, pid_k)
            acc = _wgmma_unit(x_ptr, w_ptr, s_ptr, M, N, stride_xm, stride_wn, stride_sn, pid_b,
                              pid_n, steps, first, last, x_smem, a_smem, BLOCK_N, BLOCK_K,
                              BLOCK_B, FP8_CVT, STAGES, ASYNC, GDC, ACT_RING, ACT_ORDERED)
            if GDC:
                swap_ab._gdc_launch_dependents()
            swap_ab.store_tile(acc, out_ptr, ws_ptr, cnt_ptr, scale_ptr, M, N, stride_om, pid_n,
                               pid_b, pid_n * gl.num_programs(0) + pid_b,
                               gl.num_programs(0) * gl.num_programs(1), pid_k, SPLIT_K,
                               BLOCK_N, BLOCK_B, MMA)
