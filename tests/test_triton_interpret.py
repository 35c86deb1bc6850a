"""The Triton W4A16 kernels under TRITON_INTERPRET=1 (CPU): both paths, split-K, tuning."""

import os

import pytest
import torch

# conftest.py sets TRITON_INTERPRET=1 on machines without a GPU. Never here: the variable
# would reach every worker process the later tests start. On a GPU tests/test_triton_gpu.py
# runs the same kernels for real.
triton = pytest.importorskip("triton")

from harness.backends import get_backend  # noqa: E402
from harness.backends.triton_w4a16 import w4a16_matmul  # noqa: E402
from harness.gemm import make_activations, make_weights, reference  # noqa: E402
from numerics import rel_err  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="the interpreter runs where there is no GPU (set before triton "
                                "is imported); on a GPU see tests/test_triton_gpu.py")
CPU = torch.device("cpu")


@pytest.mark.parametrize("n,k", [(64, 256), (48, 96), (80, 192)])
@pytest.mark.parametrize("m", [1, 3, 7, 33])
def test_default_configs_match_w4a16_reference(n, k, m):
    w = make_weights(n, k, seed=n + k, device=CPU, std=0.02)
    b = get_backend("triton")
    x = make_activations(m, k, seed=m, device=CPU)
    out = b.run(b.prepare(w), x, None)
    assert not torch.isnan(out).any()
    assert rel_err(out, reference("w4a16", w, x, None)) < 1e-2


@pytest.mark.parametrize("m,config", [
    (1, {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 1}),
    (1, {"BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 3}),
    (2, {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 2}),
    (5, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 4}),
])
def test_split_k_configs(m, config):
    n, k = 40, 320  # K not a multiple of SPLIT_K * BLOCK_K: some programs get no work
    w = make_weights(n, k, seed=1, device=CPU, std=0.05)
    b = get_backend("triton")
    p = b.prepare(w)
    x = make_activations(m, k, seed=2, device=CPU)
    out = w4a16_matmul(x, p["words"], p["scales"], p["epilogue"], autotune=False, config=config)
    assert rel_err(out, reference("w4a16", w, x, None)) < 1e-2
    again = w4a16_matmul(x, p["words"], p["scales"], p["epilogue"], autotune=False, config=config)
    assert torch.equal(out, again)  # counters reset: a second launch is identical


def test_autotune_path_and_negative_weights():
    w = make_weights(32, 128, seed=9, device=CPU, std=1.0)
    b = get_backend("triton")
    p = b.prepare(w, autotune=True)
    for m in (1, 4):
        x = make_activations(m, 128, seed=m, device=CPU)
        b.tune(p, x, None)
        assert rel_err(b.run(p, x, None), reference("w4a16", w, x, None)) < 1e-2


def test_word_layout_round_trips_every_code_and_matches_the_ptx_recipe():
    """``shuffle_words`` keeps every code, and the shift/mask recipe of the PTX decode (emulated
    here with torch integer ops) turns each word into bf16x2 pairs (0,1), (2,3), (4,5), (6,7)
    of e2m1 * 2^-126: a wrong bit position in either fails."""
    from harness.backends.triton_w4a16 import shuffle_words
    from harness.nvfp4 import E2M1_VALUES

    packed = torch.arange(256, dtype=torch.uint8).repeat(3, 1)  # every byte value, K = 512
    packed = packed[:, torch.randperm(256, generator=torch.Generator().manual_seed(0))]
    codes = torch.stack([packed & 15, packed >> 4], -1).reshape(3, -1, 8).long()
    words = shuffle_words(packed).long() & 0xFFFFFFFF
    signed = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES))
    registers = [words & 0x81C081C0, (words << 3) & 0x81C081C0, (words << 6) & 0x81C081C0,
                 ((words >> 4) & 0x00C000C0) | ((words >> 5) & 0x01000100)
                 | ((words << 1) & 0x80008000)]
    for q, bits in enumerate(registers):
        for lane in range(2):
            half = ((bits >> (16 * lane)) & 0xFFFF).to(torch.int16).view(torch.bfloat16).float()
            # bf16 -> fp32 keeps subnormals on the CPU: the codes 0.5 and 0 round-trip too
            assert torch.equal(half * 2.0 ** 126, signed[codes[..., 2 * q + lane]]), (q, lane)


def test_triton_autotuner_runs_the_reorder_hook_before_each_timed_candidate(monkeypatch):
    """Triton's own autotuner, with the ordered tuner's pre-hook: during its search the hook
    reorders the call's activations into the candidate's ``x_ptr`` before every timed launch
    (two per candidate with the interpreter's timer), with the call's launch options; after
    the search and on a cached call it launches nothing."""
    import triton.language as tl

    from harness.backends import triton_w4a16 as tw

    @triton.jit
    def copy_kernel(x_ptr, y_ptr, N, BLOCK: tl.constexpr):
        r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + r, tl.load(x_ptr + r, mask=r < N), mask=r < N)

    reorders = []

    def reorder(x, y, launch):  # stands in for the reorder kernel: y <- x in MMA order
        reorders.append(launch)
        y.copy_(x.flip(0))

    monkeypatch.setattr(tw.triton_wgmma, "launch_mma_k_order", reorder)
    tuned = triton.autotune([triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})],
                            key=["N"], pre_hook=tw._reorder_before_candidate,
                            do_bench=tw._cpu_do_bench)(copy_kernel)
    x, xo, y = torch.arange(64.0), torch.zeros(64), torch.zeros(64)
    monkeypatch.setattr(tw, "_REORDER_SOURCE", [(x, {"launch_pdl": True})])
    tuned[lambda meta: (triton.cdiv(64, meta["BLOCK"]),)](xo, y, 64)
    assert reorders == [{"launch_pdl": True}] * 4
    assert torch.equal(y, x.flip(0))  # the candidates read what the hook wrote
    tuned[lambda meta: (triton.cdiv(64, meta["BLOCK"]),)](xo, y, 64)
    assert len(reorders) == 4
