"""A compact NVFP4 decode engine for Qwen3 (dense GQA, MoE) and Qwen3.5/3.6 (hybrid, MoE) models.

Every linear layer runs through one GEMM backend of the registry; embeddings, ``lm_head``
and norms are plain torch in bf16/fp32 (optionally torch.compile'd); a decode token's Gated
DeltaNet and attention pieces are plain torch too, or on GPUs fused Triton kernels
(:mod:`harness.models.gdn_kernel`, :mod:`harness.models.attn_kernel`).
The decode step is static (fixed batch, KV cache of fixed length, position in a device
tensor), so it can be captured in one CUDA graph.

Qwen3.6 hybrid layers (``full_attention_interval`` = 4: three Gated DeltaNet layers, then
one gated-attention layer):

* gated attention: ``q_proj`` emits, per head, the query and an output gate; q/k RMSNorm
  per head; rotary on the first ``partial_rotary`` of each head; GQA; the attention output
  is multiplied by ``sigmoid(gate)`` before ``o_proj``;
* Gated DeltaNet: ``in_proj_qkvz`` -> q, k, v, z; ``in_proj_ba`` -> b, a per v-head; a
  causal depthwise conv (width ``conv_kernel``) over q|k|v with a ring of the last
  ``conv_kernel`` inputs as its state, SiLU;
  L2-normalised q, k (qk heads shared by ``v_heads / qk_heads`` v-heads); decay
  ``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta = sigmoid(b)``; per v-head state
  ``S`` [dk, dv]: ``S = exp(g) S``; ``S += k (beta (v - k^T S))^T``; ``o = q^T S / sqrt(dk)``;
  gated RMSNorm ``norm(o) * silu(z)``; ``out_proj``.

MoE layers (Qwen3-MoE, Qwen3.5/3.6 MoE): the router's softmax top-k (renormalized), the
routed experts through one MoE runner (:mod:`harness.moe.runners`), plus, where the model has
one, a shared expert (a SwiGLU MLP through the GEMM backend) scaled by
``sigmoid(shared_expert_gate(x))``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness import nvfp4, pdl
from harness.backends.base import GemmBackend
from harness.backends.torch_bf16 import TorchBF16
from harness.models import attn_kernel, gdn_kernel, norm_kernel
from harness.models.configs import ModelConfig
from harness.models.weights import ModelWeights
from harness.moe.layer import route

# NVFP4 activation global scale from a calibrated amax: gsf = 448 * 6 / amax.
GSF_NUMERATOR = nvfp4.E4M3_MAX * nvfp4.E2M1_MAX
# Programmatic dependent launch pays at batch 1 only. On an H200 (Qwen3.6-27B, triton,
# autotune on, --compile, one process per comparison): batch 1 7.17 -> 6.86 ms per step, batch
# 8 9.33 -> 11.51 ms, batch 32 17.07 -> 22.03 ms (docs/PERF.md, run 10).
PDL_MAX_BATCH = 1
# Prefill in chunks of at most this many tokens (batch x positions), as serving engines do
# (SGLang's --chunked-prefill-size defaults to 8192): the prompt length never sets a GEMM's M.
PREFILL_CHUNK_TOKENS = 8192


class Linear:
    """One linear layer through the chosen backend, with a static activation global scale."""

    def __init__(self, name: str, backend: GemmBackend, weights, autotune: bool,
                 device: torch.device, input_gsf: float | None):
        self.name = name
        if not weights.quantized:  # excluded from quantization by the checkpoint: bf16
            backend = TorchBF16()
        self.backend = backend
        self.n, self.k = weights.n, weights.k
        self.prepared = backend.prepare(weights, autotune=autotune)
        self.weight_bytes = backend.weight_bytes(weights)
        self.gsf = torch.tensor(input_gsf if input_gsf else 1.0, dtype=torch.float32,
                                device=device)
        self.calibrated = input_gsf is not None
        self.amax = torch.zeros((), dtype=torch.float32, device=device)
        self.mode = "run"  # "calibrate" | "tune" | "run"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.mode == "calibrate":
            # The static scale comes from the prompt: what ModelOpt calibration does offline.
            self.amax = torch.maximum(self.amax, x2.abs().amax().float())
            gsf = GSF_NUMERATOR / self.amax.clamp(min=1e-12)
        else:
            gsf = self.gsf
        if self.mode == "tune":
            # The tuner times candidates alone on the GPU: plain launches, whatever the engine uses.
            with pdl.launches(False):
                self.backend.tune(self.prepared, x2, gsf)
        y = self.backend.run(self.prepared, x2, gsf)
        return y.reshape(*shape[:-1], self.n)

    def freeze_calibration(self) -> None:
        if not self.calibrated:
            self.gsf.copy_(GSF_NUMERATOR / self.amax.clamp(min=1e-12))
            self.calibrated = True


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rot: int) -> torch.Tensor:
    """Rotary on the first ``rot`` dims of the last axis (neox halves), the rest passes."""
    xr, xp = x[..., :rot].float(), x[..., rot:]
    x1, x2 = xr[..., : rot // 2], xr[..., rot // 2:]
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
    return torch.cat((out, xp), dim=-1) if xp.shape[-1] else out


def gdn_gates(ba: torch.Tensor, a_log: torch.Tensor, dt_bias: torch.Tensor, hv: int):
    """Per-head decay ``g = -exp(A_log) softplus(a + dt_bias)`` and write strength ``beta``."""
    beta = torch.sigmoid(ba[..., :hv].float())
    g = -torch.exp(a_log.float()) * F.softplus(ba[..., hv:].float() + dt_bias.float())
    return g, beta


def gdn_step(qkv: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, conv_w: torch.Tensor,
             ring: torch.Tensor, S: torch.Tensor, pos: torch.Tensor, hk: int, hv: int,
             d: int) -> torch.Tensor:
    """One token of Gated DeltaNet at position ``pos``: causal conv over the ring of the last
    ``W`` inputs (slot ``pos % W``, updated in place), delta-rule update of ``S`` [B, Hv, d, d]
    in place; returns ``q^T S / sqrt(d)`` [B, Hv, d]."""
    b, width = qkv.shape[0], ring.shape[-1]
    older = (pos + 1 + torch.arange(width - 1, device=pos.device)) % width  # oldest first
    window = torch.cat((ring.index_select(2, older), qkv[:, :, None]), dim=-1)  # [B, C, W]
    ring.index_copy_(2, pos % width, qkv[:, :, None])
    c = F.silu((window.float() * conv_w.float()).sum(-1))        # [B, C]
    q, k, v = c.split([hk * d, hk * d, hv * d], dim=-1)
    q = F.normalize(q.reshape(b, hk, d), dim=-1).repeat_interleave(hv // hk, dim=1)
    k = F.normalize(k.reshape(b, hk, d), dim=-1).repeat_interleave(hv // hk, dim=1)
    v = v.reshape(b, hv, d)
    S.mul_(torch.exp(g)[:, :, None, None])
    kv_mem = torch.einsum("bhk,bhkv->bhv", k, S)
    delta = (v - kv_mem) * beta[:, :, None]
    S.add_(k[:, :, :, None] * delta[:, :, None, :])
    return torch.einsum("bhk,bhkv->bhv", q / math.sqrt(d), S)


def gated_norm(o: torch.Tensor, z: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """``rmsnorm(o) * silu(z)`` per head, flattened to [B, T, Hv * d] in bf16."""
    b, t, hv, d = o.shape
    o = rms_norm(o, w, eps) * F.silu(z.reshape(b, t, hv, d).float())
    return o.reshape(b, t, hv * d).to(torch.bfloat16)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def add_rms_norm(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add and the next norm: ``(x + y, rms_norm(x + y))``."""
    s = x + y
    return s, rms_norm(s, w, eps)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, rot: int,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head q/k RMSNorm, then partial rotary on both."""
    return (rotate(rms_norm(q, wq, eps), cos, sin, rot),
            rotate(rms_norm(k, wk, eps), cos, sin, rot))


def sigmoid_gate(o: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return o * torch.sigmoid(gate)


class Ops:
    """The engine's non-GEMM pieces, eager or compiled by torch.compile (fused kernels, far
    fewer launches per step; the GEMMs stay with the backend, outside the compiled code).

    ``fused_gdn``: a Gated DeltaNet decode token runs as one Triton kernel
    (:mod:`harness.models.gdn_kernel`) instead of the gates/step/gated-norm ops.
    ``fused_attn``: an attention decode token runs as two Triton kernels
    (:mod:`harness.models.attn_kernel`) instead of norms, rotary, cache copies and SDPA.
    ``fused_norm``: the residual add + RMSNorm and the SiLU-mul are Triton kernels
    (:mod:`harness.models.norm_kernel`) instead of torch ops.
    ``pdl``: the engine's Triton kernels (and the ``triton`` backend's GEMMs) are launched
    with programmatic dependent launch where the GPU has it (:mod:`harness.pdl`), at batch
    sizes up to ``PDL_MAX_BATCH``."""

    NAMES = ("rms_norm", "add_rms_norm", "qk_norm_rope", "sigmoid_gate", "gdn_gates",
             "gdn_step", "gated_norm", "silu_mul")

    def __init__(self, compile: bool = False, fused_gdn: bool = False, fused_attn: bool = False,
                 fused_norm: bool = False, pdl: bool = False):
        self.compiled = compile
        if (fused_gdn or fused_attn or fused_norm) and not gdn_kernel.available():
            raise RuntimeError("the fused decode kernels need triton")
        self.fused_gdn, self.fused_attn, self.fused_norm = fused_gdn, fused_attn, fused_norm
        self.pdl = pdl
        for name in self.NAMES:
            fn = globals()[name]
            setattr(self, name, torch.compile(fn, dynamic=False) if compile else fn)
        if fused_norm:
            self.add_rms_norm, self.silu_mul = norm_kernel.add_rms_norm, norm_kernel.silu_mul

    def describe(self, device: torch.device | None = None, batch: int = 1) -> str:
        parts = ["torch.compile'd non-GEMM ops"] if self.compiled else []
        if self.fused_gdn:
            parts.append("fused Gated DeltaNet kernel")
        if self.fused_attn:
            parts.append("fused attention kernels")
        if self.fused_norm:
            parts.append("Triton add+RMSNorm and SiLU-mul kernels")
        if self.pdl and batch <= PDL_MAX_BATCH and (device is None or pdl.supported(device)):
            parts.append("programmatic dependent launch")
        return ", ".join(parts)


@dataclass
class StepBytes:
    """Bytes one decode step must move, by kind (the roofline's numerator)."""

    linear_weights: int
    lm_head: int
    embeddings: int
    kv_cache: int
    recurrent_state: int
    other: int
    # routed experts a step reads: the expected distinct experts of ``batch`` tokens routed
    # uniformly (E * (1 - (1 - k/E)^batch) per layer), each one's NVFP4 bytes
    experts: int = 0

    @property
    def total(self) -> int:
        return (self.linear_weights + self.lm_head + self.embeddings + self.kv_cache
                + self.recurrent_state + self.other + self.experts)


class PreparedModel:
    """Every layer in one backend's format, built once and shared by engines of any batch."""

    def __init__(self, weights: ModelWeights, backend: GemmBackend, device: torch.device,
                 autotune: bool = False, compile: bool = False, fused_gdn: bool = False,
                 fused_attn: bool = False, fused_norm: bool = False, pdl: bool = False,
                 moe_runner: str | None = None, moe_config_root=None):
        self.cfg: ModelConfig = weights.config
        self.backend, self.device, self.autotune = backend, device, autotune
        self.ops = Ops(compile, fused_gdn, fused_attn, fused_norm, pdl)
        self.dense = weights.dense
        self.lin: dict[str, Linear] = {}
        # Layer by layer, dropping the source as we go: peak memory stays near one format.
        for name in list(weights.linears):
            lw = weights.linears.pop(name)
            self.lin[name] = Linear(name, backend, lw, autotune, device, weights.input_gsf.get(name))
            del lw
        self.moe_runner = moe_runner
        self.moe: dict[int, object] = {}
        self.routers: dict[int, torch.Tensor] = {}
        self.mode = "run"
        if self.cfg.is_moe:
            from harness.moe.runners import PreparedMoe
            if moe_runner is None:
                raise ValueError(f"{self.cfg.name} has MoE layers: it needs a MoE runner")
            for i in list(weights.experts):
                ew = weights.experts.pop(i)
                self.routers[i] = ew.router
                # SGLang's rule for the down kernel (one sort for both)
                self.moe[i] = PreparedMoe(moe_runner, ew, autotune, "shared", moe_config_root,
                                          device)
                del ew
        self.expert_bytes = sum(m.nvfp4_bytes for m in self.moe.values())

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        for lin in self.lin.values():
            lin.mode = mode

    def freeze_calibration(self) -> None:
        for lin in self.lin.values():
            lin.freeze_calibration()


class DecodeEngine:
    def __init__(self, model: PreparedModel, batch: int, max_len: int,
                 prefill_chunk: int = PREFILL_CHUNK_TOKENS):
        if prefill_chunk < 1:
            raise ValueError(f"prefill chunk must be at least 1 token, got {prefill_chunk}")
        self.model = model
        self.prefill_chunk = prefill_chunk
        self.cfg: ModelConfig = model.cfg
        self.backend, self.device = model.backend, model.device
        self.batch, self.max_len = batch, max_len
        self.dense, self.lin = model.dense, model.lin
        cfg, device = self.cfg, self.device
        self.rot = int(cfg.head_dim * cfg.partial_rotary) // 2 * 2
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, self.rot, 2, device=device).float() / self.rot))
        ang = torch.arange(max_len, device=device).float()[:, None] * inv[None, :]
        self.cos, self.sin = ang.cos(), ang.sin()
        b = batch
        self.k_cache, self.v_cache, self.conv_state, self.rec_state = {}, {}, {}, {}
        for i in range(cfg.layers):
            if cfg.is_attention_layer(i):
                shape = (b, cfg.kv_heads, max_len, cfg.head_dim)
                self.k_cache[i] = torch.zeros(shape, dtype=torch.bfloat16, device=device)
                self.v_cache[i] = torch.zeros(shape, dtype=torch.bfloat16, device=device)
            else:
                dk, hv = cfg.linear_head_dim, cfg.linear_v_heads
                ch = 2 * cfg.linear_qk_heads * dk + hv * dk
                # A ring of the last conv_kernel inputs per channel (see gdn_kernel).
                self.conv_state[i] = torch.zeros((b, ch, cfg.conv_kernel), dtype=torch.bfloat16,
                                                 device=device)
                self.rec_state[i] = torch.zeros((b, hv, dk, dk), dtype=torch.float32, device=device)
        self.gdn_work, self.gdn_split = None, 1
        if self.conv_state and model.ops.fused_gdn:
            self.gdn_split = gdn_kernel.head_split(cfg.linear_head_dim)
            self.gdn_work = gdn_kernel.Workspace(b, cfg.linear_v_heads, cfg.linear_head_dim, device)
        self.attn_work = None
        if self.k_cache and model.ops.fused_attn:
            self.attn_work = attn_kernel.Workspace(b, cfg.q_heads, cfg.kv_heads, cfg.head_dim,
                                                   max_len, device)
        # Static decode-step inputs and outputs (what a CUDA graph reads and writes).
        self.tokens = torch.zeros(b, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.logits = torch.zeros((b, cfg.vocab), dtype=torch.bfloat16, device=device)
        self.bad_rows = torch.zeros(b, dtype=torch.bool, device=device)
        self.ar = torch.arange(max_len, device=device)
        self._plain = False  # plain_launches(): PDL off whatever the options say

    def uses_pdl(self) -> bool:
        """Whether this engine's steps launch with programmatic dependent launch."""
        return (self.model.ops.pdl and not self._plain and self.batch <= PDL_MAX_BATCH
                and pdl.supported(self.device))

    @contextlib.contextmanager
    def plain_launches(self):
        """Steps run (or captured) inside launch every kernel plainly. Under PDL a kernel's
        profiled time includes its wait for the one before, so per-kernel breakdowns use this."""
        previous, self._plain = self._plain, True
        try:
            yield
        finally:
            self._plain = previous

    # ---- layers ------------------------------------------------------------------------

    def _attention(self, i: int, x: torch.Tensor, pos: torch.Tensor, prefill: bool,
                   start: int = 0) -> torch.Tensor:
        cfg, p = self.cfg, f"layers.{i}.self_attn."
        b, t, _ = x.shape
        hd, hq, hkv = cfg.head_dim, cfg.q_heads, cfg.kv_heads
        qkv = self.lin[p + "qkv_proj"](x)
        if not prefill and self.attn_work is not None:  # norms .. output gate in two kernels
            o = attn_kernel.attn_decode(qkv[:, 0], self.dense[p + "q_norm"],
                                        self.dense[p + "k_norm"], self.cos, self.sin, pos,
                                        self.k_cache[i], self.v_cache[i], self.attn_work, hq,
                                        hkv, hd, self.rot, cfg.rms_eps, cfg.attn_output_gate)
            return self.lin[p + "o_proj"](o[:, None])
        q_out = hq * hd * (2 if cfg.attn_output_gate else 1)
        q, k, v = qkv.split([q_out, hkv * hd, hkv * hd], dim=-1)
        gate = None
        if cfg.attn_output_gate:
            q, gate = q.reshape(b, t, hq, 2 * hd).chunk(2, dim=-1)
            gate = gate.reshape(b, t, hq * hd)
        v = v.reshape(b, t, hkv, hd)
        positions = pos + torch.arange(t, device=x.device)
        cos, sin = self.cos[positions][None, :, None, :], self.sin[positions][None, :, None, :]
        q, k = self.model.ops.qk_norm_rope(q.reshape(b, t, hq, hd), k.reshape(b, t, hkv, hd),
                                           self.dense[p + "q_norm"], self.dense[p + "k_norm"],
                                           cos, sin, self.rot, cfg.rms_eps)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        kc, vc = self.k_cache[i], self.v_cache[i]
        if prefill and start == 0:
            kc[:, :, :t].copy_(k)
            vc[:, :, :t].copy_(v)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        elif prefill:  # a later chunk: its queries see the cached prompt before it, causally
            end = start + t
            kc[:, :, start:end].copy_(k)
            vc[:, :, start:end].copy_(v)
            mask = self.ar[:end][None, :] <= (start + torch.arange(t, device=x.device))[:, None]
            o = F.scaled_dot_product_attention(q, kc[:, :, :end], vc[:, :, :end],
                                               attn_mask=mask[None, None], enable_gqa=True)
        else:
            kc.index_copy_(2, pos, k)
            vc.index_copy_(2, pos, v)
            mask = (self.ar <= pos)[None, None, None, :]
            o = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=True)
        o = o.transpose(1, 2).reshape(b, t, hq * hd)
        if gate is not None:
            o = self.model.ops.sigmoid_gate(o, gate)
        return self.lin[p + "o_proj"](o)

    def _deltanet(self, i: int, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        cfg, p, ops, dense = self.cfg, f"layers.{i}.linear_attn.", self.model.ops, self.dense
        t = x.shape[1]
        hk, hv, d = cfg.linear_qk_heads, cfg.linear_v_heads, cfg.linear_head_dim
        qkvz = self.lin[p + "in_proj_qkvz"](x)
        conv_w = dense[p + "conv1d"][:, 0, :]                    # [C, W]
        ring, S = self.conv_state[i], self.rec_state[i]
        # The recurrent form: decode is t == 1; prefill walks the prompt.
        if ops.fused_gdn:  # in_proj_ba, gates, conv, delta rule and gated norm in one kernel
            outs = [gdn_kernel.gdn_decode(
                x[:, s], dense[p + "in_proj_ba"], qkvz[:, s], ring, conv_w, dense[p + "A_log"],
                dense[p + "dt_bias"], S, dense[p + "norm"], pos + s if s else pos, hk, hv, d,
                cfg.rms_eps, self.gdn_work, self.gdn_split) for s in range(t)]
            o = outs[0][:, None] if t == 1 else torch.stack(outs, dim=1)
        else:
            ba = F.linear(x, dense[p + "in_proj_ba"])
            qkv, z = qkvz.split([2 * hk * d + hv * d, hv * d], dim=-1)
            g, beta = ops.gdn_gates(ba, dense[p + "A_log"], dense[p + "dt_bias"], hv)
            outs = [ops.gdn_step(qkv[:, s], g[:, s], beta[:, s], conv_w, ring, S, pos + s,
                                 hk, hv, d) for s in range(t)]
            o = ops.gated_norm(torch.stack(outs, dim=1), z, dense[p + "norm"], cfg.rms_eps)
        return self.lin[p + "out_proj"](o)

    def _mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        p = f"layers.{i}.mlp."
        if not self.cfg.is_moe:
            return self.lin[p + "down_proj"](self.model.ops.silu_mul(self.lin[p + "gate_up_proj"](x)))
        cfg, model = self.cfg, self.model
        x2 = x.reshape(-1, cfg.hidden)
        tw, ids = route(x2, model.routers[i], cfg.experts_per_token)
        layer = model.moe[i]
        if model.mode == "calibrate":
            layer.calibrate(x2, tw, ids)
        elif model.mode == "tune":
            layer.tune(x2, tw, ids)
        y = layer(x2, tw, ids).to(torch.bfloat16)
        if cfg.shared_expert_intermediate:
            s = self.lin[p + "shared_expert.down_proj"](
                model.ops.silu_mul(self.lin[p + "shared_expert.gate_up_proj"](x2)))
            gate = torch.sigmoid(F.linear(x2, self.dense[p + "shared_expert_gate"]).float())
            y = (y.float() + gate * s.float()).to(torch.bfloat16)
        return y.reshape(x.shape)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, prefill: bool,
                start: int = 0) -> torch.Tensor:
        """tokens [B, T] at positions ``start``.. (``pos`` holds ``start`` on the device) ->
        logits of the last position [B, vocab] (bf16)."""
        with pdl.launches(self.model.ops.pdl and not self._plain and self.batch <= PDL_MAX_BATCH):
            return self._forward(tokens, pos, prefill, start)

    def _forward(self, tokens: torch.Tensor, pos: torch.Tensor, prefill: bool,
                 start: int = 0) -> torch.Tensor:
        cfg, d, ops = self.cfg, self.dense, self.model.ops
        x = F.embedding(tokens, d["embed_tokens"])
        h = ops.rms_norm(x, d["layers.0.input_layernorm"], cfg.rms_eps)
        for i in range(cfg.layers):
            p = f"layers.{i}."
            if cfg.is_attention_layer(i):
                y = self._attention(i, h, pos, prefill, start)
            else:
                y = self._deltanet(i, h, pos)
            x, h = ops.add_rms_norm(x, y, d[p + "post_attention_layernorm"], cfg.rms_eps)
            # The residual add and the next layer's input norm in one op; the last layer's
            # next norm is the final one (applied to every position, the last one is kept).
            nxt = f"layers.{i + 1}.input_layernorm" if i + 1 < cfg.layers else "norm"
            x, h = ops.add_rms_norm(x, self._mlp(i, h), d[nxt], cfg.rms_eps)
        return F.linear(h[:, -1], d.get("lm_head", d["embed_tokens"]))

    # ---- the two phases ----------------------------------------------------------------

    def reset(self) -> None:
        for t in (*self.k_cache.values(), *self.v_cache.values(), *self.conv_state.values(),
                  *self.rec_state.values()):
            t.zero_()
        self.bad_rows.zero_()

    def prefill_positions(self) -> int:
        """Positions per prefill chunk: at most ``prefill_chunk`` tokens over the batch."""
        return max(1, self.prefill_chunk // self.batch)

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """Run the prompt [B, T] in chunks of ``prefill_positions()``; leaves the greedy next
        token and position T in place."""
        self.reset()
        t = prompt.shape[1]
        if t + 1 > self.max_len:
            raise ValueError(f"prompt of {t} tokens does not fit a cache of {self.max_len}")
        step = self.prefill_positions()
        for start in range(0, t, step):
            pos = torch.full((1,), start, dtype=torch.long, device=self.device)
            logits = self.forward(prompt[:, start:start + step], pos, prefill=True, start=start)
        self.logits.copy_(logits)
        self.tokens.copy_(logits.argmax(-1))
        self.pos.fill_(t)
        return logits

    def step(self) -> None:
        """One decode step on the static buffers; graph-capturable (no host syncs)."""
        logits = self.forward(self.tokens[:, None], self.pos, prefill=False)
        self.logits.copy_(logits)
        lf = logits.float()
        self.bad_rows |= ~torch.isfinite(lf).all(-1) | (lf == 0).all(-1)
        self.tokens.copy_(logits.argmax(-1))
        self.pos.add_(1)

    def teacher_step(self, token: torch.Tensor) -> torch.Tensor:
        """A decode step with a given next token [B] (for comparing backends step by step)."""
        self.tokens.copy_(token)
        self.step()
        return self.logits.clone()

    # ---- accounting --------------------------------------------------------------------

    def step_bytes(self, context: int) -> StepBytes:
        """Bytes one decode step at ``context`` cached tokens must read (and write back)."""
        cfg, b = self.cfg, self.batch
        lin = sum(lin.weight_bytes for lin in self.lin.values())
        lm = cfg.vocab * cfg.hidden * 2
        kv = sum(2 * b * cfg.kv_heads * context * cfg.head_dim * 2 for _ in self.k_cache)
        # The state is read and written; of the conv ring, W - 1 slots are read and one written.
        rec = sum(2 * s.numel() * s.element_size() + c.numel() * c.element_size()
                  for s, c in zip(self.rec_state.values(), self.conv_state.values()))
        other = sum(t.numel() * t.element_size() for k, t in self.dense.items()
                    if k not in ("embed_tokens", "lm_head"))
        experts = 0
        if cfg.is_moe:
            other += sum(r.numel() * r.element_size() for r in self.model.routers.values())
            e, k = cfg.experts, cfg.experts_per_token
            hit = e * (1 - (1 - k / e) ** b)
            experts = int(self.model.expert_bytes / e * hit)
        return StepBytes(linear_weights=lin, lm_head=lm, embeddings=b * cfg.hidden * 2,
                         kv_cache=kv, recurrent_state=rec, other=other, experts=experts)

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (
            *self.k_cache.values(), *self.v_cache.values(), *self.conv_state.values(),
            *self.rec_state.values()))
