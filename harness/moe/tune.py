"""``nvfp4-bench tune-moe``: the Triton fused NVFP4 MoE's configs for this device, written in
SGLang's format (one file for the up kernel, one for down, keyed by token count M).

As SGLang's own tuner does, the up and the down kernel are tuned apart: for each M, every
config of the space is timed on the up kernel (with its sort), the best kept; then every
config on the down kernel, which keeps its own best BLOCK_SIZE_M (the SGLang rule that forces
it to up's is applied when the files are read, or not: ``down own``). Timing is
``triton.testing.do_bench`` (median, L2 flushed) on the GPU; a config that does not compile
or run here is left out, named. The pair chosen for each M is checked against the reference
before anything is written.
"""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from harness import health as health_mod
from harness.moe import configs
from harness.moe.layer import reference, route, silu_and_mul, synthetic

SPACE = [dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=g, num_warps=w,
              num_stages=st)
         for bm, bn, bk, g, (w, st) in itertools.product(
             (16, 32, 64), (32, 64, 128), (64, 128), (1, 16), ((4, 3), (8, 3)))]


def _bench_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        # The dense triton backend's tuning timer: CUDA-graph replays with a read flush of
        # the L2 before each, so the config kept is the one the MoE cells measure fastest
        # (eager do_bench timings include launch overhead, which a small-M kernel hides).
        from harness.backends.triton_w4a16 import _tuning_bench
        return float(_tuning_bench()["do_bench"](fn))
    times = []
    for _ in range(3):  # the interpreter: a rough order, enough for the tests
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def tune(model: str, tokens: list[int], device: torch.device, root: Path,
         space: list[dict] = SPACE, seed: int = 0,
         log: Callable[[str], None] = lambda s: None) -> tuple[Path, Path]:
    from harness.gemm import seed_of
    from harness.models import get_model
    from harness.moe import runners
    from harness.moe.triton_moe import FusedMoe, _launch, align

    shape = get_model(model).moe_shape()
    weights = synthetic(shape, seed=seed_of(seed, model)).to(device)
    fused = FusedMoe(weights)
    best_up: dict[int, dict] = {}
    best_down: dict[int, dict] = {}
    refused: dict[str, str] = {}
    for m in tokens:
        g = torch.Generator(device="cpu").manual_seed(seed_of(seed, "x", m))
        x = torch.randn(m, shape.hidden, generator=g).to(torch.bfloat16).to(device)
        tw, ids = route(x, weights.router, shape.top_k, shape.renormalize)
        twf = tw.float().flatten()
        h = torch.empty(m * shape.top_k, 2 * shape.intermediate, dtype=torch.bfloat16,
                        device=device)
        y = torch.empty(m * shape.top_k, shape.hidden, dtype=torch.bfloat16, device=device)

        def up_call(cfg):
            s, e, p = align(ids, shape.experts, cfg["BLOCK_SIZE_M"])
            _launch(x, fused.w13, twf, s, e, p, h, cfg, shape.top_k, True, False)

        def down_call(cfg, act):
            s, e, p = align(ids, shape.experts, cfg["BLOCK_SIZE_M"])
            _launch(act, fused.w2, twf, s, e, p, y, cfg, shape.top_k, False, True)

        for which, table in (("up", best_up), ("down", best_down)):
            if which == "down":
                up_call(best_up[m])
                act = silu_and_mul(h).to(torch.bfloat16)
            timed = []
            for cfg in space:
                key = f"{which} {sorted(cfg.items())}"
                if key in refused:
                    continue
                try:
                    fn = (lambda c=cfg: up_call(c)) if which == "up" else \
                        (lambda c=cfg: down_call(c, act))
                    timed.append((_bench_ms(fn, device), cfg))
                except Exception as e:  # noqa: BLE001 - a config this GPU cannot run
                    refused[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            if not timed:
                raise RuntimeError(f"no config of the space runs the {which} kernel at M={m}")
            ms, cfg = min(timed, key=lambda t: t[0])
            table[m] = dict(cfg)
            log(f"M={m} {which}: best of {len(timed)} configs {ms * 1e3:.1f} us: {cfg}")
        # the chosen pair, as `down own` runs it, against the exact layer
        out = fused(x, tw, ids, best_up[m], best_down[m])
        h_ok = health_mod.check(out, reference(x, weights, tw, ids), runners.RUNNERS["triton-moe"].tolerance)
        if not h_ok.ok:
            raise RuntimeError(f"M={m}: the tuned configs fail the health check: "
                               f"{'; '.join(h_ok.problems())}")
    for key, why in sorted(refused.items())[:5]:
        log(f"left out ({len(refused)} in all): {key}: {why}")
    up_path, down_path = runners.tuned_paths(shape, device, root)
    configs.save(up_path, best_up)
    configs.save(down_path, best_down)
    return up_path, down_path
