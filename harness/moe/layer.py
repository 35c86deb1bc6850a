"""One MoE layer as Qwen3-MoE runs it: router softmax, top-k experts (renormalized), each
expert a SwiGLU MLP (gate and up in one [2I, H] weight, then down [H, I]), outputs summed
with the routing weights. Expert weights are NVFP4, one global scale per expert (as ModelOpt
exports them); activations stay bf16 (W4A16).

``route`` is shared by every runner, so they all see the same experts for each token (ties
in the router go to the lower expert index); ``reference`` is exact: fp32 math on the
dequantized weights, the health reference and never a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness import nvfp4


@dataclass(frozen=True)
class MoeShape:
    experts: int
    top_k: int
    hidden: int
    intermediate: int        # per expert (moe_intermediate_size)
    renormalize: bool = True  # norm_topk_prob

    def weight_bytes(self) -> int:
        """NVFP4 bytes of all experts (codes + block scales)."""
        per = (2 * self.intermediate * self.hidden + self.hidden * self.intermediate)
        return self.experts * (per // 2 + per // nvfp4.BLOCK)


@dataclass
class ExpertStack:
    """One weight of every expert, stacked: what the fused kernels read."""

    codes: torch.Tensor         # uint8 [E, N, K/2], two e2m1 codes per byte (low nibble first)
    scales: torch.Tensor        # float8_e4m3fn [E, N, K/16], linear layout
    global_scale: torch.Tensor  # fp32 [E], FlashInfer's gsf (encode direction)

    def expert(self, e: int) -> nvfp4.NVFP4Tensor:
        return nvfp4.NVFP4Tensor(self.codes[e], self.scales[e], self.global_scale[e])

    def to(self, device) -> "ExpertStack":
        return ExpertStack(self.codes.to(device), self.scales.to(device),
                           self.global_scale.to(device))

    def nbytes(self) -> int:
        return self.codes.numel() + self.scales.numel() + 4 * self.global_scale.numel()

    @staticmethod
    def of(tensors: list[nvfp4.NVFP4Tensor]) -> "ExpertStack":
        return ExpertStack(torch.stack([t.packed for t in tensors]),
                           torch.stack([t.scales for t in tensors]),
                           torch.stack([t.global_scale.float().reshape(()) for t in tensors]))


@dataclass
class MoeWeights:
    shape: MoeShape
    router: torch.Tensor                 # bf16 [E, H]
    w13: ExpertStack                     # [E, 2I, H]: gate rows, then up rows
    w2: ExpertStack                      # [E, H, I]

    def stacked(self, which: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes uint8 [E, N, K/2], block scales as bytes uint8 [E, N, K/16], global
        scales fp32 [E]) of w13 or w2, the layout the fused kernels read."""
        st = self.w13 if which == "w13" else self.w2
        return st.codes, st.scales.view(torch.uint8), st.global_scale

    def to(self, device) -> "MoeWeights":
        return MoeWeights(self.shape, self.router.to(device), self.w13.to(device),
                          self.w2.to(device))


def synthetic(shape: MoeShape, seed: int = 0, device="cpu", std: float = 0.02) -> MoeWeights:
    """Random weights of the layer's shape, quantized as ModelOpt would."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*s):
        return (torch.randn(*s, generator=g) * std).to(device)
    router = rand(shape.experts, shape.hidden).to(torch.bfloat16)
    w13 = [nvfp4.quantize(rand(2 * shape.intermediate, shape.hidden)) for _ in range(shape.experts)]
    w2 = [nvfp4.quantize(rand(shape.hidden, shape.intermediate)) for _ in range(shape.experts)]
    return MoeWeights(shape, router, ExpertStack.of(w13), ExpertStack.of(w2))


def route(x: torch.Tensor, router: torch.Tensor, top_k: int, renormalize: bool = True
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights fp32 [M, k], expert ids int32 [M, k]) from the router's logits: softmax in
    fp32, the k largest (a stable sort: a tie goes to the lower expert index), renormalized
    to sum to 1 where ``renormalize``."""
    probs = torch.softmax((x @ router.t()).float(), dim=-1)
    vals, idx = torch.sort(probs, dim=-1, descending=True, stable=True)
    w, ids = vals[:, :top_k], idx[:, :top_k]
    if renormalize:
        w = w / w.sum(dim=-1, keepdim=True)
    return w, ids.to(torch.int32)


def silu_and_mul(h: torch.Tensor) -> torch.Tensor:
    """[.., 2I] -> silu(gate) * up, [.., I], in fp32."""
    gate, up = h.float().chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def reference(x: torch.Tensor, weights: MoeWeights, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """The layer's output (fp32 [M, H]) in fp32 on the dequantized weights, per expert."""
    m, k = topk_ids.shape
    out = torch.zeros(m, weights.shape.hidden, dtype=torch.float32, device=x.device)
    xf = x.float()
    for e in torch.unique(topk_ids).tolist():
        tok, slot = (topk_ids == e).nonzero(as_tuple=True)
        w13 = nvfp4.dequantize(weights.w13.expert(e), torch.float32)
        w2 = nvfp4.dequantize(weights.w2.expert(e), torch.float32)
        y = silu_and_mul(xf[tok] @ w13.t()) @ w2.t()
        out.index_add_(0, tok, y * topk_weights[tok, slot].unsqueeze(-1))
    return out
