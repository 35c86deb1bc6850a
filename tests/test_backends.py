"""Backends: reference math, availability reasons, the FlashInfer contract against a fake."""

import pytest
import torch

import fake_flashinfer
from harness import nvfp4
from harness.backends import BACKENDS, get_backend, resolve
from harness.backends import flashinfer_fp4
from harness.backends.flashinfer_fp4 import FlashInferFP4
from harness.gemm import make_activations, make_weights, reference
from harness.models import UnknownNameError

CPU = torch.device("cpu")


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture
def layer():
    w = make_weights(96, 128, seed=3, device=CPU, std=0.02)
    x = make_activations(5, 128, seed=4, device=CPU)
    return w, x, nvfp4.global_scale_for(x)


def test_torch_ref_is_alpha_times_unscaled_product(layer):
    w, x, gsf = layer
    ref = get_backend("torch-ref")
    out = ref.run(ref.prepare(w), x, gsf)
    # Independent path: dequantize both operands fully, then matmul.
    xq = nvfp4.quantize(x, gsf)
    expect = nvfp4.dequantize(xq, torch.float32) @ nvfp4.dequantize(w.fp4, torch.float32).T
    assert _rel(out, expect) < 5e-3


@pytest.mark.parametrize("name", ["torch-ref", "torch-bf16", "torch-dequant"])
def test_torch_backends_match_their_math(layer, name):
    w, x, gsf = layer
    b = get_backend(name)
    out = b.run(b.prepare(w), x, gsf)
    assert out.dtype == torch.bfloat16 and out.shape == (5, 96)
    assert _rel(out, reference(b.math, w, x, gsf)) < b.tolerance


def test_quantization_error_is_visible_between_maths(layer):
    # The references differ by the NVFP4 error, so a backend checked against the wrong one fails.
    w, x, gsf = layer
    assert _rel(reference("w4a4", w, x, gsf), reference("bf16", w, x, gsf)) > 0.05


def test_unknown_backend_lists_valid_names():
    with pytest.raises(UnknownNameError) as e:
        resolve("torch-ref,cublas-magic")
    assert "cublas-magic" in str(e.value) and "flashinfer-cutlass" in str(e.value)
    # every backend with a GEMM of its own; sglang-auto is a name for SGLang's engines
    assert [b.name for b in resolve("all")] == [n for n, b in BACKENDS.items() if b.native]
    assert "sglang-auto" in BACKENDS and "sglang-auto" not in [b.name for b in resolve("all")]


def test_flashinfer_skip_reasons_cpu_and_sm90(monkeypatch):
    cudnn = FlashInferFP4("cudnn")
    assert not cudnn.availability(CPU).ok
    assert "this machine has none" in cudnn.availability(CPU).reason
    monkeypatch.setattr(flashinfer_fp4, "compute_capability", lambda d: 90)
    r = cudnn.availability(torch.device("cuda"))
    assert not r.ok
    assert r.reason == "flashinfer cudnn needs SM100/SM103/SM107/SM110/SM120/SM121; this GPU is SM90"
    assert "SM120/SM121; this GPU is SM90" in FlashInferFP4("b12x").availability(torch.device("cuda")).reason


def test_flashinfer_missing_package_reason(monkeypatch):
    monkeypatch.setattr(flashinfer_fp4, "compute_capability", lambda d: 120)
    monkeypatch.setattr(torch.version, "cuda", "12.9")

    def boom(*a, **k):
        raise ImportError("No module named 'flashinfer'")
    monkeypatch.setattr(flashinfer_fp4, "_flashinfer", boom)
    r = FlashInferFP4("cutlass").availability(torch.device("cuda"))
    assert not r.ok and "pip install" in r.reason


@pytest.mark.parametrize("fi_backend", ["cudnn", "cutlass", "b12x", "auto"])
def test_flashinfer_call_satisfies_contract(monkeypatch, layer, fi_backend):
    rec = fake_flashinfer.install(monkeypatch)
    monkeypatch.setattr(flashinfer_fp4, "compute_capability", lambda d: 120)
    monkeypatch.setattr(torch.version, "cuda", "12.9")
    b = FlashInferFP4(fi_backend)
    assert b.availability(torch.device("cuda")).ok
    w, x, gsf = layer
    out = b.run(b.prepare(w), x, gsf)
    assert rec.mm_calls[-1]["backend"] == fi_backend
    assert _rel(out, reference("w4a4", w, x, gsf)) < b.tolerance


def test_flashinfer_unsupported_backend_via_is_backend_supported(monkeypatch):
    fake_flashinfer.install(monkeypatch)
    monkeypatch.setattr(flashinfer_fp4, "compute_capability", lambda d: 110)
    r = FlashInferFP4("cute-dsl").availability(torch.device("cuda"))
    assert not r.ok  # SM110 is not in cute-dsl's list


def test_flashinfer_autotune_runs_inside_autotune_true(monkeypatch, layer):
    rec = fake_flashinfer.install(monkeypatch)
    b = FlashInferFP4("cutlass")
    w, x, gsf = layer
    p = b.prepare(w)
    b.tune(p, x, gsf)
    assert rec.autotune_entries == [True]
    assert rec.mm_calls and all(c["tuning"] for c in rec.mm_calls)
    rec.mm_calls.clear()
    b.run(p, x, gsf)
    assert rec.mm_calls == [{"backend": "cutlass", "tuning": False}]


def _operands(layer):
    w, x, gsf = layer
    a, a_sf = fake_flashinfer.nvfp4_quantize(x, gsf.reshape(1))
    b_sf = nvfp4.swizzle_128x4(w.fp4.scales).view(torch.uint8)
    alpha = (1.0 / (gsf * w.fp4.global_scale)).float()
    return w, x, gsf, a, a_sf, w.fp4.packed, b_sf, alpha


@pytest.mark.parametrize("mistake", ["b_not_transposed", "b_sf_not_transposed",
                                     "linear_scales", "alpha_float", "swapped_sf"])
def test_fake_rejects_contract_violations(monkeypatch, layer, mistake):
    w, x, gsf, a, a_sf, b, b_sf, alpha = _operands(layer)
    mm = fake_flashinfer._mm_fp4
    args = dict(a=a, b=b.T, a_descale=a_sf, b_descale=b_sf.T, alpha=alpha)
    if mistake == "b_not_transposed":
        args["b"] = b
    elif mistake == "b_sf_not_transposed":
        args["b_descale"] = b_sf
    elif mistake == "linear_scales":
        args["a_descale"] = nvfp4.quantize(x, gsf).scales.view(torch.uint8)
    elif mistake == "alpha_float":
        args["alpha"] = float(alpha)
    elif mistake == "swapped_sf":
        args["a_descale"], args["b_descale"] = b_sf.T, a_sf
    with pytest.raises((fake_flashinfer.ContractError, AttributeError)):
        mm(**args)


def test_wrong_alpha_is_caught_by_health(layer):
    from harness.health import check
    w, x, gsf, a, a_sf, b, b_sf, alpha = _operands(layer)
    out = fake_flashinfer._mm_fp4(a, b.T, a_sf, b_sf.T, gsf * w.fp4.global_scale)  # not inverted
    h = check(out, reference("w4a4", w, x, gsf), 2e-2)
    assert not h.ok


def test_triton_skip_reason_without_gpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    r = get_backend("triton").availability(CPU)
    assert not r.ok and "needs an NVIDIA GPU" in r.reason
