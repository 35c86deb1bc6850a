"""Timing engine: warm-up, CUDA-graph replays, L2 flush, statistics.

On a GPU every sample is one replay of a captured CUDA graph. In cold-L2 mode a read of a
2x-L2 buffer runs before each sample, so weights come from DRAM as they do in a real decode
step. The flush reads rather than writes: a written buffer leaves the L2 full of dirty lines
whose write-back lands inside the next timed kernel (on an H200 that added 1-8 us per call,
more to some backends than to others), while in decode the lines left behind by the previous
layers' weight reads are clean.

A cold sample is the GPU span of the callable's own kernels, first start to last end, read
from the profiler's CUDA activity records (CUPTI), as FlashInfer's benchmarks do. Timing
the replay between two CUDA events instead adds the GPU's launch latency (~2.7 us per
sample on an H200), a large share of a 10 us kernel, which a decode step's back-to-back
kernels do not pay; events remain the fallback where the activity records are missing. In
warm mode a graph holds several calls and the sample is their mean between events, which
hides launch gaps. Without a GPU the same interface times with ``time.perf_counter`` so
every caller also runs in CI.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Stats:
    n: int
    median_s: float
    ci99_s: tuple[float, float]
    mean_s: float
    cv: float  # standard deviation over mean


@dataclass(frozen=True)
class Timing:
    samples_s: list[float]
    method: str
    cold_l2: bool

    @property
    def stats(self) -> Stats:
        return summarize(self.samples_s)


def summarize(samples: list[float], confidence: float = 0.99) -> Stats:
    """Median, its distribution-free interval (asv_runner's own ``quantile_ci``, the one
    asv's statistics use), mean and CV. With too few samples for the confidence asv gives
    an infinite interval; the whole range is stored instead (JSON has no infinity)."""
    from asv_runner.statistics import quantile_ci
    if not samples:
        raise ValueError("no samples to summarize")
    xs = sorted(samples)
    _, (lo, hi) = quantile_ci(xs, 0.5, alpha_min=1.0 - confidence)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = xs[0], xs[-1]
    mean = statistics.fmean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return Stats(n=len(xs), median_s=statistics.median(xs), ci99_s=(lo, hi), mean_s=mean,
                 cv=sd / mean if mean > 0 else 0.0)


# asv's benchmark ``version`` per cell kind: asv never compares results of two versions (it
# greys them out in `asv compare` and leaves them out of its graphs), and neither does
# `nvfp4-bench compare`. One entry per GPU timing method, oldest first: when a method
# changes, append it (never edit or reorder), and the version moves on.
TIMING_METHODS = {
    "gemm": ("cuda-graph+events cold-L2", "cuda-graph+kernel-span cold-L2(read)"),
    "decode": ("cuda-graph per step + events",),
    "moe": ("cuda-graph+kernel-span cold-L2(read)",),
}


def timing_version(kind: str, method: str | None = None) -> str:
    """The asv version of ``kind``'s cells timed by ``method`` (default: today's)."""
    methods = TIMING_METHODS[kind]
    method = methods[-1] if method is None else method.split(",")[0]
    if method not in methods:
        raise ValueError(f"{kind} timing method {method!r} is not in TIMING_METHODS")
    return f"{methods.index(method) + 1}: {method}"


def _l2_flush_buffer(device: torch.device) -> torch.Tensor:
    props = torch.cuda.get_device_properties(device)
    l2 = getattr(props, "L2_cache_size", 0) or (64 << 20)
    return torch.zeros(2 * l2 // 4, dtype=torch.int32, device=device)


class _ReadFlush:
    """Evicts the L2 by reading (summing) a 2x-L2 buffer: the lines it leaves are clean."""

    def __init__(self, device: torch.device):
        self.buf = _l2_flush_buffer(device)
        self.sink = torch.zeros((), dtype=torch.int32, device=device)

    def __call__(self) -> None:
        torch.sum(self.buf, 0, dtype=torch.int32, out=self.sink)


@dataclass(frozen=True)
class GpuActivity:
    """One record of the profiler's CUDA activity: a kernel, memset or copy on the GPU."""

    name: str
    start_us: float
    end_us: float


def sample_spans(activity: list[GpuActivity], flush_names: list[str],
                 samples: int) -> list[float] | None:
    """Per-sample GPU spans (seconds) of a run of ``samples`` x (flush, callable).

    ``flush_names`` is what one flush launches, in order. The records must repeat that
    pattern: the flush's records, then the same list of the callable's records, once per
    sample; anything else (a record missing or extra) gives None, and the caller falls back
    to event timing rather than guess which record belongs to which sample.
    """
    acts = sorted(activity, key=lambda a: a.start_us)
    nf = len(flush_names)
    if samples <= 0 or nf == 0 or len(acts) % samples:
        return None
    per = len(acts) // samples
    if per <= nf:
        return None  # the callable launched nothing on the GPU
    spans, body_names = [], None
    for i in range(samples):
        chunk = acts[i * per:(i + 1) * per]
        if [a.name for a in chunk[:nf]] != flush_names:
            return None
        body = chunk[nf:]
        names = [a.name for a in body]
        if body_names is None:
            body_names = names
        elif names != body_names:
            return None
        spans.append((max(a.end_us for a in body) - body[0].start_us) * 1e-6)
    return spans


def _gpu_activity(run: Callable[[], object]) -> list[GpuActivity] | None:
    """``run()`` under the torch profiler: its CUDA activity, or None if none was recorded."""
    try:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        acts = [GpuActivity(e.name, e.time_range.start, e.time_range.end)
                for e in prof.events() if e.device_type == DeviceType.CUDA]
    except Exception:  # noqa: BLE001 - no CUPTI here: event timing instead
        return None
    return acts or None


def _kernel_spans(run: Callable[[], object], flush: Callable[[], object],
                  samples: int) -> list[float] | None:
    flush_only = _gpu_activity(flush)
    if not flush_only:
        return None
    flush_names = [a.name for a in sorted(flush_only, key=lambda a: a.start_us)]

    def all_samples() -> None:
        for _ in range(samples):
            flush()
            run()
    acts = _gpu_activity(all_samples)
    return sample_spans(acts, flush_names, samples) if acts else None


def time_gpu(fn: Callable[[], object], *, samples: int = 100, warmup: int = 10,
             cold_l2: bool = True, use_graph: bool = True,
             min_sample_s: float = 100e-6, kernel_clock: bool = True) -> Timing:
    """Time ``fn`` (which launches work on the current stream) on the GPU."""
    device = torch.device("cuda", torch.cuda.current_device())
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as graph capture wants
        for _ in range(max(warmup, 1)):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    # Estimate one call so warm mode can fold several calls into one sample.
    t0 = torch.cuda.Event(enable_timing=True)
    t1 = torch.cuda.Event(enable_timing=True)
    t0.record()
    fn()
    t1.record()
    t1.synchronize()
    one_call_s = max(t0.elapsed_time(t1) / 1e3, 1e-7)
    inner = 1 if cold_l2 else max(1, min(200, math.ceil(min_sample_s / one_call_s)))

    run: Callable[[], object]
    method = "cuda-events"
    if use_graph:
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(inner):
                    fn()
            run = graph.replay
            method = "cuda-graph"
        except Exception as exc:  # noqa: BLE001 - some kernels refuse capture; time them eagerly
            torch.cuda.synchronize()
            run = _repeat(fn, inner)
            method = f"cuda-events (graph capture failed: {type(exc).__name__})"
    else:
        run = _repeat(fn, inner)
    run()
    torch.cuda.synchronize()

    if cold_l2:
        flush = _ReadFlush(device)
        spans = _kernel_spans(run, flush, samples) if kernel_clock else None
        if spans is not None:
            return Timing(samples_s=spans, method=method + "+kernel-span cold-L2(read)",
                          cold_l2=True)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(samples)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(samples)]
    for i in range(samples):
        if cold_l2:
            flush()
        starts[i].record()
        run()
        ends[i].record()
    torch.cuda.synchronize()
    out = [s.elapsed_time(e) / 1e3 / inner for s, e in zip(starts, ends)]
    return Timing(samples_s=out, method=method + "+events" + (
        " cold-L2(read)" if cold_l2 else f" warm x{inner}"), cold_l2=cold_l2)


def _repeat(fn: Callable[[], object], inner: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(inner):
            fn()
    return run


def time_cpu(fn: Callable[[], object], *, samples: int = 20, warmup: int = 2) -> Timing:
    for _ in range(max(warmup, 0)):
        fn()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return Timing(samples_s=out, method="cpu-perf_counter", cold_l2=False)


def time_fn(fn: Callable[[], object], device: torch.device, *, samples: int, warmup: int,
            cold_l2: bool = True) -> Timing:
    if device.type == "cuda":
        return time_gpu(fn, samples=samples, warmup=warmup, cold_l2=cold_l2)
    return time_cpu(fn, samples=samples, warmup=warmup)


@dataclass
class KernelTime:
    """One kernel (GPU) or operator (CPU, self time) of a profiled callable, per call."""

    name: str
    ms_per_call: float
    launches_per_call: float


def kernel_breakdown(fn: Callable[[], object], device: torch.device,
                     reps: int = 5) -> list[KernelTime]:
    """Where ``fn``'s time goes: ``reps`` calls under the torch profiler, summed per kernel name
    (CUDA activity: kernels inside CUDA graphs are listed too) or per operator's self CPU time
    on the CPU; largest first. ``fn`` has run before (nothing left to compile or capture)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
    total_us: dict[str, float] = {}
    launches: dict[str, int] = {}
    for e in prof.events():
        if cuda and e.device_type == DeviceType.CUDA:
            t = e.device_time_total
        elif not cuda and e.device_type == DeviceType.CPU:
            t = e.self_cpu_time_total  # self time: nested operators are not counted twice
        else:
            continue
        total_us[e.name] = total_us.get(e.name, 0.0) + t
        launches[e.name] = launches.get(e.name, 0) + 1
    return sorted((KernelTime(n, t / reps / 1e3, launches[n] / reps) for n, t in total_us.items()),
                  key=lambda k: -k.ms_per_call)
