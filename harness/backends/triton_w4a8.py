"""``triton-w4a8``: NVFP4 weights on FP8 tensor cores, for GPUs with FP8 MMA but no FP4 one.

Where W4A16 turns compute-bound (Hopper: near M = 47 on the Qwen layers, docs/PERF.md), the
bf16 MMA is the limit; FP8 MMA runs twice as fast. This backend reads the weight as the
``triton`` backend keeps it (its word layout, 4.5 bits per element), decodes each element to
``e2m1 * sf * 2^E`` in registers and rounds that to e4m3, and meets FP8 activations
(per-tensor, static: the scale FP8 serving uses, ``6 / gsf`` of the activation's NVFP4 global
scale) in an FP8 ``tl.dot`` with fp32 accumulation; the epilogue applies both per-tensor
scales. ``E`` is a power of two chosen per layer at load so that the largest product
(6 x the largest block scale) stays below e4m3's 448.

The product of an e2m1 value (2 significant bits) and an e4m3 scale (4) has up to 5
significant bits, e4m3 keeps 4: the weight is rounded once, as the activations are. So the
math is its own (``w4a8``), and health is checked against its exact fp32 result
(``w4a8_reference``: the same rounding of both operands, then an exact product).

Split K across programs at small M, the last program of a tile summing the partials (the
``triton`` backend's ``_finish_tile``). Autotune ``on`` searches a config space keyed on
(N, K, M bucket) with the ``triton`` backend's timer; ``off`` uses one fixed config.
"""

from __future__ import annotations

import functools
import math

import torch

from harness import nvfp4
from harness.backends import fp8, triton_w4a16
from harness.backends.base import Availability, GemmBackend, LayerWeights
from harness.hardware import compute_capability

try:
    import triton
    import triton.language as tl
except ImportError:  # the backend reports itself unavailable
    triton = None
    tl = None

# The triton backend's decode yields e2m1 * sf * 2^-7 (exact in bf16); this backend scales it
# by 2^(E + 7) on the way to e4m3.
_DECODE_EXP = -7


def weight_exponent(scales: torch.Tensor) -> int:
    """``E`` for a layer: the largest power of two with ``6 * max(sf) * 2^E <= 448``."""
    sf_max = float(scales.float().max())
    if not sf_max > 0:
        return 0  # an all-zero weight: any exponent rounds it exactly
    return math.floor(math.log2(fp8.E4M3_MAX / (nvfp4.E2M1_MAX * sf_max)))


def weight_e4m3(weights: LayerWeights) -> tuple[torch.Tensor, int]:
    """The e4m3 weight the kernel multiplies (``e2m1 * sf * 2^E``, rounded to nearest even)
    and ``E``."""
    e = weight_exponent(weights.fp4.scales)
    w = nvfp4.dequantize_unscaled(weights.fp4) * (2.0 ** e)  # exact in fp32
    return w.to(fp8.E4M3), e


def w4a8_reference(weights: LayerWeights, x: torch.Tensor, x_global_scale: torch.Tensor):
    """The exact fp32 result of the W4A8 math: the weight and the activation each rounded
    once to e4m3, multiplied exactly, both per-tensor scales applied."""
    w8, e = weight_e4m3(weights)
    a_scale = fp8.activation_scale(x_global_scale)
    a8 = fp8.quantize(x, a_scale)
    w_scale = 1.0 / (weights.fp4.global_scale.float() * 2.0 ** e)
    return (a8.float() @ w8.float().T) * (a_scale * w_scale)


if triton is not None:
    from harness.backends.triton_w4a16 import _finish_tile, _plain_tile

    @triton.jit
    def _quantize_kernel(x_ptr, a_ptr, xgsf_ptr, n, BLOCK: tl.constexpr):
        """bf16 -> e4m3 at the static per-tensor scale ``6 / gsf``, saturated at +-448:
        ``fp8.quantize`` in one launch."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n
        a_scale = 6.0 / tl.load(xgsf_ptr)
        v = tl.math.div_rn(tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32), a_scale)
        v = tl.minimum(tl.maximum(v, -448.0), 448.0)
        tl.store(a_ptr + offs, v.to(tl.float8e4nv), mask=ok)

    @triton.jit
    def _w4a8_kernel(a_ptr, w_ptr, s_ptr, out_ptr, ws_ptr, cnt_ptr, xgsf_ptr, w_scale_ptr,
                     M, N, K, KW, stride_am, stride_om, M_BUCKET, to_e4m3,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     SPLIT_K: tl.constexpr, SCALE_WORDS: tl.constexpr = False,
                     USE_ASM: tl.constexpr = False):
        # KW = K / 8 words per weight row (see ``_plain_tile``).
        acc, rm, rn, tile = _plain_tile(a_ptr, w_ptr, s_ptr, M, N, K, KW, stride_am, to_e4m3,
                                        BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, SCALE_WORDS, USE_ASM,
                                        True)
        scale = 6.0 / tl.load(xgsf_ptr) * tl.load(w_scale_ptr)
        _finish_tile(tl.trans(acc), ws_ptr, cnt_ptr, out_ptr, scale, rm, rn, M, N, stride_om,
                     tile, tl.program_id(2), SPLIT_K)

    # The MMA's N (the batch tile) is at least 16 in Triton's FP8 dot.
    W4A8_DEFAULT = triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "SPLIT_K": 1},
                                 num_warps=4, num_stages=3)

    def _w4a8_space() -> list:
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk},
                              num_warps=w, num_stages=s)
                for bm in (16, 32, 64, 128) for bn in (64, 128) for bk in (128, 256)
                for sk in (1, 2, 4, 8) for w in (4, 8) for s in (3, 4)]

    def _prune_w4a8(configs, named_args):
        m, n, k = named_args["M"], named_args["N"], named_args["K"]
        sms = triton_w4a16._sms()
        # The plain tl.dot grid rules, a grid under one wave kept only at split 8; 8 warps
        # only where each still has enough MMA (64 x 128 tiles or more).
        keep = [c for c in configs
                if triton_w4a16.plain_grid_ok(c.kwargs, m, n, k, sms, sms, 8)
                and (c.num_warps == 4
                     or c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] >= 64 * 128)]
        return keep or [W4A8_DEFAULT]

    @functools.lru_cache(maxsize=None)
    def _kernel(autotune: bool):
        if not autotune:
            return triton_w4a16._fixed(_w4a8_kernel, W4A8_DEFAULT)
        return triton.autotune(_w4a8_space(), key=["N", "K", "M_BUCKET"],
                               prune_configs_by={
                                   "early_config_prune": triton_w4a16._pruner(_prune_w4a8)},
                               **triton_w4a16._tuning_bench())(_w4a8_kernel)


def quantize_activations(x: torch.Tensor, x_global_scale: torch.Tensor) -> torch.Tensor:
    """x (bf16 [M, K]) -> e4m3 at the static per-tensor scale ``6 / gsf``."""
    if not x.is_cuda:
        return fp8.quantize(x, fp8.activation_scale(x_global_scale))
    a8 = torch.empty(x.shape, dtype=fp8.E4M3, device=x.device)
    n = x.numel()
    _quantize_kernel[(triton.cdiv(n, 4096),)](x, a8, x_global_scale.float(), n, BLOCK=4096)
    return a8


def w4a8_matmul(x: torch.Tensor, x_global_scale: torch.Tensor, prepared: dict,
                config: dict | None = None) -> torch.Tensor:
    """``x[M, K] bf16 @ W[N, K]^T`` through e4m3 operands -> bf16 [M, N]."""
    words = prepared["words"]
    if x.dim() != 2 or x.shape[1] != words.shape[1] * 8:
        raise ValueError(f"x {tuple(x.shape)} does not match the weight words {tuple(words.shape)}")
    return w4a8_gemm(quantize_activations(x.contiguous(), x_global_scale), x_global_scale,
                     prepared, config)


def w4a8_gemm(a8: torch.Tensor, x_global_scale: torch.Tensor, prepared: dict,
              config: dict | None = None) -> torch.Tensor:
    """The GEMM alone, on activations already in e4m3 (``quantize_activations``).
    ``config`` forces one kernel config (its meta-parameters, plus ``num_warps`` and
    ``num_stages``, and ``SCALE_WORDS``: on where K allows it, off reads the block scales by
    byte)."""
    words = prepared["words"]
    m, k = a8.shape
    n = words.shape[0]
    out = torch.empty((m, n), dtype=torch.bfloat16, device=a8.device)
    if m == 0:
        return out
    ws, cnt = triton_w4a16._WORKSPACE.get(a8.device, m, n)
    scale_words = k % 64 == 0  # the block scales of each row start on a 4-byte boundary
    if config is None:
        kernel = _kernel(prepared["autotune"])
    else:
        meta = dict(config)
        scale_words = scale_words and bool(meta.pop("SCALE_WORDS", True))
        warps, stages = meta.pop("num_warps", 4), meta.pop("num_stages", 3)
        kernel = triton_w4a16._fixed(_w4a8_kernel, triton.Config(meta, num_warps=warps,
                                                                  num_stages=stages))

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    kernel[grid](a8, words, prepared["scales"], out, ws, cnt,
                 x_global_scale.float().reshape(1), prepared["w_scale"], m, n, k, k // 8,
                 a8.stride(0), out.stride(0), triton_w4a16._m_bucket(m), prepared["to_e4m3"],
                 SCALE_WORDS=scale_words, USE_ASM=not triton_w4a16._interpreting())
    return out


class TritonW4A8(GemmBackend):
    name = "triton-w4a8"
    math = "w4a8"
    family = "nvfp4"
    tunable = True
    description = ("Triton W4A8: NVFP4 weight decoded in-kernel to e4m3, FP8 activations, "
                   "FP8 tensor-core dot")

    def availability(self, device: torch.device) -> Availability:
        if triton is None:
            return Availability.no("triton is not installed (pip install 'nvfp4-bench[gpu]')")
        if device.type != "cuda":
            if triton_w4a16._interpreting():
                return Availability.yes()
            return Availability.no("the triton-w4a8 backend needs an NVIDIA GPU with FP8 tensor "
                                   "cores (SM89+) or TRITON_INTERPRET=1; this machine has no GPU")
        sm = compute_capability(device)
        if sm < 89:
            return Availability.no(f"the triton-w4a8 backend needs FP8 tensor cores (SM89+); "
                                   f"this GPU is SM{sm}")
        return Availability.yes()

    def prepare(self, weights: LayerWeights, autotune: bool = False):
        w = weights.fp4
        e = weight_exponent(w.scales)
        return {
            "words": triton_w4a16.shuffle_words(w.packed),
            "scales": w.scales.view(torch.uint8).contiguous(),
            "to_e4m3": float(2.0 ** (e - _DECODE_EXP)),
            "w_scale": (1.0 / (w.global_scale.float() * 2.0 ** e)).reshape(1).contiguous(),
            "autotune": autotune,
        }

    def run(self, prepared, x, x_global_scale):
        return w4a8_matmul(x, x_global_scale, prepared)

    def tune(self, prepared, x, x_global_scale):
        if prepared["autotune"]:
            self.run(prepared, x, x_global_scale)  # the first call of a key runs the search
