"""The fused Gated DeltaNet decode kernel against the engine's torch ops (interpreter on CPU)."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")

from harness.backends import get_backend  # noqa: E402
from harness.models import get_model  # noqa: E402
from harness.models import weights as wmod  # noqa: E402
from harness.models.engine import DecodeEngine, PreparedModel, gated_norm, gdn_gates, gdn_step  # noqa: E402
from harness.models.gdn_kernel import Workspace, gdn_decode, head_split  # noqa: E402

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
pytestmark = pytest.mark.skipif(DEV.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="on the CPU the kernel needs TRITON_INTERPRET=1")


def _inputs(b, hk, hv, d, w, seed, hidden=96):
    g = torch.Generator().manual_seed(seed)
    c = 2 * hk * d + hv * d

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEV)

    return dict(
        conv_w=r(c, w, scale=0.5).to(torch.bfloat16),
        a_log=r(hv, scale=0.5), dt_bias=r(hv, scale=0.5),
        norm_w=(1 + r(d, scale=0.1)).to(torch.bfloat16),
        ring=r(b, c, w).to(torch.bfloat16),
        S=r(b, hv, d, d, scale=0.1),
        ba_w=r(2 * hv, hidden, scale=0.3).to(torch.bfloat16),
        tokens=[(r(b, hidden).to(torch.bfloat16), r(b, c + hv * d).to(torch.bfloat16))
                for _ in range(6)])


@pytest.mark.parametrize("b,hk,hv,d,split,hidden", [
    (2, 2, 4, 32, 1, 96), (1, 2, 6, 16, 1, 40), (3, 1, 1, 64, 1, 2100),
    (2, 2, 4, 64, 2, 96), (1, 1, 3, 128, 4, 1030), (2, 1, 2, 64, 1, 64),
    # Qwen3.6-27B's heads at batch 1 and 3: 192 and 576 programs race for arrival tickets.
    pytest.param(1, 16, 48, 128, 4, 5120, marks=pytest.mark.skipif(DEV.type == "cpu", reason="GPU size")),
    pytest.param(3, 16, 48, 128, 4, 5120, marks=pytest.mark.skipif(DEV.type == "cpu", reason="GPU size"))])
def test_fused_token_matches_torch_ops(b, hk, hv, d, split, hidden):
    """Six tokens in a row (the ring wraps): output rows, conv ring and state all agree,
    with each v-head in one program or split over several (the last one normalises)."""
    w, eps = 4, 1e-6
    x = _inputs(b, hk, hv, d, w, seed=b + hv + d, hidden=hidden)
    work = Workspace(b, hv, d, DEV) if split > 1 else None
    ring_f, s_f = x["ring"].clone(), x["S"].clone()
    ring_t, s_t = x["ring"].clone(), x["S"].clone()
    for step, (h, qkvz) in enumerate(x["tokens"]):
        pos = torch.tensor([7 + step], device=DEV)
        got = gdn_decode(h, x["ba_w"], qkvz, ring_f, x["conv_w"], x["a_log"], x["dt_bias"], s_f,
                         x["norm_w"], pos, hk, hv, d, eps, work, split)
        ba = torch.nn.functional.linear(h, x["ba_w"])
        qkv, z = qkvz.split([2 * hk * d + hv * d, hv * d], dim=-1)
        gt, beta = gdn_gates(ba, x["a_log"], x["dt_bias"], hv)
        o = gdn_step(qkv, gt, beta, x["conv_w"], ring_t, s_t, pos, hk, hv, d)
        want = gated_norm(o[:, None], z[:, None], x["norm_w"], eps)[:, 0]
        assert got.dtype == torch.bfloat16 and got.shape == (b, hv * d)
        assert torch.isfinite(got.float()).all()
        err = (got.float() - want.float()).norm() / want.float().norm()
        assert err < 1e-2, f"token {step}: relative error {err:.3g}"
        assert torch.equal(ring_f, ring_t), f"token {step}: conv ring differs"
        # ba is rounded to bf16 in both paths, from differently ordered sums: a flipped last
        # bit moves one head's decay by ~0.4%, hence a norm-wise tolerance.
        s_err = (s_f - s_t).norm() / s_t.norm()
        assert s_err < 1e-2, f"token {step}: state differs by {s_err:.3g}"
        if work is not None:  # the arrival tickets and sums are back to zero for the next token
            assert not work.ticket.any() and not work.sumsq.any()


def test_ring_keeps_the_last_inputs_in_position_order():
    """After a token at position p, slot p % W holds exactly that token's q/k/v inputs."""
    b, hk, hv, d, w = 1, 2, 4, 16, 4
    x = _inputs(b, hk, hv, d, w, seed=3)
    ring = torch.zeros_like(x["ring"])
    s = torch.zeros_like(x["S"])
    c = 2 * hk * d + hv * d
    for p, (h, qkvz) in enumerate(x["tokens"]):
        gdn_decode(h, x["ba_w"], qkvz, ring, x["conv_w"], x["a_log"], x["dt_bias"], s,
                   x["norm_w"], torch.tensor([p], device=DEV), hk, hv, d, 1e-6)
        assert torch.equal(ring[:, :, p % w], qkvz[:, :c])


def test_head_split_keeps_32_columns_per_program():
    assert head_split(128) == 4   # Qwen3.6: 48 heads x 4 = 192 programs at batch 1
    assert head_split(64) == 2
    assert head_split(32) == 1 and head_split(16) == 1


@pytest.mark.slow
def test_engine_with_fused_kernel_agrees_with_torch_ops():
    cfg = get_model("tiny-hybrid")
    prompt = torch.randint(0, cfg.vocab, (2, 5), generator=torch.Generator().manual_seed(0))
    tokens = [torch.tensor([3, 4]), torch.tensor([7, 8]), torch.tensor([1, 2])]
    logits = []
    for fused in (False, True):
        pm = PreparedModel(wmod.synthetic(cfg, DEV, seed=0), get_backend("torch-dequant"), DEV,
                           fused_gdn=fused)
        assert pm.ops.fused_gdn == fused
        eng = DecodeEngine(pm, 2, 16)
        pm.set_mode("calibrate")
        eng.prefill(prompt.to(DEV))
        pm.freeze_calibration()
        pm.set_mode("run")
        out = [eng.prefill(prompt.to(DEV)).float()]
        out += [eng.teacher_step(t.to(DEV)).float() for t in tokens]
        logits.append(torch.stack(out))
    assert torch.isfinite(logits[1]).all()
    rel = float((logits[1] - logits[0]).norm() / logits[0].norm())
    assert rel < 2e-2
