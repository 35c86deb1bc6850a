"""The ``triton`` backend's small-M kernels, each config forced, launched once for a profiler.

    ncu --clock-control none --profile-from-start off --nvtx [--section ...] -o REPORT \\
        python scripts/kernel_profile.py [--models qwen3.6-27b] [--m 1,64] \\
        [--record HOPPER-PEERS.json] [--configs FILE] [--layers gate_up_proj,o_proj] \\
        [--peers torch-fp8,torch-bf16] [--read-only] [--out DIR]
    ncu -i REPORT.ncu-rep --page raw --csv --print-nvtx-rename kernel > RAW.csv
    python scripts/kernel_profile.py --summary RAW.csv > SUMMARY.md

``config_sweep.py`` says how long a config takes; this says where the time goes. Per layer
shape and M, each config (the tuned ones of ``--record``, the lines of ``--configs``, as in
``config_sweep.py``) is launched once through the backend's own small-M launch, checked
against ``torch-dequant`` (a config over tolerance is left out of the profile, and says so),
then launched once more between ``cudaProfilerStart``/``Stop`` inside an NVTX range named
"LAYER M=M CONFIG", so that ``ncu --profile-from-start off --nvtx`` reports that launch alone
(with an ``ACT_ORDERED`` config, its reorder kernel too), compiled and warm, under the range's
name. ``--peers`` adds the harness's own backends on the same call (cuBLAS through torch),
``--read-only`` the plain read of the layer's NVFP4 bytes that ``hopper_peers.py`` times.
Writes ``kernel-profile.json`` (the launches in order, with their ranges) under ``--out``.
``--summary`` turns ncu's raw CSV of such a report (``--set full``) into one table row per
kernel: time, clock, the share of elapsed cycles its SMs were active (a grid's last partial
wave shows here), DRAM read rate, L2 hit rate, issue activity, warps per
scheduler and the three largest stall reasons (cycles per issued instruction).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from config_sweep import label, launch, lines_for, read_configs  # noqa: E402
from hopper_peers import parse_gpu_args, read_buffer, read_launch  # noqa: E402

from harness.backends import LayerWeights, get_backend  # noqa: E402
from harness.models import UnknownNameError  # noqa: E402
from harness.models.weights import synthetic_linear  # noqa: E402
from harness.records import atomic_write_text  # noqa: E402


def profiled(name: str, fn) -> None:
    """``fn`` once to compile and warm it, then once under the profiler in range ``name``."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    with torch.cuda.nvtx.range(name):
        fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def read_only(nbytes: int, dev: torch.device):
    """The read of ``hopper_peers.read_ceiling_us``'s most common best shape: 2 programs per
    SM of 4096 words, 8 warps."""
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    return read_launch(read_buffer(nbytes), 2 * sms, 4096, 8)[0]


# ncu --set full metrics of the summary: (column, metric, format).
SUMMARY = (
    ("grid", "launch__grid_size", "{:.0f}"),
    ("regs", "launch__registers_per_thread", "{:.0f}"),
    ("CTAs/SM by smem", "launch__occupancy_limit_shared_mem", "{:.0f}"),
    ("us", "gpu__time_duration.sum", "{:.1f}"),
    ("SM GHz", "sm__cycles_elapsed.avg.per_second", "{:.2f}"),
    ("DRAM read TB/s", "dram__bytes_read.sum.per_second", "{:.2f}"),
    ("L2 hit %", "lts__t_sector_hit_rate.pct", "{:.0f}"),
    ("issue active %", "smsp__issue_active.avg.pct_of_peak_sustained_active", "{:.0f}"),
    ("warps/scheduler", "smsp__warps_active.avg.per_cycle_active", "{:.1f}"),
)
STALL = "smsp__average_warps_issue_stalled_"


def summary(raw_csv: str) -> str:
    """ncu's ``--page raw --csv`` (``--print-nvtx-rename kernel``) -> a markdown table."""
    with open(raw_csv, newline="") as f:
        rows = list(csv.reader(f))
    head, data = rows[0], rows[2:]  # the second row holds the units
    col = {name: i for i, name in enumerate(head)}
    missing = [m for _, m, _ in SUMMARY if m not in col]
    if "Kernel Name" not in col or missing:
        raise SystemExit(f"{raw_csv}: not an ncu raw CSV of --set full (missing "
                         f"{', '.join(missing) or 'Kernel Name'})")
    stalls = [(name[len(STALL):-len("_per_issue_active.ratio")], i) for name, i in col.items()
              if name.startswith(STALL) and name.endswith("_per_issue_active.ratio")]

    def num(r, name):
        return float(r[col[name]].replace(",", ""))
    out = ["| launch | kernel | " + " | ".join(c for c, _, _ in SUMMARY)
           + " | SM active % of elapsed | top stalls (cycles per issue) |",
           "|---" * (len(SUMMARY) + 4) + "|"]
    for r in data:
        launch, _, kernel = r[col["Kernel Name"]].rpartition("/")
        active = 100 * num(r, "sm__cycles_active.avg") / num(r, "gpc__cycles_elapsed.max")
        top = sorted(((float(r[i]), name) for name, i in stalls if r[i]), reverse=True)[:3]
        out.append(f"| {launch} | {kernel[:40]} | "
                   + " | ".join(fmt.format(num(r, m)) for _, m, fmt in SUMMARY)
                   + f" | {active:.0f} | " + ", ".join(f"{n} {v:.2f}" for v, n in top) + " |")
    return "\n".join(out) + "\n"


def backends(text: str) -> list:
    """``--peers``: comma-separated harness backend names."""
    try:
        return [get_backend(name) for name in text.split(",") if name]
    except UnknownNameError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main() -> int:
    if "--summary" in sys.argv[1:2]:
        if len(sys.argv) != 3 or not Path(sys.argv[2]).is_file():
            print("usage: kernel_profile.py --summary RAW.csv (ncu's --page raw --csv output)",
                  file=sys.stderr)
            return 2
        print(summary(sys.argv[2]), end="")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--record", help="a hopper_peers.py record: its tuned configs")
    ap.add_argument("--configs", help="JSON lines of configs, as config_sweep.py reads")
    ap.add_argument("--layers", default="",
                    help="comma-separated layer names to keep (default: every layer)")
    ap.add_argument("--peers", default=[], type=backends,
                    help="comma-separated harness backends to add (e.g. torch-fp8)")
    ap.add_argument("--read-only", action="store_true",
                    help="add the plain read of each layer's NVFP4 bytes")
    args, shapes = parse_gpu_args(ap, models="qwen3.6-27b", m="1,64")
    keep = {v for v in args.layers.split(",") if v}
    if keep:
        shapes = {s: names for s, names in shapes.items()
                  if any(nm.split(":", 1)[1] in keep for nm in names)}
        if not shapes:
            ap.error(f"--layers {args.layers!r} matches no layer of --models")
    dev = torch.device("cuda")
    tuned, extra = read_configs(args.record, args.configs)
    gen = torch.Generator(device=dev).manual_seed(0)
    tri, deq = get_backend("triton"), get_backend("torch-dequant")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    launches: list[dict] = []
    doc = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
           "launches": launches}
    for (n, k), names in shapes.items():
        layer = names[0]
        lw = LayerWeights(fp4=synthetic_linear(n, k, gen, dev).fp4)
        pt, pd = tri.prepare(lw), deq.prepare(lw)
        if args.read_only:
            name = f"{layer} read-only {lw.fp4.nbytes()} bytes"
            profiled(name, read_only(lw.fp4.nbytes(), dev))
            launches.append({"range": name, "n": n, "k": k})
        for m in args.m:
            x = torch.randn(m, k, generator=gen, device=dev).to(torch.bfloat16)
            gsf = torch.tensor(448 * 6 / float(x.abs().amax()), device=dev)
            base = deq.run(pd, x, None).float()
            lines = lines_for(tuned, extra, n, k, m)
            for line in {label(v): v for v in lines}.values():
                name = f"{layer} M={m} {label(line)}"
                entry = {"range": name, "n": n, "k": k, "m": m, "line": line}
                try:
                    got = launch(line, x, pt).float()
                except Exception as e:  # a config that does not compile or launch
                    entry["failed"] = f"{type(e).__name__}: {str(e)[:300]}"
                else:
                    err = entry["rel_err"] = ((got - base).norm() / base.norm()).item()
                    if torch.isfinite(got).all() and err < 1e-2:
                        profiled(name, lambda: launch(line, x, pt))
                    else:
                        entry["failed"] = f"relative error {err:.3g} or non-finite output"
                launches.append(entry)
            for be in args.peers:
                p = be.prepare(lw)
                name = f"{layer} M={m} {be.name}"
                profiled(name, lambda: be.run(p, x, gsf))
                launches.append({"range": name, "n": n, "k": k, "m": m, "backend": be.name})
            atomic_write_text(out / "kernel-profile.json", json.dumps(doc, indent=1))
    for e in launches:
        print(e["range"], e.get("failed", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
