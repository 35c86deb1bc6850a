"""MoE cells: one MoE layer of a model at a token count, per runner x autotune x down rule.

Runners (:mod:`harness.moe.runners`): ``moe-ref`` (exact, never a winner), ``triton-moe``
(``autotune off``: SGLang's default config; ``on``: this device's tuned configs, written by
``nvfp4-bench tune-moe`` in SGLang's format; ``down shared`` applies SGLang's rule, down's
BLOCK_SIZE_M forced to up's with one sort, ``down own`` keeps down's tuned BLOCK_SIZE_M with
a second sort: the comparison SGLang PR #26496's review left open), and FlashInfer's
``cutlass_fused_moe`` (NVFP4 on SM100/SM120, FP8 and bf16 on SM90+; ``autotune on`` runs
FlashInfer's tuner on the first call) and trtllm MoE.

Every timed cell is checked first: NaN/Inf or all-zero rows, or an error against the
reference above the runner's tolerance, make it ``failed``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from harness import health as health_mod
from harness.gemm import describe_error, seed_of
from harness.hardware import copy_bandwidth, default_device
from harness.measure import time_fn
from harness.models import get_model
from harness.moe import runners
from harness.moe.layer import MoeShape, MoeWeights, reference, route, synthetic
from harness.moe.runners import RUNNERS, get_runner  # noqa: F401 - the CLI's names
from harness.progress import Progress
from harness.records import MoeCell

AUTOTUNE_VALUES = ("on", "off")
DOWN_VALUES = ("shared", "own")
CONFIG_DIR_ENV = "NVFP4_BENCH_MOE_CONFIG_DIR"


@dataclass
class MoeOptions:
    samples: int = 30
    warmup: int = 5
    cold_l2: bool = True
    seed: int = 0
    config_dir: str | None = None   # default: $NVFP4_BENCH_MOE_CONFIG_DIR or results/moe-configs


def plan(model: str, tokens: list[int], runners: list[str], autotunes: list[str],
         downs: list[str] = ("shared", "own")) -> list[MoeCell]:
    shape = get_model(model).moe_shape()
    for name in runners:
        get_runner(name)
    for a in autotunes:
        if a not in AUTOTUNE_VALUES:
            raise ValueError(f"autotune must be one of {', '.join(AUTOTUNE_VALUES)}, got {a!r}")
    for d in downs:
        if d not in DOWN_VALUES:
            raise ValueError(f"down must be one of {', '.join(DOWN_VALUES)}, got {d!r}")
    if any(t < 1 for t in tokens):
        raise ValueError(f"token counts must be positive, got {tokens}")
    return [MoeCell(model=model, tokens=t, runner=r, autotune=a, down=d, experts=shape.experts,
                    top_k=shape.top_k, hidden=shape.hidden, intermediate=shape.intermediate,
                    status="pending")
            for r in runners for a in autotunes for d in downs for t in tokens]


def config_dir(opts: MoeOptions) -> Path:
    from harness.store import ROOT
    return Path(opts.config_dir or os.environ.get(CONFIG_DIR_ENV) or ROOT / "results" / "moe-configs")


def why_skipped(cell: MoeCell, device: torch.device, root: Path) -> str | None:
    return runners.why_not(cell.runner, get_model(cell.model).moe_shape(), cell.autotune,
                           cell.down, device, root, cell.model)


def run(cells: list[MoeCell], opts: MoeOptions, log: Callable[[str], None] = lambda s: None,
        device: torch.device | None = None,
        on_cell: Callable[[MoeCell], None] = lambda c: None) -> list[MoeCell]:
    """Run the cells in this process, one model's weights at a time."""
    device = device or default_device()
    root = config_dir(opts)
    t0 = time.perf_counter()
    final = Progress("MoE", len(cells), log).counting(on_cell)
    by_model: dict[str, list[MoeCell]] = {}
    for c in cells:
        by_model.setdefault(c.model, []).append(c)
    for model, mine in by_model.items():
        shape = get_model(model).moe_shape()
        todo = []
        for c in mine:
            reason = why_skipped(c, device, root)
            if reason:
                c.status, c.reason = "skipped", reason
                final(c)
            else:
                todo.append(c)
        if not todo:
            continue
        try:
            weights = synthetic(shape, seed=seed_of(opts.seed, model)).to(device)
        except Exception as e:  # noqa: BLE001
            for c in todo:
                c.status, c.reason = "failed", f"weights: {type(e).__name__}: {e}"
                final(c)
            continue
        prepared: dict[tuple, runners.PreparedMoe] = {}
        inputs: dict[int, tuple] = {}
        for c in todo:
            _run_cell(c, shape, weights, prepared, inputs, opts, device, root)
            log(progress_line(c))
            final(c)
        del weights, prepared, inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    log(f"{len(cells)} MoE cells in {time.perf_counter() - t0:.1f} s")
    return cells


def _inputs(tokens: int, shape: MoeShape, weights: MoeWeights, opts: MoeOptions,
            device: torch.device) -> tuple:
    """(x, routing weights, expert ids, the exact output) at ``tokens``: the same for every
    runner, autotune and down rule of the model."""
    g = torch.Generator(device="cpu").manual_seed(seed_of(opts.seed, "x", tokens))
    x = torch.randn(tokens, shape.hidden, generator=g).to(torch.bfloat16).to(device)
    tw, ids = route(x, weights.router, shape.top_k, shape.renormalize)
    return x, tw, ids, reference(x, weights, tw, ids)


def _run_cell(c: MoeCell, shape: MoeShape, weights: MoeWeights, prepared: dict, inputs: dict,
              opts: MoeOptions, device: torch.device, root: Path) -> None:
    runner = RUNNERS[c.runner]
    try:
        # The reference is the slowest call of a cell (every expert dequantized): once per
        # token count, not once per cell.
        if c.tokens not in inputs:
            inputs[c.tokens] = _inputs(c.tokens, shape, weights, opts, device)
        x, tw, ids, ref = inputs[c.tokens]
        # One preparation per (runner, autotune, down): FlashInfer's weights are converted
        # once and its tuner's choices stay with the prepared layer, as in an engine.
        key = (c.runner, c.autotune, c.down)
        if key not in prepared:
            prepared[key] = runners.PreparedMoe(c.runner, weights, c.autotune == "on", c.down,
                                                root, device)
        layer = prepared[key]
        if c.runner == "triton-moe":
            c.up_config, c.down_config = layer.configs_for(c.tokens)
        c.config_source = layer.config_source
        layer.calibrate(x, tw, ids)
        layer.tune(x, tw, ids)

        def call():
            return layer(x, tw, ids)
        out = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        h = health_mod.check(out, ref, runner.tolerance)
        c.health = h.to_json()
        if not h.ok:
            c.status, c.reason = "failed", "; ".join(h.problems())
            return
        timing = time_fn(call, device, samples=opts.samples, warmup=opts.warmup,
                         cold_l2=opts.cold_l2)
        st = timing.stats
        c.status, c.reason = "ok", ""
        c.samples_s, c.median_s, c.ci99_s, c.cv = timing.samples_s, st.median_s, list(st.ci99_s), st.cv
        c.timing_method = timing.method
        c.experts_hit = int(torch.unique(ids).numel())
        per_expert = shape.weight_bytes() // shape.experts
        c.bytes = c.experts_hit * per_expert + 2 * c.tokens * shape.hidden * 2
        c.gbps = c.bytes / st.median_s / 1e9
        bw = copy_bandwidth()
        c.roofline_frac = (c.bytes / bw) / st.median_s if bw else None
    except Exception as e:  # noqa: BLE001
        c.status, c.reason = "failed", describe_error(e)


def progress_line(c: MoeCell) -> str:
    what = f"[{c.runner} autotune={c.autotune} down={c.down}] tokens={c.tokens}: {c.status}"
    return f"{what} {c.median_s * 1e6:.1f} us" if c.status == "ok" else f"{what} ({c.reason})"


def moe_options_from(block: dict) -> MoeOptions:
    return dataclasses.replace(MoeOptions(), samples=block.get("samples", 30),
                               warmup=block.get("warmup", 5))
