"""Model configurations (DESIGN.md section 6) and the linear layers each one runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinearShape:
    """One kind of linear layer: out features N, in features K, how many the model has."""

    name: str
    n: int
    k: int
    count: int


# transformers' names of the layer kinds each architecture's engine runs.
LAYER_TYPES = {"dense": ("full_attention",), "hybrid": ("full_attention", "linear_attention"),
               "moe": ("full_attention",)}
# Which layer kinds an architecture's attention follows: "moe" (Qwen3-MoE) attends as "dense"
# does; its MLPs are experts. A "hybrid" model with experts (Qwen3.5/3.6 MoE) is both.



@dataclass(frozen=True)
class ModelConfig:
    name: str
    # "dense" (GQA), "hybrid" (Gated DeltaNet + gated attention), "moe" (GQA with expert
    # MLPs); a hybrid model with ``experts`` has expert MLPs too (Qwen3.5/3.6 MoE)
    arch: str
    hidden: int
    layers: int
    vocab: int
    q_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    hf_id: str = ""
    tied_embeddings: bool = False
    rope_theta: float = 1_000_000.0
    rms_eps: float = 1e-6
    # hybrid (Qwen3.5/3.6 "qwen3_5"): which layers are attention, either as transformers
    # writes it (`layer_types`: "full_attention" | "linear_attention" per layer) or as every
    # `full_attention_interval`-th layer
    full_attention_interval: int = 0
    layer_types: tuple[str, ...] = ()
    partial_rotary: float = 1.0
    attn_output_gate: bool = False
    linear_qk_heads: int = 0
    linear_v_heads: int = 0
    linear_head_dim: int = 0
    conv_kernel: int = 0
    # MoE: routed experts per layer, how many each token uses, each one's intermediate size;
    # a shared expert (Qwen3.5/3.6 MoE: one SwiGLU MLP every token runs, its output scaled
    # by sigmoid(shared_expert_gate(x))) of ``shared_expert_intermediate`` when positive
    experts: int = 0
    experts_per_token: int = 0
    moe_intermediate: int = 0
    shared_expert_intermediate: int = 0

    def __post_init__(self):
        if self.layer_types:
            if len(self.layer_types) != self.layers:
                raise ValueError(f"model {self.name}: layer_types lists {len(self.layer_types)} "
                                 f"layers; the model has {self.layers}")
            unknown = sorted(set(self.layer_types) - set(LAYER_TYPES[self.arch]))
            if unknown:
                raise ValueError(f"model {self.name}: layer types {unknown} are not supported "
                                 f"for a {self.arch} model; supported: "
                                 f"{', '.join(LAYER_TYPES[self.arch])}")
        elif self.arch == "hybrid" and self.full_attention_interval < 1:
            raise ValueError(f"model {self.name}: a hybrid model needs layer_types or a "
                             f"positive full_attention_interval")
        if self.arch == "moe" and self.experts < 1:
            raise ValueError(f"model {self.name}: a moe model needs experts")
        if self.experts and not 0 < self.experts_per_token <= self.experts:
            raise ValueError(f"model {self.name}: experts_per_token must be in 1..{self.experts}")

    @property
    def is_moe(self) -> bool:
        """Whether the MLPs are routed experts (arch "moe", or a hybrid with experts)."""
        return self.experts > 0

    @property
    def attention_layers(self) -> int:
        return sum(self.is_attention_layer(i) for i in range(self.layers))

    @property
    def deltanet_layers(self) -> int:
        return self.layers - self.attention_layers

    def is_attention_layer(self, i: int) -> bool:
        if self.layer_types:
            return self.layer_types[i] == "full_attention"
        return self.arch != "hybrid" or (i + 1) % self.full_attention_interval == 0

    def linear_layers(self) -> list[LinearShape]:
        """Every NVFP4 linear layer kind at TP=1 (embeddings and lm_head stay bf16)."""
        h, hd = self.hidden, self.head_dim
        q_out = self.q_heads * hd * (2 if self.attn_output_gate else 1)
        attn = [
            LinearShape("qkv_proj", q_out + 2 * self.kv_heads * hd, h, self.attention_layers),
            LinearShape("o_proj", h, self.q_heads * hd, self.attention_layers),
        ]
        gdn = []
        if self.arch == "hybrid":
            qk = self.linear_qk_heads * self.linear_head_dim
            v = self.linear_v_heads * self.linear_head_dim
            gdn = [
                LinearShape("gdn_in_proj_qkvz", 2 * qk + 2 * v, h, self.deltanet_layers),
                LinearShape("gdn_out_proj", h, v, self.deltanet_layers),
            ]
        if self.is_moe:
            n_exp = self.layers * self.experts
            mlp = [
                LinearShape("expert_gate_up_proj", 2 * self.moe_intermediate, h, n_exp),
                LinearShape("expert_down_proj", h, self.moe_intermediate, n_exp),
            ]
            if self.shared_expert_intermediate:
                si = self.shared_expert_intermediate
                mlp += [LinearShape("shared_expert_gate_up_proj", 2 * si, h, self.layers),
                        LinearShape("shared_expert_down_proj", h, si, self.layers)]
        else:
            mlp = [
                LinearShape("gate_up_proj", 2 * self.intermediate, h, self.layers),
                LinearShape("down_proj", h, self.intermediate, self.layers),
            ]
        return mlp + gdn + attn

    def moe_shape(self):
        """The shape of one MoE layer's routed experts (``is_moe``)."""
        from harness.moe.layer import MoeShape
        if not self.is_moe:
            raise ValueError(f"model {self.name} has no MoE layers")
        return MoeShape(self.experts, self.experts_per_token, self.hidden, self.moe_intermediate)


MODELS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        ModelConfig(
            name="qwen3.6-27b", arch="hybrid", hf_id="mmangkad/Qwen3.6-27B-NVFP4",
            hidden=5120, layers=64, vocab=248320, q_heads=24, kv_heads=4, head_dim=256,
            intermediate=17408, full_attention_interval=4, partial_rotary=0.25,
            attn_output_gate=True, linear_qk_heads=16, linear_v_heads=48, linear_head_dim=128,
            conv_kernel=4, rope_theta=10_000_000.0),
        ModelConfig(
            name="qwen3-32b", arch="dense", hf_id="Qwen/Qwen3-32B", hidden=5120, layers=64,
            vocab=151936, q_heads=64, kv_heads=8, head_dim=128, intermediate=25600),
        ModelConfig(
            name="qwen3-8b", arch="dense", hf_id="Qwen/Qwen3-8B", hidden=4096, layers=36,
            vocab=151936, q_heads=32, kv_heads=8, head_dim=128, intermediate=12288),
        ModelConfig(
            name="qwen3-30b-a3b", arch="moe", hf_id="Qwen/Qwen3-30B-A3B", hidden=2048,
            layers=48, vocab=151936, q_heads=32, kv_heads=4, head_dim=128, intermediate=6144,
            experts=128, experts_per_token=8, moe_intermediate=768),
        # Qwen3.5-35B-A3B and Qwen3.6-35B-A3B share one text config (transformers'
        # Qwen3_5MoeTextConfig defaults; the model cards): 40 layers = 10 x (3 Gated DeltaNet
        # + 1 gated attention), each followed by 256 experts (top 8) plus one shared expert.
        *[ModelConfig(
            name=name, arch="hybrid", hf_id=hf, hidden=2048, layers=40, vocab=248320,
            q_heads=16, kv_heads=2, head_dim=256, intermediate=0, full_attention_interval=4,
            partial_rotary=0.25, attn_output_gate=True, linear_qk_heads=16, linear_v_heads=32,
            linear_head_dim=128, conv_kernel=4, rope_theta=10_000_000.0, experts=256,
            experts_per_token=8, moe_intermediate=512, shared_expert_intermediate=512)
          for name, hf in (("qwen3.5-35b-a3b", "Qwen/Qwen3.5-35B-A3B"),
                           ("qwen3.6-35b-a3b", "Qwen/Qwen3.6-35B-A3B"))],
        # CPU-sized stand-ins with the same structure as the real models.
        ModelConfig(
            name="tiny-moe", arch="moe", hidden=128, layers=2, vocab=512, q_heads=4,
            kv_heads=2, head_dim=32, intermediate=256, experts=8, experts_per_token=2,
            moe_intermediate=64),
        ModelConfig(
            name="tiny-hybrid-moe", arch="hybrid", hidden=128, layers=4, vocab=512, q_heads=4,
            kv_heads=2, head_dim=32, intermediate=0, full_attention_interval=4,
            partial_rotary=0.25, attn_output_gate=True, linear_qk_heads=2, linear_v_heads=4,
            linear_head_dim=32, conv_kernel=4, experts=8, experts_per_token=2,
            moe_intermediate=64, shared_expert_intermediate=64),
        ModelConfig(
            name="tiny", arch="dense", hidden=128, layers=2, vocab=512, q_heads=4, kv_heads=2,
            head_dim=32, intermediate=256),
        ModelConfig(
            name="tiny-hybrid", arch="hybrid", hidden=128, layers=4, vocab=512, q_heads=4,
            kv_heads=2, head_dim=32, intermediate=256, full_attention_interval=4,
            partial_rotary=0.25, attn_output_gate=True, linear_qk_heads=2, linear_v_heads=4,
            linear_head_dim=32, conv_kernel=4),
    ]
}


class UnknownNameError(ValueError):
    """A name that is not one of the valid choices; the message lists them."""

    def __init__(self, what: str, name: str, valid: list[str]):
        super().__init__(f"unknown {what} {name!r}; valid {what}s: {', '.join(valid)}")
        self.valid = valid


def get_model(name: str) -> ModelConfig:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownNameError("model", name, list(MODELS)) from None
