"""MoE: routing, the expert sort, the Triton fused NVFP4 MoE against the exact reference
(ragged expert loads, experts with no token, router ties), and SGLang's config files."""

import ast
import os
from pathlib import Path

import pytest
import torch

from harness.moe import configs
from harness.moe.layer import MoeShape, reference, route, synthetic

ROOT = Path(__file__).resolve().parent.parent
SGLANG_CONFIGS = (ROOT / ".sglang-parsers" / "sglang" / "srt" / "layers" / "moe" / "moe_runner"
                  / "triton_utils")
PR_DEVICE = "NVIDIA RTX PRO 6000 Blackwell Server Edition"
SHAPE = MoeShape(experts=8, top_k=2, hidden=64, intermediate=32)


def _dev():
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def test_route_ties_go_to_the_lower_expert():
    x = torch.ones(3, 4)
    router = torch.zeros(6, 4)  # every expert scores the same
    w, ids = route(x, router, top_k=2)
    assert ids.tolist() == [[0, 1]] * 3
    assert torch.allclose(w, torch.full_like(w, 0.5))
    router[4] = 1.0
    w, ids = route(x, router, top_k=2, renormalize=False)
    assert ids[:, 0].tolist() == [4, 4, 4] and ids[:, 1].tolist() == [0, 0, 0]
    assert float(w.sum(-1).max()) < 1.0


@pytest.mark.parametrize("use_kernel", [False, True], ids=["torch", "triton"])
@pytest.mark.parametrize("block_m", [16, 32])
def test_align_sorts_pairs_by_expert_in_padded_blocks(block_m, use_kernel):
    from harness.moe.triton_moe import align
    ids = torch.tensor([[3, 0], [3, 5], [3, 0], [7, 3]], dtype=torch.int32, device=_dev())
    sorted_ids, expert_ids, post = (t.cpu() for t in align(ids, experts=8, block_m=block_m,
                                                            use_kernel=use_kernel))
    ids = ids.cpu()
    n = ids.numel()
    flat = ids.flatten().tolist()
    total = int(post)
    counts = {e: flat.count(e) for e in set(flat)}
    assert total == sum(-(-c // block_m) * block_m for c in counts.values())
    assert sorted_ids.numel() % block_m == 0 and sorted_ids.numel() >= total
    seen = []
    for b in range(total // block_m):
        e = int(expert_ids[b])
        block = sorted_ids[b * block_m:(b + 1) * block_m].tolist()
        real = [p for p in block if p < n]
        assert real and all(flat[p] == e for p in real)  # one expert per block
        seen += real
    assert sorted(seen) == list(range(n))  # every pair once; experts with no token: no block
    assert all(p == n for p in sorted_ids[total:].tolist())


@pytest.mark.parametrize("m,experts,k,block_m", [
    (1, 8, 2, 16), (5, 8, 2, 32), (37, 128, 8, 16), (256, 256, 8, 64), (3, 6, 2, 16)])
def test_align_program_matches_the_torch_sort(m, experts, k, block_m):
    """The one-program sort gives the torch sort's arrays bit for bit (ragged loads, experts
    with no pair, one token, a non-power-of-two expert count)."""
    from harness.moe.triton_moe import align
    g = torch.Generator().manual_seed(m)
    ids = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(m)])
    ids[: m // 2, 0] = 0  # expert 0 takes many pairs
    ids = ids.to(torch.int32).to(_dev())
    want = align(ids, experts, block_m, use_kernel=False)
    got = align(ids, experts, block_m, use_kernel=True)
    for a, b in zip(want, got):
        assert a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())


def _case(m, seed, skew):
    w = synthetic(SHAPE, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    # features around 1, so a shift of a router row moves every token's logit the same way
    x = (torch.randn(m, SHAPE.hidden, generator=g) + 1.0).to(torch.bfloat16)
    if skew:  # ragged: expert 0 takes most tokens, 6 and 7 none
        w.router[0] += 0.004
        w.router[6:] -= 0.1
    return w, x


CFG16 = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1,
         "num_warps": 4, "num_stages": 2}
CFG32 = {"BLOCK_SIZE_M": 32, "BLOCK_SIZE_N": 16, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 4,
         "num_warps": 4, "num_stages": 2}


@pytest.mark.slow
@pytest.mark.parametrize("m,skew,up,down", [
    (1, False, CFG16, CFG16),
    (5, True, CFG16, CFG32),     # down keeps its own BLOCK_SIZE_M: its own sort
    (19, True, CFG32, CFG32),
])
def test_fused_moe_matches_the_reference(m, skew, up, down):
    from harness.moe.triton_moe import FusedMoe
    dev = _dev()
    w, x = _case(m, seed=m, skew=skew)
    tw, ids = route(x.float(), w.router.float(), SHAPE.top_k)
    if skew:
        loads = torch.bincount(ids.flatten().long(), minlength=SHAPE.experts)
        assert loads[6:].sum() == 0 and loads.max() > loads.float().mean()
    ref = reference(x, w, tw, ids)
    out = FusedMoe(w.to(dev))(x.to(dev), tw.to(dev), ids.to(dev), up, down).float().cpu()
    assert torch.isfinite(out).all()
    err = (out - ref).norm() / ref.norm()
    assert err < 2e-2, float(err)


@pytest.mark.slow
def test_fused_moe_router_ties():
    """Every expert scores the same: the first k experts take every token (the rest none)."""
    from harness.moe.triton_moe import FusedMoe
    w, x = _case(4, seed=3, skew=False)
    w.router.zero_()
    tw, ids = route(x.float(), w.router.float(), SHAPE.top_k)
    assert ids.tolist() == [[0, 1]] * 4
    ref = reference(x, w, tw, ids)
    out = FusedMoe(w.to(_dev()))(x.to(_dev()), tw.to(_dev()), ids.to(_dev()), CFG16, CFG16)
    assert (out.float().cpu() - ref).norm() / ref.norm() < 2e-2


def test_config_files_round_trip_and_lookup(tmp_path):
    up = {1: dict(CFG32), 16: dict(CFG16), 64: dict(CFG32, BLOCK_SIZE_M=64)}
    name = configs.file_name(128, 768, "NVIDIA H200", dtype=configs.NVFP4_W4A16)
    assert name == "E=128,N=768,device_name=NVIDIA_H200,dtype=nvfp4_w4a16.json"
    path = configs.save(tmp_path / "configs" / configs.version_dir("3.6.0") / name, up)
    assert path.parent.name == "triton_3_6_0"
    assert configs.load(path) == up and path.read_text() == configs.dumps(up)
    assert configs.closest(up, 8) is up[1] or configs.closest(up, 8) == up[16]
    assert configs.closest(up, 8) == up[1]  # a tie goes to the smaller M, as in SGLang
    assert configs.closest(up, 40) == up[16] and configs.closest(up, 1000) == up[64]
    down = {1: dict(CFG16), 64: dict(CFG16)}
    p = configs.pick(up, down, 1)
    assert p.overridden and p.down["BLOCK_SIZE_M"] == 32 and p.down["BLOCK_SIZE_N"] == 32
    own = configs.pick(up, down, 1, force_shared_block_m=False)
    assert not own.overridden and own.down["BLOCK_SIZE_M"] == 16
    assert configs.pick(up, None, 16).down == up[16]  # no down file: the up file serves
    assert configs.default_config(4, 128)["BLOCK_SIZE_M"] == 16
    (tmp_path / "bad.json").write_text('{"1": {"BLOCK_SIZE_M": 16}}')
    with pytest.raises(ValueError, match="bad.json.*missing"):
        configs.load(tmp_path / "bad.json")


def _sglang(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("NVFP4_BENCH_REQUIRE_SGLANG_PARSERS"):
            raise RuntimeError(f"{path} missing (scripts/setup.sh installs SGLang's source)")
        pytest.skip("SGLang's source is not installed here (./.sglang-parsers)")
    return path


def test_sglangs_own_files_read_and_write_back_identically():
    """The RTX PRO 6000 files SGLang ships (up and down): our names, our reader, and the
    bytes our writer produces from what it read."""
    d = _sglang(SGLANG_CONFIGS / "configs" / "triton_3_6_0")
    for down in (False, True):
        name = configs.file_name(256, 512, PR_DEVICE, down=down)
        path = d / name
        assert path.exists(), name
        table = configs.load(path)
        assert configs.dumps(table) == path.read_text()
    up = configs.load(d / configs.file_name(256, 512, PR_DEVICE))
    down = configs.load(d / configs.file_name(256, 512, PR_DEVICE, down=True))
    for m in (1, 8, 64, 256, 4096):
        assert not configs.pick(up, down, m).overridden  # SGLang's shipped pair agrees


def test_rules_match_sglangs_source():
    src = _sglang(SGLANG_CONFIGS / "fused_moe_triton_config.py").read_text()
    tree = ast.parse(src)
    fns = {n.name: ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert "min(configs.keys(), key=lambda x: abs(x - M))" in fns["try_get_optimal_moe_config"]
    assert "down_config['BLOCK_SIZE_M'] = config['BLOCK_SIZE_M']" in fns["try_get_optimal_moe_config"]
    name_fn = fns["get_config_file_name"]
    for part in ("E={E},N={N},device_name={device_name}", ",dtype={dtype}",
                 ",block_shape={block_shape}", ",per_channel_quant=True", "_down"):
        assert part in name_fn, part
    default = fns["get_default_config"]
    assert "M <= E or (is_marlin and M <= 32)" in default


@pytest.mark.slow
def test_tune_writes_sglang_files_and_cells_use_them(tmp_path):
    """The tuner's files are SGLang-format; `autotune on` cells then run them, `down own`
    with down's own BLOCK_SIZE_M where it differs, and the cells go through the store."""
    from harness.moe import run as moe_run
    from harness.moe import tune
    space = [CFG16, CFG32]
    up, down = tune.tune("tiny-moe", [1, 5], _dev(), tmp_path, space=space)
    assert up.name.startswith("E=8,N=64,device_name=") and down.name.endswith("_down.json")
    assert up.parent.name.startswith("triton_")
    ups, downs = configs.load(up), configs.load(down)
    assert set(ups) == {1, 5} and all(c in space for c in [*ups.values(), *downs.values()])
    cells = moe_run.plan("tiny-moe", [1, 5], ["triton-moe"], ["on", "off"], ["shared", "own"])
    moe_run.run(cells, moe_run.MoeOptions(samples=3, warmup=1, config_dir=str(tmp_path)))
    by = {(c.autotune, c.down, c.tokens): c for c in cells}
    assert all(by[("on", d, t)].status == "ok" for d in ("shared", "own") for t in (1, 5))
    for t in (1, 5):
        shared, own = by[("on", "shared", t)], by[("on", "own", t)]
        assert shared.down_config["BLOCK_SIZE_M"] == shared.up_config["BLOCK_SIZE_M"]
        assert own.down_config == downs[t]  # down as tuned
        assert shared.health["ok"] and own.health["ok"] and str(up) in shared.config_source
    assert by[("off", "own", 1)].status == "skipped"
    assert by[("off", "shared", 5)].config_source == "SGLang's default config"


def test_without_gpu_or_interpreter_triton_moe_is_skipped(monkeypatch):
    from harness.moe import run as moe_run
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    (c,) = moe_run.plan("tiny-moe", [1], ["triton-moe"], ["off"], ["shared"])
    reason = moe_run.why_skipped(c, torch.device("cpu"), Path("/nonexistent"))
    assert reason and "needs an NVIDIA GPU or TRITON_INTERPRET=1" in reason


def test_moe_plan_rejects_bad_input():
    from harness.models import UnknownNameError
    from harness.moe import run as moe_run
    with pytest.raises(ValueError, match="has no MoE layers"):
        moe_run.plan("tiny", [1], ["triton-moe"], ["off"])
    with pytest.raises(UnknownNameError, match="valid MoE runners: flashinfer-cutlass-moe, .*, moe-ref, triton-moe"):
        moe_run.plan("tiny-moe", [1], ["nope"], ["off"])
    with pytest.raises(ValueError, match="down must be one of shared, own"):
        moe_run.plan("tiny-moe", [1], ["triton-moe"], ["off"], ["both"])
    with pytest.raises(ValueError, match="positive"):
        moe_run.plan("tiny-moe", [0], ["triton-moe"], ["off"])
