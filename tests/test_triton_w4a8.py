"""``triton-w4a8``: its math and reference on any machine, its kernel under TRITON_INTERPRET=1
(CPU) and on a real GPU."""

import os

import pytest
import torch

from harness import nvfp4
from harness.backends import fp8, get_backend
from harness.backends import triton_w4a8 as t8
from harness.backends import triton_w4a16 as t16
from harness.gemm import make_activations, make_weights, reference
from numerics import rel_err

CPU = torch.device("cpu")
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
GPU = torch.cuda.is_available()


def test_weight_exponent_keeps_the_largest_product_in_e4m3():
    w = make_weights(64, 256, seed=3, device=CPU, std=0.02)
    e = t8.weight_exponent(w.fp4.scales)
    top = nvfp4.E2M1_MAX * float(w.fp4.scales.float().max())
    assert top * 2.0 ** e <= fp8.E4M3_MAX < top * 2.0 ** (e + 1)
    w8, e2 = t8.weight_e4m3(w)
    assert e2 == e and w8.dtype == fp8.E4M3 and torch.isfinite(w8.float()).all()
    assert float(w8.float().abs().max()) <= fp8.E4M3_MAX


def test_w4a8_reference_rounds_the_weight_once_and_only_once():
    """The reference's weight is the exact e2m1 * sf * 2^E rounded to the nearest e4m3: where
    that product is already an e4m3 value (here: every scale a power of two) it is exact, so
    the W4A8 weight equals the W4A16 one and only the activation rounding differs."""
    import dataclasses

    w = make_weights(32, 128, seed=5, device=CPU, std=0.02)
    w.fp4 = dataclasses.replace(w.fp4, scales=torch.full_like(w.fp4.scales, 4.0))
    w8, e = t8.weight_e4m3(w)
    exact = nvfp4.dequantize_unscaled(w.fp4) * 2.0 ** e
    assert torch.equal(w8.float(), exact)
    x = make_activations(3, 128, seed=1, device=CPU)
    gsf = nvfp4.global_scale_for(x)
    a_scale = fp8.activation_scale(gsf)
    by_hand = fp8.quantize(x, a_scale).float() @ nvfp4.dequantize(w.fp4, torch.float32).T
    assert torch.allclose(reference("w4a8", w, x, gsf), by_hand * a_scale, rtol=1e-5, atol=1e-6)


def test_w4a8_math_is_visibly_not_w4a16():
    w = make_weights(64, 256, seed=7, device=CPU, std=0.02)
    x = make_activations(4, 256, seed=2, device=CPU)
    gsf = nvfp4.global_scale_for(x)
    gap = rel_err(reference("w4a8", w, x, gsf), reference("w4a16", w, x, gsf))
    assert 1e-3 < gap < 0.1  # FP8 error, not a wrong scale


def test_availability_without_a_gpu_and_on_old_gpus(monkeypatch):
    b = get_backend("triton-w4a8")
    assert (b.math, b.family, b.tunable) == ("w4a8", "nvfp4", True)
    if not INTERPRETING:
        assert "no GPU" in b.availability(CPU).reason
    monkeypatch.setattr(t8, "compute_capability", lambda device: 80)
    r = b.availability(torch.device("cuda"))
    assert not r.ok and "SM89+" in r.reason and "SM80" in r.reason


interpreted = pytest.mark.skipif(not INTERPRETING, reason="the interpreter runs where there is no "
                                 "GPU (set before triton is imported); on a GPU see the GPU tests")


@interpreted
@pytest.mark.parametrize("n,k", [(64, 256), (48, 96), (80, 192)])
@pytest.mark.parametrize("m", [1, 3, 33])
def test_default_config_matches_the_w4a8_reference(n, k, m):
    w = make_weights(n, k, seed=n + k, device=CPU, std=0.02)
    b = get_backend("triton-w4a8")
    x = make_activations(m, k, seed=m, device=CPU)
    gsf = nvfp4.global_scale_for(x)
    out = b.run(b.prepare(w), x, gsf)
    assert torch.isfinite(out).all()
    assert rel_err(out, reference("w4a8", w, x, gsf)) < 1e-2


@interpreted
@pytest.mark.parametrize("m,config", [
    (2, {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 3}),
    (17, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 4}),
    (40, {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 1}),
])
def test_split_k_and_ragged_tiles(m, config):
    n, k = 40, 320  # K not a multiple of SPLIT_K * BLOCK_K: some programs get no work
    w = make_weights(n, k, seed=1, std=0.05, device=CPU)
    b = get_backend("triton-w4a8")
    p = b.prepare(w)
    x = make_activations(m, k, seed=2, device=CPU)
    gsf = nvfp4.global_scale_for(x)
    out = t8.w4a8_matmul(x, gsf, p, config)
    assert rel_err(out, reference("w4a8", w, x, gsf)) < 1e-2
    assert torch.equal(out, t8.w4a8_matmul(x, gsf, p, config))  # counters reset


@interpreted
@pytest.mark.parametrize("kernel", ["w4a16", "w4a8"])
def test_block_scales_read_in_words_or_by_byte_give_the_same_output(kernel):
    """K a multiple of 64: the scales are read as int32 words of four by default; forced off,
    byte by byte. Both must give the same bits and the reference (rows and K ragged to the
    tile, so the words' masks matter)."""
    from harness.backends.triton_w4a16 import w4a16_matmul

    n, k, m = 40, 384, 20
    w = make_weights(n, k, seed=4, device=CPU, std=0.05)
    x = make_activations(m, k, seed=5, device=CPU)
    gsf = nvfp4.global_scale_for(x)
    config = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 256, "SPLIT_K": 2}
    if kernel == "w4a16":
        p = get_backend("triton").prepare(w)
        outs = [w4a16_matmul(x, p["words"], p["scales"], p["epilogue"], autotune=False,
                             config={**config, "SCALE_WORDS": words}) for words in (True, False)]
        ref = reference("w4a16", w, x, None)
    else:
        p = get_backend("triton-w4a8").prepare(w)
        outs = [t8.w4a8_matmul(x, gsf, p, {**config, "SCALE_WORDS": words})
                for words in (True, False)]
        ref = reference("w4a8", w, x, gsf)
    assert torch.equal(outs[0], outs[1])
    assert rel_err(outs[0], ref) < 1e-2


@interpreted
def test_autotune_path_with_large_negative_weights():
    w = make_weights(32, 128, seed=9, std=1.0, device=CPU)
    b = get_backend("triton-w4a8")
    p = b.prepare(w, autotune=True)
    for m in (1, 20):
        x = make_activations(m, 128, seed=m, device=CPU)
        gsf = nvfp4.global_scale_for(x)
        b.tune(p, x, gsf)
        assert rel_err(b.run(p, x, gsf), reference("w4a8", w, x, gsf)) < 1e-2


@interpreted
def test_interpreter_rounding_matches_torchs_e4m3_cast():
    """The interpreter path rounds in fp32 before its cast (the interpreter's own cast loses
    a carry into the exponent); it must give torch's e4m3 for normals, subnormals and ties."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(v_ptr, o_ptr, N: tl.constexpr):
        r = tl.arange(0, N)
        tl.store(o_ptr + r, t16._round_e4m3(tl.load(v_ptr + r)))

    g = torch.Generator().manual_seed(0)
    v = torch.cat([torch.randn(2048, generator=g) * 40,
                   torch.randn(1024, generator=g) * 0.01,  # e4m3 subnormals
                   torch.tensor([1.0625, 1.1875, 0.0146484375, -1.96, 3.0e-3, 0.0, 448.0])])
    v = torch.cat([v, torch.zeros(4096 - v.numel())])
    out = torch.empty_like(v)
    kernel[(1,)](v, out, N=4096)
    assert torch.equal(out, v.to(fp8.E4M3).float())


gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")


@gpu
@pytest.mark.parametrize("n,k", [(5120, 6144), (34816, 5120), (4096, 1024)])
def test_gpu_matches_the_w4a8_reference(n, k):
    dev = torch.device("cuda")
    b = get_backend("triton-w4a8")
    if not b.availability(dev).ok:
        pytest.skip(b.availability(dev).reason)
    w = make_weights(n, k, seed=n + k, device=dev, std=0.02)
    p = b.prepare(w)
    for m in (1, 7, 33, 64, 127, 300):
        x = make_activations(m, k, seed=m, device=dev)
        gsf = nvfp4.global_scale_for(x)
        out = b.run(p, x, gsf)
        assert torch.isfinite(out).all()
        assert rel_err(out, reference("w4a8", w, x, gsf)) < 1e-2, (n, k, m)


@gpu
def test_gpu_activation_quantization_is_fp8_quantize():
    dev = torch.device("cuda")
    x = make_activations(37, 5120, seed=4, device=dev) * 3
    gsf = nvfp4.global_scale_for(x) * 4  # some values saturate at 448
    got = t8.quantize_activations(x, gsf)
    assert torch.equal(got.float(), fp8.quantize(x, fp8.activation_scale(gsf)).float())


_COMPILE_PLAIN = r"""
import json, subprocess, sys, tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from harness.backends import triton_w4a8, triton_w4a16

name, scale_words, block_m, block_n, block_k, num_warps, stages = json.loads(sys.argv[1])
types = {"w_ptr": "*i32", "s_ptr": "*u8", "out_ptr": "*bf16", "ws_ptr": "*fp32",
         "cnt_ptr": "*i32", "scale_ptr": "*fp32", "xgsf_ptr": "*fp32", "w_scale_ptr": "*fp32",
         "to_e4m3": "fp32"}
if name == "w4a16":
    fn, types["x_ptr"] = triton_w4a16._gemm_kernel, "*bf16"
    const = {"USE_ASM": True, "GDC": False}
else:
    fn, types["a_ptr"] = triton_w4a8._w4a8_kernel, "*fp8e4nv"
    const = {"USE_ASM": True}
const.update(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=1,
             SCALE_WORDS=scale_words)
sig = {a: "constexpr" if a in const else types.get(a, "i32") for a in fn.arg_names}
aligned = [a for a in sig if a.endswith("_ptr") or a in ("N", "K", "KW", "stride_xm",
                                                          "stride_am", "stride_om")]
src = ASTSource(fn=fn, signature=sig,
                constexprs={(fn.arg_names.index(n),): v for n, v in const.items()},
                attrs={(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned})
kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                        options={"num_warps": num_warps, "num_stages": stages})
with tempfile.TemporaryDirectory() as tmp:
    with open(f"{tmp}/k.ptx", "w") as f:
        f.write(kernel.asm["ptx"])
    report = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", f"{tmp}/k.ptx", "-o",
                             f"{tmp}/k.o"], capture_output=True, text=True, check=True)
print(json.dumps({"ptx": kernel.asm["ptx"], "report": report.stderr}))
"""


@pytest.mark.parametrize("kernel", ["w4a16", "w4a8"])
@pytest.mark.parametrize("scale_words", [True, False])
def test_plain_tensor_core_kernels_copy_their_block_scales_ahead(kernel, scale_words):
    """Compiled for sm_90a here (no GPU): the K loop of the plain tensor-core kernels (the
    ``triton`` backend's M > 64 path and ``triton-w4a8``) reads the block scales in 4-byte
    words, which Triton's pipeline copies ahead like the weight, so no load of the loop is
    left synchronous (only the epilogue's scalar scales remain) and nothing spills. Read
    byte by byte (``SCALE_WORDS`` off, as before) the byte gathers are there: each one
    waited on DRAM every K step, half of W4A8's time on an H100 (docs/PERF.md). The weight
    words are copied in 16-byte pieces (K / 8 passed as its own argument)."""
    import re

    pytest.importorskip("triton.backends.nvidia.compiler")
    from sm90_compile import run_compile

    out = run_compile(_COMPILE_PLAIN, [kernel, scale_words, 64, 64, 128, 4, 3])
    byte_loads = re.findall(r"ld\.global[.a-z0-9]*\.[ub]8\b", out["ptx"])
    loads = re.findall(r"\bld\.global", out["ptx"])
    copies = re.findall(r"cp\.async\.c[ga]\.shared\.global(?:\.L2::\w+)?\s*\[[^\]]*\],\s*"
                        r"\[[^\]]*\],\s*(0x\w+|\d+)", out["ptx"])
    if scale_words:
        assert not byte_loads
        assert len(loads) <= (1 if kernel == "w4a16" else 2), loads  # the epilogue's scales
        # KW passed on its own: the weight words (and the activations) in 16-byte pieces,
        # the scale words in 4; no 8-byte copies of half a weight row's piece
        assert copies and set(copies) <= {"0x10", "0x4"}, copies
    else:
        assert len(byte_loads) >= 8
    assert "0 bytes spill stores" in out["report"], out["report"]
