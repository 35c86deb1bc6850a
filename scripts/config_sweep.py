"""Chosen configs of the ``triton`` backend's small-M kernels, each forced, per layer and M.

    python scripts/config_sweep.py [--models qwen3.6-27b] [--m 1,16,32,64]
        [--record HOPPER-PEERS.json] [--configs FILE] [--stream-k 1,2,4]
        [--with KEY=V1,V2] [--call-only] [--classic-only] [--harness DIR] [--label NAME]
        [--out DIR]

What the tuner would compare, side by side in one process, as the performance log's
"each config forced" tables need: for every layer shape of the models and every M, each
config is launched through the backend's own small-M launch (``mma.sync`` or ``wgmma``
kernel, workspace, grid), checked against ``torch-dequant`` (finite, relative error under
1e-2, else ``failed`` and not timed), captured in a CUDA graph and timed by the harness's own
timer (a read of twice the L2 before each replay, median of 50; the tuner's timer).

Configs come from ``--record`` (the ``triton_kernel`` column of a ``hopper_peers.py``
record: what the tuner kept per shape and M) and from ``--configs`` (JSON lines
``{"kernel": "mma" | "wgmma", "kwargs": {...}, "num_warps": W, "maxnreg": R, "m": [..]}``;
``m`` optional: the Ms the line applies to). ``--stream-k`` adds, for each config, its
stream-K variants (``SPLIT_K`` 1, ``STREAM_K`` programs per SM); ``--with KEY=V1,V2`` adds,
for each config, its variants with that integer kernel option set to each value (e.g.
``SPLIT_K=2,4``, or an option under trial in the tree under test; a kernel that takes no
such option fails the row). ``--harness DIR`` imports the kernels from another checkout (an
A/B of two trees on one machine; its classic configs only under ``--classic-only``). An
``ACT_ORDERED`` config (activations read in MMA K order) is timed four times: as the backend
runs it (its reorder kernel, then the GEMM launched behind it with the backend's hand-off,
``triton_w4a16.ORDERED_HANDOFF_PDL``), alone on activations reordered beforehand (as a
kernel that writes them so would leave them), with the reorder as a torch copy
(``in_mma_k_order``) in the call, and behind the reorder kernel with the other hand-off (PDL
or stream order): what the programmatic launch costs or saves; ``--call-only`` times it as
the backend runs it only.
Writes ``config-sweep[-LABEL].{json,md}`` under ``--out`` after every row.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _harness_root() -> Path:
    """``--harness DIR`` must decide where ``harness`` is imported from before anything
    imports it."""
    for i, a in enumerate(sys.argv):
        if a == "--harness" and i + 1 < len(sys.argv):
            return Path(sys.argv[i + 1]).resolve()
        if a.startswith("--harness="):
            return Path(a.split("=", 1)[1]).resolve()
    return ROOT


sys.path.insert(0, str(_harness_root()))
sys.path.insert(1, str(ROOT / "scripts"))

import torch  # noqa: E402
import triton  # noqa: E402

from hopper_peers import parse_gpu_args, read_flush_us  # noqa: E402

from harness.backends import LayerWeights, get_backend  # noqa: E402
from harness.backends import triton_swap_ab, triton_w4a16, triton_wgmma  # noqa: E402
from harness.models.weights import synthetic_linear  # noqa: E402
from harness.records import atomic_write_text  # noqa: E402

KERNELS = {"mma": triton_swap_ab.swap_ab_kernel, "wgmma": triton_wgmma.wgmma_kernel}


def parse_kernel(choice: str) -> dict | None:
    """A ``triton_kernel`` entry of a hopper-peers record ("wgmma BLOCK_N: 128, ...,
    num_warps: 4, ...") -> a config line, or None for the plain kernels."""
    name, _, rest = choice.partition(" ")
    if name == "mma.sync":
        name, rest = "mma", rest.partition(" ")[2]
    if name not in KERNELS:
        return None
    kw = {}
    for part in rest.split(", "):
        key, _, value = part.partition(": ")
        kw[key] = {"True": True, "False": False, "None": None}.get(value, value)
        if isinstance(kw[key], str):
            kw[key] = int(value)
    meta = {k: kw.pop(k) for k in ("num_warps", "num_ctas", "num_stages", "maxnreg") if k in kw}
    if kw.get("OVERLAP") is False:  # records from before OVERLAP was withdrawn: the same tile
        del kw["OVERLAP"]
    return {"kernel": name, "kwargs": kw, "num_warps": meta["num_warps"],
            "maxnreg": meta.get("maxnreg")}


def read_configs(record: str | None, configs: str | None) -> tuple[dict, list[dict]]:
    """``--record`` and ``--configs`` -> ({(N, K, M): the config the tuner kept}, the config
    lines of the file)."""
    tuned: dict[tuple[int, int, int], dict] = {}
    if record:
        for r in json.loads(Path(record).read_text())["rows"]:
            line = parse_kernel(r.get("triton_kernel") or "")
            if line:
                tuned[(r["n"], r["k"], r["m"])] = line
    extra = []
    if configs:
        extra = [json.loads(t) for t in Path(configs).read_text().splitlines() if t.strip()]
    return tuned, extra


def lines_for(tuned: dict, extra: list[dict], n: int, k: int, m: int) -> list[dict]:
    """The configs to run for one shape and M: the tuned one, then the file's lines for M."""
    lines = [tuned[(n, k, m)]] if (n, k, m) in tuned else []
    return lines + [e for e in extra if "m" not in e or m in e["m"]]


def with_stream_k(line: dict, per_sm: list[int]) -> list[dict]:
    """The config line and its stream-K variants."""
    out = [line]
    for c in per_sm:
        kw = dict(line["kwargs"], SPLIT_K=1, STREAM_K=c)
        out.append(dict(line, kwargs=kw))
    return out


def parse_with(text: str) -> tuple[str, list[int]] | None:
    """``--with KEY=V1,V2`` -> (KEY, [V1, V2]); None for ''."""
    if not text:
        return None
    key, sep, values = text.partition("=")
    if not sep or not key.isidentifier() or not values:
        raise ValueError(f"--with takes KEY=V1,V2 (integers), got {text!r}")
    return key, [int(v) for v in values.split(",")]


def with_option(line: dict, option: tuple[str, list[int]] | None) -> list[dict]:
    """The config line and its variants with ``option``'s kernel keyword set to each value
    (a value the line has already is not repeated)."""
    if option is None:
        return [line]
    key, values = option
    kw = line["kwargs"]
    return [line] + [dict(line, kwargs=dict(kw, **{key: v})) for v in values
                     if kw.get(key) != v]


def label(line: dict) -> str:
    kw = line["kwargs"]
    keys = ("BLOCK_N", "BLOCK_K", "SPLIT_K", "STAGES", "PREFETCH", "ACT_RING", "ACT_ORDERED",
            "ASYNC", "STREAM_K", "CONSUMERS")
    # Options outside the known keys (``--with``) are named too, so variants stay apart.
    keys += tuple(k for k in kw if k not in keys and k not in ("COPY_REGS", "MMA_REGS"))
    parts = [f"{k}={kw[k]}" for k in keys if k in kw and kw[k] not in (False, None, 0)]
    cap = f" maxnreg={line['maxnreg']}" if line.get("maxnreg") else ""
    return f"{line['kernel']} {' '.join(parts)} w={line['num_warps']}{cap}"


def other_handoff(backend) -> bool | None:
    """The hand-off behind the reorder kernel that ``backend`` (``triton_w4a16`` of the tree
    under test) does not use, as ``reorder_then``'s ``pdl``: True where it hands off in stream
    order, False where by PDL (every tree before the switch); None on a tree whose
    ``reorder_then`` takes no ``pdl``, or that has none."""
    reorder_then = getattr(backend, "reorder_then", None)
    if reorder_then is None or "pdl" not in inspect.signature(reorder_then).parameters:
        return None
    return not getattr(backend, "ORDERED_HANDOFF_PDL", True)


def launch(line: dict, x, prepared, ordered=None, torch_reorder=False,
           pdl: bool | None = None) -> torch.Tensor:
    """One forced launch through the backend's own small-M launch path. An ``ACT_ORDERED``
    config reads the activations in MMA K order: ``ordered`` if given (reordered before, as
    by the kernel that writes them), else reordered in the call as the backend does it (its
    reorder kernel, the GEMM launched behind it: ``triton_w4a16.reorder_then``, with ``pdl``
    its hand-off, None: the backend's), or with ``torch_reorder`` (or on a tree without that
    kernel) by a torch copy."""
    m, k = x.shape
    reorder_then = getattr(triton_w4a16, "reorder_then", None)
    in_call = False
    if line["kwargs"].get("ACT_ORDERED"):
        if ordered is not None:
            x = ordered
        elif torch_reorder or reorder_then is None:
            x = triton_wgmma.in_mma_k_order(x)
        else:
            in_call = True
    words, scales = prepared["words"], prepared["scales"]
    n = words.shape[0]
    out = torch.empty((m, n), dtype=torch.bfloat16, device=x.device)
    ws, cnt = triton_w4a16._WORKSPACE.get(x.device, m, n)
    args = (x, words, scales, out, ws, cnt, prepared["epilogue"], m, n, k, x.stride(0),
            out.stride(0), triton_w4a16._m_bucket(m))
    config = triton.Config(dict(line["kwargs"]), num_warps=line["num_warps"], num_stages=1,
                           maxnreg=line.get("maxnreg"))
    block_b = (triton_w4a16._wgmma_block_b(m) if line["kernel"] == "wgmma"
               else triton_w4a16._block_b(m))
    kernel = triton_w4a16._fixed(KERNELS[line["kernel"]], config)
    if in_call:
        reorder_then(kernel, block_b, x, words, args, {}, **({} if pdl is None else {"pdl": pdl}))
    else:
        triton_w4a16._launch_swapped(kernel, block_b, x, words, args, {})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--record", help="a hopper_peers.py record: its tuned configs")
    ap.add_argument("--configs", help="JSON lines of configs")
    ap.add_argument("--stream-k", default="", help="programs per SM of stream-K variants")
    ap.add_argument("--with", dest="with_option", default="",
                    help="KEY=V1,V2: each config also with that kernel option at each value")
    ap.add_argument("--call-only", action="store_true",
                    help="time ordered configs as the backend runs them only")
    ap.add_argument("--classic-only", action="store_true",
                    help="leave out stream-K configs (a tree without them)")
    ap.add_argument("--harness", help="import the kernels from this checkout")
    ap.add_argument("--label", default="")
    args, shapes = parse_gpu_args(ap, models="qwen3.6-27b", m="1,16,32,64")
    dev = torch.device("cuda")
    ms = args.m
    per_sm = [int(v) for v in args.stream_k.split(",") if v]
    try:
        option = parse_with(args.with_option)
    except ValueError as e:
        ap.error(str(e))
    tuned, extra = read_configs(args.record, args.configs)
    gen = torch.Generator(device=dev).manual_seed(0)
    tri, deq = get_backend("triton"), get_backend("torch-dequant")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "config-sweep" + (f"-{args.label}" if args.label else "")
    rows: list[dict] = []
    other = other_handoff(triton_w4a16)
    doc = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
           "triton": triton.__version__, "harness": str(_harness_root()),
           "method": "each config forced, CUDA graph of one call, harness.measure.time_gpu "
                     "(median of 50, a read of twice the L2 before each replay, CUDA events)",
           "ordered_handoff_pdl": None if other is None else not other,
           "rows": rows}
    for (n, k), names in shapes.items():
        lw = LayerWeights(fp4=synthetic_linear(n, k, gen, dev).fp4)
        pt, pd = tri.prepare(lw), deq.prepare(lw)
        for m in ms:
            x = torch.randn(m, k, generator=gen, device=dev).to(torch.bfloat16)
            base = deq.run(pd, x, None).float()
            lines = lines_for(tuned, extra, n, k, m)
            todo = {label(v): v for line in lines for o in with_option(line, option)
                    for v in with_stream_k(o, per_sm)
                    if not (args.classic_only and v["kwargs"].get("STREAM_K"))}.values()
            for line in todo:
                row = {"layers": names, "n": n, "k": k, "m": m, "config": label(line),
                       "line": line}
                kw = line["kwargs"]
                block_b = (triton_w4a16._wgmma_block_b(m) if line["kernel"] == "wgmma"
                           else triton_w4a16._block_b(m))
                grid_ok = getattr(triton_w4a16, "_small_m_grid_ok", None)  # None: older tree
                if k % kw["BLOCK_K"] or (grid_ok and not grid_ok(kw, m, n, k, block_b,
                                                                 triton_w4a16._sms())):
                    continue  # what the tuner's pruner leaves out
                try:
                    got = launch(line, x, pt).float()
                    err = ((got - base).norm() / base.norm()).item()
                    row["rel_err"] = err
                    if not torch.isfinite(got).all() or not err < 1e-2:
                        row["failed"] = f"relative error {err:.3g} or non-finite output"
                    else:
                        row["us"] = read_flush_us(lambda: launch(line, x, pt))
                        if kw.get("ACT_ORDERED") and not args.call_only:
                            # The GEMM alone, x reordered beforehand
                            xo = triton_wgmma.in_mma_k_order(x)
                            row["us_x_ordered_before"] = read_flush_us(
                                lambda: launch(line, x, pt, xo))
                            if hasattr(triton_w4a16, "reorder_then"):  # and by a torch copy
                                row["us_torch_reorder"] = read_flush_us(
                                    lambda: launch(line, x, pt, torch_reorder=True))
                            if other is not None:
                                # The reorder kernel, then the GEMM with the other hand-off
                                # (PDL or stream order) than the backend's: what the
                                # programmatic launch behind it costs or saves.
                                row["us_reorder_pdl" if other else "us_reorder_no_pdl"] = (
                                    read_flush_us(lambda: launch(line, x, pt, pdl=other)))
                except Exception as e:  # a config that does not compile or launch
                    row["failed"] = f"{type(e).__name__}: {str(e)[:300]}"
                rows.append(row)
                print(json.dumps({k2: v for k2, v in row.items() if k2 not in ("layers", "line")}),
                      flush=True)
                write(out, stem, doc, complete=False)
    write(out, stem, doc, complete=True)
    print(markdown(doc))
    return 0


def write(out: Path, stem: str, doc: dict, complete: bool) -> None:
    doc["complete"] = complete
    atomic_write_text(out / f"{stem}.json", json.dumps(doc, indent=1))
    atomic_write_text(out / f"{stem}.md", markdown(doc))


def markdown(doc: dict) -> str:
    lines = [f"{doc['device']}, torch {doc['torch']}, triton {doc['triton']}, kernels from "
             f"{doc['harness']}; us, {doc['method']}", "",
             "| layers | N x K | M | config | us | rel. error |", "|---" * 6 + "|"]
    for r in doc["rows"]:
        us = f"{r['us']:.1f}" if "us" in r else f"failed: {r['failed']}"
        if "us_x_ordered_before" in r:
            us += f" ({r['us_x_ordered_before']:.1f} with x reordered before"
            if "us_torch_reorder" in r:
                us += f", {r['us_torch_reorder']:.1f} reordered by a torch copy"
            if "us_reorder_no_pdl" in r:
                us += f", {r['us_reorder_no_pdl']:.1f} behind the reorder kernel without PDL"
            if "us_reorder_pdl" in r:
                us += f", {r['us_reorder_pdl']:.1f} behind the reorder kernel with PDL"
            us += ")"
        err = f"{r['rel_err']:.2e}" if "rel_err" in r else "-"
        lines.append(f"| {', '.join(r['layers'])} | {r['n']} x {r['k']} | {r['m']} | "
                     f"{r['config']} | {us} | {err} |")
    if not doc.get("complete", True):
        lines += ["", "Incomplete: the run stopped before its last rows."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
