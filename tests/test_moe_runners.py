"""MoE models and runners: the registry against transformers' Qwen3.5/3.6 MoE config, MoE
decode through the engine (routed experts through a MoE runner, a shared expert through the
GEMM backend), and FlashInfer's cutlass_fused_moe through the real package."""

import contextlib
import importlib

import pytest
import torch

from harness import decode, nvfp4
from harness.hardware import default_device
from harness.models import get_model
from harness.moe import runners
from harness.moe.layer import MoeShape, reference, route, silu_and_mul, synthetic
from test_decode import _engine, _rel
from test_decode import _teacher_logits as _teacher

CPU = torch.device("cpu")


def test_qwen35_moe_models_match_transformers_config():
    tf = pytest.importorskip("transformers")
    ref = tf.Qwen3_5MoeTextConfig()  # its defaults are Qwen/Qwen3.5-35B-A3B's
    for name in ("qwen3.5-35b-a3b", "qwen3.6-35b-a3b"):
        cfg = get_model(name)
        assert cfg.is_moe and cfg.arch == "hybrid"
        assert (cfg.hidden, cfg.layers, cfg.vocab) == (ref.hidden_size, ref.num_hidden_layers,
                                                       ref.vocab_size)
        assert (cfg.q_heads, cfg.kv_heads, cfg.head_dim) == (
            ref.num_attention_heads, ref.num_key_value_heads, ref.head_dim)
        assert (cfg.linear_qk_heads, cfg.linear_v_heads, cfg.linear_head_dim, cfg.conv_kernel) == (
            ref.linear_num_key_heads, ref.linear_num_value_heads, ref.linear_key_head_dim,
            ref.linear_conv_kernel_dim)
        assert (cfg.experts, cfg.experts_per_token, cfg.moe_intermediate,
                cfg.shared_expert_intermediate) == (ref.num_experts, ref.num_experts_per_tok,
                                                    ref.moe_intermediate_size,
                                                    ref.shared_expert_intermediate_size)
        types = ["full_attention" if cfg.is_attention_layer(i) else "linear_attention"
                 for i in range(cfg.layers)]
        assert types == list(ref.layer_types)
    shapes = {s.name: s for s in get_model("qwen3.6-35b-a3b").linear_layers()}
    assert shapes["expert_gate_up_proj"].n == 1024 and shapes["expert_gate_up_proj"].count == 40 * 256
    assert shapes["shared_expert_down_proj"].k == 512


@pytest.mark.parametrize("model", ["tiny-moe", "tiny-hybrid-moe"])
def test_moe_decode_triton_matches_the_reference_runner(model, monkeypatch):
    """triton (its routed experts on triton-moe) against torch-dequant (moe-ref): the same
    W4A16 math, so only bf16 rounding separates them, except where it flips a near-tie of the
    router's top-k for one token (seen: one row of six at 0.25); another seed is far away."""
    dev = default_device()
    if dev.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    cfg = get_model(model)
    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, cfg.vocab, (2, 4), generator=gen).to(dev)
    tokens = [torch.randint(0, cfg.vocab, (2,), generator=gen).to(dev) for _ in range(2)]
    ref = _teacher(_engine(model, "torch-dequant", max_len=12, device=dev), prompt, tokens)
    tri = _teacher(_engine(model, "triton", max_len=12, device=dev), prompt, tokens)
    assert torch.isfinite(ref).all() and ref.abs().amax(-1).min() > 0
    rows = sorted(_rel(tri[s, b], ref[s, b]) for s in range(ref.shape[0]) for b in range(2))
    assert rows[len(rows) // 2] < 2e-2 and rows[-1] < 0.5, rows
    other = _teacher(_engine(model, "torch-dequant", max_len=12, device=dev, seed=5), prompt, tokens)
    assert min(_rel(other[s, b], ref[s, b]) for s in range(ref.shape[0]) for b in range(2)) > 0.5


def test_moe_decode_cells_count_the_experts_a_step_reads():
    cells = decode.plan("tiny-hybrid-moe", [1, 4], input_len=5, output_len=3,
                        backends=["torch-dequant", "torch-bf16"], autotunes=["off"])
    decode.run(cells, decode.DecodeOptions(isolate=False))
    cfg = get_model("tiny-hybrid-moe")
    per_expert = 3 * cfg.moe_intermediate * cfg.hidden * 9 // 16 + 8
    ok = [c for c in cells if c.backend == "torch-dequant"]
    for c in ok:
        assert c.status == "ok", c.reason
        assert c.moe_runner == "moe-ref"
        hit = cfg.experts * (1 - (1 - cfg.experts_per_token / cfg.experts) ** c.batch)
        assert c.step_bytes_detail["experts"] == pytest.approx(cfg.layers * hit * per_expert,
                                                               rel=1e-3)
        assert c.weight_bytes > c.step_bytes_detail["linear_weights"]  # + every expert
    assert ok[1].step_bytes_detail["experts"] > ok[0].step_bytes_detail["experts"]
    for c in cells:
        if c.backend == "torch-bf16":  # its runner is FlashInfer's bf16 MoE
            assert c.moe_runner == "flashinfer-cutlass-moe-bf16"
            assert c.status == "skipped" and c.reason.startswith(
                "MoE runner flashinfer-cutlass-moe-bf16: ")


def test_a_backend_without_a_moe_runner_is_skipped_by_name(monkeypatch):
    monkeypatch.delitem(runners.FOR_BACKEND, "torch-dequant")
    (c,) = decode.plan("tiny-moe", [1], 4, 2, ["torch-dequant"], ["off"])
    decode.run([c], decode.DecodeOptions(isolate=False))
    assert c.status == "skipped"
    assert "no MoE runner pairs with the torch-dequant backend" in c.reason


# ---- FlashInfer's cutlass_fused_moe through the real package ---------------------------

SHAPE = MoeShape(experts=6, top_k=2, hidden=128, intermediate=64)


class _StandInModule:
    """The compiled fused-MoE module, as TensorRT-LLM's kernels compute: fc1 [E, 2I, H] rows
    (up; gate), SwiGLU silu(gate) * up, fc2 [E, H, I], each pair scaled by its final scale;
    FP8 with per-expert dequant scales and the intermediate quantized by quant_scales[1];
    NVFP4 from packed codes, 128x4-swizzled int32 block scales and per-expert alphas."""

    def __init__(self, calls):
        self.calls = calls

    def cutlass_fused_moe(self, output, input, selected, final_scales, fc1, b1, fc2, b2,
                          output_dtype, quant_scales, input_sf, *rest, **kw):
        from flashinfer.autotuner import AutoTuner
        self.calls.append({"dtype": fc1.dtype, "tuning": AutoTuner.get().is_tuning_mode,
                           "scales": len(quant_scales)})
        if selected.dtype != torch.int32 or final_scales.dtype != torch.float32:
            raise RuntimeError("expert ids int32 and final scales fp32 expected")
        e_n, n2, _ = fc1.shape
        out = torch.zeros(output.shape, dtype=torch.float32)
        for t in range(input.shape[0]):
            for s in range(selected.shape[1]):
                e = int(selected[t, s])
                w1, w2 = self._weights(fc1, fc2, quant_scales, e, input)
                a = input[t].float()
                if fc1.dtype == torch.float8_e4m3fn:
                    h = (w1 @ a) * quant_scales[0][e]
                elif fc1.dtype == torch.uint8:
                    gs = quant_scales[0].float()
                    qa = nvfp4.dequantize_unscaled(nvfp4.quantize(a[None], gs.reshape(())))[0]
                    h = (w1 @ qa) * quant_scales[2][e]
                else:
                    h = w1 @ a
                up, gate = h.chunk(2)
                act = torch.nn.functional.silu(gate) * up
                if fc1.dtype == torch.float8_e4m3fn:
                    q = (act * quant_scales[1]).to(torch.float8_e4m3fn).float()
                    y = (w2 @ q) * quant_scales[2][e]
                elif fc1.dtype == torch.uint8:
                    gs2 = quant_scales[3].float()
                    q = nvfp4.dequantize_unscaled(nvfp4.quantize(act[None], gs2.reshape(())))[0]
                    y = (w2 @ q) * quant_scales[5][e]
                else:
                    y = w2 @ act
                out[t] += y * final_scales[t, s]
        output.copy_(out.to(output_dtype))
        return [output, None, None, None]

    @staticmethod
    def _weights(fc1, fc2, qs, e, input):
        if fc1.dtype != torch.uint8:
            return fc1[e].float(), fc2[e].float()
        n2, h2 = fc1.shape[1], fc1.shape[2]
        h, i = fc2.shape[1], fc2.shape[2] * 2
        one = torch.ones(())
        sf1 = nvfp4.unswizzle_128x4(qs[1][e].view(torch.float8_e4m3fn), n2, h2 * 2 // 16)
        sf2 = nvfp4.unswizzle_128x4(qs[4][e].view(torch.float8_e4m3fn), h, i // 16)
        return (nvfp4.dequantize_unscaled(nvfp4.NVFP4Tensor(fc1[e], sf1, one)),
                nvfp4.dequantize_unscaled(nvfp4.NVFP4Tensor(fc2[e], sf2, one)))


@pytest.fixture
def flashinfer_sm(monkeypatch):
    """The real flashinfer seeing CPU tensors as an SM``sm`` GPU's; the compiled fused-MoE
    module is the stand-in above (no kernel can launch here)."""
    from flashinfer_kernels import emulate

    def at(sm):
        emulate(monkeypatch, sm=sm)
        core = importlib.import_module("flashinfer.fused_moe.core")
        calls = []
        monkeypatch.setattr(core, "get_cutlass_fused_moe_module",
                            lambda arch, *a, **k: _StandInModule(calls))
        cuda_device = torch.cuda.device
        monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext()
                            if torch.device(d).type == "cpu" else cuda_device(d))
        return calls
    return at


@pytest.mark.parametrize("runner,sm,tol", [("flashinfer-cutlass-moe-bf16", 90, 1e-2),
                                           ("flashinfer-cutlass-moe-fp8", 90, 6e-2),
                                           ("flashinfer-cutlass-moe", 120, 0.15)])
def test_flashinfer_cutlass_moe_runners_compute_the_layer(flashinfer_sm, runner, sm, tol):
    calls = flashinfer_sm(sm)
    w = synthetic(SHAPE, seed=4)
    x = (torch.randn(5, SHAPE.hidden, generator=torch.Generator().manual_seed(1))
         ).to(torch.bfloat16)
    tw, ids = route(x, w.router, SHAPE.top_k)
    ref = reference(x, w, tw, ids)
    layer = runners.PreparedMoe(runner, w, autotune=True, down="shared", device=CPU)
    layer.calibrate(x, tw, ids)
    layer.tune(x, tw, ids)
    out = layer(x, tw, ids)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    err = _rel(out.float(), ref)
    assert err < tol
    # autotune on: the first call ran under FlashInfer's tuner, the timed ones do not
    assert [c["tuning"] for c in calls] == [True, False]
    # a wrong layout breaks it, so the check can fail: gate and up swapped (FlashInfer's fc1
    # reads [up; gate]), or NVFP4 block scales left linear instead of 128x4-swizzled
    wrong = runners.PreparedMoe(runner, w, autotune=False, down="shared", device=CPU)
    if runner == "flashinfer-cutlass-moe":
        wrong.fi.fc1_sf = runners._up_gate(w.w13.scales).contiguous().view(torch.int32)
    else:
        wrong.fi.fc1 = runners._up_gate(wrong.fi.fc1)
    wrong.calibrate(x, tw, ids)
    assert _rel(wrong(x, tw, ids).float(), ref) > max(tol, 2 * err)


def test_flashinfer_moe_runners_refuse_in_flashinfers_words(flashinfer_sm, monkeypatch):
    flashinfer_sm(90)
    monkeypatch.setenv("FLASHINFER_CUDA_ARCH_LIST", "9.0")
    from harness.moe import runners as r
    monkeypatch.setattr(r, "compute_capability", lambda d: 90)
    dev = torch.device("cuda")
    why = r._why_not_flashinfer("flashinfer-trtllm-moe", dev)
    assert why == ("FlashInfer trtllm fused MoE on SM90: No supported CUDA architectures found "
                   "for major versions [10, 12].")
    why = r._why_not_flashinfer("flashinfer-cutlass-moe", dev)
    assert "NVFP4 (W4A4)" in why and "SM90" in why
    # the FP8 runner's module: FlashInfer's own JIT spec says whether it is built
    why = r._why_not_flashinfer("flashinfer-cutlass-moe-fp8", dev)
    assert why is None or ("fused_moe_90" in why and r.FLASHINFER_JIT_ENV in why)


def test_every_tunable_runner_has_autotune_cells_and_decode_pairs():
    for name, runner in runners.RUNNERS.items():
        assert runner.tunable == (name != "moe-ref")
    assert set(runners.FOR_BACKEND.values()) <= set(runners.RUNNERS)
    # the engine's shared-expert MLP and the runners see the same SwiGLU
    h = torch.randn(3, 8)
    assert torch.allclose(silu_and_mul(h), torch.nn.functional.silu(h[:, :4]) * h[:, 4:])


def test_cells_of_two_models_each_run_their_own_model():
    """One (backend, autotune) over two models: each cell measures its own model's weights
    (a group per model), here through the isolated workers and in process."""
    for opts in (decode.DecodeOptions(isolate=False), decode.DecodeOptions()):
        cells = (decode.plan("tiny", [1], 4, 2, ["torch-dequant"], ["off"])
                 + decode.plan("tiny-moe", [1], 4, 2, ["torch-dequant"], ["off"]))
        decode.run(cells, opts)
        dense, moe = cells
        assert dense.status == moe.status == "ok", (dense.reason, moe.reason)
        assert dense.moe_runner == "" and moe.moe_runner == "moe-ref"
        assert dense.step_bytes_detail["experts"] == 0 < moe.step_bytes_detail["experts"]
