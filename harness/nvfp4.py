"""NVFP4 format: quantize, dequantize, pack, swizzle (pure torch, any device).

The quantizer reproduces FlashInfer's ``nvfp4_quantize`` arithmetic so that a tensor
quantized here is bit-identical to one quantized by the CUDA kernel:

* global scale ``gsf = 448 * 6 / amax(|x|)`` (fp32), unless one is given;
* per 16-element block along K: ``sf = e4m3(blockamax * (gsf / 6))`` (saturating);
* element encode scale ``enc = 1 / (float(sf) * (1 / gsf))``, 0 where ``sf`` is 0;
* element code ``q = e2m1(x * enc)``: round to nearest, ties to even, saturate at 6.

Two codes per byte, the even element in the low nibble. Block scales are kept in the
linear layout ([..., K/16]); ``swizzle_128x4`` makes the layout the tensor cores read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

BLOCK = 16
# Bytes per weight element: a 4-bit code plus one e4m3 scale per block.
BYTES_PER_ELEMENT = 0.5 + 1 / BLOCK
E2M1_MAX = 6.0
E4M3_MAX = 448.0
# Magnitudes of the eight e2m1 codes; bit 3 of a code is the sign.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

# Midpoints between neighbouring e2m1 magnitudes. At an exact midpoint the value goes
# to the neighbour with an even code (mantissa bit 0): down at 0.25, 1.25, 2.5, 5 and up
# at 0.75, 1.75, 3.5. ``True`` marks the midpoints that round up on a tie.
_MIDPOINTS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True),
              (2.5, False), (3.5, True), (5.0, False))


@dataclass(frozen=True)
class NVFP4Tensor:
    """A tensor quantized to NVFP4 along its last dimension."""

    packed: torch.Tensor        # uint8 [..., K/2]
    scales: torch.Tensor        # float8_e4m3fn [..., K/16], linear layout
    global_scale: torch.Tensor  # fp32 scalar, FlashInfer's gsf (encode direction)

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.packed.shape[:-1], self.packed.shape[-1] * 2)

    @property
    def device(self) -> torch.device:
        return self.packed.device

    def nbytes(self) -> int:
        """Bytes a kernel must read: packed codes + block scales + the global scale."""
        return self.packed.numel() + self.scales.numel() + 4

    def to(self, device) -> "NVFP4Tensor":
        return NVFP4Tensor(self.packed.to(device), self.scales.to(device),
                           self.global_scale.to(device))


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"NVFP4 quantization needs a floating-point tensor, got {x.dtype}")
    if x.dim() == 0 or x.numel() == 0:
        raise ValueError(f"cannot quantize an empty tensor (shape {tuple(x.shape)})")
    if x.shape[-1] % BLOCK != 0:
        raise ValueError(f"last dimension K={x.shape[-1]} must be a multiple of {BLOCK}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("input contains NaN or Inf; NVFP4 cannot represent it")


def global_scale_for(x: torch.Tensor) -> torch.Tensor:
    """FlashInfer's convention: ``448 * 6 / amax(|x|)`` as an fp32 scalar tensor."""
    amax = x.detach().abs().amax().float()
    # An all-zero tensor has no scale to speak of; 1.0 keeps every code 0 and finite.
    return torch.where(amax > 0, (E4M3_MAX * E2M1_MAX) / amax, torch.ones_like(amax))


def e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to 4-bit e2m1 codes (RNE, saturating at +-6)."""
    mag = v.abs()
    code = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
    for mid, up_on_tie in _MIDPOINTS:
        code += (mag >= mid) if up_on_tie else (mag > mid)
    # Sign bit follows the hardware conversion, which keeps the sign of -0 results.
    return code | (torch.signbit(v).to(torch.uint8) << 3)


@functools.lru_cache(maxsize=None)
def _e2m1_table(device: torch.device) -> torch.Tensor:
    # Made once per device: a host-to-device copy inside a CUDA-graph capture would break it.
    return torch.tensor(E2M1_VALUES, dtype=torch.float32, device=device)


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    """Decode 4-bit codes (uint8, 0..15) to fp32 values."""
    mag = _e2m1_table(codes.device)[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -mag, mag)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """[..., K] codes -> [..., K/2] bytes, element 2i in the low nibble."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """[..., K/2] bytes -> [..., K] codes."""
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def quantize(x: torch.Tensor, global_scale: torch.Tensor | float | None = None,
             validate: bool = True) -> NVFP4Tensor:
    """Quantize ``x`` [..., K] to NVFP4 along K exactly as FlashInfer does.

    ``validate=False`` skips the checks that read values back to the host (NaN/Inf, the
    global scale's sign): for hot paths that are timed or captured in a CUDA graph, on
    inputs that were validated before.
    """
    if validate:
        _check_input(x)
    xf = x.detach().float()
    if global_scale is None:
        gsf = global_scale_for(xf)
    else:
        gsf = torch.as_tensor(global_scale, dtype=torch.float32, device=x.device).reshape(())
        if validate and (not bool(torch.isfinite(gsf)) or float(gsf) <= 0):
            raise ValueError(f"global_scale must be a positive finite number, got {float(gsf)}")
    blocks = xf.reshape(*xf.shape[:-1], xf.shape[-1] // BLOCK, BLOCK)
    block_amax = blocks.abs().amax(dim=-1)
    sf = (block_amax * (gsf / E2M1_MAX)).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
    sf_f = sf.float()
    enc = torch.where(sf_f > 0, 1.0 / (sf_f * (1.0 / gsf)), torch.zeros_like(sf_f))
    codes = e2m1_codes(blocks * enc.unsqueeze(-1)).reshape(xf.shape)
    return NVFP4Tensor(pack_codes(codes), sf, gsf.clone())


def dequantize(t: NVFP4Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``e2m1(q) * float(sf) / gsf`` in fp32, returned as ``dtype``."""
    vals = e2m1_values(unpack_codes(t.packed))
    blocks = vals.reshape(*vals.shape[:-1], vals.shape[-1] // BLOCK, BLOCK)
    out = blocks * t.scales.float().unsqueeze(-1) / t.global_scale.float()
    return out.reshape(vals.shape).to(dtype)


def dequantize_unscaled(t: NVFP4Tensor) -> torch.Tensor:
    """``e2m1(q) * float(sf)`` in fp32, without the global scale (the GEMM operand form)."""
    vals = e2m1_values(unpack_codes(t.packed))
    blocks = vals.reshape(*vals.shape[:-1], vals.shape[-1] // BLOCK, BLOCK)
    return (blocks * t.scales.float().unsqueeze(-1)).reshape(vals.shape)


def _round_up(v: int, to: int) -> int:
    return (v + to - 1) // to * to


def swizzle_128x4(scales: torch.Tensor) -> torch.Tensor:
    """Linear [R, C] block scales -> the 128x4 tiled layout, padded to [R128, C4].

    Element (r, c) lands at flat index
    ``((r//128)*(Cp/4) + c//4)*512 + (r%32)*16 + ((r%128)//32)*4 + c%4``.
    """
    if scales.dim() != 2:
        raise ValueError(f"swizzle_128x4 takes a 2-D scale matrix, got shape {tuple(scales.shape)}")
    rows, cols = scales.shape
    rp, cp = _round_up(rows, 128), _round_up(cols, 4)
    raw = scales.view(torch.uint8)
    padded = torch.zeros((rp, cp), dtype=torch.uint8, device=scales.device)
    padded[:rows, :cols] = raw
    tiled = padded.reshape(rp // 128, 4, 32, cp // 4, 4).permute(0, 3, 2, 1, 4)
    return tiled.reshape(rp, cp).view(scales.dtype)


def unswizzle_128x4(swizzled: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`swizzle_128x4`, cropped back to [rows, cols]."""
    rp, cp = _round_up(rows, 128), _round_up(cols, 4)
    if swizzled.numel() != rp * cp:
        raise ValueError(f"swizzled scales hold {swizzled.numel()} elements; "
                         f"[{rows}, {cols}] padded to 128x4 needs {rp * cp}")
    raw = swizzled.reshape(-1).view(torch.uint8)
    lin = raw.reshape(rp // 128, cp // 4, 32, 4, 4).permute(0, 3, 2, 1, 4).reshape(rp, cp)
    return lin[:rows, :cols].contiguous().view(swizzled.dtype)


# ---- ModelOpt checkpoint names -------------------------------------------------------

def to_modelopt(weight: NVFP4Tensor, input_scale: float | None = None) -> dict[str, torch.Tensor]:
    """Tensors of one ModelOpt NVFP4 linear layer.

    ``weight_scale_2`` is the decode-direction global scale (1/gsf); ``input_scale`` is the
    activation's ``amax / (6 * 448)`` when a calibrated one is known.
    """
    if weight.packed.dim() != 2:
        raise ValueError("a linear layer's weight is 2-D [N, K]")
    out = {
        "weight": weight.packed,
        "weight_scale": weight.scales,
        "weight_scale_2": (1.0 / weight.global_scale.float()).reshape(()),
    }
    if input_scale is not None:
        out["input_scale"] = torch.tensor(float(input_scale), dtype=torch.float32)
    return out


def from_modelopt(tensors: dict[str, torch.Tensor], prefix: str = "") -> NVFP4Tensor:
    """Rebuild the weight of one layer from ModelOpt tensors (``prefix`` e.g. 'mlp.down_proj.')."""
    try:
        packed = tensors[prefix + "weight"]
        scales = tensors[prefix + "weight_scale"]
        ws2 = tensors[prefix + "weight_scale_2"]
    except KeyError as e:
        raise ValueError(f"ModelOpt NVFP4 layer {prefix!r} lacks tensor {e.args[0]!r}") from None
    if packed.dtype != torch.uint8:
        raise ValueError(f"{prefix}weight must be uint8 packed e2m1, got {packed.dtype}")
    if scales.dtype != torch.float8_e4m3fn:
        raise ValueError(f"{prefix}weight_scale must be float8_e4m3fn, got {scales.dtype}")
    if scales.shape[-1] * BLOCK != packed.shape[-1] * 2:
        raise ValueError(f"{prefix}weight_scale shape {tuple(scales.shape)} does not match "
                         f"weight shape {tuple(packed.shape)} with block {BLOCK}")
    gsf = (1.0 / ws2.float()).reshape(())
    return NVFP4Tensor(packed, scales, gsf)


def modelopt_alpha(input_scale: float, weight_scale_2: float) -> float:
    """The GEMM epilogue scale engines use: ``input_scale * weight_scale_2`` = 1/(gsf_a*gsf_w)."""
    return float(input_scale) * float(weight_scale_2)
