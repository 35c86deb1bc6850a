"""Model weights: synthetic NVFP4 from a seed, or a local ModelOpt NVFP4 checkpoint.

Linear layers are NVFP4 (``LayerWeights``), fused as engines fuse them (q/k/v, gate/up);
embeddings, ``lm_head``, norms and the small Gated DeltaNet parameters stay dense
(ModelOpt's exclude list). Synthetic weights are drawn layer by layer directly in NVFP4
(random codes, random e4m3 block scales around a fixed level, a global scale chosen for a
weight RMS of 1/sqrt(K)), so the bf16 model is never materialised and activations stay
finite through every layer.

Checkpoint layout read and written here (a ModelOpt ``hf_quant_config.json`` export):
``config.json`` (HF names), ``hf_quant_config.json`` (``quant_algo: NVFP4``, ``group_size``,
``exclude_modules``) and ``*.safetensors`` with, per quantized linear ``P``, ``P.weight``
(uint8 [N, K/2]), ``P.weight_scale`` (e4m3 [N, K/16]), ``P.weight_scale_2`` (fp32, 1/gsf)
and ``P.input_scale`` (fp32, activation amax / 2688). Fused layers (q/k/v, gate/up) must
share ``weight_scale_2``, as ModelOpt exports them.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from harness import nvfp4
from harness.backends.base import LayerWeights
from harness.models.configs import ModelConfig

# Centre of the synthetic block scales: high in the e4m3 range, so sf keeps 3 mantissa bits.
SYNTH_SCALE = 224.0
# E[e2m1^2] over the 16 codes drawn uniformly.
E2M1_MEAN_SQUARE = sum(v * v for v in nvfp4.E2M1_VALUES) / 8


@dataclass
class ModelWeights:
    config: ModelConfig
    linears: dict[str, LayerWeights] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    # Activation global scales (gsf = 1 / input_scale) where the checkpoint calibrated them.
    input_gsf: dict[str, float] = field(default_factory=dict)
    source: str = "synthetic"

    def nvfp4_bytes(self) -> int:
        return sum(w.fp4.nbytes() for w in self.linears.values())

    def dense_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.dense.values())


# ---- names ---------------------------------------------------------------------------

def layer_linears(cfg: ModelConfig, i: int) -> dict[str, tuple[int, int]]:
    """Fused NVFP4 linears of layer ``i``: name -> (N, K)."""
    h, hd = cfg.hidden, cfg.head_dim
    p = f"layers.{i}."
    out = {p + "mlp.gate_up_proj": (2 * cfg.intermediate, h),
           p + "mlp.down_proj": (h, cfg.intermediate)}
    if cfg.is_attention_layer(i):
        q_out = cfg.q_heads * hd * (2 if cfg.attn_output_gate else 1)
        out[p + "self_attn.qkv_proj"] = (q_out + 2 * cfg.kv_heads * hd, h)
        out[p + "self_attn.o_proj"] = (h, cfg.q_heads * hd)
    else:
        qk = cfg.linear_qk_heads * cfg.linear_head_dim
        v = cfg.linear_v_heads * cfg.linear_head_dim
        out[p + "linear_attn.in_proj_qkvz"] = (2 * qk + 2 * v, h)
        out[p + "linear_attn.out_proj"] = (h, v)
    return out


def dense_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    h = cfg.hidden
    out: dict[str, tuple[int, ...]] = {"embed_tokens": (cfg.vocab, h), "norm": (h,)}
    if not cfg.tied_embeddings:
        out["lm_head"] = (cfg.vocab, h)
    for i in range(cfg.layers):
        p = f"layers.{i}."
        out[p + "input_layernorm"] = (h,)
        out[p + "post_attention_layernorm"] = (h,)
        if cfg.is_attention_layer(i):
            out[p + "self_attn.q_norm"] = (cfg.head_dim,)
            out[p + "self_attn.k_norm"] = (cfg.head_dim,)
        else:
            hv, dk = cfg.linear_v_heads, cfg.linear_head_dim
            conv_ch = 2 * cfg.linear_qk_heads * dk + hv * dk
            out[p + "linear_attn.in_proj_ba"] = (2 * hv, h)
            out[p + "linear_attn.conv1d"] = (conv_ch, 1, cfg.conv_kernel)
            out[p + "linear_attn.A_log"] = (hv,)
            out[p + "linear_attn.dt_bias"] = (hv,)
            out[p + "linear_attn.norm"] = (dk,)
    return out


def all_linears(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for i in range(cfg.layers):
        out.update(layer_linears(cfg, i))
    return out


def nvfp4_weight_bytes(cfg: ModelConfig) -> int:
    return sum(n * k // 2 + n * k // 16 + 4 for n, k in all_linears(cfg).values())


# ---- synthetic -----------------------------------------------------------------------

def synthetic_linear(n: int, k: int, gen: torch.Generator, device: torch.device) -> LayerWeights:
    """An NVFP4 weight with RMS ~ 1/sqrt(K), drawn in its packed form."""
    packed = torch.randint(0, 256, (n, k // 2), generator=gen, device=device, dtype=torch.uint8)
    u = torch.rand((n, k // nvfp4.BLOCK), generator=gen, device=device)
    scales = (SYNTH_SCALE * (0.75 + 0.5 * u)).to(torch.float8_e4m3fn)
    del u
    sf_mean_square = SYNTH_SCALE ** 2 * (0.75 ** 2 + 0.75 * 0.5 + 0.5 ** 2 / 3)
    gsf = math.sqrt(E2M1_MEAN_SQUARE * sf_mean_square * k)
    return LayerWeights(fp4=nvfp4.NVFP4Tensor(packed, scales,
                                              torch.tensor(gsf, dtype=torch.float32, device=device)))


def synthetic(cfg: ModelConfig, device: torch.device, seed: int = 0) -> ModelWeights:
    gen = torch.Generator(device=device).manual_seed(seed)
    w = ModelWeights(config=cfg, source=f"synthetic(seed={seed})")
    for name, (n, k) in all_linears(cfg).items():
        w.linears[name] = synthetic_linear(n, k, gen, device)
    for name, shape in dense_shapes(cfg).items():
        w.dense[name] = _synthetic_dense(name, shape, gen, device)
    return w


def _synthetic_dense(name: str, shape: tuple[int, ...], gen: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("embed_tokens", "lm_head"):
        return torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16)
    if leaf == "in_proj_ba":
        return (torch.randn(shape, generator=gen, device=device) / math.sqrt(shape[1])).to(torch.bfloat16)
    if leaf == "conv1d":
        return (torch.randn(shape, generator=gen, device=device) * 0.5).to(torch.bfloat16)
    if leaf == "A_log":  # per-head decay rates A in [1, 16], as the reference initialisation
        return torch.log(1 + 15 * torch.rand(shape, generator=gen, device=device))
    if leaf == "dt_bias":
        return torch.zeros(shape, device=device)
    return torch.ones(shape, device=device, dtype=torch.bfloat16)  # norm weights


# ---- checkpoint ----------------------------------------------------------------------

# Fused engine linears and the checkpoint tensors they come from (in output order).
_SPLITS = {
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
}
_HF_CONFIG = {
    "hidden_size": "hidden", "num_hidden_layers": "layers", "vocab_size": "vocab",
    "num_attention_heads": "q_heads", "num_key_value_heads": "kv_heads", "head_dim": "head_dim",
    "intermediate_size": "intermediate", "rms_norm_eps": "rms_eps", "rope_theta": "rope_theta",
    "tie_word_embeddings": "tied_embeddings", "full_attention_interval": "full_attention_interval",
    "partial_rotary_factor": "partial_rotary", "linear_num_key_heads": "linear_qk_heads",
    "linear_num_value_heads": "linear_v_heads", "linear_key_head_dim": "linear_head_dim",
    "linear_conv_kernel_dim": "conv_kernel",
}
HYBRID_MODEL_TYPES = ("qwen3_5", "qwen3_next", "qwen3_5_text")


def _split_sizes(cfg: ModelConfig, fused: str) -> list[int]:
    if fused == "mlp.gate_up_proj":
        return [cfg.intermediate, cfg.intermediate]
    q_out = cfg.q_heads * cfg.head_dim * (2 if cfg.attn_output_gate else 1)
    kv = cfg.kv_heads * cfg.head_dim
    return [q_out, kv, kv]


def config_to_hf(cfg: ModelConfig) -> dict:
    d = {hf: getattr(cfg, ours) for hf, ours in _HF_CONFIG.items()}
    d["model_type"] = "qwen3_5" if cfg.arch == "hybrid" else "qwen3"
    d["architectures"] = ["Qwen3_5ForCausalLM" if cfg.arch == "hybrid" else "Qwen3ForCausalLM"]
    d["attn_output_gate"] = cfg.attn_output_gate
    d["linear_value_head_dim"] = cfg.linear_head_dim
    d["torch_dtype"] = "bfloat16"
    d["nvfp4_bench_name"] = cfg.name
    return d


def config_from_hf(d: dict, path: Path) -> ModelConfig:
    d = dict(d.get("text_config") or {}, **{k: v for k, v in d.items() if k != "text_config"})
    model_type = d.get("model_type", "")
    arch = "hybrid" if model_type in HYBRID_MODEL_TYPES else "dense"
    if model_type and model_type not in HYBRID_MODEL_TYPES + ("qwen3",):
        raise ValueError(f"{path}: model_type {model_type!r} is not supported; "
                         f"supported: qwen3, {', '.join(HYBRID_MODEL_TYPES)}")
    kwargs = {}
    for hf, ours in _HF_CONFIG.items():
        if hf in d and d[hf] is not None:
            kwargs[ours] = d[hf]
    missing = [hf for hf in ("hidden_size", "num_hidden_layers", "vocab_size",
                             "num_attention_heads", "num_key_value_heads", "intermediate_size")
               if hf not in d]
    if missing:
        raise ValueError(f"{path}: config.json lacks {', '.join(missing)}")
    kwargs.setdefault("head_dim", d["hidden_size"] // d["num_attention_heads"])
    if arch == "hybrid":
        kwargs["attn_output_gate"] = bool(d.get("attn_output_gate", True))
    return ModelConfig(name=d.get("nvfp4_bench_name") or path.name, arch=arch, hf_id=str(path),
                       **kwargs)


def _quant_config(path: Path) -> dict:
    qpath = path / "hf_quant_config.json"
    if not qpath.exists():
        raise ValueError(f"{path}: no hf_quant_config.json (not a ModelOpt export)")
    try:
        q = json.loads(qpath.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{qpath}: corrupt JSON ({e.msg}, line {e.lineno})") from None
    quant = q.get("quantization", q)
    algo = quant.get("quant_algo")
    if algo != "NVFP4":
        raise ValueError(f"{qpath}: quant_algo is {algo!r}; only NVFP4 is supported")
    if int(quant.get("group_size", 16)) != nvfp4.BLOCK:
        raise ValueError(f"{qpath}: group_size {quant.get('group_size')} (NVFP4 uses 16)")
    return quant


def save_checkpoint(weights: ModelWeights, path: str | Path, input_gsf: dict[str, float] | None = None,
                    max_shard_bytes: int = 1 << 30) -> Path:
    """Write ``weights`` as a ModelOpt NVFP4 checkpoint directory (fused layers split)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = weights.config
    (path / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=1))
    (path / "hf_quant_config.json").write_text(json.dumps({
        "producer": {"name": "modelopt", "version": "nvfp4-bench"},
        "quantization": {"quant_algo": "NVFP4", "group_size": nvfp4.BLOCK,
                         "kv_cache_quant_algo": None,
                         "exclude_modules": ["lm_head", "*linear_attn.in_proj_ba"]},
    }, indent=1))
    gsf = dict(weights.input_gsf, **(input_gsf or {}))
    tensors: dict[str, torch.Tensor] = {}
    for name, lw in weights.linears.items():
        prefix, fused = _split_name(name)
        parts = _SPLITS.get(fused)
        scale_in = 1.0 / gsf[name] if name in gsf else None
        if parts is None:
            for k, t in nvfp4.to_modelopt(lw.fp4, scale_in).items():
                tensors[f"model.{prefix}{fused}.{k}"] = t
            continue
        sizes = _split_sizes(cfg, fused)
        packed = lw.fp4.packed.split(sizes, dim=0)
        scales = lw.fp4.scales.split(sizes, dim=0)
        for part, p, s in zip(parts, packed, scales):
            piece = nvfp4.NVFP4Tensor(p.contiguous(), s.contiguous(), lw.fp4.global_scale)
            for k, t in nvfp4.to_modelopt(piece, scale_in).items():
                tensors[f"model.{prefix}{part}.{k}"] = t
    for name, t in weights.dense.items():
        key = "lm_head.weight" if name == "lm_head" else f"model.{name}.weight"
        if name.endswith(("A_log", "dt_bias")):
            key = f"model.{name}"
        tensors[key] = t
    shards, cur, size = [], {}, 0
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        if cur and size + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = t
        size += nbytes
    shards.append(cur)
    index = {}
    for j, shard in enumerate(shards):
        fname = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / fname), metadata={"format": "pt"})
        index.update({k: fname for k in shard})
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}, indent=1))
    return path


def _split_name(name: str) -> tuple[str, str]:
    """'layers.3.mlp.gate_up_proj' -> ('layers.3.', 'mlp.gate_up_proj')."""
    parts = name.split(".")
    return ".".join(parts[:2]) + ".", ".".join(parts[2:])


def load_checkpoint(path: str | Path, device: torch.device) -> ModelWeights:
    """Load a ModelOpt NVFP4 checkpoint directory; errors name the file and tensor."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"checkpoint {path} is not a directory")
    cpath = path / "config.json"
    if not cpath.exists():
        raise ValueError(f"{path}: no config.json")
    try:
        cfg = config_from_hf(json.loads(cpath.read_text()), path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cpath}: corrupt JSON ({e.msg}, line {e.lineno})") from None
    quant = _quant_config(path)
    exclude = list(quant.get("exclude_modules") or [])
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path}: no *.safetensors files")
    where: dict[str, Path] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    where[k] = f
        except Exception as e:  # noqa: BLE001 - report the file, not a traceback
            raise ValueError(f"{f}: unreadable safetensors file ({e})") from None

    def get(key: str) -> torch.Tensor:
        if key not in where:
            raise ValueError(f"{path}: checkpoint lacks tensor {key!r}")
        with safe_open(str(where[key]), framework="pt", device="cpu") as sf:
            return sf.get_tensor(key).to(device)

    w = ModelWeights(config=cfg, source=f"checkpoint {path}")
    for name, (n, k) in all_linears(cfg).items():
        prefix, fused = _split_name(name)
        parts = _SPLITS.get(fused, (fused,))
        if _excluded(f"model.{prefix}{parts[0]}", exclude):
            dense = torch.cat([get(f"model.{prefix}{p}.weight") for p in parts]).to(torch.bfloat16)
            w.linears[name] = LayerWeights(fp4=nvfp4.quantize(dense), bf16=dense)
            continue
        pieces, ws2, in_scales = [], [], []
        for p in parts:
            key = f"model.{prefix}{p}."
            t = {s: get(key + s) for s in ("weight", "weight_scale", "weight_scale_2")}
            pieces.append(nvfp4.from_modelopt(t))
            ws2.append(float(t["weight_scale_2"]))
            if key + "input_scale" in where:
                in_scales.append(float(get(key + "input_scale")))
        if any(abs(v - ws2[0]) > 1e-6 * abs(ws2[0]) for v in ws2):
            raise ValueError(f"{path}: fused layer {name} needs one weight_scale_2 for "
                             f"{', '.join(parts)}; found {ws2}")
        fp4 = nvfp4.NVFP4Tensor(torch.cat([p.packed for p in pieces]),
                                torch.cat([p.scales for p in pieces]), pieces[0].global_scale)
        if fp4.shape != (n, k):
            raise ValueError(f"{path}: {name} has shape {fp4.shape}; config implies {(n, k)}")
        w.linears[name] = LayerWeights(fp4=fp4)
        if in_scales:
            w.input_gsf[name] = 1.0 / max(in_scales)
    for name, shape in dense_shapes(cfg).items():
        key = "lm_head.weight" if name == "lm_head" else f"model.{name}.weight"
        if name.endswith(("A_log", "dt_bias")):
            key = f"model.{name}"
        t = get(key)
        if tuple(t.shape) != shape:
            raise ValueError(f"{path}: {key} has shape {tuple(t.shape)}; config implies {shape}")
        w.dense[name] = t if name.endswith(("A_log", "dt_bias")) else t.to(torch.bfloat16)
    if cfg.tied_embeddings:
        w.dense["lm_head"] = w.dense["embed_tokens"]
    return w


def _excluded(module: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(module, p) or fnmatch.fnmatch(module.removeprefix("model."), p)
               for p in patterns)


def with_config(weights: ModelWeights, **changes) -> ModelWeights:
    return replace(weights, config=replace(weights.config, **changes))
