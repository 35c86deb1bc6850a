"""Small-M path of the ``triton`` backend: swapped-operand tensor-core W4A16 in Gluon.

For M <= 64 the weight is the MMA's A operand (``mma.sync`` m16n8k16, bf16 in, fp32
accumulate) and the activations are B, so the N rows of the weight fill the 16-row MMA
tiles and the batch needs only 8, 16 or 32 columns per tile. The weight words are decoded in
registers straight into the A fragment: no shared memory, no shuffles. That needs explicit
layouts, which is why this kernel is written in Gluon (Triton's layout-explicit dialect).

Inside a 128-wide K group the MMA runs over K in a permuted order, the same for A and B
(a dot product does not care about the order of its terms):

* lane ``4g + t`` of a warp loads words ``4t .. 4t+3`` of rows ``g`` and ``g + 8`` of the
  group (16 bytes per row: one 128-bit load) and the two scale bytes of blocks
  ``2t, 2t+1`` (a 16-bit load);
* the decode of one word gives bf16x2 registers holding its elements (0, 1), (2, 3), (4, 5),
  (6, 7) (see ``shuffle_words``); word ``c`` of lane ``t`` becomes logical columns
  ``32c + 16s + 8h + 2t + p`` of the group, where its element ``e = p + 2h + 4s``;
* the activations of batch row ``g`` at the same physical K (32 contiguous bf16 per lane
  and group) are the B fragment as loaded: a register holds two neighbouring elements, as
  the decoded weight registers do, so the permutation only renames registers.

Each element of a decoded fragment is then already in the lane and register where the MMA
wants it; ``convert_layout(..., assert_trivial=True)`` makes the compiler prove it.

The K loop reads its operands either straight into registers (``STAGES = 0``, optionally one
step ahead) or through a ring of ``STAGES`` shared-memory slots filled by ``cp.async``
(``_staged_loop``); which one is faster depends on the shape, so both are tuning candidates.

Grids: classic (batch tiles x weight tiles x ``SPLIT_K`` ranges of K) or, with ``STREAM_K``,
one program per SM slot, each an equal share of the (tile, K step) iterations
(``stream_k_units`` is the host's copy of that partition). Either way the programs that share
a tile sum their partials in a fixed order (``store_tile``). Stream-K is no tuning candidate:
faster alone on some shapes, it made the decode step slower (docs/PERF.md).
"""

from __future__ import annotations

try:
    from triton.runtime.jit import constexpr_function
except ImportError:  # no triton: the layout arithmetic below stays plain Python
    def constexpr_function(fn):
        return fn

try:
    import triton.language as tl
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2
except ImportError:  # older Triton: the backend keeps its other paths
    gluon = None
else:
    # Names that changed after Triton 3.6: the CTA-wide barrier (``gl.barrier`` later) and
    # the cp.async copy (``async_copy.async_load`` later; the old name raises there).
    cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
    async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared

K_GROUP = 128  # elements of K per lane-quad layout unit (16 words per row)
MAX_M = 64  # above this the M x N tiles of the plain tensor-core path fill the GPU
# Scale operand of the decode: bf16 S = sf * 2^119, so that S times the masked bits
# (e2m1 * 2^-126) is e2m1 * sf * 2^-7. sf * 2^119 is at most 448 * 2^119 < 2^128.
S_BIAS = 2.0 ** 119

# One word of the backend's layout ($8) and its block scale S ($9, bf16) -> the word's 8
# elements in K order ($0..$7, bf16 ``e2m1 * sf * 2^-7``), as the halves of four bf16x2
# registers: (0, 1), (2, 3), (4, 5), (6, 7). The masked bits are ``e2m1 * 2^-126`` (bf16
# subnormals for the codes 0.5 and 0, which the bf16 FMA takes as they are); products of at
# most 6 significant bits are exact. ``fma.bf16x2`` runs on SM80+ (``mul.bf16x2`` needs SM90).
DECODE_ASM = """
{
.reg .b32 t, u, v, s2, mz, r0, r1, r2, r3;
mov.b32 s2, {$9, $9};
mov.b32 mz, 0x80008000;
and.b32 t, $8, 0x81C081C0;                              fma.rn.bf16x2 r0, t, s2, mz;
shl.b32 t, $8, 3; and.b32 t, t, 0x81C081C0;             fma.rn.bf16x2 r1, t, s2, mz;
shl.b32 t, $8, 6; and.b32 t, t, 0x81C081C0;             fma.rn.bf16x2 r2, t, s2, mz;
shr.b32 t, $8, 4; and.b32 t, t, 0x00C000C0; shr.b32 u, $8, 5; and.b32 u, u, 0x01000100;
shl.b32 v, $8, 1; and.b32 v, v, 0x80008000; or.b32 t, t, u; or.b32 t, t, v;
fma.rn.bf16x2 r3, t, s2, mz;
mov.b32 {$0, $1}, r0; mov.b32 {$2, $3}, r1; mov.b32 {$4, $5}, r2; mov.b32 {$6, $7}, r3;
}
"""


def stream_k_units(tiles: int, steps: int, programs: int, program: int):
    """The units of ``program``'s share of a stream-K launch, as the kernels walk them
    (``stream_k_range``, ``stream_k_unit``): (tile, first K step, end K step, segment,
    segments of the tile). The host's copy of the kernels' arithmetic, for the bound on
    segments (``stream_k_segments``) and for the tests."""
    total = tiles * steps
    per = -(-total // programs)
    it, end = program * per, min(program * per + per, total)
    while it < end:
        tile = it // steps
        first = it - tile * steps
        last = min(steps, first + end - it)
        seg0 = tile * steps // per
        yield tile, first, last, program - seg0, ((tile + 1) * steps - 1) // per - seg0 + 1
        it += last - first


def stream_k_programs(per_sm: int, sms: int, tiles: int, steps: int) -> int:
    """Programs of a stream-K launch: ``per_sm`` per SM, none without an iteration."""
    return min(per_sm * sms, tiles * steps)


def stream_k_segments(tiles: int, steps: int, programs: int) -> int:
    """The most programs whose shares meet one tile: each takes a plane of the split
    workspace, as a split-K program does."""
    return max(nseg for p in range(programs)
               for *_, nseg in stream_k_units(tiles, steps, programs, p))


@constexpr_function
def _log2(v: int) -> int:
    if v <= 0 or v & (v - 1):
        raise ValueError(f"{v} is not a power of two")
    return v.bit_length() - 1


@constexpr_function
def word_layout_bases(block_n: int, block_k: int, num_warps: int) -> dict:
    """Linear-layout bases of the [block_n, block_k / 8] int32 word tile (rows, words)."""
    groups, row_tiles = block_k // K_GROUP, block_n // (16 * num_warps)
    return {
        "reg": [[0, 1], [0, 2], [8, 0]] + [[0, 16 << i] for i in range(_log2(groups))]
        + [[16 * num_warps << i, 0] for i in range(_log2(row_tiles))],
        "lane": [[0, 4], [0, 8], [1, 0], [2, 0], [4, 0]],
        "warp": [[16 << i, 0] for i in range(_log2(num_warps))],
        "shape": [block_n, block_k // 8],
    }


@constexpr_function
def staged_word_layout_bases(block_n: int, block_k: int, num_warps: int) -> dict:
    """The word tile of ``word_layout_bases`` as [groups, block_n, 16]: the shared-memory
    view, where one row of a group is 64 contiguous bytes, so the eight lanes of each
    16-byte shared-memory phase (two rows, four lanes per row) cover 128 distinct bytes."""
    flat = word_layout_bases(block_n, block_k, num_warps)

    def split(base):
        row, word = base
        return [word // 16, row, word % 16]
    return {key: ([split(b) for b in flat[key]] if key != "shape"
                  else [block_k // K_GROUP, block_n, 16]) for key in flat}


@constexpr_function
def scale_layout_bases(block_n: int, block_k: int, num_warps: int) -> dict:
    """Bases of the [block_n, block_k / 16] e4m3 scale tile: lane t holds blocks 2t, 2t+1."""
    groups, row_tiles = block_k // K_GROUP, block_n // (16 * num_warps)
    return {
        "reg": [[0, 1], [8, 0]] + [[0, 8 << i] for i in range(_log2(groups))]
        + [[16 * num_warps << i, 0] for i in range(_log2(row_tiles))],
        "lane": [[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]],
        "warp": [[16 << i, 0] for i in range(_log2(num_warps))],
        "shape": [block_n, block_k // 16],
    }


@constexpr_function
def act_layout_bases(block_b: int, block_k: int, num_warps: int) -> dict:
    """Bases of the [block_b, block_k] bf16 activation tile: lane 4g + t holds batch row g,
    32 contiguous K of each group; every warp holds the whole tile (B is shared)."""
    groups = block_k // K_GROUP
    return {
        "reg": [[0, 1 << i] for i in range(5)] + [[0, K_GROUP << i] for i in range(_log2(groups))]
        + [[8 << i, 0] for i in range(_log2(block_b // 8))],
        "lane": [[0, 32], [0, 64], [1, 0], [2, 0], [4, 0]],
        "warp": [[0, 0]] * _log2(num_warps),
        "shape": [block_b, block_k],
    }


@constexpr_function
def act_copy_layout_bases(block_b: int, block_k: int, num_warps: int) -> dict:
    """The tile of ``act_layout_bases`` split over the warps, for the copy into the ring:
    its highest register bases become the warp bases, so each warp copies 1 / num_warps of
    the tile and the CTA copies it once (each warp then reads all of it back). Within a warp
    every copy instruction writes the same lanes' bytes as before; the first three register
    bases (8 contiguous bf16) stay, so every copy is 16 bytes."""
    bases = act_layout_bases(block_b, block_k, num_warps)
    reg, moved = bases["reg"], _log2(num_warps)
    assert len(reg) - 3 >= moved, (block_b, block_k, num_warps)
    return dict(bases, reg=reg[:len(reg) - moved], warp=reg[len(reg) - moved:])


@constexpr_function
def logical_column(word: int, element: int) -> int:
    """Column of the MMA's K order (within one 128-wide group) that holds ``element`` of
    ``word`` (0..15) of the group: the permutation that A and B share."""
    t, c = word // 4, word % 4
    p, h, s = element & 1, (element >> 1) & 1, element >> 2
    return 32 * c + 16 * s + 8 * h + 2 * t + p


if gluon is not None:

    @gluon.constexpr_function
    def _linear(bases):
        return gl.DistributedLinearLayout(reg_bases=bases["reg"], lane_bases=bases["lane"],
                                          warp_bases=bases["warp"], block_bases=[],
                                          shape=bases["shape"])

    @gluon.constexpr_function
    def _word_layout(block_n, block_k, num_warps):
        return _linear(word_layout_bases(block_n, block_k, num_warps))

    @gluon.constexpr_function
    def _staged_word_layout(block_n, block_k, num_warps):
        return _linear(staged_word_layout_bases(block_n, block_k, num_warps))

    @gluon.constexpr_function
    def _scale_layout(block_n, block_k, num_warps):
        return _linear(scale_layout_bases(block_n, block_k, num_warps))

    @gluon.constexpr_function
    def _act_layout(block_b, block_k, num_warps):
        return _linear(act_layout_bases(block_b, block_k, num_warps))

    @gluon.constexpr_function
    def _act_copy_layout(block_b, block_k, num_warps):
        return _linear(act_copy_layout_bases(block_b, block_k, num_warps))

    @gluon.constexpr_function
    def _mma_layout(num_warps):
        return gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1],
                                         instr_shape=[16, 8])

    _DECODE_ASM = gl.constexpr(DECODE_ASM)
    _S_BIAS = gl.constexpr(S_BIAS)
    _S_BIAS_SM80 = gl.constexpr(2.0 ** 127)

    @gluon.jit
    def _a_fragment(wv, sb, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
                    A_LAYOUT: gl.constexpr, FP8_CVT: gl.constexpr):
        """Words [BN, BK/8] and scale bytes [BN, BK/16] -> bf16 A tile [BN, BK] in K order
        ``logical_column``, already in the MMA operand layout."""
        if FP8_CVT:  # SM89+: one cvt per two scales
            sf = sb.to(gl.float8e4nv, bitcast=True).to(gl.float32) * _S_BIAS
        else:  # e4m3 bits moved into fp16 bits: sf * 2^-8 exactly (subnormals included)
            s32 = sb.to(gl.int32)
            bits = ((s32 & 0x7F) << 7) | ((s32 & 0x80) << 8)
            sf = bits.to(gl.uint16).to(gl.float16, bitcast=True).to(gl.float32) * _S_BIAS_SM80
        sf = sf.to(gl.bfloat16)
        sw = gl.reshape(gl.join(sf, sf), [BLOCK_N, BLOCK_K // 8])
        e0, e1, e2, e3, e4, e5, e6, e7 = gl.inline_asm_elementwise(
            _DECODE_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r,h", [wv, sw], dtype=(gl.bfloat16,) * 8,
            is_pure=True, pack=1)
        # Each join appends the new axis last: the element axis comes out as (p, h, s).
        a = gl.join(gl.join(gl.join(e0, e1), gl.join(e2, e3)),
                    gl.join(gl.join(e4, e5), gl.join(e6, e7)))
        a = gl.reshape(a, [BLOCK_N, BLOCK_K // 128, 4, 4, 2, 2, 2])  # n, G, t, c, p, h, s
        a = gl.permute(a, [0, 1, 3, 6, 5, 2, 4])  # n, G, c, s, h, t, p
        return gl.convert_layout(gl.reshape(a, [BLOCK_N, BLOCK_K]), A_LAYOUT, assert_trivial=True)

    @gluon.jit
    def _b_fragment(xv, BLOCK_B: gl.constexpr, BLOCK_K: gl.constexpr, B_LAYOUT: gl.constexpr):
        """Activations [BB, BK] bf16 in physical K order -> B tile [BK, BB] in K order
        ``logical_column``, in the MMA operand layout: a renaming of registers, no data moves
        (a register's two bf16 are neighbours in K both in memory and in the MMA)."""
        xh = gl.reshape(xv, [BLOCK_B, BLOCK_K // 128, 4, 4, 2, 2, 2])  # b, G, t, c, s, h, p
        xh = gl.permute(xh, [0, 1, 3, 4, 5, 2, 6])  # b, G, c, s, h, t, p
        xh = gl.permute(gl.reshape(xh, [BLOCK_B, BLOCK_K]), [1, 0])
        return gl.convert_layout(xh, B_LAYOUT, assert_trivial=True)

    @gluon.jit
    def _gdc_launch_dependents():
        """Let the next kernel in the stream launch (PDL; see ``harness.pdl``)."""
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [],
                                  dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _gdc_wait():
        """Wait for the previous kernel in the stream to finish (PDL; see ``harness.pdl``)."""
        gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)

    @gluon.jit
    def _read_slot(w_smem, s_smem, slot, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr):
        """Ring slot ``slot``'s words and scales, read back in the layouts they were copied
        in -> (words [BN, BK/8] in ``_word_layout``, scale bytes in ``_scale_layout``), the
        operands of ``_a_fragment``."""
        return _read_words(w_smem.index(slot), s_smem.index(slot), BLOCK_N, BLOCK_K)

    @gluon.jit
    def _read_words(w_view, s_view, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr):
        """``_read_slot`` of one slot's views ([G, BN, 16] words, [BN, BK/16] scales): a
        slot, or the rows of it that one warpgroup decodes."""
        nw: gl.constexpr = gl.num_warps()
        w3 = w_view.load(_staged_word_layout(BLOCK_N, BLOCK_K, nw))
        wv = gl.convert_layout(gl.reshape(gl.permute(w3, [1, 0, 2]), [BLOCK_N, BLOCK_K // 8]),
                               _word_layout(BLOCK_N, BLOCK_K, nw), assert_trivial=True)
        return wv, s_view.load(_scale_layout(BLOCK_N, BLOCK_K, nw))

    @gluon.jit
    def _weight_ring(w_ptr, stride_wn, s_ptr, stride_sn, pid_n, N, BLOCK_N: gl.constexpr,
                     BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
        """The ring's word and scale slots, and the source pointers of K step 0 that
        ``_issue_weights`` copies from -> (w_smem, s_smem, w_src, s_src)."""
        w_smem, s_smem = _weight_slots(BLOCK_N, BLOCK_K, STAGES)
        w_src, s_src = _weight_src(w_ptr, stride_wn, s_ptr, stride_sn, pid_n, N, BLOCK_N,
                                   BLOCK_K)
        return w_smem, s_smem, w_src, s_src

    @gluon.jit
    def _weight_slots(BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
        """STAGES word slots [G, BN, 16] (one row of a group: 64 contiguous bytes) and scale
        slots [BN, BK/16] -> (w_smem, s_smem)."""
        G: gl.constexpr = BLOCK_K // 128  # K groups per step
        w_smem = gl.allocate_shared_memory(gl.int32, [STAGES, G, BLOCK_N, 16],
                                           gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0]))
        s_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, BLOCK_N, BLOCK_K // 16],
                                           gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
        return w_smem, s_smem

    @gluon.jit
    def _weight_src(w_ptr, stride_wn, s_ptr, stride_sn, pid_n, N, BLOCK_N: gl.constexpr,
                    BLOCK_K: gl.constexpr):
        """Source pointers of K step 0's words [G, BN, 16] and scales [BN, BK/16], in the
        layouts the calling warps copy them in. Words are copied in the staged layout itself
        (not by reshaping a flat pointer tile) so the compiler sees 16 contiguous aligned
        words per row and group: 16-byte copies, each by the lane that reads it back (when
        the same warps read them). Scales: a row per thread. Rows past N re-read the last
        row."""
        nw: gl.constexpr = gl.num_warps()
        WL3: gl.constexpr = _staged_word_layout(BLOCK_N, BLOCK_K, nw)
        SC: gl.constexpr = gl.BlockedLayout([1, BLOCK_K // 16], [32, 1], [nw, 1], [1, 0])
        G: gl.constexpr = BLOCK_K // 128
        GR: gl.constexpr = gl.SliceLayout(2, WL3)
        gw = gl.arange(0, G, layout=gl.SliceLayout(1, GR))
        rw = gl.minimum(pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, GR)),
                        N - 1)
        jw = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(1, WL3)))
        w_src = (w_ptr + rw.to(gl.int64)[None, :, None] * stride_wn
                 + (gw[:, None, None] * 16 + jw[None, None, :]))
        rsc = gl.minimum(pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, SC)),
                         N - 1)
        jsc = gl.arange(0, BLOCK_K // 16, layout=gl.SliceLayout(0, SC))
        s_src = s_ptr + rsc.to(gl.int64)[:, None] * stride_sn + jsc[None, :]
        return w_src, s_src

    @gluon.jit
    def _issue_weights(w_smem, s_smem, w_src, s_src, slot, step, live, BLOCK_K: gl.constexpr):
        """Start the copies of K step ``step``'s words and scales into ring slot ``slot``."""
        async_load(w_smem.index(slot), w_src + step * (BLOCK_K // 8), mask=live)
        async_load(s_smem.index(slot), s_src + step * (BLOCK_K // 16), mask=live)

    @gluon.jit
    def _issue_acts(x_smem, x_src, x_ok, slot, step, live, BLOCK_K: gl.constexpr):
        """Start the copy of K step ``step``'s activations and close the step's commit group
        (an empty group when ``live`` is false: the wait counts stay uniform). Batch rows
        past M are zero-filled without reading memory."""
        async_load(x_smem.index(slot), x_src + step * BLOCK_K, mask=x_ok & live)
        async_copy.commit_group()

    @gluon.jit
    def _staged_loop(w_ptr, stride_wn, x_ptr, stride_xm, M, pid_b, s_ptr, stride_sn, pid_n, N,
                     first, last, acc,
                     BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, BLOCK_B: gl.constexpr,
                     STAGES: gl.constexpr, FP8_CVT: gl.constexpr, GDC: gl.constexpr):
        """The K loop with the weight streamed through a ring of ``STAGES`` shared-memory
        slots by ``cp.async``: ``STAGES - 1`` steps of words and scales are in flight while
        one decodes, without the registers a register pipeline of that depth would need.
        Each lane copies the 16-byte word chunks it later reads back (the copy and the read
        use one layout); scales are copied a row per thread. Activations ride in the same
        ring (loaded from L2 inside the loop, their latency stalled every step), each warp
        copying its share of the tile and reading all of it back after the step's barrier:
        copied by every warp, the tile cost num_warps times its bytes in L2 reads, twice the
        weight bytes at M = 16.

        Under PDL the words and scales of the first ``STAGES - 1`` steps are requested before
        the wait for the previous kernel (nothing writes them); they join the first commit
        group, so step 0's wait covers them."""
        nw: gl.constexpr = gl.num_warps()
        XL: gl.constexpr = _act_layout(BLOCK_B, BLOCK_K, nw)
        MMA: gl.constexpr = _mma_layout(nw)
        A_LAYOUT: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
        B_LAYOUT: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
        # Activations: the warps copy a share each, and every warp reads the whole tile.
        XC: gl.constexpr = _act_copy_layout(BLOCK_B, BLOCK_K, nw)
        rb = pid_b * BLOCK_B + gl.arange(0, BLOCK_B, layout=gl.SliceLayout(1, XC))
        jk = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, XC))
        x_src = x_ptr + rb[:, None] * stride_xm + jk[None, :]
        x_ok = rb[:, None] < M
        w_smem, s_smem, w_src, s_src = _weight_ring(w_ptr, stride_wn, s_ptr, stride_sn, pid_n,
                                                    N, BLOCK_N, BLOCK_K, STAGES)
        # The swizzle spreads the rows of a shared-memory phase over the banks.
        x_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_B, BLOCK_K],
                                           gl.SwizzledSharedLayout(8, 1, 8, [1, 0]))
        for j in gl.static_range(STAGES - 1):
            _issue_weights(w_smem, s_smem, w_src, s_src, j, first + j, first + j < last, BLOCK_K)
        if GDC:
            _gdc_wait()
        for j in gl.static_range(STAGES - 1):
            _issue_acts(x_smem, x_src, x_ok, j, first + j, first + j < last, BLOCK_K)
        for step in range(first, last):
            i = step - first
            async_copy.wait_group(STAGES - 2)  # this thread's copies of `step` have landed
            # ...everyone's (a warp reads activations the others copied), and slot
            # (i - 1) % STAGES is read by all.
            cta_barrier()
            ahead = step + STAGES - 1
            slot_ahead = (i + STAGES - 1) % STAGES
            _issue_weights(w_smem, s_smem, w_src, s_src, slot_ahead, ahead, ahead < last, BLOCK_K)
            _issue_acts(x_smem, x_src, x_ok, slot_ahead, ahead, ahead < last, BLOCK_K)
            slot = i % STAGES
            wv, sb = _read_slot(w_smem, s_smem, slot, BLOCK_N, BLOCK_K)
            xv = x_smem.index(slot).load(XL)
            a = _a_fragment(wv, sb, BLOCK_N, BLOCK_K, A_LAYOUT, FP8_CVT)
            b = _b_fragment(xv, BLOCK_B, BLOCK_K, B_LAYOUT)
            acc = mma_v2(a, b, acc)
        async_copy.wait_group(0)
        return acc

    @gluon.jit
    def split_range(K, BLOCK_K: gl.constexpr, SPLIT_K: gl.constexpr, pid_k):
        """(K steps, first step, end step) of split ``pid_k``; a split past the end of K
        has first >= end (no steps)."""
        steps = K // BLOCK_K
        per_split = (steps + SPLIT_K - 1) // SPLIT_K
        first = pid_k * per_split
        return steps, first, gl.minimum(first + per_split, steps)

    @gluon.jit
    def stream_k_range(M, N, K, BLOCK_B: gl.constexpr, BLOCK_N: gl.constexpr,
                       BLOCK_K: gl.constexpr):
        """This program's share of a stream-K launch over the batch x weight tiles of out^T
        and their K steps: the iterations ``[begin, end)`` in tile-major order, ``per`` to a
        program -> (batch tiles, tiles, steps, begin, end, per, units): ``units`` tiles meet
        the share."""
        b_tiles = (M + BLOCK_B - 1) // BLOCK_B
        steps = K // BLOCK_K
        tiles = b_tiles * ((N + BLOCK_N - 1) // BLOCK_N)
        total = tiles * steps
        per = (total + gl.num_programs(0) - 1) // gl.num_programs(0)
        begin = gl.program_id(0) * per
        end = gl.minimum(begin + per, total)
        units = gl.where(begin < end, (end - 1) // steps - begin // steps + 1, 0)
        return b_tiles, tiles, steps, begin, end, per, units

    @gluon.jit
    def stream_k_unit(it, end, steps, per):
        """The unit of a stream-K share that starts at iteration ``it``: one tile's K steps
        ``[first, last)`` -> (tile, first, last, seg, nseg): this program is segment ``seg``
        of the ``nseg`` programs whose shares meet the tile (``stream_k_segments``)."""
        tile = it // steps
        first = it - tile * steps
        last = gl.minimum(steps, first + end - it)
        seg0 = (tile * steps) // per
        nseg = ((tile + 1) * steps - 1) // per - seg0 + 1
        return tile, first, last, gl.program_id(0) - seg0, nseg

    @gluon.jit
    def store_tile(acc, out_ptr, ws_ptr, cnt_ptr, scale_ptr, M, N, stride_om, pid_n, pid_b,
                   tile, tiles, seg, nseg, BLOCK_N: gl.constexpr, BLOCK_B: gl.constexpr,
                   MMA: gl.constexpr):
        """The fp32 [BLOCK_N, BLOCK_B] tile of out^T (in layout ``MMA``) -> bf16 ``out``
        times the epilogue scale. The tile's K range is shared by ``nseg`` programs (split-K:
        the constexpr SPLIT_K, so the branch is resolved at compile time; stream-K: per
        tile), this one's partial being segment ``seg``; above one the partials go through
        the workspace and the tile's arrival counter (``tile`` of ``tiles``), and the last to
        arrive sums them. Shared by the mma.sync and wgmma kernels."""
        on = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, MMA))
        ob = pid_b * BLOCK_B + gl.arange(0, BLOCK_B, layout=gl.SliceLayout(0, MMA))
        mask = (ob[None, :] < M) & (on[:, None] < N)
        scale = gl.load(scale_ptr)
        if nseg == 1:
            out_ptrs = out_ptr + ob[None, :] * stride_om + on[:, None]
            gl.store(out_ptrs, (acc * scale).to(gl.bfloat16), mask=mask)
        else:
            # Deterministic split in one launch: every program stores its partial, the last
            # to arrive at the tile's counter sums them in segment order. A partial is the
            # whole tile at its own place in the workspace (segment-major, then tile): every
            # element's offset is a constant from the thread's first, where offsets of
            # ``out``'s shape (a runtime N apart) took a register pair each.
            plane = tiles * (BLOCK_N * BLOCK_B)
            local = (gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, MMA))[:, None] * BLOCK_B
                     + gl.arange(0, BLOCK_B, layout=gl.SliceLayout(0, MMA))[None, :])
            ws_tile = ws_ptr + tile * (BLOCK_N * BLOCK_B) + local
            gl.store(ws_tile + seg * plane, acc)
            cta_barrier()
            arrived = gl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
            if arrived == nseg - 1:
                total = gl.zeros([BLOCK_N, BLOCK_B], gl.float32, layout=MMA)
                for s in range(nseg):
                    total += gl.load(ws_tile + s * plane, cache_modifier=".cg")
                out_ptrs = out_ptr + ob[None, :] * stride_om + on[:, None]
                gl.store(out_ptrs, (total * scale).to(gl.bfloat16), mask=mask)
                gl.store(cnt_ptr + tile, 0)  # ready for the next launch (graph replay)

    @gluon.jit
    def _swap_ab_unit(x_ptr, w_ptr, s_ptr, M, N, stride_xm, stride_wn, stride_sn, pid_b,
                      pid_n, steps, first, last, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
                      BLOCK_B: gl.constexpr, PREFETCH: gl.constexpr, FP8_CVT: gl.constexpr,
                      STAGES: gl.constexpr, GDC: gl.constexpr):
        """K steps ``[first, last)`` of the [BLOCK_N, BLOCK_B] tile (pid_n, pid_b) of out^T
        -> its fp32 accumulator (layout ``_mma_layout``)."""
        nw: gl.constexpr = gl.num_warps()
        WL: gl.constexpr = _word_layout(BLOCK_N, BLOCK_K, nw)
        SL: gl.constexpr = _scale_layout(BLOCK_N, BLOCK_K, nw)
        XL: gl.constexpr = _act_layout(BLOCK_B, BLOCK_K, nw)
        MMA: gl.constexpr = _mma_layout(nw)
        A_LAYOUT: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
        B_LAYOUT: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
        # Rows past N re-read the last row (no masks in the loop); they are never stored.
        rw = gl.minimum(pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, WL)),
                        N - 1)
        rs = gl.minimum(pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, SL)),
                        N - 1)
        jw = gl.arange(0, BLOCK_K // 8, layout=gl.SliceLayout(0, WL))
        js = gl.arange(0, BLOCK_K // 16, layout=gl.SliceLayout(0, SL))
        rb = pid_b * BLOCK_B + gl.arange(0, BLOCK_B, layout=gl.SliceLayout(1, XL))
        jk = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, XL))
        w_ptrs = w_ptr + rw.to(gl.int64)[:, None] * stride_wn + jw[None, :]
        s_ptrs = s_ptr + rs.to(gl.int64)[:, None] * stride_sn + js[None, :]
        x_ptrs = x_ptr + rb[:, None] * stride_xm + jk[None, :]
        x_ok = rb[:, None] < M
        acc = gl.zeros([BLOCK_N, BLOCK_B], gl.float32, layout=MMA)
        if STAGES > 0:
            acc = _staged_loop(w_ptr, stride_wn, x_ptr, stride_xm, M, pid_b, s_ptr, stride_sn,
                               pid_n, N, first, last, acc, BLOCK_N, BLOCK_K, BLOCK_B, STAGES,
                               FP8_CVT, GDC)
        elif PREFETCH:
            # Software pipeline in registers: the loads of step i + 1 are in flight while step
            # i decodes (Triton pipelines loads only through shared memory, for dot operands).
            # Costs registers (occupancy); the tuner decides per shape.
            # A split past the end of K has no steps; its first load must stay in bounds.
            head = gl.minimum(first, steps - 1)
            wv = gl.load(w_ptrs + head * (BLOCK_K // 8))
            sb = gl.load(s_ptrs + head * (BLOCK_K // 16))
            if GDC:
                _gdc_wait()
            xv = gl.load(x_ptrs + head * BLOCK_K, mask=x_ok, other=0.0)
            for step in range(first, last):
                nxt = gl.minimum(step + 1, last - 1)  # the last step re-reads itself (cached)
                wv_next = gl.load(w_ptrs + nxt * (BLOCK_K // 8))
                sb_next = gl.load(s_ptrs + nxt * (BLOCK_K // 16))
                xv_next = gl.load(x_ptrs + nxt * BLOCK_K, mask=x_ok, other=0.0)
                a = _a_fragment(wv, sb, BLOCK_N, BLOCK_K, A_LAYOUT, FP8_CVT)
                b = _b_fragment(xv, BLOCK_B, BLOCK_K, B_LAYOUT)
                acc = mma_v2(a, b, acc)
                wv, sb, xv = wv_next, sb_next, xv_next
        else:
            if GDC:
                _gdc_wait()
            for step in range(first, last):
                wv = gl.load(w_ptrs + step * (BLOCK_K // 8))
                sb = gl.load(s_ptrs + step * (BLOCK_K // 16))
                xv = gl.load(x_ptrs + step * BLOCK_K, mask=x_ok, other=0.0)
                a = _a_fragment(wv, sb, BLOCK_N, BLOCK_K, A_LAYOUT, FP8_CVT)
                b = _b_fragment(xv, BLOCK_B, BLOCK_K, B_LAYOUT)
                acc = mma_v2(a, b, acc)
        return acc

    @gluon.jit
    def swap_ab_kernel(x_ptr, w_ptr, s_ptr, out_ptr, ws_ptr, cnt_ptr, scale_ptr,
                       M, N, K, stride_xm, stride_om, stride_wn, stride_sn, M_BUCKET,
                       BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, BLOCK_B: gl.constexpr,
                       SPLIT_K: gl.constexpr, PREFETCH: gl.constexpr, FP8_CVT: gl.constexpr,
                       STAGES: gl.constexpr = 0, GDC: gl.constexpr = False,
                       STREAM_K: gl.constexpr = 0):
        # GDC: grid-dependency control for a PDL launch (``harness.pdl``): wait for the
        # previous kernel before the first activation load; let the next one launch once
        # the K loop is done.
        # STREAM_K (programs per SM; 0: off): a one-dimensional grid of programs that each
        # take an equal share of the (tile, K step) iterations, crossing tiles where a share
        # does (``stream_k_segments``), so no partly filled last wave of programs.
        MMA: gl.constexpr = _mma_layout(gl.num_warps())
        if STREAM_K:
            b_tiles, tiles, steps, it, end, per, units = stream_k_range(M, N, K, BLOCK_B,
                                                                        BLOCK_N, BLOCK_K)
            # LICM off: hoisted out of this loop, the epilogue's index tensors stayed live
            # through every K loop (up to 80 more registers per thread on sm_90a).
            for _ in tl.range(0, units, disable_licm=True):
                tile, first, last, seg, nseg = stream_k_unit(it, end, steps, per)
                # Batch tiles vary fastest: units that share weight rows run together.
                pid_b = tile % b_tiles
                pid_n = tile // b_tiles
                cta_barrier()  # every warp is done with the last unit's ring slots
                acc = _swap_ab_unit(x_ptr, w_ptr, s_ptr, M, N, stride_xm, stride_wn, stride_sn,
                                    pid_b, pid_n, steps, first, last, BLOCK_N, BLOCK_K,
                                    BLOCK_B, PREFETCH, FP8_CVT, STAGES, GDC)
                store_tile(acc, out_ptr, ws_ptr, cnt_ptr, scale_ptr, M, N, stride_om, pid_n,
                           pid_b, tile, tiles, seg, nseg, BLOCK_N, BLOCK_B, MMA)
                it += last - first
            if GDC:
                _gdc_launch_dependents()
        else:
            # Batch tiles vary fastest: programs that share weight rows run together (L2 reuse).
            pid_b = gl.program_id(0)
            pid_n = gl.program_id(1)
            pid_k = gl.program_id(2)
            steps, first, last = split_range(K, BLOCK_K, SPLIT_K, pid_k)
            acc = _swap_ab_unit(x_ptr, w_ptr, s_ptr, M, N, stride_xm, stride_wn, stride_sn,
                                pid_b, pid_n, steps, first, last, BLOCK_N, BLOCK_K, BLOCK_B,
                                PREFETCH, FP8_CVT, STAGES, GDC)
            if GDC:
                _gdc_launch_dependents()
            store_tile(acc, out_ptr, ws_ptr, cnt_ptr, scale_ptr, M, N, stride_om, pid_n, pid_b,
                       pid_n * gl.num_programs(0) + pid_b, gl.num_programs(0) * gl.num_programs(1),
                       pid_k, SPLIT_K, BLOCK_N, BLOCK_B, MMA)
