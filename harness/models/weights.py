"""Model weights: synthetic NVFP4 from a seed (checkpoints: :mod:`harness.models.checkpoint`).

Linear layers are NVFP4 (``LayerWeights``), fused as engines fuse them (q/k/v, gate/up);
embeddings, ``lm_head``, norms and the small Gated DeltaNet parameters stay dense
(ModelOpt's exclude list); a MoE layer's routed experts are one stacked NVFP4 tensor per
weight (``harness.moe.layer.MoeWeights``, what fused MoE kernels read), its router bf16.
Synthetic weights are drawn layer by layer directly in NVFP4
(random codes, random e4m3 block scales around a fixed level, a global scale chosen for a
weight RMS of 1/sqrt(K)), so the bf16 model is never materialised and activations stay
finite through every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from harness import nvfp4
from harness.backends.base import LayerWeights
from harness.models.configs import ModelConfig
from harness.moe.layer import ExpertStack, MoeWeights

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
    # What the load had to decide and a result should say (e.g. how fused shards were scaled).
    notes: list[str] = field(default_factory=list)
    # MoE models: layer index -> its routed experts and router
    experts: dict[int, MoeWeights] = field(default_factory=dict)

    def nvfp4_bytes(self) -> int:
        return (sum(w.fp4.nbytes() for w in self.linears.values())
                + sum(m.w13.nbytes() + m.w2.nbytes() for m in self.experts.values()))

    def dense_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.dense.values())


# ---- names ---------------------------------------------------------------------------

def layer_linears(cfg: ModelConfig, i: int) -> dict[str, tuple[int, int]]:
    """Fused NVFP4 linears of layer ``i``: name -> (N, K)."""
    h, hd = cfg.hidden, cfg.head_dim
    p = f"layers.{i}."
    if not cfg.is_moe:
        out = {p + "mlp.gate_up_proj": (2 * cfg.intermediate, h),
               p + "mlp.down_proj": (h, cfg.intermediate)}
    elif cfg.shared_expert_intermediate:  # the routed experts are not linears (expert_elements)
        si = cfg.shared_expert_intermediate
        out = {p + "mlp.shared_expert.gate_up_proj": (2 * si, h),
               p + "mlp.shared_expert.down_proj": (h, si)}
    else:
        out = {}
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
        if cfg.is_moe:
            out[p + "mlp.gate"] = (cfg.experts, h)
            if cfg.shared_expert_intermediate:
                out[p + "mlp.shared_expert_gate"] = (1, h)
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


def expert_elements(cfg: ModelConfig) -> int:
    """Weight elements of every routed expert of the model (0 without experts)."""
    return cfg.layers * cfg.experts * 3 * cfg.moe_intermediate * cfg.hidden if cfg.is_moe else 0


def nvfp4_weight_bytes(cfg: ModelConfig) -> int:
    experts = expert_elements(cfg)
    return (sum(n * k // 2 + n * k // 16 + 4 for n, k in all_linears(cfg).values())
            + experts // 2 + experts // nvfp4.BLOCK + 2 * 4 * cfg.layers * cfg.experts)


# ---- synthetic -----------------------------------------------------------------------

def _packed(lead: tuple[int, ...], n: int, k: int, gen: torch.Generator,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Random codes and block scales of [*lead, N, K] and the gsf giving RMS ~ 1/sqrt(K)."""
    packed = torch.randint(0, 256, (*lead, n, k // 2), generator=gen, device=device,
                           dtype=torch.uint8)
    u = torch.rand((*lead, n, k // nvfp4.BLOCK), generator=gen, device=device)
    scales = (SYNTH_SCALE * (0.75 + 0.5 * u)).to(torch.float8_e4m3fn)
    del u
    sf_mean_square = SYNTH_SCALE ** 2 * (0.75 ** 2 + 0.75 * 0.5 + 0.5 ** 2 / 3)
    return packed, scales, math.sqrt(E2M1_MEAN_SQUARE * sf_mean_square * k)


def synthetic_linear(n: int, k: int, gen: torch.Generator, device: torch.device) -> LayerWeights:
    """An NVFP4 weight with RMS ~ 1/sqrt(K), drawn in its packed form."""
    packed, scales, gsf = _packed((), n, k, gen, device)
    return LayerWeights(fp4=nvfp4.NVFP4Tensor(packed, scales,
                                              torch.tensor(gsf, dtype=torch.float32, device=device)))


def synthetic_experts(cfg: ModelConfig, gen: torch.Generator, device: torch.device) -> MoeWeights:
    """One MoE layer's router (bf16, RMS 1/sqrt(H)) and routed experts, drawn packed."""
    shape = cfg.moe_shape()
    e, h, i = shape.experts, shape.hidden, shape.intermediate

    def stack(n, k):
        packed, scales, gsf = _packed((e,), n, k, gen, device)
        return ExpertStack(packed, scales, torch.full((e,), gsf, dtype=torch.float32,
                                                      device=device))
    router = (torch.randn((e, h), generator=gen, device=device) / math.sqrt(h)).to(torch.bfloat16)
    return MoeWeights(shape, router, stack(2 * i, h), stack(h, i))


def synthetic(cfg: ModelConfig, device: torch.device, seed: int = 0) -> ModelWeights:
    gen = torch.Generator(device=device).manual_seed(seed)
    w = ModelWeights(config=cfg, source=f"synthetic(seed={seed})")
    for name, (n, k) in all_linears(cfg).items():
        w.linears[name] = synthetic_linear(n, k, gen, device)
    for name, shape in dense_shapes(cfg).items():
        if name.endswith(".mlp.gate"):  # the router comes with the experts
            continue
        w.dense[name] = _synthetic_dense(name, shape, gen, device)
    if cfg.is_moe:
        for i in range(cfg.layers):
            w.experts[i] = synthetic_experts(cfg, gen, device)
    return w


def _synthetic_dense(name: str, shape: tuple[int, ...], gen: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("embed_tokens", "lm_head"):
        return torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16)
    if leaf in ("in_proj_ba", "shared_expert_gate"):
        return (torch.randn(shape, generator=gen, device=device) / math.sqrt(shape[1])).to(torch.bfloat16)
    if leaf == "conv1d":
        return (torch.randn(shape, generator=gen, device=device) * 0.5).to(torch.bfloat16)
    if leaf == "A_log":  # per-head decay rates A in [1, 16], as the reference initialisation
        return torch.log(1 + 15 * torch.rand(shape, generator=gen, device=device))
    if leaf == "dt_bias":
        return torch.zeros(shape, device=device)
    return torch.ones(shape, device=device, dtype=torch.bfloat16)  # norm weights


def with_config(weights: ModelWeights, **changes) -> ModelWeights:
    return replace(weights, config=replace(weights.config, **changes))
