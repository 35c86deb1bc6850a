"""Real ModelOpt NVFP4 exports of tiny random transformers models, on the CPU.

The checkpoints come from ``modelopt.torch.quantization.quantize`` (NVFP4_DEFAULT_CFG, max
calibration) and ``modelopt.torch.export.export_hf_checkpoint``, unchanged but for one op:
ModelOpt's NVFP4 fake-quant kernel asserts CUDA tensors, so it is replaced by
:func:`nvfp4_fake_quant`, the same arithmetic as ModelOpt's own Triton kernel
(``fp4_fake_quant_block``: block amax / 6 through e4m3 against amax / (6 * 448), blocks whose
scale is under 1e-5 use 1.0, e2m1 rounding at ModelOpt's boundaries). The export's packing is
ModelOpt's own pure-torch code.

The reference model is the transformers model holding the checkpoint's weights dequantized by
ModelOpt's ``NVFP4QTensor.dequantize``, so nothing of the project stands between the file and
the reference.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# |x| / scale at or above each bound rounds up; ties follow ModelOpt's kernel (<= 0.25 -> 0,
# < 0.75 -> 0.5, <= 1.25 -> 1, < 1.75 -> 1.5, <= 2.5 -> 2, < 3.5 -> 3, <= 5 -> 4, else 6).
_BOUNDS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False),
           (3.5, True), (5.0, False))


def nvfp4_fake_quant(inputs, block_size, amax, num_bits, exponent_bits, scale_num_bits,
                     scale_exponent_bits):
    """ModelOpt's ``dynamic_block_quantize_op`` for NVFP4 (e2m1, e4m3 scales), in torch."""
    x = inputs.float().reshape(-1, block_size)
    global_scale = amax.float().amax() / (6.0 * 448.0)
    global_scale = torch.where(global_scale > 0, global_scale, torch.tensor(1e-12))
    block_max = x.abs().amax(-1, keepdim=True)
    scale = (block_max / (6.0 * global_scale)).clamp(max=448.0)
    scale = scale.to(torch.float8_e4m3fn).float() * global_scale
    scale = torch.where(scale >= 1e-5, scale, torch.ones_like(scale))
    a = x.abs() / scale
    idx = torch.zeros_like(a, dtype=torch.long)
    for bound, inclusive in _BOUNDS:
        idx += (a >= bound) if inclusive else (a > bound)
    q = torch.tensor(E2M1)[idx] * scale
    return torch.where(x >= 0, q, -q).reshape(inputs.shape).to(inputs.dtype)


@contextlib.contextmanager
def cpu_fake_quant():
    from modelopt.torch.quantization import tensor_quant

    saved = tensor_quant.dynamic_block_quantize_op
    tensor_quant.dynamic_block_quantize_op = nvfp4_fake_quant
    try:
        yield
    finally:
        tensor_quant.dynamic_block_quantize_op = saved


TINY_TEXT = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, initializer_range=0.08)


def tiny_model(kind: str, seed: int = 0, rope_theta: float = 10_000.0):
    """A tiny random transformers model: ``qwen3`` (dense) or ``qwen3_5`` (hybrid, the
    vision-language class whose text model is Qwen3.6's). Norm weights are random too, so a
    norm read with the wrong convention changes the logits."""
    import transformers

    torch.manual_seed(seed)
    if kind == "qwen3":
        cfg = transformers.Qwen3Config(**TINY_TEXT, num_hidden_layers=2,
                                       rope_parameters={"rope_type": "default",
                                                        "rope_theta": rope_theta})
        model = transformers.Qwen3ForCausalLM(cfg)
    elif kind == "qwen3_5":
        text = dict(TINY_TEXT, num_hidden_layers=4, linear_num_key_heads=2,
                    linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=32,
                    linear_conv_kernel_dim=4,
                    rope_parameters={"rope_type": "default", "rope_theta": rope_theta,
                                     "partial_rotary_factor": 0.25})
        cfg = transformers.Qwen3_5Config(
            text_config=text, vision_config=dict(depth=1, hidden_size=32, intermediate_size=64,
                                                 num_heads=2, out_hidden_size=128))
        model = transformers.Qwen3_5ForConditionalGeneration(cfg)
    else:
        raise ValueError(kind)
    model.config.architectures = [type(model).__name__]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                # Zero-centred norms (Qwen3.5) start at 0, plain ones at 1: move both off it.
                p.add_(0.3 * torch.randn_like(p))
    return model.to(torch.bfloat16).eval()


def export(kind: str, out: Path, seed: int = 0, rope_theta: float = 10_000.0) -> Path:
    """Quantize a tiny model with ModelOpt (NVFP4) and export it as ModelOpt does."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    model = tiny_model(kind, seed, rope_theta)
    gen = torch.Generator().manual_seed(seed + 1)
    calib = torch.randint(0, model.config.get_text_config().vocab_size, (4, 32), generator=gen)

    def forward_loop(m):
        with torch.no_grad():
            m(input_ids=calib)

    with cpu_fake_quant():
        mtq.quantize(model, mtq.NVFP4_DEFAULT_CFG, forward_loop)
        export_hf_checkpoint(model, export_dir=str(out))
    return out


def dequantized_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under transformers' names, NVFP4 ones dequantized by
    ModelOpt's own ``NVFP4QTensor``."""
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor
    from safetensors.torch import load_file

    raw = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        raw.update(load_file(str(f)))
    out = {}
    for k, t in raw.items():
        if k.endswith((".weight_scale", ".weight_scale_2", ".input_scale")):
            continue
        base = k.removesuffix(".weight")
        if t.dtype == torch.uint8 and base + ".weight_scale" in raw:
            shape = torch.Size((t.shape[0], t.shape[1] * 2))
            q = NVFP4QTensor(shape, torch.float32, t)
            t = q.dequantize(torch.float32, scale=raw[base + ".weight_scale"],
                             double_scale=raw[base + ".weight_scale_2"].float(),
                             block_sizes={-1: 16})
        out[k] = t
    return out


def reference_model(ckpt: Path, dtype: torch.dtype):
    """The transformers model of the export's own config with the dequantized weights."""
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(str(ckpt))
    cfg.quantization_config = None
    del cfg.quantization_config
    cls = getattr(transformers, cfg.architectures[0])
    model = cls._from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(dequantized_state_dict(ckpt), strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    assert not missing and not unexpected, (missing, unexpected)
    return model.to(dtype).eval()


@dataclass
class Trace:
    prompt: torch.Tensor           # [B, T]
    tokens: list[torch.Tensor]     # the greedy tokens after the prompt, [B] each
    logits: torch.Tensor           # [steps + 1, B, vocab] fp32: prefill, then each step


def greedy_trace(model, prompt: torch.Tensor, steps: int) -> Trace:
    """Prefill and ``steps`` greedy steps (full forwards: no cache to get wrong)."""
    ids, logits, tokens = prompt, [], []
    with torch.no_grad():
        for _ in range(steps + 1):
            out = model(input_ids=ids).logits[:, -1].float()
            logits.append(out)
            nxt = out.argmax(-1)
            tokens.append(nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    return Trace(prompt, tokens[:-1], torch.stack(logits))


def teacher_forced(model, trace: Trace) -> torch.Tensor:
    """``model``'s last-position logits along ``trace``'s token sequence."""
    ids, out = trace.prompt, []
    with torch.no_grad():
        for s in range(len(trace.tokens) + 1):
            out.append(model(input_ids=ids).logits[:, -1].float())
            if s < len(trace.tokens):
                ids = torch.cat([ids, trace.tokens[s][:, None]], dim=1)
    return torch.stack(out)


def read_config(ckpt: Path) -> dict:
    return json.loads((ckpt / "config.json").read_text())
