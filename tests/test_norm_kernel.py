"""The add+RMSNorm and SiLU-mul kernels against the engine's torch ops (interpreter on CPU),
and programmatic dependent launch: who turns it on and what the launchers pass."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")

from harness import pdl  # noqa: E402
from harness.backends import get_backend, triton_w4a16  # noqa: E402
from harness.backends.torch_dequant import TorchDequant  # noqa: E402
from harness.models import get_model, norm_kernel  # noqa: E402
from harness.models import weights as wmod  # noqa: E402
from harness.models.engine import (PDL_MAX_BATCH, DecodeEngine, PreparedModel,  # noqa: E402
                                   add_rms_norm, silu_mul)

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
interpreted = pytest.mark.skipif(DEV.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="on the CPU the kernels need TRITON_INTERPRET=1")


def _bf16(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16).to(DEV)


@interpreted
@pytest.mark.parametrize("shape", [(3, 96), (2, 1, 40), (1, 5120)])
def test_add_rms_norm_matches_torch(shape):
    x, y = _bf16(*shape, seed=1), _bf16(*shape, seed=2, scale=3.0)
    w = (1 + 0.1 * _bf16(shape[-1], seed=3).float()).to(torch.bfloat16)
    total, normed = norm_kernel.add_rms_norm(x, y, w, 1e-6)
    ref_total, ref_normed = add_rms_norm(x, y, w, 1e-6)
    assert total.shape == normed.shape == x.shape and normed.dtype == torch.bfloat16
    if DEV.type == "cuda":
        assert torch.equal(total, ref_total)  # one bf16 rounding of an exact fp32 sum
    else:  # the interpreter's fp32 -> bf16 cast truncates: at most one bf16 step apart
        assert torch.allclose(total.float(), ref_total.float(), rtol=8e-3, atol=0)
    # The norm of the kernel's own sum; the sum of squares may add in another order and the
    # interpreter truncates: at most one bf16 step apart.
    _, ref_normed = add_rms_norm(total, torch.zeros_like(total), w, 1e-6)
    assert torch.allclose(normed.float(), ref_normed.float(), rtol=8e-3, atol=1e-3)
    # A norm over the wrong axis or without the weight is far off.
    assert not torch.allclose(normed.float(), (ref_normed.float() / w.float()), rtol=0.02)


@interpreted
@pytest.mark.parametrize("rows,inter", [(1, 1500), (3, 256), (2, 2048)])
def test_silu_mul_matches_torch(rows, inter):
    gu = _bf16(rows, 1, 2 * inter, seed=inter, scale=2.0)
    out = norm_kernel.silu_mul(gu)
    ref = silu_mul(gu)
    assert out.shape == ref.shape == (rows, 1, inter)
    # Two bf16 roundings (SiLU, product): one step apart on the GPU; the interpreter truncates.
    rtol = 8e-3 if DEV.type == "cuda" else 1.6e-2
    assert torch.allclose(out.float(), ref.float(), rtol=rtol, atol=1e-3)
    swapped = silu_mul(torch.cat(gu.chunk(2, dim=-1)[::-1], dim=-1))
    assert not torch.allclose(out.float(), swapped.float(), rtol=0.1, atol=0.05)


def test_kernels_reject_bad_input():
    x = torch.zeros(2, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="one shape"):
        norm_kernel.add_rms_norm(x, torch.zeros(2, 4, dtype=torch.bfloat16), torch.ones(8), 1e-6)
    with pytest.raises(ValueError, match="one shape"):
        norm_kernel.add_rms_norm(x, x.float(), torch.ones(8), 1e-6)
    with pytest.raises(ValueError, match="hidden size 8"):
        norm_kernel.add_rms_norm(x, x, torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match="bf16"):
        norm_kernel.silu_mul(torch.zeros(2, 7, dtype=torch.bfloat16))


@interpreted
@pytest.mark.parametrize("model", ["tiny", "tiny-hybrid"])
def test_engine_with_norm_kernels_agrees_with_torch_ops(model):
    cfg = get_model(model)
    prompt = torch.randint(0, cfg.vocab, (2, 5), generator=torch.Generator().manual_seed(0))
    tokens = [torch.tensor([3, 4]), torch.tensor([7, 8])]
    logits = []
    for fused in (False, True):
        pm = PreparedModel(wmod.synthetic(cfg, DEV, seed=0), get_backend("torch-dequant"), DEV,
                           fused_norm=fused)
        assert (pm.ops.add_rms_norm is norm_kernel.add_rms_norm) == fused
        eng = DecodeEngine(pm, 2, 16)
        pm.set_mode("calibrate")
        eng.prefill(prompt.to(DEV))
        pm.freeze_calibration()
        pm.set_mode("run")
        out = [eng.prefill(prompt.to(DEV)).float()]
        out += [eng.teacher_step(t.to(DEV)).float() for t in tokens]
        logits.append(torch.stack(out))
    assert torch.isfinite(logits[1]).all()
    # the tolerance of the other fused kernels: the interpreter truncates every bf16 cast
    assert float((logits[1] - logits[0]).norm() / logits[0].norm()) < 2e-2


# ---- programmatic dependent launch -------------------------------------------------------

def test_launch_options_only_inside_launches_and_only_where_supported(monkeypatch):
    cpu = torch.device("cpu")
    with pdl.launches(True):
        assert pdl.active() and pdl.launch_options(cpu) == {}  # no GPU: nothing to add
    monkeypatch.setattr(pdl, "supported", lambda device: True)
    assert pdl.launch_options(cpu) == {}
    with pdl.launches(True):
        assert pdl.launch_options(cpu) == {"launch_pdl": True, "GDC": True}
        with pdl.launches(False):
            assert pdl.launch_options(cpu) == {}
        assert pdl.active()
    with pytest.raises(RuntimeError):
        with pdl.launches(True):
            raise RuntimeError("a failing step")
    assert not pdl.active()


def test_supported_needs_sm90_and_compiled_kernels(monkeypatch):
    assert not pdl.supported(torch.device("cpu"))
    monkeypatch.setattr(pdl, "compute_capability", lambda device: 90)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert pdl.supported(torch.device("cuda"))
    monkeypatch.setattr(pdl, "compute_capability", lambda device: 89)
    assert not pdl.supported(torch.device("cuda"))
    monkeypatch.setattr(pdl, "compute_capability", lambda device: 120)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not pdl.supported(torch.device("cuda"))


class _Recording(TorchDequant):
    """torch-dequant that notes whether PDL launches were on for each GEMM."""

    def __init__(self):
        self.seen = []

    def run(self, prepared, x, x_global_scale):
        self.seen.append(pdl.active())
        return super().run(prepared, x, x_global_scale)


@pytest.mark.parametrize("on", [True, False])
def test_engine_turns_pdl_on_for_its_step_only(on):
    backend = _Recording()
    pm = PreparedModel(wmod.synthetic(get_model("tiny-hybrid"), torch.device("cpu"), seed=0),
                       backend, torch.device("cpu"), pdl=on)
    eng = DecodeEngine(pm, 1, 8)
    eng.prefill(torch.tensor([[1, 2, 3]]))
    eng.step()
    assert backend.seen and set(backend.seen) == {on}
    assert not pdl.active()  # a GEMM timed on its own afterwards launches plainly
    assert ("programmatic dependent launch" in pm.ops.describe()) == on
    # Above PDL_MAX_BATCH (where it measured slower) the engine launches plainly.
    backend.seen.clear()
    big = DecodeEngine(pm, PDL_MAX_BATCH + 1, 8)
    big.prefill(torch.tensor([[1, 2, 3]] * (PDL_MAX_BATCH + 1)))
    big.step()
    assert backend.seen and set(backend.seen) == {False}
    assert "programmatic" not in pm.ops.describe(batch=PDL_MAX_BATCH + 1)


class _FakeKernel:
    """Stands in for a Triton kernel: records the launch keywords, writes nothing."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs)
        return launch


@pytest.mark.parametrize("on", [True, False])
def test_launchers_pass_pdl_options_to_the_kernels(monkeypatch, on):
    monkeypatch.setattr(pdl, "supported", lambda device: True)
    gemv, gemm = _FakeKernel(), _FakeKernel()
    monkeypatch.setattr(triton_w4a16, "_kernels", lambda autotune: (gemv, gemm))
    norm, silu = _FakeKernel(), _FakeKernel()
    monkeypatch.setattr(norm_kernel, "_add_rms_norm_kernel", norm)
    monkeypatch.setattr(norm_kernel, "_silu_mul_kernel", silu)
    x = torch.zeros(1, 128, dtype=torch.bfloat16)
    words = torch.zeros(64, 16, dtype=torch.int32)
    scales = torch.zeros(64, 8, dtype=torch.uint8)
    with pdl.launches(on):
        triton_w4a16.w4a16_matmul(x, words, scales, torch.ones(1), autotune=False)
        triton_w4a16.w4a16_matmul(x.repeat(3, 1), words, scales, torch.ones(1), autotune=False)
        norm_kernel.add_rms_norm(x, x, torch.ones(128, dtype=torch.bfloat16), 1e-6)
        norm_kernel.silu_mul(x)
    for kernel in (gemv, gemm, norm, silu):
        assert len(kernel.launches) == 1
        kw = kernel.launches[0]
        assert kw.get("launch_pdl", False) == on and kw.get("GDC", False) == on
