"""pytest-benchmark suite of the project's own CPU hot paths (quantize, dequantize, swizzle).

    python -m pytest bench/pytest --benchmark-json=results/pytest-benchmark.json --benchmark-save-data
    nvfp4-bench import-pytest-benchmark results/pytest-benchmark.json
"""

import pytest
import torch

from harness import nvfp4

SHAPES = [(256, 4096), (2048, 4096)]


@pytest.fixture(params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def weight(request):
    g = torch.Generator().manual_seed(0)
    return torch.randn(request.param, generator=g).to(torch.bfloat16)


def test_quantize(benchmark, weight):
    q = benchmark(nvfp4.quantize, weight)
    assert q.shape == tuple(weight.shape)


def test_dequantize(benchmark, weight):
    q = nvfp4.quantize(weight)
    out = benchmark(nvfp4.dequantize, q)
    assert out.shape == weight.shape


def test_swizzle_128x4(benchmark, weight):
    scales = nvfp4.quantize(weight).scales
    sw = benchmark(nvfp4.swizzle_128x4, scales)
    assert torch.equal(nvfp4.unswizzle_128x4(sw, *scales.shape).view(torch.uint8),
                       scales.view(torch.uint8))
