"""MoE cells: one MoE layer of a model at a token count, per runner x autotune x down rule.

Runners:
- ``moe-ref``: the exact fp32 reference (the health reference, never a candidate);
- ``triton-moe``: the Triton fused NVFP4 W4A16 MoE. ``autotune off`` runs SGLang's default
  config (what an untuned device gets); ``on`` the configs tuned for this device
  (``nvfp4-bench tune-moe`` writes them in SGLang's format). ``down shared`` applies SGLang's
  rule (down's BLOCK_SIZE_M forced to up's, one sort); ``down own`` keeps down's tuned
  BLOCK_SIZE_M (a second sort) — the comparison SGLang PR #26496's review left open.

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
from harness.models import UnknownNameError, get_model
from harness.moe import configs
from harness.moe.layer import MoeShape, MoeWeights, reference, route, synthetic
from harness.progress import Progress
from harness.records import MoeCell

AUTOTUNE_VALUES = ("on", "off")
DOWN_VALUES = ("shared", "own")
CONFIG_DIR_ENV = "NVFP4_BENCH_MOE_CONFIG_DIR"


@dataclass(frozen=True)
class Runner:
    name: str
    description: str
    candidate: bool = True
    tunable: bool = False
    tolerance: float = 2e-2


RUNNERS = {r.name: r for r in [
    Runner("moe-ref", "exact fp32 reference on the dequantized experts", candidate=False,
           tolerance=1e-5),
    Runner("triton-moe", "Triton fused MoE, NVFP4 weights decoded in registers, bf16 math",
           tunable=True),
]}


@dataclass
class MoeOptions:
    samples: int = 30
    warmup: int = 5
    cold_l2: bool = True
    seed: int = 0
    config_dir: str | None = None   # default: $NVFP4_BENCH_MOE_CONFIG_DIR or results/moe-configs


def get_runner(name: str) -> Runner:
    if name not in RUNNERS:
        raise UnknownNameError("MoE runner", name, sorted(RUNNERS))
    return RUNNERS[name]


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


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def tuned_paths(shape: MoeShape, device: torch.device, root: Path) -> tuple[Path, Path]:
    """Where this device's tuned up and down configs live (SGLang's layout under ``root``)."""
    import triton
    d = root / "configs" / configs.version_dir(triton.__version__)
    name = device_name(device)
    return (d / configs.file_name(shape.experts, shape.intermediate, name, configs.NVFP4_W4A16),
            d / configs.file_name(shape.experts, shape.intermediate, name, configs.NVFP4_W4A16,
                                  down=True))


def why_skipped(cell: MoeCell, device: torch.device, root: Path) -> str | None:
    runner = RUNNERS[cell.runner]
    if cell.autotune == "on" and not runner.tunable:
        return f"{runner.name} has no configs to tune (its autotune=off row is the measurement)"
    if cell.down == "own" and runner.name == "moe-ref":
        return "moe-ref has no kernel block sizes (its down=shared row is the measurement)"
    if runner.name == "triton-moe":
        import importlib.util
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install 'nvfp4-bench[gpu]')"
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            return ("triton-moe needs an NVIDIA GPU or TRITON_INTERPRET=1; this machine has "
                    "no GPU")
        if device.type == "cuda":
            from harness.hardware import compute_capability
            if compute_capability(device) < 80:
                return f"triton-moe needs SM80 or newer; this GPU is SM{compute_capability(device)}"
        if cell.autotune == "off" and cell.down == "own":
            return ("autotune off runs SGLang's one default config for both kernels, so down's "
                    "BLOCK_SIZE_M is up's already (the down=shared row is the measurement)")
        if cell.autotune == "on":
            up, down = tuned_paths(get_model(cell.model).moe_shape(), device, root)
            if not up.exists():
                return (f"no tuned configs for {device_name(device)} ({up}): "
                        f"`nvfp4-bench tune-moe --model {cell.model}` writes them")
    return None


def _configs(cell: MoeCell, shape: MoeShape, device: torch.device, root: Path):
    if cell.autotune == "off":
        cfg = configs.default_config(cell.tokens, shape.experts)
        return cfg, dict(cfg), "SGLang's default config"
    up_path, down_path = tuned_paths(shape, device, root)
    up = configs.load(up_path)
    down = configs.load(down_path) if down_path.exists() else None
    picked = configs.pick(up, down, cell.tokens, force_shared_block_m=(cell.down == "shared"))
    return picked.up, picked.down, str(up_path if down is None else f"{up_path} + {down_path.name}")


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
            fused = None
            if any(c.runner == "triton-moe" for c in todo):
                from harness.moe.triton_moe import FusedMoe
                fused = FusedMoe(weights)
        except Exception as e:  # noqa: BLE001
            for c in todo:
                c.status, c.reason = "failed", f"weights: {type(e).__name__}: {e}"
                final(c)
            continue
        for c in todo:
            _run_cell(c, shape, weights, fused, opts, device, root)
            log(progress_line(c))
            final(c)
        del weights, fused
        if device.type == "cuda":
            torch.cuda.empty_cache()
    log(f"{len(cells)} MoE cells in {time.perf_counter() - t0:.1f} s")
    return cells


def _run_cell(c: MoeCell, shape: MoeShape, weights: MoeWeights, fused, opts: MoeOptions,
              device: torch.device, root: Path) -> None:
    runner = RUNNERS[c.runner]
    try:
        g = torch.Generator(device="cpu").manual_seed(seed_of(opts.seed, "x", c.tokens))
        x = torch.randn(c.tokens, shape.hidden, generator=g).to(torch.bfloat16).to(device)
        tw, ids = route(x, weights.router, shape.top_k, shape.renormalize)
        ref = reference(x, weights, tw, ids)
        if c.runner == "moe-ref":
            def call():
                return reference(x, weights, tw, ids)
        else:
            up, down, source = _configs(c, shape, device, root)
            c.up_config, c.down_config, c.config_source = up, down, source

            def call():
                return fused(x, tw, ids, up, down)
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
