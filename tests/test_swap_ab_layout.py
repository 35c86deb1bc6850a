"""The swapped-operand kernel's layouts, checked on the CPU against Triton's own MMA layouts.

The kernel decodes weight words in the lanes that loaded them and asserts (at compile time)
that the result already sits where ``mma.sync`` wants its A and B operands. These tests
check the same promise without a GPU, from the linear layouts Triton derives for the MMA
operands: every value must be owned by the lane and warp that loaded (or decoded) it, and
A's K order must be B's K order.
"""

import itertools

import pytest

from harness.backends import triton_swap_ab as sab
from sm90_compile import run_compile as _run_compile

gluon_ir = pytest.importorskip("triton._C.libtriton.gluon_ir")
pytest.importorskip("triton.experimental.gluon")
from triton._C.libtriton import ir  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402

CONFIGS = [(64, 128, 8, 4), (64, 256, 8, 2), (128, 256, 16, 4), (128, 128, 32, 2),
           (256, 128, 8, 4), (64, 256, 32, 1)]


def _mma_operand_bases(block_n, block_k, block_b, num_warps):
    ctx = ir.context()
    ir.load_dialects(ctx)
    builder = gluon_ir.GluonOpBuilder(ctx)
    mma = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1],
                                    instr_shape=[16, 8])
    a = builder.to_linear_layout(gl.DotOperandLayout(0, mma, 2)._to_ir(builder),
                                 [block_n, block_k])
    b = builder.to_linear_layout(gl.DotOperandLayout(1, mma, 2)._to_ir(builder),
                                 [block_k, block_b])
    return ({"reg": a.reg_bases, "lane": a.lane_bases, "warp": a.warp_bases},
            {"reg": b.reg_bases, "lane": b.lane_bases, "warp": b.warp_bases})


def _owners(bases):
    """coordinate -> set of (lane, warp) holding it (a broadcast layout has several)."""
    def span(vectors):
        for bits in itertools.product((0, 1), repeat=len(vectors)):
            coord = [0] * len(vectors[0]) if vectors else [0, 0]
            for bit, v in zip(bits, vectors):
                if bit:
                    coord = [c ^ x for c, x in zip(coord, v)]
            yield bits, tuple(coord)

    out = {}
    for lane_bits, lane_c in span(bases["lane"]):
        lane = sum(b << i for i, b in enumerate(lane_bits))
        for warp_bits, warp_c in (span(bases["warp"]) if bases["warp"] else [((), (0, 0))]):
            warp = sum(b << i for i, b in enumerate(warp_bits))
            for _, reg_c in span(bases["reg"]):
                coord = tuple(r ^ ln ^ w for r, ln, w in zip(reg_c, lane_c, warp_c))
                out.setdefault(coord, set()).add((lane, warp))
    return out


def test_logical_column_is_a_permutation_of_each_group():
    cols = sorted(sab.logical_column(w, e) for w in range(16) for e in range(8))
    assert cols == list(range(128))


def test_decoded_register_pairs_are_adjacent_k_columns():
    # The decode yields bf16x2 registers (elements 0, 1), (2, 3), (4, 5), (6, 7), and each
    # activation register holds two neighbouring elements too; the MMA packs columns
    # (2j, 2j + 1) into one register, so each pair must land there as is.
    for w in range(16):
        for lo, hi in ((0, 1), (2, 3), (4, 5), (6, 7)):
            col = sab.logical_column(w, lo)
            assert col % 2 == 0 and sab.logical_column(w, hi) == col + 1, (w, lo, hi)


@pytest.mark.parametrize("block_n,block_k,block_b,num_warps", CONFIGS)
def test_decoded_words_land_in_the_mma_a_operand_lanes(block_n, block_k, block_b, num_warps):
    a_bases, _ = _mma_operand_bases(block_n, block_k, block_b, num_warps)
    a = _owners(a_bases)
    words = _owners(sab.word_layout_bases(block_n, block_k, num_warps))
    scales = _owners(sab.scale_layout_bases(block_n, block_k, num_warps))
    assert len(words) == block_n * block_k // 8 and len(a) == block_n * block_k
    for (row, w), who in words.items():
        assert len(who) == 1  # each word is loaded (and decoded) exactly once
        group, in_group = divmod(w, 16)
        for e in range(8):
            col = 128 * group + sab.logical_column(in_group, e)
            assert a[(row, col)] == who, (row, w, e)
        # the word's block scale (2 words per 16-element block) is in the same lane
        assert who <= scales[(row, w // 2)]


@pytest.mark.parametrize("block_n,block_k,block_b,num_warps", CONFIGS)
def test_activations_land_in_the_mma_b_operand_lanes_in_the_same_k_order(
        block_n, block_k, block_b, num_warps):
    _, b_bases = _mma_operand_bases(block_n, block_k, block_b, num_warps)
    b = _owners(b_bases)
    act = _owners(sab.act_layout_bases(block_b, block_k, num_warps))
    assert len(act) == block_b * block_k
    for (row, k), who in act.items():
        group, within = divmod(k, 128)
        logical = 128 * group + sab.logical_column(within // 8, within % 8)
        # every warp holds the whole B operand; the activation loads match it lane by lane
        assert b[(logical, row)] == who, (row, k)


@pytest.mark.parametrize("block_n,block_k,block_b,num_warps", CONFIGS)
def test_staged_activations_are_copied_once_per_cta_by_the_lanes_that_read_them(
        block_n, block_k, block_b, num_warps):
    # The ring's copy layout splits the tile over the warps: each element is copied by one
    # thread, in the lane that reads it back in the broadcast read layout, 16 bytes at a time.
    read = _owners(sab.act_layout_bases(block_b, block_k, num_warps))
    copy_bases = sab.act_copy_layout_bases(block_b, block_k, num_warps)
    copy = _owners(copy_bases)
    assert set(copy) == set(read)
    for coord, who in copy.items():
        assert len(who) == 1, coord
        (lane, _), = who
        assert {ln for ln, _ in read[coord]} == {lane}, coord
    assert copy_bases["reg"][:3] == [[0, 1], [0, 2], [0, 4]]


@pytest.mark.parametrize("num_warps", [1, 2, 4, 8, 16])
def test_the_fit_rule_keeps_a_ring_config_only_where_its_copy_layout_exists(num_warps):
    from harness.backends import triton_w4a16

    for m, block_k in itertools.product((8, 16, 32), (128, 256)):
        ring = {"BLOCK_N": 64 * num_warps, "BLOCK_K": block_k, "SPLIT_K": 1, "STAGES": 2}
        try:
            sab.act_copy_layout_bases(m, block_k, num_warps)
            splits = True
        except AssertionError:
            splits = False
        kept = triton_w4a16._swap_ab_fits(ring, num_warps, m, 5120)
        registers = triton_w4a16._swap_ab_fits(dict(ring, STAGES=0), num_warps, m, 5120)
        assert kept == (splits and registers), (m, block_k)


def _coords(bases, reg, lane, warp):
    coord = [0] * len(bases["shape"])
    for key, index in (("reg", reg), ("lane", lane), ("warp", warp)):
        for i, v in enumerate(bases[key]):
            if index >> i & 1:
                coord = [c ^ x for c, x in zip(coord, v)]
    return tuple(coord)


@pytest.mark.parametrize("block_n,block_k,block_b,num_warps", CONFIGS)
def test_staged_word_view_holds_the_same_words_in_the_same_lanes(block_n, block_k, block_b,
                                                                  num_warps):
    # The shared-memory ring reads words back in the [group, row, word] view; after the
    # (free) permute and reshape every lane must hold what the flat layout gives it.
    flat = sab.word_layout_bases(block_n, block_k, num_warps)
    staged = sab.staged_word_layout_bases(block_n, block_k, num_warps)
    assert staged["shape"] == [block_k // 128, block_n, 16]
    for reg in range(1 << len(flat["reg"])):
        for lane in range(32):
            for warp in range(num_warps):
                row, word = _coords(flat, reg, lane, warp)
                assert _coords(staged, reg, lane, warp) == (word // 16, row, word % 16)


@pytest.mark.parametrize("block_n,block_k,block_b,num_warps", CONFIGS)
def test_staged_word_reads_are_free_of_bank_conflicts(block_n, block_k, block_b, num_warps):
    # A 16-byte shared-memory load is served 8 lanes at a time; those 8 lanes must read 8
    # different 16-byte bank groups of the row-major [group, row, 16 words] ring slot.
    staged = sab.staged_word_layout_bases(block_n, block_k, num_warps)
    _, rows, words = staged["shape"]
    vector_regs = 4  # regs 0-3: four contiguous words, one 16-byte load
    for reg in range(0, 1 << len(staged["reg"]), vector_regs):
        for warp in range(num_warps):
            for phase in range(4):
                chunks = set()
                for lane in range(8 * phase, 8 * phase + 8):
                    g, r, w = _coords(staged, reg, lane, warp)
                    assert w % 4 == 0
                    chunks.add(((g * rows + r) * words + w) * 4 // 16 % 8)
                assert len(chunks) == 8, (reg, warp, phase)


# ---- the warpgroup-MMA variant (SM90a) -------------------------------------------------

WGMMA_CONFIGS = [(64, 128, 16, 4), (128, 128, 64, 8), (256, 256, 32, 8), (128, 256, 64, 4)]


def _wgmma_a_bases(block_n, block_k, block_b, num_warps):
    ctx = ir.context()
    ir.load_dialects(ctx)
    builder = gluon_ir.GluonOpBuilder(ctx)
    mma = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                    instr_shape=[16, block_b, 16])
    a = builder.to_linear_layout(gl.DotOperandLayout(0, mma, 2)._to_ir(builder),
                                 [block_n, block_k])
    return {"reg": a.reg_bases, "lane": a.lane_bases, "warp": a.warp_bases}


@pytest.mark.parametrize("block_n,block_k,block_b,num_warps", WGMMA_CONFIGS)
def test_decoded_words_land_in_the_wgmma_a_operand_lanes(block_n, block_k, block_b,
                                                         num_warps):
    a = _owners(_wgmma_a_bases(block_n, block_k, block_b, num_warps))
    words = _owners(sab.word_layout_bases(block_n, block_k, num_warps))
    assert len(a) == block_n * block_k
    for (row, w), who in words.items():
        group, in_group = divmod(w, 16)
        for e in range(8):
            assert a[(row, 128 * group + sab.logical_column(in_group, e))] == who, (row, w, e)


@pytest.mark.parametrize("block_k", [128, 256])
def test_staged_activation_rows_follow_the_a_operand_k_order(block_k):
    from harness.backends import triton_wgmma

    order = triton_wgmma.act_staging_order(block_k)
    assert sorted(order) == list(range(block_k))
    for group in range(block_k // 128):
        for w in range(16):
            for e in range(8):
                row = 128 * group + sab.logical_column(w, e)
                assert order[row] == 128 * group + 8 * w + e


# Run in a fresh interpreter without TRITON_INTERPRET: the CPU test run sets it (conftest),
# and inside the whole suite the in-process sm_90a compile of the kernel failed.
_COMPILE = r"""
import json, os, subprocess, sys, tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.experimental.gluon._runtime import GluonASTSource

from harness.backends import triton_swap_ab, triton_wgmma

(name, block_n, block_k, block_b, split_k, num_warps, stages, async_mma, ring, stream_k,
 maxnreg, ordered, consumers, copy_regs) = json.loads(sys.argv[1])
sig = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*u8", "out_ptr": "*bf16",
       "ws_ptr": "*fp32", "cnt_ptr": "*i32", "scale_ptr": "*fp32"}
sig.update({a: "i32" for a in ("M", "N", "K", "stride_xm", "stride_om", "stride_wn",
                               "stride_sn", "M_BUCKET")})
const = {"BLOCK_N": block_n, "BLOCK_K": block_k, "BLOCK_B": block_b, "SPLIT_K": split_k,
         "FP8_CVT": True, "STAGES": stages, "GDC": False, "STREAM_K": stream_k}
if name == "wgmma":
    fn = triton_wgmma.wgmma_kernel
    # The register split's defaults too: an ASTSource takes no defaults for constexprs.
    const.update(ASYNC=async_mma, ACT_RING=ring, ACT_ORDERED=ordered, CONSUMERS=consumers,
                 COPY_REGS=copy_regs, MMA_REGS=208)
else:
    fn = triton_swap_ab.swap_ab_kernel
    const.update(PREFETCH=False)
sig.update({name: "constexpr" for name in const})
aligned = [a for a in sig if a.endswith("_ptr")] + ["N", "K", "stride_xm", "stride_om",
                                                     "stride_wn", "stride_sn"]
src = GluonASTSource(fn=fn, signature=sig,
                     constexprs={(fn.arg_names.index(n),): v for n, v in const.items()},
                     attrs={(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned})
options = {"num_warps": num_warps, **({"maxnreg": maxnreg} if maxnreg else {})}
kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
with tempfile.TemporaryDirectory() as tmp:
    with open(f"{tmp}/k.ptx", "w") as f:
        f.write(kernel.asm["ptx"])
    report = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", f"{tmp}/k.ptx", "-o",
                             f"{tmp}/k.o"], capture_output=True, text=True, check=True)
    cuobjdump = os.path.join(os.path.dirname(get_ptxas(90).path), "cuobjdump")
    sass = subprocess.run([cuobjdump, "-sass", f"{tmp}/k.o"], capture_output=True, text=True,
                          check=True).stdout
print(json.dumps({"ptx": kernel.asm["ptx"], "report": report.stderr, "sass": sass,
                  "shared": kernel.metadata.shared}))
"""


def _compile_wgmma(block_n, block_k, block_b, split_k, num_warps, stages=0, async_mma=False,
                   ring=False, kernel="wgmma", stream_k=0, maxnreg=None, ordered=False,
                   consumers=0, copy_regs=64, sass=False):
    """Compile the kernel (``wgmma_kernel``, or ``swap_ab_kernel`` for ``kernel="mma"``) for
    sm_90a here (no GPU needed) -> (PTX, ptxas -v report, bytes of shared memory), or with
    ``sass`` its SASS (cuobjdump beside Triton's ptxas)."""
    out = _run_compile(_COMPILE, [kernel, block_n, block_k, block_b, split_k, num_warps,
                                  stages, async_mma, ring, stream_k, maxnreg, ordered,
                                  consumers, copy_regs])
    if sass:
        return out["sass"]
    return out["ptx"], out["report"], out["shared"]


@pytest.mark.parametrize("block_n,block_k,block_b,num_warps", [
    (256, 128, 64, 8),  # at the register rule's limit: kept
    (128, 128, 64, 4),  # one step past it: rejected
    (64, 128, 64, 4),  # one warpgroup, 64 rows: kept (two CTAs per SM)
])
def test_wgmma_register_rule_matches_ptxas(block_n, block_k, block_b, num_warps):
    """The tuner's register rule keeps exactly the configs ptxas compiles without spills
    (the compile also proves the decode's layout is the wgmma A operand's: the kernel's
    ``assert_trivial`` conversion fails the build otherwise)."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from harness.backends import triton_w4a16

    ptx, report, _ = _compile_wgmma(block_n, block_k, block_b, 1, num_warps)
    assert f"m64n{block_b}k16.f32.bf16.bf16" in ptx
    spills = "0 bytes spill stores" not in report
    kept = triton_w4a16._wgmma_fits({"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": 1},
                                    num_warps, block_b, 5120)
    assert kept != spills, report


@pytest.mark.parametrize("block_n,block_b,num_warps,stages", [
    (128, 64, 8, 0), (128, 64, 8, 4), (256, 64, 8, 0), (128, 16, 8, 4)])
def test_async_wgmma_pipeline_and_shared_memory(block_n, block_b, num_warps, stages):
    """ASYNC = True compiles to the pipeline it is meant to be: the decoded tile stored to
    shared memory (``stmatrix``), one ``wgmma`` group left in flight in the loop
    (``wait_group 1``) and drained after it (``wait_group 0``), without spills; and the
    shared-memory count of the tuner's fit rule is what the compile allocates."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from harness.backends import triton_w4a16

    ptx, report, shared = _compile_wgmma(block_n, 128, block_b, 1, num_warps, stages, True)
    assert "stmatrix" in ptx and f"m64n{block_b}k16.f32.bf16.bf16" in ptx
    waits = [line.split()[-1].rstrip(";") for line in ptx.splitlines()
             if "wgmma.wait_group" in line]
    assert waits == ["1", "0"], waits
    assert "0 bytes spill stores" in report, report
    kw = {"BLOCK_N": block_n, "BLOCK_K": 128, "SPLIT_K": 1, "STAGES": stages, "ASYNC": True}
    assert triton_w4a16._wgmma_smem(kw, block_b) == shared
    sync = dict(kw, ASYNC=False)
    assert triton_w4a16._wgmma_smem(sync, block_b) == _compile_wgmma(
        block_n, 128, block_b, 1, num_warps, stages, False)[2]


@pytest.mark.parametrize("block_n,block_k,block_b,num_warps,stages", [
    (128, 256, 16, 4, 2), (64, 256, 8, 2, 2), (128, 128, 32, 4, 3)])
def test_mma_sync_ring_copies_the_activations_once_per_cta(block_n, block_k, block_b,
                                                            num_warps, stages):
    """The ``mma.sync`` kernel's ring: per step each thread issues 16-byte cp.async for its
    share of the words, of the scales (16-byte rows at BLOCK_K 256) and of the activation
    tile, which the warps split between them instead of each copying all of it; no spills."""
    ptx, report, _ = _compile_wgmma(block_n, block_k, block_b, 2, num_warps, stages,
                                    kernel="mma")
    copies = [line.split(",")[-2].strip() for line in ptx.splitlines()
              if "cp.async.ca.shared.global" in line or "cp.async.cg.shared.global" in line]
    threads = 32 * num_warps
    words = block_n * block_k // 32 // threads
    scales = block_n // threads if block_k == 256 else 0
    acts = block_b * block_k // 8 // threads
    assert copies.count("0x10") == stages * (words + scales + acts), copies
    assert "0 bytes spill stores" in report, report


@pytest.mark.parametrize("block_n,block_k,block_b,num_warps,stages", [
    (64, 128, 64, 4, 3), (128, 256, 16, 8, 4), (128, 128, 64, 4, 4)])
def test_activation_ring_copies_straight_into_the_staged_tile(block_n, block_k, block_b,
                                                               num_warps, stages):
    """ACT_RING = True: every activation reaches shared memory by 4-byte cp.async (the
    MMA-order pairs are the longest contiguous runs), the kernel stores nothing to shared
    memory itself, the cp.async groups are waited for STAGES - 2 deep in the loop, ptxas
    fits it without spills where the register rule keeps it, and the fit rule's shared
    memory is what the compile allocates."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from harness.backends import triton_w4a16

    ptx, report, shared = _compile_wgmma(block_n, block_k, block_b, 1, num_warps, stages,
                                         False, True)
    copies = [line.split(",")[-2].strip() for line in ptx.splitlines()
              if "cp.async.ca.shared.global" in line]
    threads = 32 * num_warps
    per_step = block_b * block_k // 2 // threads  # 4-byte activation copies per thread
    assert copies.count("0x4") == stages * per_step, copies  # prologue + loop
    assert "st.shared" not in ptx
    assert "cp.async.wait_group \t%d;" % (stages - 2) in ptx
    kw = {"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": 1, "STAGES": stages,
          "ACT_RING": True}
    assert triton_w4a16._wgmma_fits(kw, num_warps, block_b, 5120)
    assert "0 bytes spill stores" in report, report
    assert triton_w4a16._wgmma_smem(kw, block_b) == shared


@pytest.mark.parametrize("block_n,block_k,block_b,num_warps,stages", [
    (64, 128, 64, 4, 3), (128, 256, 16, 8, 4), (128, 128, 64, 8, 4)])
def test_ordered_activations_arrive_by_16_byte_copies(block_n, block_k, block_b, num_warps,
                                                      stages):
    """ACT_ORDERED (with ACT_RING): the activations, already in MMA K order in memory, reach
    shared memory by 16-byte cp.async (a quarter of the copies of the 4-byte path), nothing
    is stored to shared memory by the kernel itself, and ptxas fits it without spills."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    ptx, report, _ = _compile_wgmma(block_n, block_k, block_b, 1, num_warps, stages,
                                    False, True, ordered=True)
    copies = [line.split(",")[-2].strip() for line in ptx.splitlines()
              if "cp.async.ca.shared.global" in line or "cp.async.cg.shared.global" in line]
    threads = 32 * num_warps
    acts = block_b * block_k // 8 // threads  # 16-byte activation copies per thread a step
    words = block_n * block_k // 32 // threads
    scales = -(-block_n // threads) if block_k == 256 else 0  # 16-byte rows at BLOCK_K 256
    assert "0x4" not in copies, copies
    assert copies.count("0x10") == stages * (words + scales + acts), copies
    assert "st.shared" not in ptx
    assert "0 bytes spill stores" in report, report


@pytest.mark.parametrize("consumers,block_b,stages", [(1, 64, 4), (2, 64, 6), (2, 16, 4)])
def test_warp_specialized_tile_waits_on_mbarriers_only(consumers, block_b, stages):
    """CONSUMERS: the copy warpgroup's threads each arrive on the slot's barrier as their
    cp.async copies land (noinc: the barrier counts 128 arrivals), every MMA warpgroup waits
    on it and releases the slot by one predicated arrival, and no barrier spans more than one
    warpgroup (``bar.sync id, 128``): the MMA warpgroups never wait on each other. Each
    partition gets its registers (setmaxnreg) within maxnreg, without spills, and the fit
    rule's shared memory is what the compile allocates, within a KB (mbarriers, alignment).
    Each step decodes, runs its wgmma, retires it and only then releases the slot."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from harness.backends import triton_w4a16

    maxnreg = triton_w4a16.WS_MAXNREG[consumers]
    ptx, report, shared = _compile_wgmma(64 * consumers, 128, block_b, 1, 4, stages, False,
                                         True, maxnreg=maxnreg, ordered=True,
                                         consumers=consumers)
    assert "cp.async.mbarrier.arrive.noinc.shared.b64" in ptx
    assert "mbarrier.init.shared::cta.b64" in ptx and ", 128;" in ptx.split("mbarrier.init")[1]
    assert "mbarrier.try_wait.parity" in ptx
    releases = [line for line in ptx.splitlines() if "mbarrier.arrive.shared" in line]
    assert releases and all(line.strip().startswith("@%p") for line in releases), releases
    syncs = [line.strip() for line in ptx.splitlines() if line.strip().startswith("bar.sync")]
    assert syncs and all(line.endswith(", 128;") for line in syncs), syncs
    regs = [int(line.split()[-1].rstrip(";")) for line in ptx.splitlines()
            if "setmaxnreg" in line]
    assert regs and max(regs) <= 256 and min(regs) >= 24
    assert "0 bytes spill stores" in report, report
    kw = {"BLOCK_N": 64 * consumers, "BLOCK_K": 128, "SPLIT_K": 1, "STAGES": stages,
          "ACT_RING": True, "ACT_ORDERED": True, "CONSUMERS": consumers}
    assert triton_w4a16._wgmma_fits(kw, 4, block_b, 5120)
    # Beyond the rings: two 8-byte mbarriers a slot and the allocator's alignment.
    assert 16 * stages <= shared - triton_w4a16._wgmma_smem(kw, block_b) <= 1024
    # The first MMA warpgroup's loop (the default partition comes first in the PTX).
    loop = ptx[ptx.index("mbarrier.try_wait.parity"):]
    order = ["fma.rn.bf16x2", "wgmma.mma_async", "wgmma.wait_group", "mbarrier.arrive.shared"]
    at = [loop.index(op) for op in order]
    assert at == sorted(at), dict(zip(order, at))


def test_three_warp_specialized_ctas_fit_an_sm():
    """The three-per-SM tile (``WS_3_PER_SM``): under its maxnreg the copy warpgroup settles
    at COPY_REGS and the MMA warpgroup at the rest of the CTA's registers (setmaxnreg),
    without spills; three CTAs' shared memory (as compiled, with the driver's KB each) fits
    the SM's 228 KB; and the tuner offers it above M = 32 only."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from harness.backends import triton_w4a16

    cfg = triton_w4a16.WS_3_PER_SM
    ptx, report, shared = _compile_wgmma(64, 128, 64, 1, 4, 3, False, True,
                                         maxnreg=cfg["maxnreg"], ordered=True, consumers=1,
                                         copy_regs=cfg["COPY_REGS"])
    regs = {int(line.split()[-1].rstrip(";")) for line in ptx.splitlines()
            if "setmaxnreg" in line}
    # The CTA's 8 warps at maxnreg, less the copy warpgroup's: the MMA warpgroup's (120).
    mma = (8 * cfg["maxnreg"] - 4 * cfg["COPY_REGS"]) // 4
    assert {cfg["COPY_REGS"], mma} <= regs, regs
    assert cfg["maxnreg"] * 8 * 32 * 3 <= 65536
    assert "0 bytes spill stores" in report, report
    assert 3 * (shared + 1024) <= 233472, shared
    kw = {"BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": 1, "STAGES": 3, "ACT_RING": True,
          "ACT_ORDERED": True, "CONSUMERS": 1, "COPY_REGS": cfg["COPY_REGS"]}
    assert triton_w4a16._wgmma_fits(kw, 4, triton_w4a16.WS_3_PER_SM_MIN_M, 5120)
    assert not triton_w4a16._wgmma_fits(kw, 4, triton_w4a16.WS_3_PER_SM_MIN_M - 1, 5120)
    assert kw in [c.kwargs for c in triton_w4a16._wgmma_ordered_space()
                  if c.maxnreg == cfg["maxnreg"]]


def _inflight_a_writes(sass: str) -> list[str]:
    """SASS instructions that write a register an ``HGMMA`` reads as its A operand while that
    ``HGMMA`` is in flight (issued, no ``WARPGROUP.DEPBAR`` since), along every path of the
    kernel's branches: undefined behaviour by the PTX ISA, which ptxas does not prevent when
    the PTX no longer shows the operand live (the output then depends on timing)."""
    import re

    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2)))
    index = {pc: i for i, (pc, _) in enumerate(ins)}
    found, seen, work = set(), set(), [(0, frozenset())]
    while work:
        i, pending = work.pop()
        while i < len(ins) and (i, pending) not in seen:
            seen.add((i, pending))
            pc, text = ins[i]
            body = re.sub(r"^@!?U?P\w+\s+", "", text)  # a predicated instruction's own text
            op, _, args = body.partition(" ")
            dest = re.match(r"R(\d+)\b", args.strip())
            if op.startswith("HGMMA"):
                a = re.match(r"R\d+, R(\d+),", args.strip())
                if a:  # the A fragment: four registers
                    pending = pending | frozenset(range(int(a.group(1)), int(a.group(1)) + 4))
            elif op.startswith("WARPGROUP.DEPBAR"):
                pending = frozenset()
            elif dest and pending and not op.startswith(("ST", "RED", "ATOM")):
                width = 4 if ".128" in op else 2 if (".64" in op or ".WIDE" in op) else 1
                if set(range(int(dest.group(1)), int(dest.group(1)) + width)) & pending:
                    found.add(f"{pc:#x} {text}")
            if op.startswith("BRA"):
                target = re.search(r"0x([0-9a-f]+)", args)
                if target and int(target.group(1), 16) in index:
                    work.append((index[int(target.group(1), 16)], pending))
                if body == text:  # not predicated: no fall-through
                    break
            if op.startswith(("EXIT", "RET")) and body == text:
                break
            i += 1
    return sorted(found)


def test_inflight_a_writes_finds_a_decode_into_a_running_wgmma():
    """The checker can fail: a loop whose next decode writes R56 before the wait on the
    previous HGMMA (as the withdrawn OVERLAP tile compiled) is caught across the branch back;
    with the wait first, or a write to another register, it is not."""
    def sass(body):
        return "\n".join(f"        /*{16 * i:04x}*/    {t} ;" for i, t in enumerate(body))
    loop = ["SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR12+0xf6a0], R4",
            "SHF.R.U32.HI R56, RZ, 0x5, R5",
            "WARPGROUP.DEPBAR.LE gsb0, 0x0",
            "WARPGROUP.ARRIVE",
            "HGMMA.64x64x16.F32.BF16 R24, R56, gdesc[UR12], R24, gsb0",
            "@P0 BRA 0x0",
            "EXIT"]
    assert _inflight_a_writes(sass(loop)) == ["0x10 SHF.R.U32.HI R56, RZ, 0x5, R5"]
    assert _inflight_a_writes(sass([loop[0], loop[2], *loop[1:2], *loop[3:]])) == []
    assert _inflight_a_writes(sass([loop[0], "LDS.128 R60, [R10]", *loop[2:]])) == []
    assert _inflight_a_writes(sass([loop[0], "LDS.128 R54, [R10]", *loop[2:]])) != []


@pytest.mark.parametrize("case", ["ring", "ring-ordered", "registers", "async",
                                  "warp-specialized", "warp-specialized-3-per-sm",
                                  "warp-specialized-2-mma"])
def test_no_wgmma_reads_a_register_being_rewritten(case):
    """sm_90a SASS of every register-A wgmma variant the backend tunes or forces: no
    instruction writes an in-flight HGMMA's A registers (the race that withdrew OVERLAP)."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from harness.backends import triton_w4a16

    ws = triton_w4a16.WS_3_PER_SM
    args, kw = {
        "ring": ((128, 128, 64, 2, 8, 4, False, False), {}),
        "ring-ordered": ((64, 128, 64, 1, 4, 3, False, True), {"ordered": True}),
        "registers": ((64, 128, 64, 1, 4, 0, False, False), {}),
        "async": ((128, 128, 64, 1, 8, 4, True, False), {}),
        "warp-specialized": ((64, 128, 64, 1, 4, 4, False, True),
                             {"maxnreg": triton_w4a16.WS_MAXNREG[1], "ordered": True,
                              "consumers": 1}),
        "warp-specialized-3-per-sm": ((64, 128, 64, 1, 4, 3, False, True),
                                      {"maxnreg": ws["maxnreg"], "ordered": True,
                                       "consumers": 1, "copy_regs": ws["COPY_REGS"]}),
        "warp-specialized-2-mma": ((128, 128, 64, 1, 4, 6, False, True),
                                   {"maxnreg": triton_w4a16.WS_MAXNREG[2], "ordered": True,
                                    "consumers": 2}),
    }[case]
    sass = _compile_wgmma(*args, **kw, sass=True)
    assert sass.count("HGMMA") >= 8
    assert _inflight_a_writes(sass) == []


def test_in_mma_k_order_is_the_staging_permutation():
    """The host-side reorder of an ACT_ORDERED launch puts physical element
    ``act_staging_order(K)[r]`` at column r: the permutation the kernels apply on the fly."""
    import torch

    from harness.backends import triton_wgmma

    k = 384
    x = torch.arange(2 * k, dtype=torch.float32).reshape(2, k)
    got = triton_wgmma.in_mma_k_order(x)
    order = torch.tensor(triton_wgmma.act_staging_order(k))
    assert got.is_contiguous()
    assert torch.equal(got, x[:, order])
    with pytest.raises(ValueError, match="multiple of 128"):
        triton_wgmma.in_mma_k_order(torch.zeros(1, 200))


_COMPILE_REORDER = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from harness.backends import triton_wgmma

fn = triton_wgmma.mma_k_order_kernel
const = {"GROUPS": triton_wgmma.REORDER_GROUPS, "WAIT": json.loads(sys.argv[1])}
sig = {"x_ptr": "*bf16", "y_ptr": "*bf16", "K": "i32", "stride_xm": "i32"}
sig.update({name: "constexpr" for name in const})
src = ASTSource(fn=fn, signature=sig,
                constexprs={(fn.arg_names.index(n),): v for n, v in const.items()},
                attrs={(fn.arg_names.index(a),): [["tt.divisibility", 16]]
                       for a in ("x_ptr", "y_ptr", "K", "stride_xm")})
print(json.dumps(triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": 4}).asm["ptx"]))
"""


@pytest.mark.parametrize("wait", [False, True])
def test_reorder_kernel_moves_16_byte_vectors_and_lets_the_gemm_start(wait):
    """The ordered path's reorder kernel (sm_90a, compiled here): one 16-byte load and one
    16-byte store per thread, the permute within the warp (no CTA barrier); it signals its
    dependents (the GEMM behind it) before anything else, and waits for the kernel before it
    only when launched with PDL itself (``WAIT``), before its load."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    ptx = _run_compile(_COMPILE_REORDER, wait)
    body = ptx[ptx.index(".entry"):]
    memory = [ln.strip() for ln in body.splitlines() if "ld.global" in ln or "st.global" in ln]
    assert len(memory) == 2 and all(".v4.b32" in ln for ln in memory), memory
    assert "bar.sync" not in body
    signal, load = body.index("griddepcontrol.launch_dependents"), body.index("ld.global")
    assert signal < load
    assert ("griddepcontrol.wait" in body) == wait
    if wait:
        assert signal < body.index("griddepcontrol.wait") < load


@pytest.mark.parametrize("tiles,steps,programs", [
    (40, 48, 264), (544, 40, 264), (80, 136, 132), (1, 10, 10), (3, 7, 5), (272, 20, 528),
    (4, 10, 40), (7, 1, 3)])
def test_stream_k_shares_cover_every_iteration_once(tiles, steps, programs):
    """The stream-K partition (the kernels' ``stream_k_range`` / ``stream_k_unit``, here in
    its host copy): every (tile, K step) once, by contiguous units; a tile's units are
    numbered 0 .. nseg - 1 by program order, each unit knowing nseg; the tuner's bound is the
    largest nseg."""
    seen = {}
    segments = {}
    for p in range(programs):
        for tile, first, last, seg, nseg in sab.stream_k_units(tiles, steps, programs, p):
            assert 0 <= first < last <= steps
            for step in range(first, last):
                assert (tile, step) not in seen
                seen[(tile, step)] = p
            segments.setdefault(tile, []).append((p, seg, nseg))
    assert len(seen) == tiles * steps
    for tile, units in segments.items():
        assert [seg for _, seg, _ in sorted(units)] == list(range(len(units)))
        assert {nseg for _, _, nseg in units} == {len(units)}
    assert sab.stream_k_segments(tiles, steps, programs) == max(map(len, segments.values()))


@pytest.mark.parametrize("kernel,block_n,block_b,num_warps,stages", [
    ("wgmma", 64, 64, 4, 4), ("mma", 128, 16, 4, 2), ("mma", 64, 8, 2, 0)])
def test_stream_k_loop_keeps_the_registers_of_one_tile(kernel, block_n, block_b, num_warps,
                                                       stages):
    """A stream-K program's loop over its units compiles (sm_90a) to about the registers of
    one classic program: with loop-invariant code motion on, the epilogue's index tensors
    were hoisted above the loop and stayed live through every K loop (the 64-row wgmma tile:
    206 registers against 164). No spills; the shared-tile partials go through one atomic
    arrival per unit."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    import re

    block_k = 128 if kernel == "wgmma" else 256

    def registers(report):
        assert "0 bytes spill stores" in report, report
        return int(re.search(r"Used (\d+) registers", report).group(1))

    _, classic, _ = _compile_wgmma(block_n, block_k, block_b, 1, num_warps, stages,
                                   kernel=kernel)
    ptx, streamed, _ = _compile_wgmma(block_n, block_k, block_b, 1, num_warps, stages,
                                      kernel=kernel, stream_k=2)
    assert registers(streamed) <= registers(classic) + 16, (streamed, classic)
    assert len(re.findall(r"atom\.global\.gpu\.acq_rel\.add", ptx)) == 1
