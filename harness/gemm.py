"""The GEMM suite: cells (layer x M x backend x autotune), inputs, health, timing.

Cells of one (backend, autotune) pair run in their own worker process (``harness.isolate``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from typing import Callable

import torch

from harness import health as health_mod
from harness import isolate
from harness import nvfp4
from harness.backends import GemmBackend, LayerWeights, fp8, get_backend, triton_w4a8
from harness.backends.flashinfer_lib import BackendRefused
from harness.hardware import copy_bandwidth, default_device
from harness.measure import time_fn
from harness.models import get_model
from harness.progress import Progress
from harness.records import GemmCell

AUTOTUNE_VALUES = ("on", "off")


@dataclass(frozen=True)
class GemmOptions:
    samples: int = 50
    warmup: int = 5
    cold_l2: bool = True
    seed: int = 0
    isolate: bool = True          # one worker process per (backend, autotune)
    weight_std: float = 0.02


def plan(model: str, ms: list[int], backends: list[str], autotunes: list[str],
         layers: list[str] | None = None) -> list[GemmCell]:
    cfg = get_model(model)
    shapes = cfg.linear_layers()
    if layers:
        known = {s.name for s in shapes}
        bad = [name for name in layers if name not in known]
        if bad:
            raise ValueError(f"model {model} has no layer {bad[0]!r}; its layers: {', '.join(sorted(known))}")
        shapes = [s for s in shapes if s.name in layers]
    for a in autotunes:
        if a not in AUTOTUNE_VALUES:
            raise ValueError(f"autotune must be one of {', '.join(AUTOTUNE_VALUES)}, got {a!r}")
    for m in ms:
        if m < 1:
            raise ValueError(f"M must be a positive integer, got {m}")
    cells = []
    for b in backends:
        get_backend(b)  # fail early with the list of valid names
        for a in autotunes:
            for s in shapes:
                for m in ms:
                    cells.append(GemmCell(model=model, layer=s.name, n=s.n, k=s.k, m=m,
                                          backend=b, autotune=a, count=s.count, status="pending"))
    return cells


def seed_of(*parts) -> int:
    """A stable 32-bit seed from the parts naming what is generated (layer, inputs, ...)."""
    h = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "little")


def make_weights(n: int, k: int, seed: int, device: torch.device, std: float) -> LayerWeights:
    g = torch.Generator(device=device).manual_seed(seed)
    w = (torch.randn((n, k), generator=g, device=device, dtype=torch.float32) * std)
    w = w.to(torch.bfloat16)
    return LayerWeights(fp4=nvfp4.quantize(w), bf16=w)


def make_activations(m: int, k: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn((m, k), generator=g, device=device, dtype=torch.float32).to(torch.bfloat16)


def reference(math: str, weights: LayerWeights, x: torch.Tensor, x_gsf: torch.Tensor) -> torch.Tensor:
    """The exact fp32 result of the math a backend claims to compute."""
    if math == "w4a4":
        from harness.backends.torch_ref import w4a4_reference
        return w4a4_reference(nvfp4.dequantize_unscaled(weights.fp4), weights.fp4.global_scale,
                              x, x_gsf)
    if math == "w4a16":
        return x.float() @ nvfp4.dequantize(weights.fp4, torch.float32).T
    if math == "bf16":
        return x.float() @ weights.bf16.float().T
    if math == "w8a8":
        return fp8.w8a8_reference(weights, x, x_gsf)
    if math == "w4a8":
        return triton_w4a8.w4a8_reference(weights, x, x_gsf)
    raise ValueError(f"unknown math {math!r}")


def _finish_timed(cell: GemmCell, backend: GemmBackend, weights: LayerWeights, timing) -> None:
    st = timing.stats
    cell.status = "ok"
    cell.samples_s = timing.samples_s
    cell.median_s = st.median_s
    cell.ci99_s = list(st.ci99_s)
    cell.cv = st.cv
    cell.timing_method = timing.method
    cell.flops = 2 * cell.m * cell.n * cell.k
    cell.bytes = backend.weight_bytes(weights) + cell.m * cell.k * 2 + cell.m * cell.n * 2
    cell.tflops = cell.flops / st.median_s / 1e12
    cell.gbps = cell.bytes / st.median_s / 1e9
    bw = copy_bandwidth()
    cell.roofline_frac = (cell.bytes / bw) / st.median_s if bw else None


def describe_error(e: BaseException) -> str:
    """One line for a cell's reason: the exception type and the first line of its message."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return f"out of GPU memory: {msg[:300]}"
    return f"{type(e).__name__}: {msg[:300]}"


def why_skipped(backend: GemmBackend, autotune: str, device: torch.device) -> str | None:
    """The exact reason a (backend, autotune) pair cannot run here, or None."""
    avail = backend.availability(device)
    if not avail.ok:
        return avail.reason
    if autotune == "on" and not backend.tunable:
        return f"{backend.name} has no autotuner (its autotune=off row is the measurement)"
    return None


def run_group(cells: list[GemmCell], opts: GemmOptions, device: torch.device | None = None,
              on_cell: Callable[[GemmCell], None] | None = None) -> list[GemmCell]:
    """Run cells that share one backend and autotune setting, in this process."""
    device = device or default_device()
    done = on_cell or (lambda c: None)
    if not cells:
        return cells
    backend = get_backend(cells[0].backend)
    autotune = cells[0].autotune
    assert all(c.backend == backend.name and c.autotune == autotune for c in cells)

    skip_reason = why_skipped(backend, autotune, device)
    if skip_reason is not None:
        for c in cells:
            c.status, c.reason = "skipped", skip_reason
            done(c)
        return cells

    by_layer: dict[tuple, list[GemmCell]] = {}
    for c in cells:
        by_layer.setdefault((c.layer, c.n, c.k), []).append(c)
    for (layer, n, k), layer_cells in by_layer.items():
        try:
            weights = make_weights(n, k, seed_of(opts.seed, layer, n, k), device, opts.weight_std)
            prepared = backend.prepare(weights, autotune=(autotune == "on"))
        except BackendRefused as e:
            for c in layer_cells:
                c.status, c.reason = "skipped", str(e)
                done(c)
            continue
        except Exception as e:  # noqa: BLE001 - a bad layer must not sink the others
            for c in layer_cells:
                c.status, c.reason = "failed", f"prepare: {describe_error(e)}"
                done(c)
            continue
        for c in layer_cells:
            _run_cell(c, backend, weights, prepared, opts, device)
            done(c)
        del weights, prepared
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return cells


def _run_cell(c: GemmCell, backend: GemmBackend, weights: LayerWeights, prepared, opts: GemmOptions,
              device: torch.device) -> None:
    try:
        x = make_activations(c.m, c.k, seed_of(opts.seed, "x", c.m, c.k), device)
        x_gsf = nvfp4.global_scale_for(x)
        ref = reference(backend.math, weights, x, x_gsf)
        if c.autotune == "on":
            c.tuning = backend.fresh_tuning()
            backend.tune(prepared, x, x_gsf)
        out = backend.run(prepared, x, x_gsf)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        h = health_mod.check(out, ref, backend.tolerance)
        c.health = h.to_json()
        c.flops = 2 * c.m * c.n * c.k
        if not h.ok:
            c.status, c.reason = "failed", "; ".join(h.problems())
            return
        del out, ref
        timing = time_fn(lambda: backend.run(prepared, x, x_gsf), device,
                         samples=opts.samples, warmup=opts.warmup, cold_l2=opts.cold_l2)
        _finish_timed(c, backend, weights, timing)
    except BackendRefused as e:  # the library's own checks refused this shape
        c.status, c.reason = "skipped", str(e)
    except Exception as e:  # noqa: BLE001
        c.status, c.reason = "failed", describe_error(e)


def _skip_reason(c: GemmCell) -> str | None:
    return why_skipped(get_backend(c.backend), c.autotune, default_device())


def run(cells: list[GemmCell], opts: GemmOptions, log: Callable[[str], None] = lambda s: None,
        device: torch.device | None = None,
        on_cell: Callable[[GemmCell], None] = lambda c: None) -> list[GemmCell]:
    t0 = time.perf_counter()
    final = Progress("GEMM", len(cells), log).counting(on_cell)
    if opts.isolate:
        isolate.run_isolated("gemm", cells, dataclasses.asdict(opts), _skip_reason, log, final)
    else:
        for group in isolate.groups(cells):
            run_group(group, opts, device, on_cell=lambda c: (log(progress_line(c)), final(c)))
    log(f"{len(cells)} cells in {time.perf_counter() - t0:.1f} s")
    return cells


def progress_line(c: GemmCell) -> str:
    what = f"[{c.backend} autotune={c.autotune}] {c.layer} M={c.m}: {c.status}"
    if c.status == "ok":
        return f"{what} {c.median_s * 1e6:.1f} us"
    return f"{what} ({c.reason})"
