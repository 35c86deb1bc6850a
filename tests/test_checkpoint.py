"""Checkpoints written by the real nvidia-modelopt export of real transformers models: every
tensor placed, the engine's logits against transformers', and bad directories named."""

import json
import math
import shutil

import pytest
import torch

# The test extra installs both (scripts/setup.sh): a missing one is a failure, not a skip.
import transformers
import modelopt.torch.export  # noqa: F401

import modelopt_export as mx

from harness import cli, nvfp4
from harness.backends import get_backend
from harness.models import checkpoint as ckpt
from harness.models import get_model
from harness.models import weights as wmod
from harness.models.engine import DecodeEngine, PreparedModel

CPU = torch.device("cpu")
STEPS = 8


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {kind: mx.export(kind, root / kind) for kind in ("qwen3", "qwen3_5")}


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _engine_logits(weights, trace):
    engine = DecodeEngine(PreparedModel(weights, get_backend("torch-dequant"), CPU),
                          trace.prompt.shape[0], trace.prompt.shape[1] + STEPS + 2)
    out = [engine.prefill(trace.prompt).float()]
    for t in trace.tokens:
        out.append(engine.teacher_step(t).float())
    return torch.stack(out)


@pytest.fixture(scope="module")
def references(exports):
    """Per export: the fp32 transformers trace (prefill + 8 greedy steps) and the bf16
    transformers model's error along it (the noise floor)."""
    out = {}
    for kind, d in exports.items():
        ref = mx.reference_model(d, torch.float32)
        prompt = torch.randint(0, 512, (4, 7), generator=torch.Generator().manual_seed(5))
        trace = mx.greedy_trace(ref, prompt, STEPS)
        floor = mx.teacher_forced(mx.reference_model(d, torch.bfloat16), trace)
        out[kind] = (trace, _rel(floor, trace.logits),
                     int((floor.argmax(-1) == trace.logits.argmax(-1)).sum()))
    return out


def _agreement(weights, trace):
    got = _engine_logits(weights, trace)
    return _rel(got, trace.logits), int((got.argmax(-1) == trace.logits.argmax(-1)).sum())


def _within_floor(err, tokens, floor, floor_tokens):
    # bf16 activations in another order of operations: the same size of error as
    # transformers' own bf16 model, and about as many greedy tokens.
    return err <= 1.5 * floor + 1e-3 and tokens >= floor_tokens - 2


@pytest.mark.parametrize("kind", ["qwen3", "qwen3_5"])
def test_engine_matches_transformers_on_a_real_export(kind, exports, references):
    trace, floor, floor_tokens = references[kind]
    w = ckpt.load(exports[kind], CPU)
    err, tokens = _agreement(w, trace)
    print(f"{kind}: engine rel err {err:.4f} (bf16 floor {floor:.4f}), tokens {tokens}/"
          f"{trace.logits.shape[0] * trace.logits.shape[1]} (bf16 {floor_tokens})")
    assert _within_floor(err, tokens, floor, floor_tokens)


def _swap_gate_up(w):
    for name, lw in w.linears.items():
        if name.endswith("gate_up_proj"):
            n = lw.fp4.shape[0] // 2
            lw.fp4 = nvfp4.NVFP4Tensor(torch.cat([lw.fp4.packed[n:], lw.fp4.packed[:n]]),
                                       torch.cat([lw.fp4.scales[n:], lw.fp4.scales[:n]]),
                                       lw.fp4.global_scale)
    return w


def _unconvert_norms(w):
    for name in w.dense:
        if name.endswith("layernorm"):
            w.dense[name] = (w.dense[name].float() - 1).to(torch.bfloat16)
    return w


@pytest.mark.parametrize("kind,mutation", [
    ("qwen3_5", "rotary"), ("qwen3", "rope_theta"), ("qwen3", "gates"), ("qwen3_5", "gates"),
    ("qwen3_5", "norms")])
def test_the_comparison_catches_a_wrong_load(kind, mutation, exports, references):
    trace, floor, floor_tokens = references[kind]
    w = ckpt.load(exports[kind], CPU)
    if mutation == "rotary":
        w = wmod.with_config(w, partial_rotary=1.0)
    elif mutation == "rope_theta":
        w = wmod.with_config(w, rope_theta=1e6)
    elif mutation == "gates":
        w = _swap_gate_up(w)
    else:
        w = _unconvert_norms(w)
    err, tokens = _agreement(w, trace)
    print(f"{kind} {mutation}: rel err {err:.4f}, tokens {tokens}")
    assert not _within_floor(err, tokens, floor, floor_tokens)


@pytest.mark.parametrize("kind", ["qwen3", "qwen3_5"])
def test_every_tensor_round_trips(kind, exports):
    """What the loader holds is the export's bytes: codes and block scales bit for bit, the
    global scale as 1/weight_scale_2, dense tensors equal (zero-centred norms as 1 + w)."""
    from safetensors.torch import load_file

    d = exports[kind]
    raw = {}
    for f in d.glob("*.safetensors"):
        raw.update(load_file(str(f)))
    plan = ckpt.scan(d)
    w = ckpt.load(plan, CPU)
    used = set()
    for name, lw in w.linears.items():
        shards = [plan.placed[name][i] for i in sorted(plan.placed[name])]
        packed = torch.cat([raw[s["weight"]] for s in shards])
        scales = torch.cat([raw[s["weight_scale"]] for s in shards])
        assert torch.equal(lw.fp4.packed, packed) and torch.equal(lw.fp4.scales.view(torch.uint8),
                                                                  scales.view(torch.uint8))
        ws2 = [float(raw[s["weight_scale_2"]]) for s in shards]
        assert float(lw.fp4.global_scale) == pytest.approx(1 / max(ws2), rel=1e-6)
        assert w.input_gsf[name] == pytest.approx(1 / max(float(raw[s["input_scale"]])
                                                          for s in shards), rel=1e-6)
        used |= {k for s in shards for k in s.values()}
    for name, t in w.dense.items():
        keys = [plan.placed[name][i] for i in sorted(plan.placed[name])]
        src = torch.cat([raw[next(iter(s.values()))] for s in keys]).float()
        if any(name == p or (p.startswith("layers.*.") and name.endswith(p[9:]))
               for p in plan.fmt.zero_centred):
            src = 1 + src
        assert torch.allclose(t.float(), src, atol=4e-3, rtol=4e-3), name
        used |= {k for s in keys for k in s.values()}
    unused = set(raw) - used
    assert sum(plan.unused.values()) == len(unused)
    assert all(any(k.startswith(p) for p in plan.fmt.unused_prefixes) for k in unused)


def test_hybrid_config_is_read_as_transformers_writes_it(exports):
    raw = mx.read_config(exports["qwen3_5"])
    assert "layer_types" in raw["text_config"] and "full_attention_interval" not in raw["text_config"]
    cfg = ckpt.scan(exports["qwen3_5"]).config
    assert cfg.arch == "hybrid" and cfg.partial_rotary == 0.25 and cfg.rope_theta == 1e4
    assert [cfg.is_attention_layer(i) for i in range(4)] == [False, False, False, True]
    assert cfg.attention_layers == 1 and cfg.deltanet_layers == 3
    # The names the engine gives the fused layers are what SGLang calls them.
    assert any(n.endswith("linear_attn.in_proj_qkvz") for n in wmod.all_linears(cfg))


def test_quantization_config_from_config_json_alone(exports, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(exports["qwen3_5"], d)
    (d / "hf_quant_config.json").unlink()
    plan = ckpt.scan(d)
    assert plan.quant.source == "config.json quantization_config"
    assert "lm_head" in plan.quant.excluded and plan.quant.group_size == 16
    raw = json.loads((d / "config.json").read_text())
    raw["quantization_config"]["modules_to_not_convert"] = raw["quantization_config"].pop("ignore")
    (d / "config.json").write_text(json.dumps(raw))
    assert "lm_head" in ckpt.scan(d).quant.excluded
    raw["quantization_config"]["quant_method"] = "compressed-tensors"
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ckpt.CheckpointError, match="quant_method 'compressed-tensors'"):
        ckpt.scan(d)


def test_excluded_linear_loads_and_runs_as_bf16(exports, tmp_path, references):
    """A module the quantization config excludes is stored bf16 and runs bf16."""
    from safetensors.torch import load_file, save_file

    d = tmp_path / "x"
    shutil.copytree(exports["qwen3"], d)
    f = next(d.glob("*.safetensors"))
    t = load_file(str(f))
    deq = mx.dequantized_state_dict(exports["qwen3"])
    key = "model.layers.1.mlp.down_proj"
    for leaf in ("weight", "weight_scale", "weight_scale_2", "input_scale"):
        t.pop(f"{key}.{leaf}")
    t[f"{key}.weight"] = deq[f"{key}.weight"].to(torch.bfloat16)
    save_file(t, str(f))
    w = ckpt.load(d, CPU)
    lw = w.linears["layers.1.mlp.down_proj"]
    assert not lw.quantized and torch.equal(lw.bf16, t[f"{key}.weight"])
    pm = PreparedModel(w, get_backend("torch-ref"), CPU)
    assert pm.lin["layers.1.mlp.down_proj"].backend.name == "torch-bf16"
    assert pm.lin["layers.0.mlp.down_proj"].backend.name == "torch-ref"
    info = ckpt.describe(ckpt.scan(d))
    assert info["unquantized_linears"] == ["layers.1.mlp.down_proj"]


def test_shards_with_different_global_scales_do_what_sglang_does(exports, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "s"
    shutil.copytree(exports["qwen3"], d)
    f = next(d.glob("*.safetensors"))
    t = load_file(str(f))
    k = "model.layers.0.mlp.up_proj.weight_scale_2"
    t[k] = t[k] * 2
    save_file(t, str(f))
    w = ckpt.load(d, CPU)
    lw = w.linears["layers.0.mlp.gate_up_proj"]
    assert float(lw.fp4.global_scale) == pytest.approx(1 / float(t[k]), rel=1e-6)
    assert len(w.notes) == 1 and "layers.0.mlp.gate_up_proj" in w.notes[0]
    assert "as SGLang does" in w.notes[0]


@pytest.mark.parametrize("edit,match", [
    (lambda raw: raw.update(model_type="llama"), "model_type 'llama' is not supported; supported: qwen3"),
    (lambda raw: raw["text_config"].update(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}),
     "rope_type 'yarn'"),
    (lambda raw: raw["text_config"].update(layer_types=["linear_attention"] * 3),
     "layer_types lists 3 layers"),
    (lambda raw: raw["text_config"].update(layer_types=["sliding_attention"] * 4),
     "sliding_attention"),
    (lambda raw: raw["text_config"].update(linear_value_head_dim=64), "linear_value_head_dim"),
    (lambda raw: raw["text_config"].update(num_hidden_layers=3, layer_types=None), "cannot be placed"),
])
def test_bad_configs_are_named(edit, match, exports, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(exports["qwen3_5"], d)
    raw = mx.read_config(d)
    edit(raw)
    raw["text_config"] = {k: v for k, v in raw["text_config"].items() if v is not None}
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.scan(d)


def test_unplaceable_and_missing_tensors_are_named(exports, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "t"
    shutil.copytree(exports["qwen3_5"], d)
    f = next(d.glob("*.safetensors"))
    t = load_file(str(f))
    t["model.language_model.layers.0.mlp.extra_proj.weight"] = torch.zeros(4, 4)
    save_file(t, str(f))
    with pytest.raises(ckpt.CheckpointError, match="extra_proj.weight' cannot be placed"):
        ckpt.scan(d)
    t.pop("model.language_model.layers.0.mlp.extra_proj.weight")
    t.pop("model.language_model.layers.2.linear_attn.in_proj_z.weight_scale")
    save_file(t, str(f))
    with pytest.raises(ckpt.CheckpointError,
                       match="lacks tensor 'model.language_model.layers.2.linear_attn.in_proj_z.weight_scale'"):
        ckpt.scan(d)


def test_save_writes_what_the_real_tools_read(tmp_path):
    """The project's own synthetic checkpoints use the real layout: transformers reads the
    config, and the loader reads the files back bit for bit."""
    for name in ("tiny", "tiny-hybrid"):
        w = wmod.synthetic(get_model(name), CPU, seed=2)
        d = ckpt.save(w, tmp_path / name, input_gsf={n: 3.0 for n in w.linears},
                      max_shard_bytes=200_000)
        hf = transformers.AutoConfig.from_pretrained(str(d))
        text = hf.get_text_config()
        assert text.num_hidden_layers == w.config.layers
        assert text.rope_parameters["rope_theta"] == w.config.rope_theta
        if w.config.arch == "hybrid":
            assert text.layer_types[3] == "full_attention"
            assert text.rope_parameters["partial_rotary_factor"] == w.config.partial_rotary
        assert len(list(d.glob("*.safetensors"))) > 1
        back = ckpt.load(d, CPU)
        for n, lw in w.linears.items():
            assert torch.equal(back.linears[n].fp4.packed, lw.fp4.packed)
            assert back.input_gsf[n] == pytest.approx(3.0)
        for n, t in w.dense.items():
            assert torch.allclose(back.dense[n].float(), t.float(), atol=1e-2), n


def test_decode_and_inspect_commands_on_a_real_export(exports, tmp_path, capsys):
    d = exports["qwen3_5"]
    assert cli.main(["inspect", str(d)]) == 0
    out = capsys.readouterr().out
    assert "qwen3_5" in out and "gated_deltanet" in out and "model.visual.*" in out
    assert cli.main(["inspect", str(d), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers_by_kind"] == {"attention": 1, "gated_deltanet": 3}
    assert info["zero_centred_norms_converted"] == 4 * 2 + 1 + 2
    run = tmp_path / "run.json"
    rc = cli.main(["decode", "--model", "qwen3.6-tiny-export", "--checkpoint", str(d),
                   "--batch", "2", "--input-len", "5", "--output-len", "3",
                   "--backends", "torch-dequant", "--autotune", "off", "--in-process",
                   "--json", str(run)])
    assert rc == 0
    cell = json.loads(run.read_text())["cells"][0]
    assert cell["status"] == "ok", cell["reason"]
    assert cell["weights"].startswith(f"checkpoint {d}") and math.isfinite(cell["tokens_per_s"])


@pytest.mark.parametrize("what", ["missing", "empty", "broken"])
def test_bad_checkpoint_directory_exits_2_before_any_cell(what, exports, tmp_path, capsys):
    d = tmp_path / "ck"
    if what == "empty":
        d.mkdir()
    elif what == "broken":
        shutil.copytree(exports["qwen3"], d)
        next(d.glob("*.safetensors")).write_bytes(b"\x00" * 16)
    rc = cli.main(["decode", "--model", "m", "--checkpoint", str(d), "--batch", "1",
                   "--input-len", "4", "--output-len", "2", "--backends", "torch-dequant",
                   "--autotune", "off", "--in-process"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(d) in err and "Traceback" not in err
    assert cli.main(["inspect", str(d)]) == 2
