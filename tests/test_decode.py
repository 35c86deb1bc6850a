"""Decode engine: tiny models on the CPU, backend agreement, health, checkpoints, SGLang."""

import json
import os
import re
import sys
import textwrap

import pytest
import torch

import worker_env
from harness import decode, pdl
from harness.backends import get_backend, register
from harness.backends.torch_bf16 import TorchBF16
from harness.backends.torch_dequant import TorchDequant
from harness.hardware import default_device
from harness.models import get_model
from harness.models import checkpoint as ckpt
from harness.models import weights as wmod
from harness.models.engine import DecodeEngine, PreparedModel
from harness.records import read_run

CPU = torch.device("cpu")
INPROC = decode.DecodeOptions(isolate=False)


def _engine(model, backend, batch=2, max_len=16, seed=0, weights=None, device=CPU):
    """An engine on synthetic weights; a MoE model's experts on the runner paired with the
    backend."""
    from harness.moe import runners
    w = weights or wmod.synthetic(get_model(model), device, seed=seed)
    pm = PreparedModel(w, get_backend(backend), device, moe_runner=runners.for_backend(backend))
    return DecodeEngine(pm, batch, max_len)


def _teacher_logits(engine, prompt, tokens):
    """Calibrate on the prompt, prefill, then feed the given tokens step by step."""
    pm = engine.model
    pm.set_mode("calibrate")
    engine.prefill(prompt)
    pm.freeze_calibration()
    pm.set_mode("run")
    out = [engine.prefill(prompt).float()]
    for t in tokens:
        out.append(engine.teacher_step(t).float())
    return torch.stack(out)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("model", ["tiny", "tiny-hybrid"])
def test_tiny_models_decode_with_reference_backends(model):
    cells = decode.plan(model, [1, 3], input_len=6, output_len=5,
                        backends=["torch-ref", "torch-dequant"], autotunes=["off"])
    decode.run(cells, INPROC)
    for c in cells:
        assert c.status == "ok", c.reason
        assert len(c.samples_s) == 5 and all(s > 0 for s in c.samples_s)
        assert c.tokens_per_s == pytest.approx(c.batch / c.median_step_s)
        assert c.ci99_s[0] <= c.median_step_s <= c.ci99_s[1]
        sb = c.step_bytes_detail
        assert c.step_bytes == sum(sb.values())
        assert sb["linear_weights"] == c.weight_bytes > 0
        assert sb["lm_head"] == get_model(model).vocab * get_model(model).hidden * 2
        assert c.roofline_frac == pytest.approx(c.roofline_step_s / c.median_step_s)
    hybrid = [c for c in cells if c.model == "tiny-hybrid"]
    for c in hybrid:  # the GDN state (read + write, fp32) is part of a step's bytes
        cfg = get_model("tiny-hybrid")
        state = cfg.deltanet_layers * c.batch * cfg.linear_v_heads * cfg.linear_head_dim ** 2 * 4
        assert c.step_bytes_detail["recurrent_state"] >= 2 * state


@pytest.mark.parametrize("model", ["tiny", "tiny-hybrid"])
def test_backends_agree_with_torch_ref_over_several_steps(model):
    cfg = get_model(model)
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, cfg.vocab, (2, 7), generator=gen)
    tokens = [torch.randint(0, cfg.vocab, (2,), generator=gen) for _ in range(4)]
    ref = _teacher_logits(_engine(model, "torch-ref"), prompt, tokens)
    deq = _teacher_logits(_engine(model, "torch-dequant"), prompt, tokens)
    bf16 = _teacher_logits(_engine(model, "torch-bf16"), prompt, tokens)
    assert torch.isfinite(ref).all() and ref.abs().amax(-1).min() > 0
    # Same weights; W4A16 differs from W4A4 only by the activation quantization, which
    # compounds more through the delta-rule recurrence (measured: dense 0.16, hybrid 0.24-0.56
    # per step; an unrelated model is at 1.41).
    assert _rel(deq, ref) < (0.25 if cfg.arch == "dense" else 0.6)
    # bf16 on the dequantized weights is the same math as W4A16.
    assert _rel(bf16, deq) < 2e-2
    # Greedy choices mostly agree with the reference's.
    assert (deq.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.5
    # A different model (seed) is far away: the comparison can fail.
    other = _teacher_logits(_engine(model, "torch-ref", seed=9), prompt, tokens)
    assert _rel(other, ref) > 1.0


class _RecordingM(TorchDequant):
    """torch-dequant that notes the M of every GEMM."""

    def __init__(self):
        self.ms = []

    def run(self, prepared, x, x_global_scale):
        self.ms.append(x.shape[0])
        return super().run(prepared, x, x_global_scale)


@pytest.mark.parametrize("model", ["tiny", "tiny-hybrid"])
def test_chunked_prefill_matches_one_pass_and_bounds_m(model):
    """The prompt in chunks (attention over the cached chunks before, Gated DeltaNet state
    carried on) gives the one-pass logits, and no GEMM sees more than a chunk of tokens."""
    cfg = get_model(model)
    gen = torch.Generator().manual_seed(4)
    prompt = torch.randint(0, cfg.vocab, (2, 11), generator=gen)
    tokens = [torch.randint(0, cfg.vocab, (2,), generator=gen) for _ in range(3)]
    w = wmod.synthetic(cfg, CPU, seed=2)

    def run(chunk):
        backend = _RecordingM()
        weights = wmod.synthetic(cfg, CPU, seed=2)
        engine = DecodeEngine(PreparedModel(weights, backend, CPU), 2, 16, prefill_chunk=chunk)
        out = [engine.prefill(prompt).float()]
        prefill_ms = list(backend.ms)
        out += [engine.teacher_step(t).float() for t in tokens]
        return torch.stack(out), prefill_ms

    whole, ms_whole = run(10**6)
    chunked, ms_chunked = run(6)  # 3 positions of 2 rows per chunk: 4 chunks
    assert max(ms_whole) == 22 and max(ms_chunked) == 6
    assert _rel(chunked, whole) < 1e-2
    assert (chunked.argmax(-1) == whole.argmax(-1)).all()
    # a chunk must really see what came before it: a prompt that differs early changes it
    other = prompt.clone()
    other[:, 0] = (other[:, 0] + 1) % cfg.vocab
    engine = DecodeEngine(PreparedModel(w, TorchDequant(), CPU), 2, 16, prefill_chunk=6)
    assert _rel(engine.prefill(other).float(), whole[0]) > 1e-2
    with pytest.raises(ValueError, match="at least 1 token"):
        DecodeEngine(PreparedModel(wmod.synthetic(cfg, CPU), TorchDequant(), CPU), 2, 16,
                     prefill_chunk=0)


@pytest.mark.slow
def test_triton_backend_agrees_in_the_engine():
    cfg = get_model("tiny")
    dev = default_device()  # the interpreter on a CPU, the real kernels on a GPU
    prompt = torch.randint(0, cfg.vocab, (2, 3), generator=torch.Generator().manual_seed(1)).to(dev)
    tokens = [torch.tensor([5, 9], device=dev), torch.tensor([7, 1], device=dev)]
    deq = _teacher_logits(_engine("tiny", "torch-dequant", max_len=8, device=dev), prompt, tokens)
    tri = _teacher_logits(_engine("tiny", "triton", max_len=8, device=dev), prompt, tokens)
    assert _rel(tri, deq) < 2e-2


class _NanAfter(TorchBF16):
    """Healthy for ``ok_calls`` GEMMs, then a NaN in row 0. The calls are counted on the
    device, so on a GPU the CUDA-graph replays of the timed steps (which never call back into
    Python) go bad as eager steps do."""

    def __init__(self, name, ok_calls):
        self.name, self.ok_calls, self.calls = name, ok_calls, None

    def run(self, prepared, x, x_global_scale):
        out = super().run(prepared, x, x_global_scale)
        if self.calls is None:
            self.calls = torch.zeros((), dtype=torch.int64, device=out.device)
        self.calls += 1
        out[0, 0] += torch.where(self.calls > self.ok_calls, float("nan"), 0.0).to(out.dtype)
        return out


def test_nan_anywhere_fails_the_cell():
    cfg = get_model("tiny")
    per_forward = len(wmod.all_linears(cfg))
    # calibration prefill + prefill + warm-up steps (+ on a GPU the graph's warm-up step)
    # pass; the first timed steps go bad
    b = register(_NanAfter("test-nan-late", per_forward * (2 + decode.WARMUP_STEPS + 2)))
    cells = decode.plan("tiny", [2], 4, 6, [b.name], ["off"])
    decode.run(cells, INPROC)
    c = cells[0]
    assert c.status == "failed" and "NaN" in c.reason and "timed steps" in c.reason
    assert c.tokens_per_s is None and not c.samples_s
    early = register(_NanAfter("test-nan-early", 0))
    cells = decode.plan("tiny", [2], 4, 3, [early.name], ["off"])
    decode.run(cells, INPROC)
    assert cells[0].status == "failed" and "prefill" in cells[0].reason


def test_checkpoint_round_trip(tmp_path):
    cfg = get_model("tiny-hybrid")
    w = wmod.synthetic(cfg, CPU, seed=4)
    w.input_gsf = {name: 100.0 + i for i, name in enumerate(w.linears)}
    originals = {k: (v.fp4.packed.clone(), v.fp4.scales.clone(), float(v.fp4.global_scale))
                 for k, v in w.linears.items()}
    dense = {k: v.clone() for k, v in w.dense.items()}
    ckpt.save(w, tmp_path / "ckpt", max_shard_bytes=200_000)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert "config.json" in files and "hf_quant_config.json" in files
    assert sum(f.endswith(".safetensors") for f in files) >= 2  # sharded
    from safetensors import safe_open
    names = set()
    for f in (tmp_path / "ckpt").glob("*.safetensors"):
        with safe_open(str(f), "pt") as sf:
            names |= set(sf.keys())
    # ModelOpt names, split as in the export (gate/up, q/k/v, qkv/z, b/a separate).
    assert "model.layers.0.mlp.gate_proj.weight_scale_2" in names
    assert "model.layers.3.self_attn.k_proj.input_scale" in names
    assert "model.layers.0.linear_attn.in_proj_z.weight_scale" in names
    assert "model.layers.0.linear_attn.in_proj_a.weight" in names
    assert not names & {"model.layers.0.mlp.gate_up_proj.weight",
                        "model.layers.0.linear_attn.in_proj_qkvz.weight"}

    back = ckpt.load(tmp_path / "ckpt", CPU)
    assert back.config.arch == "hybrid" and back.config.linear_v_heads == cfg.linear_v_heads
    for k, (p, s, g) in originals.items():
        lw = back.linears[k].fp4
        assert torch.equal(lw.packed, p) and torch.equal(lw.scales.view(torch.uint8), s.view(torch.uint8))
        assert float(lw.global_scale) == pytest.approx(g, rel=1e-6)
        assert back.input_gsf[k] == pytest.approx(w.input_gsf[k], rel=1e-6)
    for k, v in dense.items():  # zero-centred norms pass through 1 + (w - 1) in fp32
        assert torch.equal(back.dense[k].float(), v.float()), k

    cells = decode.plan("my-export", [1], 4, 3, ["torch-dequant"], ["off"],
                        checkpoint=str(tmp_path / "ckpt"))
    decode.run(cells, decode.DecodeOptions(isolate=False, checkpoint=str(tmp_path / "ckpt")))
    assert cells[0].status == "ok", cells[0].reason
    assert cells[0].weights.startswith("checkpoint ") and cells[0].weights_notes == []


def test_checkpoint_errors_name_the_problem(tmp_path):
    w = wmod.synthetic(get_model("tiny"), CPU)
    d = ckpt.save(w, tmp_path / "c")
    with pytest.raises(ValueError, match="not a directory"):
        ckpt.load(tmp_path / "missing", CPU)
    (d / "hf_quant_config.json").write_text("{ not json")
    with pytest.raises(ValueError, match="hf_quant_config.json: corrupt JSON"):
        ckpt.load(d, CPU)
    (d / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "FP8"}}))
    with pytest.raises(ValueError, match="only NVFP4"):
        ckpt.load(d, CPU)
    w2 = wmod.synthetic(get_model("tiny"), CPU)
    d2 = ckpt.save(w2, tmp_path / "c2")
    shard = next(d2.glob("*.safetensors"))
    shard.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=shard.name):
        ckpt.load(d2, CPU)


def test_synthetic_weights_keep_activations_finite():
    cfg = get_model("tiny-hybrid")
    w = wmod.synthetic(cfg, CPU, seed=1)
    lw = w.linears["layers.0.mlp.down_proj"]
    from harness import nvfp4
    rms = float(nvfp4.dequantize(lw.fp4, torch.float32).pow(2).mean().sqrt())
    assert rms == pytest.approx(cfg.intermediate ** -0.5, rel=0.1)
    eng = _engine("tiny-hybrid", "torch-dequant", batch=2, max_len=40)
    logits = eng.prefill(torch.randint(0, cfg.vocab, (2, 30)))
    for _ in range(5):
        eng.step()
    assert torch.isfinite(logits.float()).all() and not eng.bad_rows.any()


def test_memory_check_names_the_bytes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * 2**30, 80 * 2**30))
    cfg = get_model("qwen3.6-27b")
    why = decode.memory_check(get_backend("torch-bf16"), cfg, 1, 1200, 1024,
                              torch.device("cuda"), 0.1)
    assert why and "GiB" in why and "torch-bf16" in why and "20.0 of 80.0 GiB free" in why
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * 2**30, 140 * 2**30))
    assert decode.memory_check(get_backend("triton"), cfg, 1, 1200, 1024,
                               torch.device("cuda"), 0.1) is None
    assert decode.memory_check(get_backend("torch-bf16"), cfg, 1, 1200, 1024,
                               torch.device("cuda"), 0.1) is None
    assert decode.memory_check(get_backend("torch-ref"), cfg, 1, 1200, 1024,
                               torch.device("cuda"), 0.1) is not None


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="valid models"):
        decode.plan("nope", [1], 4, 4, ["torch-ref"], ["off"])
    with pytest.raises(ValueError, match="valid backends"):
        decode.plan("tiny", [1], 4, 4, ["nope"], ["off"])
    with pytest.raises(ValueError, match="valid engines"):
        decode.plan("tiny", [1], 4, 4, ["torch-ref"], ["off"], engine="vllm")


@pytest.mark.slow
def test_decode_worker_crash_keeps_other_cells(monkeypatch):
    tests = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.setenv("NVFP4_BENCH_PLUGINS", "plugin_backends")
    monkeypatch.setenv("PYTHONPATH", worker_env.pythonpath(tests))
    import plugin_backends  # noqa: F401
    # test-crash exits the process on a GEMM with M == 3: batch 3, prompt of 1 token.
    cells = decode.plan("tiny", [3, 1], 1, 2, ["test-crash", "torch-dequant"], ["off"])
    decode.run(cells, decode.DecodeOptions(isolate=True))
    by = {(c.backend, c.batch): c for c in cells}
    assert by[("test-crash", 3)].status == "failed"
    assert "exited with code 7" in by[("test-crash", 3)].reason
    assert by[("torch-dequant", 3)].status == "ok" and by[("torch-dequant", 1)].status == "ok"


# ---- SGLang adapter -------------------------------------------------------------------

FAKE_BENCH = textwrap.dedent('''
    """A stand-in for SGLang's one-batch benchmark that enforces its argument contract."""
    import argparse, json, os, sys
    p = argparse.ArgumentParser()
    p.add_argument("--model-path", required=True)
    p.add_argument("--quantization", required=True, choices=["modelopt_fp4", "fp8", "awq"])
    p.add_argument("--fp4-gemm-backend", required=True, choices=[
        "auto", "flashinfer_cudnn", "flashinfer_cutedsl", "flashinfer_cutlass",
        "flashinfer_trtllm", "marlin"])
    p.add_argument("--disable-flashinfer-autotune", action="store_true")
    p.add_argument("--batch-size", type=int, nargs="+", required=True)
    p.add_argument("--input-len", type=int, nargs="+", required=True)
    p.add_argument("--output-len", type=int, nargs="+", required=True)
    p.add_argument("--run-name", default="default")
    p.add_argument("--result-filename", required=True)
    a = p.parse_args()
    assert a.quantization == "modelopt_fp4"
    with open(os.environ["FAKE_SGLANG_LOG"], "a") as f:
        f.write(json.dumps({"argv": sys.argv[1:], "module": __spec__.name,
            "cache": os.environ.get("SGLANG_CACHE_DIR"),
            "reuse": os.environ.get("SGLANG_FLASHINFER_AUTOTUNE_CACHE")}) + "\\n")
    if os.environ.get("FAKE_SGLANG_FAIL"):
        print("CUDA error: an illegal memory access was encountered", file=sys.stderr)
        sys.exit(1)
    base = 0.02 if a.disable_flashinfer_autotune else 0.017
    with open(a.result_filename, "a") as f:
        for bs in a.batch_size:
            lat = base * (1 + bs / 64)
            f.write(json.dumps({"run_name": a.run_name, "batch_size": bs,
                "input_len": a.input_len[0], "output_len": a.output_len[0],
                "prefill_latency": 0.5, "prefill_throughput": 1000.0,
                "median_decode_latency": lat, "median_decode_throughput": bs / lat,
                "total_latency": 3.0, "overall_throughput": 100.0}) + "\\n")
''')


@pytest.fixture(params=["0.5.21+", "0.5.20"])
def fake_sglang(tmp_path, monkeypatch, request):
    """A fake SGLang in the layout of 0.5.21 and newer (sglang.benchmark.one_batch) or of
    0.5.20 and older (sglang.bench_one_batch)."""
    pkg = tmp_path / "site" / "sglang"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    if request.param == "0.5.21+":
        (pkg / "benchmark").mkdir()
        (pkg / "benchmark" / "__init__.py").write_text("")
        (pkg / "benchmark" / "one_batch.py").write_text(FAKE_BENCH)
    else:
        (pkg / "bench_one_batch.py").write_text(FAKE_BENCH)
    for name in [m for m in sys.modules if m == "sglang" or m.startswith("sglang.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", worker_env.pythonpath(tmp_path / "site"))
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_SGLANG_LOG", str(log))
    import importlib
    importlib.invalidate_caches()
    return log


def test_sglang_adapter_runs_bench_one_batch(fake_sglang, tmp_path):
    from harness.engines import sglang
    cells = decode.plan("qwen3.6-27b", [1, 8], 1024, 128,
                        ["flashinfer-cudnn", "flashinfer-cutlass", "triton"], ["on", "off"],
                        engine="sglang")
    decode.run(cells, decode.DecodeOptions(checkpoint=str(tmp_path / "model")))
    runs = [json.loads(line) for line in fake_sglang.read_text().splitlines()]
    # one process per (backend, autotune); triton has no SGLang flag, and SGLang never tunes
    # cudnn (its "on" would be the "off" program again)
    assert len(runs) == 3
    calls = [r["argv"] for r in runs]
    module = sglang.one_batch_module()
    assert {r["module"] for r in runs} == {module}
    caches = [r["cache"] for r in runs]
    assert len(set(caches)) == 3 and all(r["reuse"] == "0" for r in runs)  # a fresh cache each
    for argv in calls:
        assert argv[argv.index("--model-path") + 1] == str(tmp_path / "model")
        assert argv[argv.index("--batch-size") + 1: argv.index("--batch-size") + 3] == ["1", "8"]
    off = [a for a in calls if "--disable-flashinfer-autotune" in a]
    assert len(off) == 2 and all("off" in a[a.index("--run-name") + 1] for a in off)
    by = {(c.backend, c.autotune, c.batch): c for c in cells}
    c = by[("flashinfer-cutlass", "on", 1)]
    assert c.status == "ok" and c.tokens_per_s == pytest.approx(1 / (0.017 * (1 + 1 / 64)))
    assert c.engine_info["module"] == module and c.engine_info["command"][2] == module
    assert c.engine_info["command"][3:] in calls and "SGLANG_CACHE_DIR" in c.engine_info["autotune_cache"]
    assert c.timing_method.startswith(module)
    cudnn_on = by[("flashinfer-cudnn", "on", 1)]
    assert cudnn_on.status == "skipped" and "never runs FlashInfer's autotuner" in cudnn_on.reason
    assert c.median_step_s == pytest.approx(0.017 * (1 + 1 / 64))
    assert by[("flashinfer-cudnn", "off", 8)].tokens_per_s == pytest.approx(8 / (0.02 * (1 + 8 / 64)))
    t = by[("triton", "on", 1)]
    assert t.status == "skipped" and "no --fp4-gemm-backend" in t.reason
    cmd = sglang.build_command("M", "flashinfer-cudnn", "off", [1], 8, 4, "r.jsonl")
    assert cmd[cmd.index("--fp4-gemm-backend") + 1] == "flashinfer_cudnn"


def test_sglang_adapter_reports_failures(fake_sglang, monkeypatch):
    monkeypatch.setenv("FAKE_SGLANG_FAIL", "1")
    cells = decode.plan("qwen3.6-27b", [1], 16, 4, ["flashinfer-cutlass"], ["on"], engine="sglang")
    decode.run(cells, INPROC)
    assert cells[0].status == "failed"
    assert "illegal memory access" in cells[0].reason and "exited with 1" in cells[0].reason


def test_sglang_missing_is_a_skip(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sglang" else real(name, *a))
    cells = decode.plan("qwen3.6-27b", [1], 16, 4, ["flashinfer-cutlass"], ["on"], engine="sglang")
    decode.run(cells, INPROC)
    assert cells[0].status == "skipped" and "sglang is not importable" in cells[0].reason


def test_decode_cli_writes_cells(tmp_path):
    from harness.cli import main
    out = tmp_path / "d.json"
    rc = main(["decode", "--model", "tiny", "--batch", "1,2", "--input-len", "4",
               "--output-len", "3", "--backends", "torch-dequant,flashinfer-cudnn",
               "--autotune", "off", "--in-process", "--quiet", "--json", str(out)])
    assert rc == 0
    doc, cells = read_run(out)
    assert {c.kind for c in cells} == {"decode"}
    ok = [c for c in cells if c.status == "ok"]
    assert len(ok) == 2 and all(len(c.samples_s) == 3 for c in ok)
    sk = [c for c in cells if c.status == "skipped"]
    assert len(sk) == 2 and all("flashinfer cudnn needs" in c.reason for c in sk)
    assert main(["decode", "--model", "tiny", "--engine", "trt"]) == 2


def test_profile_reports_the_step_by_kernel(tmp_path, capsys):
    """--profile runs extra steps (the caches must hold them) and stores per-kernel times."""
    from harness.cli import main
    out = tmp_path / "p.json"
    rc = main(["decode", "--model", "tiny-hybrid", "--batch", "2", "--input-len", "4",
               "--output-len", "3", "--backends", "torch-dequant", "--autotune", "off",
               "--profile", "6", "--in-process", "--quiet", "--json", str(out)])
    assert rc == 0
    _, (cell,) = read_run(out)
    assert cell.status == "ok", cell.reason
    ks = cell.kernels
    assert ks and all(k["ms_per_call"] >= 0 and k["launches_per_call"] > 0 for k in ks)
    assert [k["ms_per_call"] for k in ks] == sorted((k["ms_per_call"] for k in ks), reverse=True)
    # The GEMMs are in there: aten::mm on a CPU; cuBLAS kernels on a GPU (nvjet_* on SM90
    # and SM100, *xmma*/*gemm* on SM80).
    assert any(re.search(r"mm|nvjet|xmma|cutlass", k["name"], re.I) for k in ks), ks
    assert "launches per step" in capsys.readouterr().out


class _PdlRecording(TorchDequant):
    """torch-dequant that notes, per GEMM, whether PDL launches were on and whether the step
    ran under the profiler."""

    def __init__(self):
        self.seen, self.profiling = [], False

    def run(self, prepared, x, x_global_scale):
        self.seen.append((self.profiling, pdl.active()))
        return super().run(prepared, x, x_global_scale)


@pytest.mark.parametrize("batch", [1, 2])
def test_profile_under_pdl_uses_plain_launches(monkeypatch, batch):
    """Under PDL a kernel's profiled span includes its wait: the profiled steps launch plainly
    (and say so), the timed ones keep PDL. Without PDL (batch 2) nothing changes."""
    rec = _PdlRecording()
    monkeypatch.setattr(pdl, "supported", lambda device: True)
    monkeypatch.setattr(decode, "get_backend", lambda name: rec)
    real = decode.kernel_breakdown

    def breakdown(fn, device, reps):
        rec.profiling = True
        try:
            return real(fn, device, reps=reps)
        finally:
            rec.profiling = False
    monkeypatch.setattr(decode, "kernel_breakdown", breakdown)
    cells = decode.plan("tiny-hybrid", [batch], 4, 3, ["torch-dequant"], ["off"])
    opts = decode.DecodeOptions(isolate=False, profile_steps=2)
    (cell,) = decode.run_group(cells, opts, CPU)
    assert cell.status == "ok", cell.reason
    timed = {on for profiling, on in rec.seen if not profiling}
    profiled = {on for profiling, on in rec.seen if profiling}
    assert timed == {batch == 1} and profiled == {False}
    assert cell.kernels and ("plain launches" in cell.kernels_note) == (batch == 1)


def test_plain_launches_turn_pdl_off_inside_only(monkeypatch):
    monkeypatch.setattr(pdl, "supported", lambda device: True)
    eng = DecodeEngine(PreparedModel(wmod.synthetic(get_model("tiny"), CPU, seed=0),
                                     get_backend("torch-dequant"), CPU, pdl=True), 1, 8)
    assert eng.uses_pdl()
    with eng.plain_launches():
        assert not eng.uses_pdl()
    assert eng.uses_pdl()
    monkeypatch.setattr(pdl, "supported", lambda device: False)
    assert not eng.uses_pdl()  # a GPU without PDL


@pytest.mark.slow
def test_compiled_ops_match_eager():
    """torch.compile'd non-GEMM pieces compute the same step (up to summation order)."""
    cfg = get_model("tiny-hybrid")
    prompt = torch.randint(0, cfg.vocab, (2, 5), generator=torch.Generator().manual_seed(0))
    tokens = [torch.tensor([3, 4]), torch.tensor([7, 8])]
    out = []
    for compile in (False, True):
        pm = PreparedModel(wmod.synthetic(cfg, CPU, seed=0), get_backend("torch-dequant"), CPU,
                           compile=compile)
        assert pm.ops.compiled == compile
        out.append(_teacher_logits(DecodeEngine(pm, 2, 16), prompt, tokens))
    assert _rel(out[1], out[0]) < 2e-2


def test_sglangs_auto_and_flashinfers_auto_are_different_names(fake_sglang, monkeypatch):
    """flashinfer-auto is FlashInfer's own choice; SGLang's --fp4-gemm-backend auto is
    sglang-auto, which only SGLang's engines run."""
    from harness.backends import resolve
    from harness.engines import sglang
    assert "sglang-auto" not in [b.name for b in resolve("all")]
    cells = decode.plan("qwen3.6-27b", [1], 16, 4, ["flashinfer-auto", "sglang-auto"], ["off"],
                        engine="sglang")
    decode.run(cells, INPROC)
    by = {c.backend: c for c in cells}
    assert by["flashinfer-auto"].status == "skipped"
    assert "SGLang's own --fp4-gemm-backend auto is sglang-auto" in by["flashinfer-auto"].reason
    assert by["sglang-auto"].status == "ok", by["sglang-auto"].reason
    cmd = by["sglang-auto"].engine_info["command"]
    assert cmd[cmd.index("--fp4-gemm-backend") + 1] == "auto"
    native = decode.plan("tiny", [1], 4, 2, ["sglang-auto"], ["off"])
    decode.run(native, INPROC)
    assert native[0].status == "skipped" and "runs only with --engine sglang" in native[0].reason
    # what SGLang's auto runs on the GPU decides whether its "on" tunes anything
    monkeypatch.setattr(sglang, "compute_capability", lambda device: 120)
    assert sglang.why_not_tuned("sglang-auto", "on") is None  # flashinfer_cutlass: tuned
    monkeypatch.setattr(sglang, "compute_capability", lambda device: 90)
    assert "auto (marlin on this GPU)" in sglang.why_not_tuned("sglang-auto", "on")
