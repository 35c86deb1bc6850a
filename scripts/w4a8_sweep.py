"""Every config of the ``triton-w4a8`` tuning space, timed per layer shape and M, beside
FP8's GEMM alone (``torch._scaled_mm``, cuBLAS; the activation already in e4m3), bf16
cuBLAS and the ``triton-w4a8`` activation quantization alone. The fastest config is timed
again with its block scales read byte by byte (``SCALE_WORDS`` off, as before the scales were
read in words), and above M = 64 the ``triton`` backend's ``tl.dot`` path (its untuned
config and 128 x 128 tiles) both ways too.

    python scripts/w4a8_sweep.py [--models qwen3.6-27b] [--m 32,64,128,256] [--out DIR]

Timer: the harness's (``harness.measure.time_gpu``: CUDA graph of one call, a read of twice
the L2 before each replay, median). Each row also holds the fastest config's relative error
against the exact W4A8 reference. Writes ``w4a8-sweep.json`` under ``--out`` after every row
(``"complete": false`` until the last), so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hopper_peers import parse_gpu_args, read_flush_us  # noqa: E402

from harness.backends import LayerWeights, fp8, get_backend, triton_w4a8, triton_w4a16  # noqa: E402
from harness.gemm import reference  # noqa: E402
from harness.models.weights import synthetic_linear  # noqa: E402
from harness.records import atomic_write_text  # noqa: E402


def config_dict(c: triton.Config) -> dict:
    return {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args, shapes = parse_gpu_args(ap, models="qwen3.6-27b", m="32,64,128,256")
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    doc = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
           "triton": triton.__version__, "rows": rows,
           "method": "harness.measure.time_gpu: CUDA graph of one call, a read of twice the "
                     "L2 before each replay, median of 50"}
    b8, torch_fp8 = get_backend("triton-w4a8"), get_backend("torch-fp8")
    space = triton_w4a8._w4a8_space()
    for (n, k), names in shapes.items():
        lw = LayerWeights(fp4=synthetic_linear(n, k, gen, dev).fp4)
        p8 = b8.prepare(lw)
        pf = torch_fp8.prepare(lw)
        w16 = lw.unquantized().to(torch.bfloat16)
        for m in args.m:
            x = torch.randn(m, k, generator=gen, device=dev).to(torch.bfloat16)
            gsf = torch.tensor(448 * 6 / float(x.abs().amax()), device=dev)
            a8 = triton_w4a8.quantize_activations(x, gsf)
            a_scale = fp8.activation_scale(gsf)
            row = {"layers": names, "n": n, "k": k, "m": m, "configs": []}
            row["fp8_alone_us"] = read_flush_us(lambda: torch_fp8.gemm_alone(pf, a8, a_scale))
            row["bf16_us"] = read_flush_us(lambda: x @ w16.T)
            row["quantize_us"] = read_flush_us(lambda: triton_w4a8.quantize_activations(x, gsf))
            kept = triton_w4a8._prune_w4a8(space, {"M": m, "N": n, "K": k})
            for c in kept:
                conf = config_dict(c)
                try:
                    t = read_flush_us(lambda: triton_w4a8.w4a8_gemm(a8, gsf, p8, conf))
                except Exception as e:  # noqa: BLE001 - out of resources etc.: recorded
                    row["configs"].append({"config": conf, "error": f"{type(e).__name__}: {e}"})
                    continue
                row["configs"].append({"config": conf, "us": t})
            timed = [c for c in row["configs"] if "us" in c]
            if not timed:
                rows.append(row)
                print(json.dumps({"n": n, "k": k, "m": m, "errors": row["configs"][:2]}),
                      flush=True)
                continue
            best = min(timed, key=lambda c: c["us"])
            row["best"] = best
            got = triton_w4a8.w4a8_gemm(a8, gsf, p8, best["config"]).float()
            ref = reference("w4a8", lw, x, gsf)
            row["rel_err"] = float((got - ref).norm() / ref.norm())
            row["call_us"] = read_flush_us(
                lambda: triton_w4a8.w4a8_gemm(triton_w4a8.quantize_activations(x, gsf), gsf,
                                              p8, best["config"]))
            by_byte = {**best["config"], "SCALE_WORDS": False}
            row["best_bytes_us"] = read_flush_us(
                lambda: triton_w4a8.w4a8_gemm(a8, gsf, p8, by_byte))
            if m > 64:
                row["w4a16_gemm_us"] = {}
                pt = get_backend("triton").prepare(lw)
                for tile in (64, 128):
                    for words in (True, False):
                        conf = {"BLOCK_M": tile, "BLOCK_N": tile, "BLOCK_K": 128, "SPLIT_K": 1,
                                "num_warps": 4, "num_stages": 3, "SCALE_WORDS": words}
                        row["w4a16_gemm_us"][f"{tile}x{tile} words={words}"] = read_flush_us(
                            lambda: triton_w4a16.w4a16_matmul(
                                x, pt["words"], pt["scales"], pt["epilogue"], autotune=False,
                                config=conf))
            rows.append(row)
            print(json.dumps({"n": n, "k": k, "m": m, "fp8_alone": round(row["fp8_alone_us"], 1),
                              "bf16": round(row["bf16_us"], 1),
                              "quant": round(row["quantize_us"], 1),
                              "w4a8": round(best["us"], 1), "call": round(row["call_us"], 1),
                              "best": best["config"], "err": round(row["rel_err"], 4),
                              "n_configs": len(timed),
                              "bytes": round(row["best_bytes_us"], 1),
                              "w4a16": {c: round(t, 1)
                                        for c, t in row.get("w4a16_gemm_us", {}).items()}}),
                  flush=True)
            doc["complete"] = False
            atomic_write_text(out / "w4a8-sweep.json", json.dumps(doc, indent=1))
    doc["complete"] = True
    atomic_write_text(out / "w4a8-sweep.json", json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
