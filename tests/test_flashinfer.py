"""The flashinfer-* backends against the real flashinfer-python (pinned in scripts/setup.sh):
its own support tables, problem-size checks, exceptions and tuner; only kernel launches and
device probes are stand-ins (tests/flashinfer_kernels.py)."""

import importlib

import pytest
import torch

import flashinfer_kernels as fk
from harness import gemm, nvfp4
from harness.backends import flashinfer_fp4, flashinfer_lib, fp8, get_backend
from harness.backends.base import LayerWeights
from harness.backends.flashinfer_fp4 import FlashInferFP4
from harness.backends.flashinfer_lib import BackendRefused
from harness.backends.fp8 import FlashInferFP8
from harness.models import get_model
from harness.models import weights as weights_mod

CPU = torch.device("cpu")
GPU = torch.device("cuda")  # only named: availability() asks the patched capability
FP4 = ["cudnn", "cutlass", "b12x", "cute-dsl", "auto"]
QWEN = ["qwen3.6-27b", "qwen3-32b", "qwen3-8b", "qwen3-30b-a3b"]


@pytest.fixture(autouse=True)
def _real(monkeypatch):
    fk.real_flashinfer()
    # availability() probes on "the GPU": make its tensors where the test runs.
    for mod in (flashinfer_fp4, fp8):
        orig = mod._probe_args
        monkeypatch.setattr(mod, "_probe_args", lambda device, orig=orig: orig(CPU))


def _at(monkeypatch, sm):
    """The harness sees an SM``sm`` GPU; cells run their (CPU) tensors through it."""
    for mod in (flashinfer_fp4, fp8, flashinfer_lib):
        monkeypatch.setattr(mod, "compute_capability", lambda d: sm)
    for cls in (FlashInferFP4, FlashInferFP8):
        monkeypatch.setattr(cls, "availability",
                            lambda self, device, orig=cls.availability: orig(self, GPU))


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture
def layer():
    w = gemm.make_weights(256, 512, seed=3, device=CPU, std=0.02)
    x = gemm.make_activations(5, 512, seed=4, device=CPU)
    return w, x, nvfp4.global_scale_for(x)


def test_the_real_package_is_the_pinned_one():
    assert fk.real_flashinfer().__version__ == fk.PINNED


@pytest.mark.parametrize("fi_backend", FP4)
def test_fp4_call_passes_flashinfer_checks_and_computes_the_w4a4_product(monkeypatch, layer,
                                                                        fi_backend):
    calls = fk.emulate(monkeypatch, sm=120, cuda="13.0")
    _at(monkeypatch, 120)
    b = FlashInferFP4(fi_backend)
    assert b.availability(GPU).ok, b.availability(GPU).reason
    w, x, gsf = layer
    out = b.run(b.prepare(w), x, gsf)
    # auto on SM120 with CUDA >= 12.9: FlashInfer's heuristic puts b12x first
    assert calls.fp4[-1]["backend"] == ("b12x" if fi_backend == "auto" else fi_backend)
    assert _rel(out, gemm.reference("w4a4", w, x, gsf)) < b.tolerance


def _zero_layer(n: int, k: int) -> LayerWeights:
    """A layer of the real shape without quantizing real data (only layouts matter here)."""
    fp4 = nvfp4.NVFP4Tensor(torch.zeros((n, k // 2), dtype=torch.uint8),
                            torch.ones((n, k // 16), dtype=torch.float32).to(torch.float8_e4m3fn),
                            torch.tensor(1.0))
    return LayerWeights(fp4=fp4)


def _qwen_shapes():
    return sorted({s for m in QWEN for s in weights_mod.all_linears(get_model(m)).values()})


@pytest.mark.parametrize("sm,cuda", [(120, "13.0"), (100, "13.0"), (121, "12.9")])
def test_fp4_arguments_pass_flashinfer_checks_for_every_qwen_layer(monkeypatch, sm, cuda):
    """Every linear layer of every Qwen model, decode and prefill M: the prepared arguments
    are accepted by mm_fp4's own checks (or refused in FlashInfer's words), and what
    reaches the kernel is [M, K] x [K, N]."""
    calls = fk.emulate(monkeypatch, sm=sm, cuda=cuda, numeric=False)
    _at(monkeypatch, sm)
    refused: dict[str, set] = {}
    for n, k in _qwen_shapes():
        w = _zero_layer(n, k)
        for name in FP4:
            b = FlashInferFP4(name)
            if not b.availability(GPU).ok:
                refused.setdefault(name, set()).add(b.availability(GPU).reason)
                continue
            prepared = b.prepare(w)
            for m in (1, 16, 129):
                x = torch.full((m, k), 0.5, dtype=torch.bfloat16)
                try:
                    out = b.run(prepared, x, torch.tensor(100.0))
                except BackendRefused as e:
                    refused.setdefault(name, set()).add(str(e))
                    continue
                assert out.shape == (m, n) and out.dtype == torch.bfloat16
                assert (calls.fp4[-1]["m"], calls.fp4[-1]["n"], calls.fp4[-1]["k"]) == (m, n, k)
    # cuDNN and CUTLASS take every Qwen shape on every NVFP4 GPU
    assert "cudnn" not in refused and "cutlass" not in refused
    if sm == 100:
        assert any("does not support backend 'b12x' with capability 100" in r
                   for r in refused["b12x"])
    else:
        assert "b12x" not in refused  # K is a multiple of 32 everywhere


def test_fp4_refusals_are_skipped_cells_in_flashinfers_words(monkeypatch):
    """b12x under CUDA 12.8 and CuTe-DSL with N, K not multiples of 64 on SM120: FlashInfer's
    checks refuse them, and the cells say so as `skipped`, never `failed`."""
    fk.emulate(monkeypatch, sm=120, cuda="12.8")
    _at(monkeypatch, 120)
    cells = gemm.plan("tiny", [1], ["flashinfer-b12x", "flashinfer-cutlass"], ["off"])
    opts = gemm.GemmOptions(samples=3, warmup=1, cold_l2=False, isolate=False)
    for group in (cells[:4], cells[4:]):
        gemm.run_group(group, opts, device=CPU)
    by = {(c.backend, c.layer): c for c in cells}
    b12x = by[("flashinfer-b12x", "gate_up_proj")]
    assert b12x.status == "skipped"
    assert "mm_fp4 refuses" in b12x.reason and "requires CUDA 12.9 or later" in b12x.reason
    assert by[("flashinfer-cutlass", "gate_up_proj")].status == "ok"

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    b = FlashInferFP4("cute-dsl")
    w = gemm.make_weights(96, 128, seed=1, device=CPU, std=0.02)  # N = 96: not a multiple of 64
    x = gemm.make_activations(2, 128, seed=2, device=CPU)
    with pytest.raises(BackendRefused) as e:
        b.run(b.prepare(w), x, nvfp4.global_scale_for(x))
    assert "mm_fp4 refuses: ValueError" in str(e.value)


def test_fp4_on_sm90_is_refused_by_flashinfers_own_table(monkeypatch):
    fk.emulate(monkeypatch, sm=90, cuda="13.0")
    _at(monkeypatch, 90)
    for name in FP4:
        r = FlashInferFP4(name).availability(GPU)
        assert not r.ok
        assert r.reason.startswith(f"flashinfer {fk.PINNED} mm_fp4 refuses: BackendSupportedError")
    assert "does not support backend 'cudnn' with capability 90" in \
        FlashInferFP4("cudnn").availability(GPU).reason
    assert "No suitable auto backends found for mm_fp4" in FlashInferFP4("auto").availability(GPU).reason


def test_without_a_gpu_the_reason_names_flashinfers_table(monkeypatch):
    r = FlashInferFP4("b12x").availability(CPU)
    assert not r.ok and r.reason == "flashinfer b12x needs an NVIDIA GPU (SM120/SM121); this machine has none"
    r = FlashInferFP8("cublas").availability(CPU)
    assert not r.ok and "(SM89/SM90/SM100/SM103/SM107/SM110/SM120/SM121)" in r.reason


def test_autotune_tunes_inside_autotune_true_from_an_empty_cache(monkeypatch, layer):
    calls = fk.emulate(monkeypatch, sm=120)
    at = importlib.import_module("flashinfer.autotuner")
    tuner = at.AutoTuner.get()
    tuner.profiling_cache[("stale", "entry")] = (0, 0, None)
    b = FlashInferFP4("cutlass")
    w, x, gsf = layer
    p = b.prepare(w)
    state = b.fresh_tuning()
    assert ("stale", "entry") not in tuner.profiling_cache
    assert "cleared" in state
    b.tune(p, x, gsf)
    assert calls.choose and all(c["tuning"] for c in calls.choose)
    assert calls.choose[-1]["op"] == "fp4_gemm" and calls.choose[-1]["runners"] == ["cutlass"]
    calls.choose.clear()
    b.run(p, x, gsf)
    assert [c["tuning"] for c in calls.choose] == [False]


@pytest.mark.parametrize("mistake", ["b_not_transposed", "b_sf_not_transposed", "alpha_float",
                                     "alpha_not_inverted", "swapped_sf"])
def test_layout_mistakes_are_refused_or_caught_by_health(monkeypatch, layer, mistake):
    """What the adapter must get right: each mistake is refused by FlashInfer's checks or
    gives numbers the health check rejects (the stand-in kernel reads the real layout)."""
    from harness.health import check
    fk.emulate(monkeypatch, sm=120)
    fi = fk.real_flashinfer()
    w, x, gsf = layer
    b = FlashInferFP4("cutlass")
    args, kwargs = b.arguments(b.prepare(w), x, gsf)
    a, bt, a_sf, b_sft, alpha, dtype, out = args
    if mistake == "b_not_transposed":
        bt = bt.T
    elif mistake == "b_sf_not_transposed":
        b_sft = b_sft.T
    elif mistake == "alpha_float":
        alpha = alpha.double()
    elif mistake == "alpha_not_inverted":
        alpha = 1 / alpha
    elif mistake == "swapped_sf":
        a_sf, b_sft = b_sft.T, a_sf.T
    try:
        res = fi.mm_fp4(a, bt, a_sf, b_sft, alpha, dtype, out, **kwargs)
    except (ValueError, RuntimeError, IndexError):
        return  # refused (FlashInfer's ValueError) or unreadable by the kernel
    assert not check(res, gemm.reference("w4a4", w, x, gsf), 2e-2).ok


# ---- FP8 through flashinfer.mm_fp8 (what runs on SM90) ----

@pytest.mark.parametrize("fi_backend,runners", [("cublas", ["cublas"]), ("cudnn", ["cudnn"]),
                                                ("auto", ["cublas", "cudnn"])])
def test_fp8_call_passes_flashinfer_checks_on_sm90(monkeypatch, layer, fi_backend, runners):
    calls = fk.emulate(monkeypatch, sm=90)
    _at(monkeypatch, 90)
    b = FlashInferFP8(fi_backend)
    assert b.availability(GPU).ok, b.availability(GPU).reason
    w, x, gsf = layer
    out = b.run(b.prepare(w), x, gsf)
    assert calls.fp8[-1]["runners"] == runners  # auto: FlashInfer's own SM90 candidates
    assert _rel(out, gemm.reference("w8a8", w, x, gsf)) < b.tolerance
    # the W8A8 result is not the bf16 one: FP8 error is visible
    assert _rel(gemm.reference("w8a8", w, x, gsf), gemm.reference("bf16", w, x, gsf)) > 1e-3


def test_fp8_arguments_pass_flashinfer_checks_for_every_qwen_layer(monkeypatch):
    calls = fk.emulate(monkeypatch, sm=90, numeric=False)
    for n, k in _qwen_shapes():
        w8 = torch.zeros((n, k), dtype=fp8.E4M3)
        prepared = {"w": w8, "w_scale": torch.ones(1)}
        for name in ("cublas", "cudnn", "auto"):
            b = FlashInferFP8(name)
            for m in (1, 16, 64, 256):
                out = b.run(prepared, torch.full((m, k), 0.5, dtype=torch.bfloat16), torch.tensor(100.0))
                assert out.shape == (m, n)
                assert (calls.fp8[-1]["m"], calls.fp8[-1]["n"], calls.fp8[-1]["k"]) == (m, n, k)


def test_fp8_refusals_keep_flashinfers_words(monkeypatch):
    fk.emulate(monkeypatch, sm=80)
    _at(monkeypatch, 80)
    r = FlashInferFP8("cublas").availability(GPU)
    assert not r.ok and "does not support backend 'cublas' with capability 80" in r.reason
    fk.emulate(monkeypatch, sm=90)
    fi = fk.real_flashinfer()
    a = torch.zeros((4, 64), dtype=fp8.E4M3)
    with pytest.raises(BackendRefused) as e:  # a transposed weight is not the unprocessed [N, K]
        flashinfer_lib.call(fi, "mm_fp8", a, torch.zeros((64, 32), dtype=fp8.E4M3).T,
                            torch.ones(1), torch.bfloat16, backend="cublas")
    assert "require contiguous (m, k) and unprocessed (n, k) inputs" in str(e.value)


def test_a_failure_after_the_checks_is_not_a_refusal(monkeypatch, layer):
    """An error inside the kernel is a failed cell: only FlashInfer's checks make skips."""
    fk.emulate(monkeypatch, sm=90)
    gb = importlib.import_module("flashinfer.gemm.gemm_base")

    def crash(*a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(gb, "fp8_gemm_sm100", crash)
    w, x, gsf = layer
    b = FlashInferFP8("cublas")
    with pytest.raises(RuntimeError, match="illegal memory access"):
        b.run(b.prepare(w), x, gsf)


def test_fp8_gemm_cells_tune_per_cell_and_record_the_cache_state(monkeypatch):
    calls = fk.emulate(monkeypatch, sm=90)
    _at(monkeypatch, 90)
    cells = gemm.plan("tiny", [1, 3], ["flashinfer-fp8-cublas"], ["on"], layers=["qkv_proj"])
    gemm.run_group(cells, gemm.GemmOptions(samples=3, warmup=1, cold_l2=False, isolate=False),
                   device=CPU)
    assert [c.status for c in cells] == ["ok", "ok"], [c.reason for c in cells]
    assert all("cleared before tuning" in c.tuning for c in cells)
    assert any(c["tuning"] for c in calls.fp8) and not calls.fp8[-1]["tuning"]
    assert all(c.health["ok"] for c in cells)


def test_torch_fp8_matches_the_w8a8_math_on_the_cpu(layer):
    w, x, gsf = layer
    b = get_backend("torch-fp8")
    out = b.run(b.prepare(w), x, gsf)
    assert _rel(out, gemm.reference("w8a8", w, x, gsf)) < b.tolerance
