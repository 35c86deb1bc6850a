"""NVFP4 `triton` against what a Hopper user runs instead, per decode-size GEMM, one process.

    python scripts/hopper_peers.py [--models qwen3.6-27b,qwen3-32b] [--m 1,16,64] [--out DIR]

Per layer shape of the models and per M, every path is called once eagerly (the triton
backend tunes there), captured in a CUDA graph, and its replays timed by
``triton.testing.do_bench`` (median; do_bench flushes the L2 between replays): ``triton``
(autotune on), ``torch-bf16`` (cuBLAS), ``torch-fp8`` and FlashInfer's ``mm_fp8``
(``flashinfer-fp8-cublas`` / ``-auto``, tuned by FlashInfer's autotuner), each through the
harness's own backend (FP8 paths include their activation quantization, as a user's call
does); each FP8 GEMM also alone, on an activation already in e4m3. Also, per
shape, the time of a plain read-only kernel of the layer's NVFP4 bytes (best of 12 launch
shapes, same method; on the H200 it stays well above the read ceilings of
docs/PERF.md, so it is a lower bar, not a ceiling) and, at M=1, the eager call overhead of
``triton``: wall time per call of back-to-back eager calls minus the hot-L2 graph replay
time, with the cached launches (``harness.backends.triton_launch``) on and off, and the host
time per call up to the last enqueue (beside that of allocating the output alone), which
decides the overhead wherever it exceeds the kernel time.
Every path and the read-only kernel are also timed by the harness's own method (the
backend's tuner's and the cells'; ``harness.measure.time_gpu``): a read of twice the L2
before each replay instead of do_bench's write. do_bench's flush leaves the L2 full of dirty
lines whose write-back to DRAM lands in the timed kernel; on the H200 that added up to 30% to
memory-bound kernels and reordered configs (docs/PERF.md), so both columns are kept.
Writes ``hopper-peers.json`` and ``hopper-peers.md`` under ``--out``, again after every row
(``"complete": false`` until the last), so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.backends import LayerWeights, get_backend  # noqa: E402
from harness.backends import flashinfer_lib, fp8, triton_launch, triton_w4a16  # noqa: E402
from harness.gemm import why_skipped  # noqa: E402
from harness.hardware import copy_bandwidth  # noqa: E402
from harness.measure import time_gpu  # noqa: E402
from harness.models import MODELS, UnknownNameError, get_model  # noqa: E402
from harness.models.weights import synthetic_linear  # noqa: E402
from harness.records import atomic_write_text  # noqa: E402

PEERS = ("torch-bf16", "torch-fp8", "flashinfer-fp8-cublas", "flashinfer-fp8-auto")


def graph_of(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()
    return g


def cold_us(fn) -> float:
    g = graph_of(fn)
    return float(triton.testing.do_bench(g.replay, warmup=25, rep=200)) * 1e3


def read_flush_us(fn) -> float:
    """The harness's timer, as the triton backend's tuner calls it (CUDA graph, a read
    flush of the L2 before each replay, CUDA events), median of 50 replays."""
    return statistics.median(time_gpu(fn, samples=50, warmup=3, cold_l2=True,
                                      kernel_clock=False).samples_s) * 1e6


def hot_us(fn, calls: int = 200) -> float:
    g = graph_of(fn)
    for _ in range(10):
        g.replay()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(calls):
        g.replay()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) * 1e3 / calls


def eager_us(fn, calls: int = 300) -> tuple[float, float]:
    """Back-to-back eager calls -> (wall time per call until the GPU is done, host time per
    call up to the last enqueue), each the best of five loops (the host is noisy). Where the
    host time exceeds the kernel time the GPU waits on the host."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    wall = host = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        host = min(host, (t1 - t0) * 1e6 / calls)
        wall = min(wall, (t2 - t0) * 1e6 / calls)
    return wall, host


@triton.jit
def _xor(a, b):
    return a ^ b


@triton.jit
def _read(ptr, out, n, per_prog, BLOCK: tl.constexpr):
    """Reads its share of ``ptr`` (XOR-reduced, so nothing is skipped) and writes one word."""
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    start = pid * per_prog
    for off in range(start, start + per_prog, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        acc ^= tl.load(ptr + idx, mask=idx < n, other=0)
    tl.store(out + pid, tl.reduce(acc, 0, _xor))


def read_buffer(nbytes: int) -> torch.Tensor:
    """``nbytes`` of random words on the GPU, for the read-only kernel."""
    return torch.randint(-2**31, 2**31 - 1, (nbytes // 4,), dtype=torch.int32, device="cuda")


def read_launch(buf: torch.Tensor, programs: int, block: int, warps: int):
    """The read-only kernel over ``buf`` in about ``programs`` programs of whole ``block``s
    -> (a call that launches it, the programs it launches)."""
    n = buf.numel()
    per = triton.cdiv(triton.cdiv(n, programs), block) * block
    programs = triton.cdiv(n, per)
    out = torch.empty(programs, dtype=torch.int32, device=buf.device)
    return (lambda: _read[(programs,)](buf, out, n, per, BLOCK=block, num_warps=warps)), programs


def read_ceiling_us(nbytes: int, timer=cold_us) -> tuple[float, str]:
    buf = read_buffer(nbytes)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    best, how = math.inf, ""
    for mult in (1, 2, 4, 8):
        for block, warps in ((1024, 4), (2048, 8), (4096, 8)):
            call, progs = read_launch(buf, sms * mult, block, warps)
            t = timer(call)
            if t < best:
                best, how = t, f"{progs} programs x {block} words, {warps} warps"
    return best, how


def batch_sizes(text: str) -> list[int]:
    """``--m``: comma-separated GEMM row counts, each at least 1."""
    try:
        ms = [int(v) for v in text.split(",")]
    except ValueError:
        ms = []
    if not ms or min(ms) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas (e.g. 1,16,64), got {text!r}")
    return ms


def parse_shape_args(ap: argparse.ArgumentParser, models: str, m: str, argv=None
                     ) -> tuple[argparse.Namespace, dict[tuple[int, int], list[str]]]:
    """Adds ``--models`` and ``--m`` to ``ap``, parses ``argv`` -> (arguments,
    ``layer_shapes`` of ``--models``). Exits 2 on a bad value, with the valid choices."""
    ap.add_argument("--models", default=models,
                    help=f"comma-separated, of: {', '.join(MODELS)} (default {models})")
    ap.add_argument("--m", default=batch_sizes(m), type=batch_sizes,
                    help=f"comma-separated GEMM M (default {m})")
    args = ap.parse_args(argv)
    try:
        shapes = layer_shapes(args.models)
    except UnknownNameError as e:
        ap.error(str(e))
    return args, shapes


def parse_gpu_args(ap: argparse.ArgumentParser, models: str,
                   m: str) -> tuple[argparse.Namespace, dict[tuple[int, int], list[str]]]:
    """Adds the arguments this script and ``config_sweep.py`` share (``--models``, ``--m``,
    ``--out``) to ``ap``, parses them -> (arguments, ``layer_shapes`` of ``--models``).
    Exits 2 on a bad value (with the valid choices) or on a machine without a GPU."""
    ap.add_argument("--out", default=os.environ.get("OUT", "."),
                    help="where the records go (default $OUT, else .)")
    args, shapes = parse_shape_args(ap, models, m)
    if not torch.cuda.is_available():
        print(f"{ap.prog}: needs an NVIDIA GPU; torch sees none", file=sys.stderr)
        raise SystemExit(2)
    return args, shapes


def layer_shapes(models: str) -> dict[tuple[int, int], list[str]]:
    """(N, K) -> the "model:layer" names of that GEMM shape, over comma-separated models."""
    shapes: dict[tuple[int, int], list[str]] = {}
    for name in models.split(","):
        for s in get_model(name).linear_layers():
            shapes.setdefault((s.n, s.k), []).append(f"{name}:{s.name}")
    return shapes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args, shapes = parse_gpu_args(ap, models="qwen3.6-27b,qwen3-32b", m="1,16,64")
    dev = torch.device("cuda")
    ms = args.m
    gen = torch.Generator(device=dev).manual_seed(0)
    reasons = {p: why_skipped(get_backend(p), "on" if "flashinfer" in p else "off", dev)
               for p in PEERS}
    peers = [p for p in PEERS if reasons[p] is None]
    skipped = {p: why for p, why in reasons.items() if why is not None}
    rows = []
    bw = copy_bandwidth()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
           "triton": triton.__version__, "copy_bandwidth_Bps": bw, "peers_skipped": skipped,
           "rows": rows, "method": "CUDA graph of one call, replays timed by "
                                   "triton.testing.do_bench (median, L2 flushed between replays)",
           "method_read_flush": "the same graph timed by harness.measure.time_gpu (median of "
                                "50, a read of twice the L2 before each replay, CUDA events)"}
    for (n, k), names in shapes.items():
        lw = LayerWeights(fp4=synthetic_linear(n, k, gen, dev).fp4)
        nbytes = lw.fp4.nbytes()
        ceiling, how = read_ceiling_us(nbytes)
        ceiling_rf, _ = read_ceiling_us(nbytes, read_flush_us)
        prepared = {}
        for b in ("triton", *peers):
            be = get_backend(b)
            autotune = be.tunable
            prepared[b] = (be, be.prepare(lw, autotune=autotune), autotune)
        for m in ms:
            x = torch.randn(m, k, generator=gen, device=dev).to(torch.bfloat16)
            gsf = torch.tensor(448 * 6 / float(x.abs().amax()), device=dev)
            row = {"layers": names, "n": n, "k": k, "m": m, "nvfp4_bytes": nbytes,
                   "read_ceiling_us": ceiling, "read_ceiling_kernel": how, "us": {},
                   "read_ceiling_read_flush_us": ceiling_rf, "us_read_flush": {}}
            for b, (be, p, autotune) in prepared.items():
                if autotune:
                    be.tune(p, x, gsf)
                row["us"][b] = cold_us(lambda: be.run(p, x, gsf))
                row["us_read_flush"][b] = read_flush_us(lambda: be.run(p, x, gsf))
                alone = gemm_alone(be, p, x, gsf)
                if alone is not None:
                    row.setdefault("gemm_alone_us", {})[b] = cold_us(alone)
                    row.setdefault("gemm_alone_read_flush_us", {})[b] = read_flush_us(alone)
            if m == 1:
                be, p, _ = prepared["triton"]

                def call():
                    return be.run(p, x, gsf)
                hot = hot_us(call)
                over, host = {}, {}
                for mode in ("1", "0"):
                    os.environ[triton_launch.FAST_LAUNCH_ENV] = mode
                    key = "cached" if mode == "1" else "triton"
                    wall, host[key] = eager_us(call)
                    over[key] = wall - hot
                os.environ.pop(triton_launch.FAST_LAUNCH_ENV, None)
                # The floor of any call that returns a new tensor: allocating it.
                _, host["torch.empty"] = eager_us(
                    lambda: torch.empty((m, n), dtype=torch.bfloat16, device=dev))
                row["triton_hot_us"] = hot
                row["eager_overhead_us"] = over
                row["host_us"] = host
            row["triton_kernel"] = triton_w4a16.tuned_choice(n, k, m)
            paths = triton_w4a16.path_times(n, k, m)
            if paths is not None:  # why that kernel: each small-M path as the chooser timed it
                row["triton_path_us"] = {name: t * 1e6 for name, t in paths.items()}
            t = row["us"]["triton"]
            row["triton_read_ceiling_frac"] = ceiling / t
            row["triton_copy_bw_frac"] = (nbytes / bw) / (t * 1e-6) if bw else None
            rows.append(row)
            print(json.dumps({k2: v for k2, v in row.items() if k2 != "layers"}), flush=True)
            write(out, doc, complete=False)  # a kill or time limit keeps the finished rows
    write(out, doc, complete=True)
    print(markdown(doc))
    return 0


def gemm_alone(be, prepared, x, gsf):
    """A call of an FP8 peer's GEMM alone, on ``x`` quantized to e4m3 beforehand (as by a
    previous kernel that writes FP8), or None for a path without one: FlashInfer's
    ``mm_fp8`` on its own arguments, torch's ``_scaled_mm`` (so the table keeps an FP8 GEMM
    alone where FlashInfer is not installed)."""
    if hasattr(be, "arguments"):
        fi_args, fi_kw = be.arguments(prepared, x, gsf)
        fi = flashinfer_lib.module()
        return lambda: flashinfer_lib.call(fi, be.api, *fi_args, **fi_kw)
    if hasattr(be, "gemm_alone"):
        a_scale = fp8.activation_scale(gsf)
        a8 = fp8.quantize(x, a_scale)
        return lambda: be.gemm_alone(prepared, a8, a_scale)
    return None


def write(out: Path, doc: dict, complete: bool) -> None:
    """Both files, each replaced atomically; ``complete`` false while rows are missing."""
    doc["complete"] = complete
    atomic_write_text(out / "hopper-peers.json", json.dumps(doc, indent=1))
    atomic_write_text(out / "hopper-peers.md", markdown(doc))


def geomeans(rows: list, peers: list, alone: list, key: str, alone_key: str) -> list[str]:
    """One line per M: geomean and minimum of peer / triton over the rows, the times read
    from ``row[key]`` (and FlashInfer's GEMM alone from ``row[alone_key]``)."""
    lines = []
    for m in sorted({r["m"] for r in rows}):
        mine = [r for r in rows if r["m"] == m]
        parts = []
        series = [(c, [r[key][c] / r[key]["triton"] for r in mine]) for c in peers]
        series += [(f"{c} GEMM alone", [r[alone_key][c] / r[key]["triton"] for r in mine])
                   for c in alone if all(c in r.get(alone_key, {}) for r in mine)]
        for label, ratios in series:
            g = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
            parts.append(f"{label} x{g:.2f} (min x{min(ratios):.2f})")
        lines.append(f"- M={m}: " + ", ".join(parts))
    return lines


def markdown(doc: dict) -> str:
    rows = doc["rows"]
    cols = ["triton", *[p for p in PEERS if rows and p in rows[0]["us"]]]
    lines = [f"{doc['device']}, torch {doc['torch']}, triton {doc.get('triton')}; us, "
             f"{doc['method']}", "",
             "| layers | N x K | M | " + " | ".join(cols)
             + " | read-only kernel (this script's; not the best read) | it / triton |",
             "|---" * (len(cols) + 5) + "|"]
    for r in rows:
        us = " | ".join(f"{r['us'][c]:.1f}" for c in cols)
        lines.append(f"| {', '.join(r['layers'])} | {r['n']} x {r['k']} | {r['m']} | {us} | "
                     f"{r['read_ceiling_us']:.1f} | {r['triton_read_ceiling_frac']:.0%} |")
    alone = sorted({b for r in rows for b in r.get("gemm_alone_us", {})})
    if alone:
        lines += ["", "FP8's GEMM alone (FlashInfer's `mm_fp8`, torch's `_scaled_mm`; the "
                  "activation already in e4m3, as from a fused quantization in the previous "
                  "kernel), us:", "",
                  "| layers | M | triton | " + " | ".join(alone) + " |",
                  "|---" * (len(alone) + 3) + "|"]
        for r in rows:
            ga = r.get("gemm_alone_us", {})
            lines.append(f"| {', '.join(r['layers'])} | {r['m']} | {r['us']['triton']:.1f} | "
                         + " | ".join(f"{ga[b]:.1f}" if b in ga else "-" for b in alone) + " |")
    lines += ["", "Geomean of peer / triton per M (> 1: triton faster):", ""]
    lines += geomeans(rows, cols[1:], alone, "us", "gemm_alone_us")
    timed = [r for r in rows if r.get("us_read_flush")]
    if timed:
        lines += ["", f"The same paths, us, {doc['method_read_flush']}:", "",
                  "| layers | M | " + " | ".join(cols + [f"{c} GEMM alone" for c in alone])
                  + " | read-only kernel | it / triton |",
                  "|---" * (len(cols) + len(alone) + 4) + "|"]
        for r in timed:
            ga = r.get("gemm_alone_read_flush_us", {})
            us = " | ".join([f"{r['us_read_flush'][c]:.1f}" for c in cols]
                            + [f"{ga[c]:.1f}" if c in ga else "-" for c in alone])
            frac = r["read_ceiling_read_flush_us"] / r["us_read_flush"]["triton"]
            lines.append(f"| {', '.join(r['layers'])} | {r['m']} | {us} | "
                         f"{r['read_ceiling_read_flush_us']:.1f} | {frac:.0%} |")
        lines += ["", "Geomean of peer / triton per M by this timer:", ""]
        lines += geomeans(timed, cols[1:], alone, "us_read_flush", "gemm_alone_read_flush_us")
    eager = [r for r in rows if "eager_overhead_us" in r]
    if eager:
        lines += ["", "Eager call overhead at M=1 (us over the hot kernel time), and the host "
                  "time per call (us, up to the last enqueue; torch.empty: allocating the "
                  "output alone):", "",
                  "| layers | hot kernel | cached launch | Triton launch | host, cached | "
                  "host, Triton | host, torch.empty |", "|---" * 7 + "|"]
        for r in eager:
            o, h = r["eager_overhead_us"], r.get("host_us", {})
            host = " | ".join(f"{h[c]:.1f}" if c in h else "-"
                              for c in ("cached", "triton", "torch.empty"))
            lines.append(f"| {', '.join(r['layers'])} | {r['triton_hot_us']:.1f} | "
                         f"{o['cached']:.1f} | {o['triton']:.1f} | {host} |")
    chosen = [r for r in rows if r.get("triton_kernel")]
    if chosen:
        lines += ["", "What the tuned triton backend runs (and, where it chose among the "
                  "small-M paths, each path's time as the chooser's timer saw it, us):", "",
                  "| N x K | M | kernel and config | paths |", "|---|---|---|---|"]
        lines += [f"| {r['n']} x {r['k']} | {r['m']} | {r['triton_kernel']} | "
                  + (", ".join(f"{name} {t:.1f}" for name, t in r["triton_path_us"].items())
                     if r.get("triton_path_us") else "-") + " |" for r in chosen]
    if not doc.get("complete", True):
        lines += ["", "Incomplete: the run stopped before its last rows."]
    if doc["peers_skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in doc["peers_skipped"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
