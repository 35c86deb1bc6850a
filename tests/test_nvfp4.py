"""NVFP4 format: golden vectors, bounds, swizzle, properties, validation, ModelOpt names."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import nvfp4

# One block with amax 6 and gsf 448, so sf = e4m3(448) = 448 and enc = 1: codes are plain
# e2m1 roundings of the inputs (ties to even: 0.25->0, 0.75->1, 1.25->1, 1.75->2,
# 2.5->2, 3.5->4, 5->4).
GOLD_X = [0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 6, -0.5, -3, -6, 0.5, 1.5, 3, 4]
GOLD_CODES = [0, 0, 2, 2, 4, 4, 6, 6, 7, 9, 13, 15, 1, 3, 5, 6]
GOLD_BYTES = [0x00, 0x22, 0x44, 0x66, 0x97, 0xFD, 0x31, 0x65]


def test_golden_block_codes_and_bytes():
    x = torch.tensor([GOLD_X])
    t = nvfp4.quantize(x)
    assert float(t.global_scale) == 448.0
    assert t.scales.float().tolist() == [[448.0]]
    assert nvfp4.unpack_codes(t.packed).tolist() == [GOLD_CODES]
    assert t.packed.tolist() == [GOLD_BYTES]
    want = [0, 0, 1, 1, 2, 2, 4, 4, 6, -0.5, -3, -6, 0.5, 1.5, 3, 4]
    assert nvfp4.dequantize(t, torch.float32).tolist() == [want]


def test_saturation_and_scale_clamp():
    # blockamax * gsf / 6 = 896 exceeds e4m3's 448: the scale saturates, codes saturate at 6.
    x = torch.tensor([[12.0, -12.0] + [1.0] * 14])
    t = nvfp4.quantize(x, global_scale=448.0)
    assert t.scales.float().item() == 448.0
    codes = nvfp4.unpack_codes(t.packed)[0].tolist()
    assert codes[:3] == [7, 15, 2]


def test_zero_block_and_negative_zero():
    x = torch.zeros(2, 32)
    x[1, 16:] = torch.tensor([6.0] + [-0.1] * 15)  # -0.1 rounds to -0 with enc 1
    t = nvfp4.quantize(x, global_scale=448.0)
    assert t.scales[0].float().tolist() == [0.0, 0.0]
    assert t.scales[1].float().tolist() == [0.0, 448.0]
    codes = nvfp4.unpack_codes(t.packed)
    assert codes[0].tolist() == [0] * 32
    assert codes[1, 17:].tolist() == [8] * 15  # sign bit kept, as the hardware does
    assert nvfp4.dequantize(t, torch.float32)[1, 17:].abs().max().item() == 0.0


def test_all_zero_tensor_is_finite():
    t = nvfp4.quantize(torch.zeros(4, 16))
    assert float(t.global_scale) == 1.0
    assert nvfp4.dequantize(t).abs().sum().item() == 0


def test_global_scale_matches_flashinfer_convention():
    x = torch.randn(8, 64)
    t = nvfp4.quantize(x)
    assert math.isclose(float(t.global_scale), 448 * 6 / x.abs().max().item(), rel_tol=1e-6)


@pytest.mark.parametrize("shape", [(1, 16), (7, 48), (3, 5, 64)])
def test_dequantize_error_bounds(shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3
    t = nvfp4.quantize(x)
    dq = nvfp4.dequantize(t, torch.float32)
    blocks = x.reshape(-1, 16)
    err = (dq.reshape(-1, 16) - blocks).abs()
    # Half the widest e2m1 gap (2 -> 1 unit) at a scale that e4m3 rounds by at most 1/16.
    bound = blocks.abs().amax(dim=1, keepdim=True) / 6 * (1 + 1 / 16) + 1e-6
    assert bool((err <= bound).all())
    assert (dq - x).norm() / x.norm() < 0.12


def test_validation_errors():
    with pytest.raises(ValueError, match="multiple of 16"):
        nvfp4.quantize(torch.randn(2, 20))
    with pytest.raises(ValueError, match="floating-point"):
        nvfp4.quantize(torch.ones(2, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        nvfp4.quantize(torch.tensor([[float("nan")] + [0.0] * 15]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        nvfp4.quantize(torch.tensor([[float("inf")] + [0.0] * 15]))
    with pytest.raises(ValueError, match="empty"):
        nvfp4.quantize(torch.empty(0, 16))
    with pytest.raises(ValueError, match="positive finite"):
        nvfp4.quantize(torch.ones(1, 16), global_scale=0.0)


def _swizzle_index(r, c, cols_padded):
    return ((r // 128) * (cols_padded // 4) + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 300), cols=st.integers(1, 12))
def test_swizzle_formula_and_inverse(rows, cols):
    vals = torch.randint(1, 255, (rows, cols), dtype=torch.uint8)
    sw = nvfp4.swizzle_128x4(vals)
    rp, cp = -(-rows // 128) * 128, -(-cols // 4) * 4
    assert sw.shape == (rp, cp)
    flat = sw.reshape(-1)
    for r in {0, rows - 1, rows // 2}:
        for c in {0, cols - 1, cols // 2}:
            assert flat[_swizzle_index(r, c, cp)] == vals[r, c]
    # Padding is zero and the inverse restores the input.
    assert int(flat.sum()) == int(vals.to(torch.int64).sum())
    assert torch.equal(nvfp4.unswizzle_128x4(sw, rows, cols), vals)


def test_swizzle_keeps_e4m3_dtype():
    s = nvfp4.quantize(torch.randn(130, 64)).scales
    sw = nvfp4.swizzle_128x4(s)
    assert sw.dtype == torch.float8_e4m3fn
    assert torch.equal(nvfp4.unswizzle_128x4(sw, 130, 4).view(torch.uint8), s.view(torch.uint8))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 4), blocks=st.integers(1, 4),
       scale=st.floats(1e-3, 1e3))
def test_requantizing_dequantized_values_is_exact(seed, rows, blocks, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((rows, blocks * 16), generator=g) * scale
    t = nvfp4.quantize(x)
    again = nvfp4.quantize(nvfp4.dequantize(t, torch.float32), t.global_scale)
    assert torch.equal(again.packed, t.packed)
    assert torch.equal(again.scales.view(torch.uint8), t.scales.view(torch.uint8))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_pack_unpack_roundtrip(seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (3, 32), generator=g, dtype=torch.uint8)
    assert torch.equal(nvfp4.unpack_codes(nvfp4.pack_codes(codes)), codes)


def test_modelopt_roundtrip_and_alpha():
    w = nvfp4.quantize(torch.randn(32, 64))
    d = nvfp4.to_modelopt(w, input_scale=0.5)
    assert d["weight"].dtype == torch.uint8 and d["weight"].shape == (32, 32)
    assert d["weight_scale"].dtype == torch.float8_e4m3fn and d["weight_scale"].shape == (32, 4)
    assert math.isclose(float(d["weight_scale_2"]), 1 / float(w.global_scale), rel_tol=1e-6)
    back = nvfp4.from_modelopt(d)
    assert torch.equal(back.packed, w.packed)
    assert math.isclose(float(back.global_scale), float(w.global_scale), rel_tol=1e-6)
    assert math.isclose(nvfp4.modelopt_alpha(0.5, float(d["weight_scale_2"])),
                        0.5 / float(w.global_scale), rel_tol=1e-6)
    with pytest.raises(ValueError, match="lacks tensor 'mlp.weight_scale'"):
        nvfp4.from_modelopt({"mlp.weight": w.packed}, prefix="mlp.")
