"""The fused attention decode kernels against the engine's torch path (interpreter on CPU)."""

import os

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

from harness.backends import get_backend  # noqa: E402
from harness.models import get_model  # noqa: E402
from harness.models import weights as wmod  # noqa: E402
from harness.models.attn_kernel import CHUNK, Workspace, attn_decode  # noqa: E402
from harness.models.engine import DecodeEngine, PreparedModel, rms_norm, rotate  # noqa: E402

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
pytestmark = pytest.mark.skipif(DEV.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="on the CPU the kernels need TRITON_INTERPRET=1")
# The interpreter's fp32 -> bf16 casts truncate (the GPU rounds to nearest): three bf16
# roundings in a row (norm, rotary, attention output) then drift ~1% from torch's.
TOL = 3e-2 if DEV.type == "cpu" else 1e-2


def _reference(qkv, qn, kn, cos, sin, pos, kc, vc, hq, hkv, d, rot, eps, gate):
    """The engine's torch path for one token (t = 1), caches updated in place."""
    b = qkv.shape[0]
    q_out = hq * d * (2 if gate else 1)
    q, k, v = qkv.split([q_out, hkv * d, hkv * d], dim=-1)
    g = None
    if gate:
        q, g = q.reshape(b, 1, hq, 2 * d).chunk(2, dim=-1)
        g = g.reshape(b, 1, hq * d)
    c, s = cos[pos][None, :, None, :], sin[pos][None, :, None, :]
    q = rotate(rms_norm(q.reshape(b, 1, hq, d), qn, eps), c, s, rot).transpose(1, 2)
    k = rotate(rms_norm(k.reshape(b, 1, hkv, d), kn, eps), c, s, rot).transpose(1, 2)
    kc.index_copy_(2, pos, k)
    vc.index_copy_(2, pos, v.reshape(b, 1, hkv, d).transpose(1, 2))
    mask = (torch.arange(kc.shape[2], device=kc.device) <= pos)[None, None, None, :]
    o = F.scaled_dot_product_attention(q.float(), kc.float(), vc.float(), attn_mask=mask,
                                       enable_gqa=True).to(torch.bfloat16)
    o = o.transpose(1, 2).reshape(b, 1, hq * d)
    if g is not None:
        o = o * torch.sigmoid(g)
    return o[:, 0]


@pytest.mark.parametrize("b,hq,hkv,d,rot,gate,max_len,positions", [
    (2, 4, 2, 32, 8, True, 70, [0, 1, 63, 64, 69]),      # tiny-hybrid heads, chunk edges
    (1, 6, 1, 64, 64, False, 40, [5, 39]),                # full rotary, no gate, one chunk
    (3, 24, 4, 256, 64, True, 150, [0, 100, 149]),        # Qwen3.6-27B attention heads
])
def test_fused_token_matches_torch_path(b, hq, hkv, d, rot, gate, max_len, positions):
    if DEV.type == "cpu" and d > 64:
        pytest.skip("GPU size")
    eps = 1e-6
    g = torch.Generator().manual_seed(b + hq + d)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEV)

    q_out = hq * d * (2 if gate else 1)
    qn, kn = (1 + r(d, scale=0.1)).to(torch.bfloat16), (1 + r(d, scale=0.1)).to(torch.bfloat16)
    inv = 1.0 / (1e4 ** (torch.arange(0, rot, 2, device=DEV).float() / rot))
    ang = torch.arange(max_len, device=DEV).float()[:, None] * inv[None, :]
    cos, sin = ang.cos().contiguous(), ang.sin().contiguous()
    # A filled cache: earlier positions hold random keys/values the token must attend to.
    kc_ref = r(b, hkv, max_len, d).to(torch.bfloat16)
    vc_ref = r(b, hkv, max_len, d).to(torch.bfloat16)
    kc, vc = kc_ref.clone(), vc_ref.clone()
    work = Workspace(b, hq, hkv, d, max_len, DEV)
    assert work.nsplit == -(-max_len // CHUNK)
    for p in positions:
        qkv = r(b, q_out + 2 * hkv * d, scale=2.0).to(torch.bfloat16)
        pos = torch.tensor([p], device=DEV)
        got = attn_decode(qkv, qn, kn, cos, sin, pos, kc, vc, work, hq, hkv, d, rot, eps, gate)
        want = _reference(qkv, qn, kn, cos, sin, pos, kc_ref, vc_ref, hq, hkv, d, rot, eps, gate)
        assert got.shape == (b, hq * d) and torch.isfinite(got.float()).all()
        err = (got.float() - want.float()).norm() / want.float().norm()
        assert err < TOL, f"pos {p}: relative error {err:.3g}"
        assert torch.equal(vc, vc_ref), f"pos {p}: v cache differs"
        kerr = (kc.float() - kc_ref.float()).abs().max()
        assert kerr < 0.05, f"pos {p}: k cache differs by {kerr:.3g}"
        assert not work.ticket.any()  # back to zero for the next token


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-hybrid", "tiny"])
def test_engine_with_fused_attention_agrees_with_torch_path(model):
    cfg = get_model(model)
    prompt = torch.randint(0, cfg.vocab, (2, 5), generator=torch.Generator().manual_seed(0))
    tokens = [torch.tensor([3, 4]), torch.tensor([7, 8]), torch.tensor([1, 2])]
    logits = []
    for fused in (False, True):
        pm = PreparedModel(wmod.synthetic(cfg, DEV, seed=0), get_backend("torch-dequant"), DEV,
                           fused_attn=fused)
        eng = DecodeEngine(pm, 2, 16)
        assert (eng.attn_work is not None) == fused
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
