"""ModelOpt NVFP4 checkpoints as the real tools write them: scanned, loaded, written and
described through one table of formats.

What ``nvidia-modelopt``'s ``export_hf_checkpoint`` writes for transformers models (checked
with modelopt 0.47 and transformers 5.24):

* ``config.json``: transformers' config. Qwen3.5/3.6 (``qwen3_5``) nest the text model under
  ``text_config`` and list ``layer_types``; transformers 5 keeps ``rope_theta`` and
  ``partial_rotary_factor`` in ``rope_parameters``. Newer exports carry the quantization
  config here too (``quantization_config`` with ``ignore`` or ``modules_to_not_convert``);
  ``hf_quant_config.json`` (``exclude_modules``) is the older place, read first where present.
* ``*.safetensors``: per quantized linear ``P``: ``P.weight`` (uint8 [N, K/2]),
  ``P.weight_scale`` (e4m3 [N, K/16]), ``P.weight_scale_2`` (fp32, 1/gsf), ``P.input_scale``
  (fp32); modules in the exclude list keep a bf16 ``P.weight``. The text model of
  ``Qwen3_5ForConditionalGeneration`` lives under ``model.language_model.``, its vision tower
  under ``model.visual.``; Qwen3.5 releases add an MTP head (``mtp.``) the engine does not run.
  The Gated DeltaNet input projections are split (``in_proj_qkv``, ``in_proj_z``,
  ``in_proj_b``, ``in_proj_a``); the engine fuses them at load, as SGLang does.
* Qwen3.5/3.6 RMSNorm weights are zero-centred: transformers computes ``x_hat * (1 + w)`` for
  the decoder norms and the attention q/k norms (not for the gated norm inside the Gated
  DeltaNet). The engine multiplies by its weight, so those are converted once at load.

The format knowledge is data (:data:`FORMATS`): per ``model_type`` the tensor-name prefixes,
the stacked shards (fused engine name, checkpoint shard name, shard index) the way SGLang's and
vLLM's loaders keep ``stacked_params_mapping``, and the zero-centred norms. A new export format
is a new row.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness import nvfp4
from harness.backends.base import LayerWeights
from harness.models.configs import ModelConfig
from harness.models.weights import ModelWeights, all_linears, dense_shapes


class CheckpointError(ValueError):
    """A checkpoint directory the engine cannot load; the message names the file or key."""


@dataclass(frozen=True)
class Shard:
    """Checkpoint module ``shard`` is slice ``index`` (in output order) of engine layer
    ``fused``; both relative to a decoder layer."""

    fused: str
    shard: str
    index: int


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    model_types: tuple[str, ...]        # config.json model_type values of this format
    arch: str                           # the engine's architecture: "dense" | "hybrid"
    text_prefixes: tuple[str, ...]      # where the text model's tensors live, first match wins
    unused_prefixes: tuple[str, ...]    # parts of the checkpoint the engine does not run
    stacked: tuple[Shard, ...]
    zero_centred: tuple[str, ...]       # engine norm names (fnmatch) stored as w for x_hat*(1+w)
    defaults: tuple[tuple[str, object], ...] = ()  # transformers' own defaults for absent keys
    # What save() writes: model_type, architecture, text prefix.
    save_as: tuple[str, str, str] = ("", "", "model.")


_QWEN3_STACKED = (
    Shard("self_attn.qkv_proj", "self_attn.q_proj", 0),
    Shard("self_attn.qkv_proj", "self_attn.k_proj", 1),
    Shard("self_attn.qkv_proj", "self_attn.v_proj", 2),
    Shard("mlp.gate_up_proj", "mlp.gate_proj", 0),
    Shard("mlp.gate_up_proj", "mlp.up_proj", 1),
)
_GDN_STACKED = (
    Shard("linear_attn.in_proj_qkvz", "linear_attn.in_proj_qkv", 0),
    Shard("linear_attn.in_proj_qkvz", "linear_attn.in_proj_z", 1),
    Shard("linear_attn.in_proj_ba", "linear_attn.in_proj_b", 0),
    Shard("linear_attn.in_proj_ba", "linear_attn.in_proj_a", 1),
)

FORMATS: tuple[CheckpointFormat, ...] = (
    CheckpointFormat(
        name="qwen3", model_types=("qwen3",), arch="dense", text_prefixes=("model.",),
        unused_prefixes=(), stacked=_QWEN3_STACKED, zero_centred=(),
        save_as=("qwen3", "Qwen3ForCausalLM", "model.")),
    CheckpointFormat(
        name="qwen3_5", model_types=("qwen3_5", "qwen3_5_text"), arch="hybrid",
        text_prefixes=("model.language_model.", "model."),
        unused_prefixes=("model.visual.", "mtp."),
        stacked=_QWEN3_STACKED + _GDN_STACKED,
        zero_centred=("layers.*.input_layernorm", "layers.*.post_attention_layernorm", "norm",
                      "layers.*.self_attn.q_norm", "layers.*.self_attn.k_norm"),
        defaults=(("partial_rotary_factor", 0.25), ("full_attention_interval", 4)),
        save_as=("qwen3_5_text", "Qwen3_5ForCausalLM", "model.")),
)

# config.json key -> ModelConfig field (text model; rope values come from rope_parameters).
_HF_CONFIG = {
    "hidden_size": "hidden", "num_hidden_layers": "layers", "vocab_size": "vocab",
    "num_attention_heads": "q_heads", "num_key_value_heads": "kv_heads", "head_dim": "head_dim",
    "intermediate_size": "intermediate", "rms_norm_eps": "rms_eps",
    "tie_word_embeddings": "tied_embeddings", "linear_num_key_heads": "linear_qk_heads",
    "linear_num_value_heads": "linear_v_heads", "linear_key_head_dim": "linear_head_dim",
    "linear_conv_kernel_dim": "conv_kernel",
}
_REQUIRED = ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads",
             "num_key_value_heads", "intermediate_size")
_HYBRID_REQUIRED = ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                    "linear_conv_kernel_dim")
# Leaves of a quantized linear module; parameters stored without ".weight".
_LINEAR_LEAVES = ("weight", "weight_scale", "weight_scale_2", "input_scale")
_PARAMETERS = ("A_log", "dt_bias")
# FP8 KV-cache scales (kv_cache_quant_algo): known, not used (the engine keeps a bf16 cache).
_KV_SCALE_LEAVES = ("k_scale", "v_scale", "k_bias", "v_bias")
_DTYPES = {"U8": torch.uint8, "F8_E4M3": torch.float8_e4m3fn, "BF16": torch.bfloat16,
           "F16": torch.float16, "F32": torch.float32, "I8": torch.int8}


def format_for(model_type: str, where: str = "config.json") -> CheckpointFormat:
    for f in FORMATS:
        if model_type in f.model_types:
            return f
    known = [t for f in FORMATS for t in f.model_types]
    raise CheckpointError(f"{where}: model_type {model_type!r} is not supported; supported: "
                          f"{', '.join(known)}")


def format_of(cfg: ModelConfig) -> CheckpointFormat:
    return next(f for f in FORMATS if f.arch == cfg.arch)


# ---- config -------------------------------------------------------------------------

def config_from_hf(d: dict, where: str, name: str) -> tuple[ModelConfig, CheckpointFormat]:
    """The engine's config from a transformers ``config.json`` dict."""
    fmt = format_for(d.get("model_type", ""), where)
    text = d.get("text_config") or d
    defaults = dict(fmt.defaults)

    def get(key: str, default=None):
        for src in (text, d):
            if key in src and src[key] is not None:
                return src[key]
        return defaults.get(key, default)

    required = _REQUIRED + (_HYBRID_REQUIRED if fmt.arch == "hybrid" else ())
    missing = [k for k in required if get(k) is None]
    if missing:
        raise CheckpointError(f"{where}: lacks {', '.join(missing)}")
    kwargs = {ours: get(hf) for hf, ours in _HF_CONFIG.items() if get(hf) is not None}
    kwargs.setdefault("head_dim", get("hidden_size") // get("num_attention_heads"))
    rope = get("rope_parameters") or get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"{where}: rope_type {rope_type!r} is not supported (the engine "
                              f"runs plain rotary: rope_type 'default')")
    theta = rope.get("rope_theta", get("rope_theta"))
    if theta is None:
        raise CheckpointError(f"{where}: no rope_theta (in rope_parameters or at the top level)")
    kwargs["rope_theta"] = float(theta)
    kwargs["partial_rotary"] = float(rope.get("partial_rotary_factor",
                                              get("partial_rotary_factor", 1.0)))
    layer_types = get("layer_types")
    if layer_types is not None:
        kwargs["layer_types"] = tuple(layer_types)
    elif fmt.arch == "hybrid":
        if get("full_attention_interval") is None:
            raise CheckpointError(f"{where}: a hybrid model needs layer_types or "
                                  f"full_attention_interval")
        kwargs["full_attention_interval"] = int(get("full_attention_interval"))
    if fmt.arch == "hybrid":
        dk, dv = get("linear_key_head_dim"), get("linear_value_head_dim", get("linear_key_head_dim"))
        if dk != dv:
            raise CheckpointError(f"{where}: linear_key_head_dim {dk} != linear_value_head_dim "
                                  f"{dv}; the engine's Gated DeltaNet needs them equal")
        kwargs["attn_output_gate"] = bool(get("attn_output_gate", True))
    try:
        cfg = ModelConfig(name=d.get("nvfp4_bench_name") or name, arch=fmt.arch, **kwargs)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    return cfg, fmt


def config_to_hf(cfg: ModelConfig, quant: dict) -> dict:
    """A transformers ``config.json`` for ``cfg`` in the format's own layout."""
    fmt = format_of(cfg)
    model_type, architecture, _ = fmt.save_as
    d = {hf: getattr(cfg, ours) for hf, ours in _HF_CONFIG.items()
         if fmt.arch == "hybrid" or not hf.startswith("linear_")}
    if fmt.arch == "hybrid":
        d["linear_value_head_dim"] = cfg.linear_head_dim
    d["layer_types"] = ["full_attention" if cfg.is_attention_layer(i) else "linear_attention"
                        for i in range(cfg.layers)]
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if fmt.arch == "hybrid":
        d["rope_parameters"]["partial_rotary_factor"] = cfg.partial_rotary
    d.update(model_type=model_type, architectures=[architecture], dtype="bfloat16",
             nvfp4_bench_name=cfg.name, quantization_config=quant)
    return d


# ---- quantization config ------------------------------------------------------------

@dataclass(frozen=True)
class QuantConfig:
    algo: str
    group_size: int
    excluded: tuple[str, ...]
    kv_cache_algo: str | None
    source: str                     # the file it came from


def _read_json(p: Path) -> dict:
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}: corrupt JSON ({e.msg}, line {e.lineno})") from None
    except OSError as e:
        raise CheckpointError(f"{p}: unreadable ({e.strerror})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{p}: expected a JSON object")
    return d


def quant_config(path: Path, config: dict) -> QuantConfig:
    """``hf_quant_config.json`` where present, else ``config.json``'s ``quantization_config``."""
    qpath = path / "hf_quant_config.json"
    if qpath.exists():
        q, source = _read_json(qpath), qpath.name
        q = q.get("quantization", q)
        excluded = q.get("exclude_modules")
    elif isinstance(config.get("quantization_config"), dict):
        q, source = config["quantization_config"], "config.json quantization_config"
        method = q.get("quant_method", "modelopt")
        if method != "modelopt":
            raise CheckpointError(f"{path}: {source}: quant_method {method!r} is not supported; "
                                  f"only ModelOpt exports (quant_method 'modelopt')")
        excluded = q.get("ignore", q.get("modules_to_not_convert"))
    else:
        raise CheckpointError(f"{path}: no quantization config (neither hf_quant_config.json "
                              f"nor quantization_config in config.json): not a ModelOpt export")
    algo = q.get("quant_algo")
    if algo != "NVFP4":
        raise CheckpointError(f"{path}: {source}: quant_algo is {algo!r}; only NVFP4 is supported")
    group = q.get("group_size")
    if group is None:  # config.json keeps it per config group
        groups = [g.get("weights", {}).get("group_size") for g in
                  (q.get("config_groups") or {}).values() if isinstance(g, dict)]
        group = next((g for g in groups if g is not None), nvfp4.BLOCK)
    if int(group) != nvfp4.BLOCK:
        raise CheckpointError(f"{path}: {source}: group_size {group} (NVFP4 uses {nvfp4.BLOCK})")
    return QuantConfig(algo=algo, group_size=int(group), excluded=tuple(excluded or ()),
                       kv_cache_algo=q.get("kv_cache_quant_algo"), source=source)


# ---- scan: names and shapes, no tensor data ------------------------------------------

@dataclass
class TensorInfo:
    key: str
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class CheckpointPlan:
    """Where every tensor the engine needs is, read from the headers only."""

    path: Path
    fmt: CheckpointFormat
    model_type: str
    config: ModelConfig
    quant: QuantConfig
    prefix: str
    tensors: dict[str, TensorInfo]
    # engine name -> shard index -> leaf ("weight", ..., "" for a parameter) -> checkpoint key
    placed: dict[str, dict[int, dict[str, str]]] = field(default_factory=dict)
    unused: dict[str, int] = field(default_factory=dict)  # what was not loaded, and how many


def _headers(path: Path) -> dict[str, TensorInfo]:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors files")
    out: dict[str, TensorInfo] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    sl = sf.get_slice(k)
                    dt = _DTYPES.get(sl.get_dtype())
                    if dt is None:
                        raise CheckpointError(f"{f}: tensor {k!r} has dtype {sl.get_dtype()}, "
                                              f"which no NVFP4 checkpoint tensor has")
                    out[k] = TensorInfo(k, f, tuple(sl.get_shape()), dt)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - report the file, not a traceback
            raise CheckpointError(f"{f}: unreadable safetensors file ({e})") from None
    return out


def _placement(fmt: CheckpointFormat, rest: str) -> tuple[str, int, str] | None:
    """'layers.3.mlp.up_proj.weight_scale' -> ('layers.3.mlp.gate_up_proj', 1, 'weight_scale')."""
    module, _, leaf = rest.rpartition(".")
    if leaf in _PARAMETERS:
        module, leaf = rest, ""
    elif leaf not in _LINEAR_LEAVES:
        return None
    parts = module.split(".")
    if parts[0] == "layers" and len(parts) > 2:
        layer, sub = ".".join(parts[:2]), ".".join(parts[2:])
        for s in fmt.stacked:
            if s.shard == sub:
                return f"{layer}.{s.fused}", s.index, leaf
    return module, 0, leaf


def scan(path: str | Path) -> CheckpointPlan:
    """Check a checkpoint directory and place every tensor, reading only headers and JSON."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory")
    cpath = path / "config.json"
    if not cpath.exists():
        raise CheckpointError(f"{path}: no config.json")
    raw = _read_json(cpath)
    cfg, fmt = config_from_hf(raw, str(cpath), path.name)
    quant = quant_config(path, raw)
    tensors = _headers(path)
    expected = set(all_linears(cfg)) | set(dense_shapes(cfg))
    prefix = next((p for p in fmt.text_prefixes
                   if any(k.startswith(p + "layers.") for k in tensors)), None)
    if prefix is None:
        raise CheckpointError(f"{path}: no decoder layers under any of "
                              f"{', '.join(fmt.text_prefixes)} (a {fmt.name} export)")
    plan = CheckpointPlan(path, fmt, raw.get("model_type", ""), cfg, quant, prefix, tensors)
    for key in sorted(tensors):
        unused = next((p for p in fmt.unused_prefixes if key.startswith(p)), None)
        if unused is not None:
            plan.unused[unused + "*"] = plan.unused.get(unused + "*", 0) + 1
            continue
        if key.rsplit(".", 1)[-1] in _KV_SCALE_LEAVES:
            plan.unused["KV-cache scales"] = plan.unused.get("KV-cache scales", 0) + 1
            continue
        if key.startswith("lm_head."):
            rest = key
        elif key.startswith(prefix):
            rest = key[len(prefix):]
        else:
            rest = None
        where = _placement(fmt, rest) if rest is not None else None
        if where is None or where[0] not in expected:
            raise CheckpointError(f"{path}: tensor {key!r} cannot be placed in a {fmt.name} "
                                  f"model of this config ({tensors[key].file.name})")
        name, index, leaf = where
        plan.placed.setdefault(name, {}).setdefault(index, {})[leaf] = key
    _check_complete(plan)
    return plan


def _shards_of(fmt: CheckpointFormat, name: str) -> list[str]:
    """Checkpoint module names (relative to the layer) that make engine layer ``name``."""
    parts = name.split(".")
    sub = ".".join(parts[2:]) if parts[0] == "layers" else name
    shards = sorted((s for s in fmt.stacked if s.fused == sub), key=lambda s: s.index)
    return [s.shard for s in shards] or [sub]


def checkpoint_key(plan: CheckpointPlan, name: str, index: int, leaf: str) -> str:
    """The key a tensor of engine layer ``name`` has in this checkpoint's naming."""
    parts = name.split(".")
    module = _shards_of(plan.fmt, name)[index]
    if parts[0] == "layers":
        module = ".".join(parts[:2]) + "." + module
    full = module if name == "lm_head" else plan.prefix + module
    return f"{full}.{leaf}" if leaf else full


def _check_complete(plan: CheckpointPlan) -> None:
    cfg = plan.config
    for name, shape in {**all_linears(cfg), **dense_shapes(cfg)}.items():
        if name == "lm_head" and cfg.tied_embeddings:
            continue
        shards = _shards_of(plan.fmt, name)
        got = plan.placed.get(name, {})
        for i in range(len(shards)):
            leaves = got.get(i, {})
            need = [""] if name.rsplit(".", 1)[-1] in _PARAMETERS else ["weight"]
            if leaves.get("weight") and plan.tensors[leaves["weight"]].dtype == torch.uint8:
                need = ["weight", "weight_scale", "weight_scale_2"]
            for leaf in need:
                if leaf not in leaves:
                    raise CheckpointError(f"{plan.path}: checkpoint lacks tensor "
                                          f"{checkpoint_key(plan, name, i, leaf)!r}")


# ---- load ---------------------------------------------------------------------------

def load(path: str | Path | CheckpointPlan, device: torch.device) -> ModelWeights:
    """Load a ModelOpt NVFP4 checkpoint; fused layers are assembled as the engine runs them."""
    from safetensors import safe_open

    plan = path if isinstance(path, CheckpointPlan) else scan(path)
    cfg = plan.config
    handles: dict[Path, object] = {}

    def get(key: str) -> torch.Tensor:
        info = plan.tensors[key]
        if info.file not in handles:
            handles[info.file] = safe_open(str(info.file), framework="pt", device="cpu")
        return handles[info.file].get_tensor(key)

    w = ModelWeights(config=cfg, source=f"checkpoint {plan.path} ({plan.model_type})")
    for name, (n, k) in all_linears(cfg).items():
        shards = [plan.placed[name][i] for i in range(len(_shards_of(plan.fmt, name)))]
        quantized = [plan.tensors[s["weight"]].dtype == torch.uint8 for s in shards]
        if not any(quantized):
            dense = torch.cat([get(s["weight"]) for s in shards]).to(torch.bfloat16).to(device)
            lw = LayerWeights(fp4=nvfp4.quantize(dense), bf16=dense, quantized=False)
        elif not all(quantized):
            raise CheckpointError(f"{plan.path}: {name} mixes NVFP4 and unquantized shards "
                                  f"({', '.join(_shards_of(plan.fmt, name))})")
        else:
            lw = _fused_nvfp4(plan, name, shards, get, w, device)
        if lw.fp4.shape != (n, k):
            raise CheckpointError(f"{plan.path}: {name} has shape {lw.fp4.shape}; the config "
                                  f"implies {(n, k)}")
        w.linears[name] = lw
    for name, shape in dense_shapes(cfg).items():
        if name == "lm_head" and cfg.tied_embeddings:
            continue
        shards = [plan.placed[name][i] for i in range(len(_shards_of(plan.fmt, name)))]
        t = torch.cat([_dense_tensor(s, get) for s in shards])
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{plan.path}: {checkpoint_key(plan, name, 0, '')} has shape "
                                  f"{tuple(t.shape)}; the config implies {shape}")
        if name.rsplit(".", 1)[-1] in _PARAMETERS:
            t = t.float()
        elif any(fnmatch.fnmatchcase(name, p) for p in plan.fmt.zero_centred):
            t = (1.0 + t.float()).to(torch.bfloat16)  # x_hat * (1 + w) as x_hat * w'
        else:
            t = t.to(torch.bfloat16)
        w.dense[name] = t.to(device)
    if cfg.tied_embeddings:
        w.dense["lm_head"] = w.dense["embed_tokens"]
    return w


def _dense_tensor(leaves: dict[str, str], get) -> torch.Tensor:
    if "weight_scale" in leaves:  # a quantized module the engine keeps dense: dequantize it
        return nvfp4.dequantize(nvfp4.from_modelopt({k: get(v) for k, v in leaves.items()}),
                                torch.float32)
    return get(leaves.get("weight", leaves.get("")))


def _fused_nvfp4(plan: CheckpointPlan, name: str, shards: list[dict[str, str]], get,
                 w: ModelWeights, device: torch.device) -> LayerWeights:
    pieces, ws2, in_scales = [], [], []
    for s in shards:
        t = {leaf: get(key) for leaf, key in s.items()}
        pieces.append(nvfp4.from_modelopt(t))
        ws2.append(float(t["weight_scale_2"]))
        if "input_scale" in t:
            in_scales.append(float(t["input_scale"]))
    scale_2 = max(ws2)
    if any(not math.isclose(v, scale_2, rel_tol=1e-6) for v in ws2):
        # One global scale per fused GEMM: SGLang takes the largest weight_scale_2 of the
        # shards (and of input_scale) without re-quantizing the others.
        w.notes.append(f"{name}: shards {', '.join(_shards_of(plan.fmt, name))} carry "
                       f"weight_scale_2 {', '.join(f'{v:.6g}' for v in ws2)}; the fused layer "
                       f"uses the largest, as SGLang does")
    fp4 = nvfp4.NVFP4Tensor(torch.cat([p.packed for p in pieces]).to(device),
                            torch.cat([p.scales for p in pieces]).to(device),
                            torch.tensor(1.0 / scale_2, dtype=torch.float32, device=device))
    if in_scales:
        w.input_gsf[name] = 1.0 / max(in_scales)
    return LayerWeights(fp4=fp4)


# ---- save ---------------------------------------------------------------------------

def save(weights: ModelWeights, path: str | Path, input_gsf: dict[str, float] | None = None,
         max_shard_bytes: int = 1 << 30) -> Path:
    """Write ``weights`` as the format's ModelOpt NVFP4 export would (split shards, zero-centred
    norms, both quantization-config files)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = weights.config
    fmt = format_of(cfg)
    quant = {"quant_algo": "NVFP4", "group_size": nvfp4.BLOCK, "kv_cache_quant_algo": None,
             "exclude_modules": ["lm_head"], "quant_method": "modelopt",
             "producer": {"name": "nvfp4-bench"}}
    cfg_json = config_to_hf(cfg, {**{k: v for k, v in quant.items() if k != "exclude_modules"},
                                  "ignore": quant["exclude_modules"]})
    (path / "config.json").write_text(json.dumps(cfg_json, indent=1))
    (path / "hf_quant_config.json").write_text(json.dumps(
        {"producer": quant["producer"],
         "quantization": {k: v for k, v in quant.items() if k not in ("producer", "quant_method")}},
        indent=1))
    plan = CheckpointPlan(path, fmt, fmt.save_as[0], cfg, quant_config(path, cfg_json),
                          fmt.save_as[2], {})
    gsf = dict(weights.input_gsf, **(input_gsf or {}))
    tensors: dict[str, torch.Tensor] = {}
    for name, lw in weights.linears.items():
        shards = _shards_of(fmt, name)
        sizes = _split_sizes(cfg, name, len(shards))
        scale_in = 1.0 / gsf[name] if name in gsf else None
        for i, (p, s) in enumerate(zip(lw.fp4.packed.split(sizes), lw.fp4.scales.split(sizes))):
            piece = nvfp4.NVFP4Tensor(p.contiguous(), s.contiguous(), lw.fp4.global_scale)
            for leaf, t in nvfp4.to_modelopt(piece, scale_in).items():
                tensors[checkpoint_key(plan, name, i, leaf)] = t
    for name, t in weights.dense.items():
        if name == "lm_head" and cfg.tied_embeddings:
            continue
        leaf = "" if name.rsplit(".", 1)[-1] in _PARAMETERS else "weight"
        if any(fnmatch.fnmatchcase(name, p) for p in fmt.zero_centred):
            t = (t.float() - 1.0).to(torch.bfloat16)
        shards = _shards_of(fmt, name)
        for i, piece in enumerate(t.split(t.shape[0] // len(shards))):
            tensors[checkpoint_key(plan, name, i, leaf)] = piece
    _write_safetensors(tensors, path, max_shard_bytes, save_file)
    return path


def _split_sizes(cfg: ModelConfig, name: str, n_shards: int) -> list[int]:
    """Output rows of each shard of a fused layer, in order."""
    sub = name.split(".", 2)[-1]
    if sub == "self_attn.qkv_proj":
        kv = cfg.kv_heads * cfg.head_dim
        return [cfg.q_heads * cfg.head_dim * (2 if cfg.attn_output_gate else 1), kv, kv]
    if sub == "linear_attn.in_proj_qkvz":
        v = cfg.linear_v_heads * cfg.linear_head_dim
        return [2 * cfg.linear_qk_heads * cfg.linear_head_dim + v, v]
    n = all_linears(cfg)[name][0]
    return [n // n_shards] * n_shards


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path, max_shard_bytes: int,
                       save_file) -> None:
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


# ---- describe -----------------------------------------------------------------------

def describe(plan: CheckpointPlan) -> dict:
    """What was recognised, for ``nvfp4-bench inspect``."""
    cfg = plan.config
    nvfp4_bytes = dense_bytes = 0
    quantized, unquantized = [], []
    for name in all_linears(cfg):
        leaves = [plan.placed[name][i] for i in sorted(plan.placed[name])]
        keys = [k for s in leaves for k in s.values()]
        size = sum(math.prod(plan.tensors[k].shape) * plan.tensors[k].dtype.itemsize for k in keys)
        if plan.tensors[leaves[0]["weight"]].dtype == torch.uint8:
            quantized.append(name)
            nvfp4_bytes += size
        else:
            unquantized.append(name)
            dense_bytes += size
    for name in dense_shapes(cfg):
        for leaves in plan.placed.get(name, {}).values():
            dense_bytes += sum(math.prod(plan.tensors[k].shape) * plan.tensors[k].dtype.itemsize
                               for k in leaves.values())
    kinds = {"attention": cfg.attention_layers, "gated_deltanet": cfg.layers - cfg.attention_layers}
    return {
        "path": str(plan.path), "format": plan.fmt.name, "model_type": plan.model_type,
        "architecture": cfg.arch, "layers": cfg.layers,
        "layers_by_kind": {k: v for k, v in kinds.items() if v},
        "hidden": cfg.hidden, "heads": f"{cfg.q_heads} q / {cfg.kv_heads} kv x {cfg.head_dim}",
        "vocab": cfg.vocab, "rope_theta": cfg.rope_theta, "partial_rotary": cfg.partial_rotary,
        "tensor_prefix": plan.prefix,
        "quant_algo": plan.quant.algo, "group_size": plan.quant.group_size,
        "kv_cache_quant_algo": plan.quant.kv_cache_algo, "quant_config_from": plan.quant.source,
        "excluded_modules": list(plan.quant.excluded),
        "nvfp4_linears": len(quantized), "unquantized_linears": unquantized,
        "nvfp4_bytes": nvfp4_bytes, "dense_bytes": dense_bytes,
        "zero_centred_norms_converted": sum(
            any(fnmatch.fnmatchcase(n, p) for p in plan.fmt.zero_centred)
            for n in dense_shapes(cfg)),
        "not_loaded": dict(plan.unused),
    }
