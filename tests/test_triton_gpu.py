"""Triton W4A16 on a real GPU: every Qwen3.6-27B / Qwen3-32B layer shape and ragged M.

Skipped without CUDA (CI); run on a GPU box with ``pytest tests/test_triton_gpu.py``.
"""

import pytest
import torch

from harness.backends import get_backend
from harness.gemm import make_activations, make_weights, reference
from harness.models import get_model
from script_modules import load_script

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHAPES = sorted({(s.n, s.k) for name in ("qwen3.6-27b", "qwen3-32b")
                 for s in get_model(name).linear_layers()})
EXTREME_SHAPES = [SHAPES[0], SHAPES[-1]]  # the smallest and the largest N
# 64: the last M of the swapped-operand path; 127 and 2001 run the plain tensor-core path.
RAGGED_M = (1, 3, 7, 33, 64, 127, 2001)


def _cases():
    for n, k in SHAPES:
        yield n, k, False
    # Tuning searches every M bucket (minutes on a GPU), so it runs on the two extreme
    # shapes only, with the slow tests.
    for n, k in EXTREME_SHAPES:
        yield pytest.param(n, k, True, marks=pytest.mark.slow)


def _config_sweep_shapes(*edges):
    """Shapes of a per-config sweep: the edge shapes (partial tiles, split-K ranges past the
    end of K) in the quick check, the two extreme model shapes with the slow tests. Every
    (config, shape) compiles its own kernels: this file averaged about 3.5 s a test on an H100."""
    return [*edges, *(pytest.param(n, k, marks=pytest.mark.slow) for n, k in EXTREME_SHAPES)]


@pytest.mark.parametrize("n,k,autotune", list(_cases()))
def test_triton_matches_torch_dequant(n, k, autotune):
    dev = torch.device("cuda")
    tri, deq = get_backend("triton"), get_backend("torch-dequant")
    w = make_weights(n, k, seed=n * 7 + k, device=dev, std=0.02)
    pt, pd = tri.prepare(w, autotune=autotune), deq.prepare(w)
    for m in RAGGED_M:
        x = make_activations(m, k, seed=m, device=dev)
        out = tri.run(pt, x, None)
        base = deq.run(pd, x, None)
        ref = reference("w4a16", w, x, None)
        assert not torch.isnan(out).any()
        err = ((out.float() - base.float()).norm() / base.float().norm()).item()
        err_ref = ((out.float() - ref).norm() / ref.norm()).item()
        assert err < 1e-2, (n, k, m, err)
        assert err_ref < 1e-2, (n, k, m, err_ref)


@pytest.mark.parametrize("n,k", EXTREME_SHAPES)
def test_swapped_operand_path_without_the_fp8_convert(n, k, monkeypatch):
    """SM80/SM86 have no e4m3 -> f16 convert: the scale goes through fp16 bit moves there.
    Forced here on a newer GPU, the result must match the same reference."""
    from harness.backends import triton_w4a16

    monkeypatch.setattr(triton_w4a16, "_has_fp8_cvt", lambda device: False)
    dev = torch.device("cuda")
    tri, deq = get_backend("triton"), get_backend("torch-dequant")
    w = make_weights(n, k, seed=n * 3 + k, device=dev, std=0.02)
    pt, pd = tri.prepare(w, autotune=False), deq.prepare(w)
    for m in (1, 7, 16, 33, 64):
        x = make_activations(m, k, seed=m, device=dev)
        out, base = tri.run(pt, x, None), deq.run(pd, x, None)
        assert torch.isfinite(out).all()
        err = ((out.float() - base.float()).norm() / base.float().norm()).item()
        assert err < 1e-2, (n, k, m, err)


# Shared-memory ring configs; (1000, 1280) has a partial row tile and split-K ranges that
# start past the end of K (5 or 10 steps over 4 or 8 splits).
STAGED = [({"BLOCK_N": 64, "BLOCK_K": 256, "SPLIT_K": 4, "STAGES": 2}, 2),
          ({"BLOCK_N": 128, "BLOCK_K": 128, "SPLIT_K": 8, "STAGES": 3}, 4),
          ({"BLOCK_N": 128, "BLOCK_K": 256, "SPLIT_K": 1, "STAGES": 4}, 2)]


@pytest.mark.parametrize("n,k", _config_sweep_shapes((1000, 1280)))
@pytest.mark.parametrize("config,warps", STAGED)
def test_shared_memory_ring_path(n, k, config, warps, monkeypatch):
    """The ``STAGES > 0`` path (weight, scales and activations streamed through a ring of
    shared-memory slots) must give the same result as the reference for every M."""
    import triton

    from harness.backends import triton_w4a16

    monkeypatch.setattr(triton_w4a16, "SWAP_AB_DEFAULT",
                        triton.Config(dict(config, PREFETCH=False), num_warps=warps,
                                      num_stages=1))
    dev = torch.device("cuda")
    tri, deq = get_backend("triton"), get_backend("torch-dequant")
    w = make_weights(n, k, seed=n + k, device=dev, std=0.02)
    pt, pd = tri.prepare(w, autotune=False), deq.prepare(w)
    for m in (1, 7, 16, 33, 64):
        x = make_activations(m, k, seed=m + 1, device=dev)
        out, base = tri.run(pt, x, None), deq.run(pd, x, None)
        assert torch.isfinite(out).all()
        err = ((out.float() - base.float()).norm() / base.float().norm()).item()
        assert err < 1e-2, (n, k, m, config, err)


@pytest.mark.parametrize("batch", [1, 3])
def test_pdl_decode_steps_match_plain_launches(batch, monkeypatch):
    """A tiny hybrid model's decode steps, replayed from CUDA graphs, give the same logits
    bit for bit with programmatic dependent launch as without: every kernel waits before it
    reads what the one before wrote (a missing wait shows up as a race)."""
    from harness.models import engine as engine_mod
    from harness.models import weights as wmod
    from harness.models.engine import DecodeEngine, PreparedModel

    monkeypatch.setattr(engine_mod, "PDL_MAX_BATCH", 64)  # correctness at every batch

    dev = torch.device("cuda")
    cfg = get_model("tiny-hybrid")
    prompt = torch.randint(0, cfg.vocab, (batch, 5), generator=torch.Generator().manual_seed(0))
    runs = []
    for on in (False, True):
        pm = PreparedModel(wmod.synthetic(cfg, dev, seed=0), get_backend("triton"), dev,
                           fused_gdn=True, fused_attn=True, fused_norm=True, pdl=on)
        eng = DecodeEngine(pm, batch, 32)
        pm.set_mode("calibrate")
        eng.prefill(prompt.to(dev))
        pm.freeze_calibration()
        pm.set_mode("run")
        eng.prefill(prompt.to(dev))
        eng.step()  # compile and warm up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        pos = eng.pos.clone()
        with torch.cuda.graph(graph):
            eng.step()
        eng.pos.copy_(pos)
        out = []
        for _ in range(12):
            graph.replay()
            out.append(eng.logits.clone())
        torch.cuda.synchronize()
        runs.append(torch.stack(out))
    assert torch.isfinite(runs[1].float()).all()
    assert torch.equal(runs[0], runs[1])


def test_output_past_2_31_elements():
    """M x N well past 2^31 (the 65,536-token prefill of batch 8 x 8,192 on gate_up): int32
    offsets of the output would wrap into an illegal address."""
    dev = torch.device("cuda")
    n, k, m = 34816, 5120, 65536
    tri, deq = get_backend("triton"), get_backend("torch-dequant")
    w = make_weights(n, k, seed=5, device=dev, std=0.02)
    x = make_activations(m, k, seed=6, device=dev)
    out = tri.run(tri.prepare(w), x, None)
    torch.cuda.synchronize()
    rows = torch.tensor([0, 1, m // 2, m - 2, m - 1], device=dev)
    ref = deq.run(deq.prepare(w), x[rows], None).float()
    err = ((out[rows].float() - ref).norm() / ref.norm()).item()
    assert not torch.isnan(out[rows]).any() and err < 1e-2, err


@pytest.mark.parametrize("autotune,ordered", [(False, False), (True, False), (True, True),
                                              (True, "warp-specialized")])
def test_cached_launches_match_tritons_own(autotune, ordered, monkeypatch):
    """The resolved eager launches (harness.backends.triton_launch) give the same bits as
    Triton's launch path, eagerly and in a CUDA graph, on every path (gemv, swapped operand,
    tensor-core GEMM; ``ordered``: the ordered path on SM90, its reorder cached too, as tuned
    or with a warp-specialized config forced); a layer's entries go with its weights."""
    import gc

    import triton

    from harness.backends import triton_launch, triton_w4a16, triton_wgmma
    dev = torch.device("cuda")
    if ordered and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the ordered path runs on SM90 only")
    if ordered == "warp-specialized":
        config = triton.Config({"BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": 2, "STAGES": 4,
                                "ACT_RING": True, "ACT_ORDERED": True, "CONSUMERS": 1},
                               num_warps=4, num_stages=1,
                               maxnreg=triton_w4a16.WS_MAXNREG[1])
        fixed = triton_w4a16._fixed(triton_wgmma.wgmma_kernel, config)
        monkeypatch.setattr(triton_w4a16, "_wgmma_ordered_tuned", lambda: fixed)
    tri = get_backend("triton")
    n, k = 5120, 6144
    w = make_weights(n, k, seed=3, device=dev, std=0.02)
    p = tri.prepare(w, autotune=autotune)
    for m in (1, 16, 64, 65):
        if ordered and 8 < m <= 64:
            monkeypatch.setitem(triton_w4a16._SMALL_M_PATH,
                                (n, k, triton_w4a16._m_bucket(m)), "wgmma-ordered")
        x = make_activations(m, k, seed=m, device=dev)
        monkeypatch.setenv(triton_launch.FAST_LAUNCH_ENV, "0")
        plain = tri.run(p, x, None)
        monkeypatch.setenv(triton_launch.FAST_LAUNCH_ENV, "1")
        first = tri.run(p, x, None)   # Triton's path, then resolved
        mine = [f for key, f in triton_w4a16._FAST.items() if key[0] == id(p["words"])
                and key[1] == m]
        assert mine
        # Our kernels need no scratch memory: the launcher's C entry point, not its wrapper.
        assert all(f.launch_c is not None for f, _, _ in mine)
        reorders = [r for _, r, _ in mine if r is not None]
        assert all(r.launch_c is not None for r in reorders)
        # The tuner may keep the ordered path itself (ordered=False leaves it free to).
        kept = autotune and triton_w4a16._SMALL_M_PATH.get((n, k, triton_w4a16._m_bucket(m)))
        assert bool(reorders) == (8 < m <= 64 and kept == "wgmma-ordered"), m
        assert kept == "wgmma-ordered" or not (ordered and 8 < m <= 64), m
        cached = tri.run(p, x.clone(), None)
        g = torch.cuda.CUDAGraph()
        static = x.clone()
        with torch.cuda.graph(g):
            graphed = tri.run(p, static, None)
        static.copy_(make_activations(m, k, seed=m + 100, device=dev))
        g.replay()
        other = tri.run(p, static, None)
        torch.cuda.synchronize()
        assert torch.equal(first, plain) and torch.equal(cached, plain), m
        assert torch.equal(graphed, other), m
        assert not torch.equal(other, plain), m  # new activations: the comparison can fail
    owner = id(p["words"])
    del p, g
    gc.collect()
    assert not any(key[0] == owner for key in triton_w4a16._FAST)


def test_cached_launches_call_a_registered_launch_hook():
    """A launch hook (a profiler's, e.g. proton's) sees every cached launch, with Triton's
    launch metadata, while it is registered; without one the cached launch passes the
    pointers as addresses and skips the hooks. Same bits both ways."""
    from triton import knobs

    from harness.backends import triton_w4a16
    dev = torch.device("cuda")
    tri = get_backend("triton")
    n, k = 5120, 6144
    w = make_weights(n, k, seed=4, device=dev, std=0.02)
    p = tri.prepare(w, autotune=False)
    x = make_activations(1, k, seed=4, device=dev)
    plain = tri.run(p, x, None)  # Triton's path, then resolved
    assert any(key[0] == id(p["words"]) and key[1] == 1 for key in triton_w4a16._FAST)
    seen = []

    def hook(metadata):
        seen.append(metadata.get()["name"])

    chain = knobs.runtime.launch_enter_hook
    if hasattr(chain, "add"):  # Triton 3.6: a HookChain
        chain.add(hook)
    else:
        knobs.runtime.launch_enter_hook = hook
    try:
        hooked = tri.run(p, x, None)
    finally:
        if hasattr(chain, "add"):
            chain.remove(hook)
        else:
            knobs.runtime.launch_enter_hook = chain
    unhooked = tri.run(p, x, None)
    torch.cuda.synchronize()
    assert len(seen) == 1 and "kernel" in seen[0], seen
    assert torch.equal(hooked, plain) and torch.equal(unhooked, plain)


# Warpgroup-MMA configs (BLOCK_N, BLOCK_K, SPLIT_K, warps, STAGES, mode): one and two
# warpgroups, 64 to 256 weight rows, both K steps, register and ring paths, synchronous and
# asynchronous MMA ("sync", "async") and the activations in the ring too ("ring"), split-K
# ranges past the end of K on (1000, 1280).
WGMMA = [(128, 128, 2, 8, 4, "sync"), (64, 256, 4, 4, 0, "sync"), (256, 128, 1, 8, 4, "sync"),
         (128, 256, 8, 8, 0, "sync"), (128, 128, 1, 4, 3, "sync"), (256, 256, 4, 8, 2, "sync"),
         (128, 128, 2, 8, 0, "async"), (128, 128, 8, 8, 4, "async"),
         (256, 128, 1, 8, 0, "async"), (64, 256, 4, 4, 2, "async"), (64, 128, 2, 4, 4, "sync"),
         (64, 128, 1, 4, 0, "sync"), (128, 128, 2, 8, 4, "ring"), (64, 128, 1, 4, 4, "ring"),
         (128, 256, 8, 8, 2, "ring"), (256, 128, 4, 8, 3, "ring"), (64, 256, 2, 4, 3, "ring"),
         (128, 128, 4, 4, 4, "ring")]


class _Always(dict):
    """A path table that answers one path for every key."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def get(self, key, default=None):
        return self.path


@pytest.mark.skipif(not torch.cuda.is_available()
                    or torch.cuda.get_device_capability() != (9, 0),
                    reason="the warpgroup-MMA kernel needs an SM90 GPU")
@pytest.mark.parametrize("n,k", _config_sweep_shapes((1000, 1280)))
@pytest.mark.parametrize("bn,bk,sk,warps,stages,mode", WGMMA)
def test_wgmma_path_matches_torch_dequant(n, k, bn, bk, sk, warps, stages, mode, monkeypatch):
    import triton

    from harness.backends import triton_launch, triton_w4a16, triton_wgmma

    config = triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk, "STAGES": stages,
                            "ASYNC": mode == "async", "ACT_RING": mode == "ring"},
                           num_warps=warps, num_stages=1)
    monkeypatch.setattr(triton_w4a16, "_SMALL_M_PATH", _Always("wgmma"))
    monkeypatch.setattr(triton_w4a16, "_wgmma_tuned",
                        lambda: triton_w4a16._fixed(triton_wgmma.wgmma_kernel, config))
    monkeypatch.setenv(triton_launch.FAST_LAUNCH_ENV, "0")
    if k % bk:
        pytest.skip(f"K={k} is not a multiple of BLOCK_K={bk}")
    dev = torch.device("cuda")
    tri, deq = get_backend("triton"), get_backend("torch-dequant")
    w = make_weights(n, k, seed=n * 5 + k, device=dev, std=0.02)
    pt, pd = tri.prepare(w, autotune=True), deq.prepare(w)
    for m in (9, 16, 33, 64):
        x = make_activations(m, k, seed=m + 2, device=dev)
        out, base = tri.run(pt, x, None), deq.run(pd, x, None)
        assert torch.isfinite(out).all()
        err = ((out.float() - base.float()).norm() / base.float().norm()).item()
        assert err < 1e-2, (n, k, m, err)
        again = tri.run(pt, x, None)
        assert torch.equal(out, again), (n, k, m)  # split-K sums in a fixed order


def _config_sweep():
    """``scripts/config_sweep.py`` as a module: its ``launch`` forces a config through the
    backend's own small-M launch path (the ordered path's reorder included)."""
    return load_script("config_sweep")


@pytest.mark.skipif(not torch.cuda.is_available()
                    or torch.cuda.get_device_capability() != (9, 0),
                    reason="the warpgroup-MMA kernel needs an SM90 GPU")
@pytest.mark.parametrize("bn,bk,sk,warps,stages", [(64, 128, 1, 4, 3), (128, 256, 2, 8, 4),
                                                    (128, 128, 4, 8, 4)])
def test_ordered_activations_match_torch_dequant(bn, bk, sk, warps, stages):
    """ACT_ORDERED: a launch on activations in MMA K order (16-byte copies into the ring)
    gives the reference's output, partial row tiles and batch tiles too, and the same bits
    as the 4-byte-copy ring on the activations as they are, whether the backend's reorder
    kernel (the GEMM launched behind it with PDL) or a torch copy reordered them. Launched as
    ``scripts/config_sweep.py`` forces a config (its reorder included)."""
    sweep = _config_sweep()
    dev = torch.device("cuda")
    tri, deq = get_backend("triton"), get_backend("torch-dequant")
    kw = {"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk, "STAGES": stages, "ACT_RING": True}
    for n, k in (SHAPES[0], (1000, 1280)):
        w = make_weights(n, k, seed=n * 7 + k, device=dev, std=0.02)
        pt, pd = tri.prepare(w), deq.prepare(w)
        for m in (9, 16, 33, 64):
            x = make_activations(m, k, seed=m + 5, device=dev)
            lines = [{"kernel": "wgmma", "kwargs": dict(kw, ACT_ORDERED=ordered),
                      "num_warps": warps} for ordered in (True, False)]
            outs = [sweep.launch(lines[0], x, pt), sweep.launch(lines[1], x, pt),
                    sweep.launch(lines[0], x, pt, torch_reorder=True)]
            base = deq.run(pd, x, None).float()
            assert torch.isfinite(outs[0]).all()
            err = ((outs[0].float() - base).norm() / base.norm()).item()
            assert err < 1e-2, (n, k, m, err)
            assert torch.equal(outs[0], outs[1]), (n, k, m)
            assert torch.equal(outs[0], outs[2]), (n, k, m)


@pytest.mark.skipif(not torch.cuda.is_available()
                    or torch.cuda.get_device_capability() != (9, 0),
                    reason="the warp-specialized wgmma tile needs an SM90 GPU")
@pytest.mark.parametrize("consumers,sk,stages,per_sm", [
    (1, 1, 3, 2), (1, 4, 4, 2), (2, 1, 4, 1), (2, 8, 6, 1), (1, 2, 3, 3)])
def test_warp_specialized_tile_matches_the_ring_kernel(consumers, sk, stages, per_sm):
    """CONSUMERS: the warp-specialized tile (a copy warpgroup, one or two MMA warpgroups of
    64 rows each, mbarriers between them; ``per_sm`` 3: the registers of three CTAs per SM)
    gives the reference's output and the same bits as the 64-row ordered ring config of the
    same split (each MMA warpgroup runs its K steps in the same order), for partial row and
    batch tiles, splits past the end of K, and from a graph replay, under the PDL launch the
    backend uses behind its reorder."""
    from harness.backends import triton_w4a16

    sweep = _config_sweep()
    dev = torch.device("cuda")
    tri, deq = get_backend("triton"), get_backend("torch-dequant")
    ring = {"BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": sk, "STAGES": stages, "ACT_RING": True,
            "ACT_ORDERED": True}
    line = {"kernel": "wgmma", "kwargs": dict(ring, BLOCK_N=64 * consumers, CONSUMERS=consumers),
            "num_warps": 4, "maxnreg": triton_w4a16.WS_MAXNREG[consumers]}
    if per_sm == 3:  # the registers of three CTAs per SM
        line["kwargs"]["COPY_REGS"] = triton_w4a16.WS_3_PER_SM["COPY_REGS"]
        line["maxnreg"] = triton_w4a16.WS_3_PER_SM["maxnreg"]
    plain = {"kernel": "wgmma", "kwargs": ring, "num_warps": 4}
    # (1000, 1280): rows past N in the last tile; K = 1280 is 10 steps, so split 4 leaves
    # the last split one step and split 8 leaves three splits with none.
    for n, k in (SHAPES[0], (1000, 1280), (5120, 6144)):
        w = make_weights(n, k, seed=n * 3 + k, device=dev, std=0.02)
        pt, pd = tri.prepare(w), deq.prepare(w)
        for m in (9, 16, 33, 64):
            x = make_activations(m, k, seed=m + 11, device=dev)
            got = sweep.launch(line, x, pt)
            base = deq.run(pd, x, None).float()
            assert torch.isfinite(got).all(), (n, k, m)
            err = ((got.float() - base).norm() / base.norm()).item()
            assert err < 1e-2, (n, k, m, err)
            assert torch.equal(got, sweep.launch(plain, x, pt)), (n, k, m)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                replayed = sweep.launch(line, x, pt)
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(got, replayed), (n, k, m)


@pytest.mark.skipif(not torch.cuda.is_available()
                    or torch.cuda.get_device_capability() != (9, 0),
                    reason="the reorder kernel signals PDL dependents (SM90)")
@pytest.mark.parametrize("pdl_on", [False, True])
def test_reorder_kernel_is_in_mma_k_order(pdl_on):
    """The ordered path's reorder kernel writes what ``in_mma_k_order`` makes, for a row
    stride past K and K not a multiple of its chunk, eagerly and from a graph replay, as a
    plain and as a PDL launch."""
    from harness import pdl
    from harness.backends import triton_wgmma

    dev = torch.device("cuda")
    for m, k in ((1, 128), (9, 1280), (64, 17408)):
        wide = make_activations(m, k + 256, seed=k, device=dev)
        x = wide[:, 128:128 + k]
        want = triton_wgmma.in_mma_k_order(x)
        y = torch.full((m, k), float("nan"), dtype=torch.bfloat16, device=dev)
        with pdl.launches(pdl_on):
            triton_wgmma.launch_mma_k_order(x, y, pdl.launch_options(dev))
            assert torch.equal(y, want), (m, k)
            y.fill_(float("nan"))
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                triton_wgmma.launch_mma_k_order(x, y, pdl.launch_options(dev))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, want), (m, k)


# Stream-K configs (kernel, BLOCK_N, BLOCK_K, warps, STAGES, mode, programs per SM): units
# that cross tiles, tiles shared by 2-16 programs, partial row tiles on (1000, 1280), shares
# with one step, the register, prefetch and ring paths of both kernels.
STREAM_K = [("wgmma", 64, 128, 4, 4, "sync", 2), ("wgmma", 128, 128, 8, 0, "sync", 1),
            ("wgmma", 64, 128, 4, 3, "ring", 3), ("wgmma", 128, 256, 8, 4, "sync", 1),
            ("wgmma", 128, 128, 8, 4, "async", 2), ("mma", 128, 256, 4, 2, "sync", 4),
            ("mma", 64, 128, 2, 0, "sync", 3), ("mma", 128, 128, 4, 0, "prefetch", 2)]


@pytest.mark.skipif(not torch.cuda.is_available()
                    or torch.cuda.get_device_capability() != (9, 0),
                    reason="the warpgroup-MMA kernel needs an SM90 GPU")
@pytest.mark.parametrize("n,k", _config_sweep_shapes((1000, 1280), (256, 1280)))
@pytest.mark.parametrize("kernel,bn,bk,warps,stages,mode,per_sm", STREAM_K)
def test_stream_k_matches_torch_dequant(n, k, kernel, bn, bk, warps, stages, mode, per_sm,
                                        monkeypatch):
    """Stream-K launches of both small-M kernels: every output element the reference's,
    the same bits on a second call (partials summed in segment order) and from a CUDA graph
    replay (the arrival counters reset themselves)."""
    import triton

    from harness.backends import triton_launch, triton_swap_ab, triton_w4a16, triton_wgmma

    kw = {"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": 1, "STAGES": stages, "STREAM_K": per_sm}
    if kernel == "wgmma":
        kw.update(ASYNC=mode == "async", ACT_RING=mode == "ring")
        config = triton.Config(kw, num_warps=warps, num_stages=1)
        monkeypatch.setattr(triton_w4a16, "_SMALL_M_PATH", _Always("wgmma"))
        monkeypatch.setattr(triton_w4a16, "_wgmma_tuned",
                            lambda: triton_w4a16._fixed(triton_wgmma.wgmma_kernel, config))
        ms, autotune = (9, 16, 33, 64), True
    else:
        kw.update(PREFETCH=mode == "prefetch")
        config = triton.Config(kw, num_warps=warps, num_stages=1)
        monkeypatch.setattr(triton_w4a16, "SWAP_AB_DEFAULT", config)
        ms, autotune = (1, 7, 16, 33, 64), False
    monkeypatch.setenv(triton_launch.FAST_LAUNCH_ENV, "0")
    if k % bk:
        pytest.skip(f"K={k} is not a multiple of BLOCK_K={bk}")
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    tri, deq = get_backend("triton"), get_backend("torch-dequant")
    w = make_weights(n, k, seed=n * 11 + k, device=dev, std=0.02)
    pt, pd = tri.prepare(w, autotune=autotune), deq.prepare(w)
    shared = 0
    for m in ms:
        block_b = (triton_w4a16._wgmma_block_b(m) if kernel == "wgmma"
                   else triton_w4a16._block_b(m))
        tiles, steps = triton_w4a16._tiles_steps(kw, m, n, k, block_b)
        progs = triton_swap_ab.stream_k_programs(per_sm, sms, tiles, steps)
        segments = triton_swap_ab.stream_k_segments(tiles, steps, progs)
        assert segments <= triton_w4a16.MAX_SPLIT_K, (m, segments)
        shared = max(shared, segments)
        x = make_activations(m, k, seed=m + 3, device=dev)
        out, base = tri.run(pt, x, None), deq.run(pd, x, None)
        assert torch.isfinite(out).all(), (n, k, m)
        err = ((out.float() - base.float()).norm() / base.float().norm()).item()
        assert err < 1e-2, (n, k, m, err)
        assert torch.equal(out, tri.run(pt, x, None)), (n, k, m)
        static = x.clone()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            graphed = tri.run(pt, static, None)
        for _ in range(2):
            g.replay()
        torch.cuda.synchronize()
        assert torch.equal(graphed, out), (n, k, m)
    assert shared >= 2  # the cases above must exercise the shared-tile path
