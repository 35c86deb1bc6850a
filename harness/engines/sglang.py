"""SGLang adapter: runs ``python -m sglang.bench_one_batch`` and reads its JSONL rows.

This is the literal reproduction of the claim on a machine with SGLang (an SM120 box):
one ``bench_one_batch`` process per (backend, autotune) with every batch size of the
group, ``--quantization modelopt_fp4``, ``--fp4-gemm-backend`` from our backend name and
``--disable-flashinfer-autotune`` for ``autotune off``. Each row becomes a decode cell;
``tokens_per_s`` is SGLang's ``median_decode_throughput`` (batch / median step latency).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Callable

from harness.models import MODELS
from harness.records import DecodeCell

# Our backend names -> SGLang's --fp4-gemm-backend values.
FP4_GEMM_BACKEND = {
    "flashinfer-cudnn": "flashinfer_cudnn",
    "flashinfer-cutlass": "flashinfer_cutlass",
    "flashinfer-cute-dsl": "flashinfer_cutedsl",
    "flashinfer-auto": "auto",
}
ROW_FIELDS = ("run_name", "batch_size", "input_len", "output_len", "prefill_latency",
              "prefill_throughput", "median_decode_latency", "median_decode_throughput",
              "total_latency", "overall_throughput")
# Test hook: a different module to run (a fake sglang in the tests).
MODULE_ENV = "NVFP4_BENCH_SGLANG_MODULE"


def available() -> str | None:
    """None when SGLang can run here, else the reason."""
    if importlib.util.find_spec("sglang") is None:
        return "sglang is not importable in this Python (pip install 'sglang[all]' on the GPU box)"
    return None


def backend_arg(backend: str) -> str | None:
    return FP4_GEMM_BACKEND.get(backend)


def model_path(model: str, checkpoint: str | None) -> str:
    if checkpoint:
        return checkpoint
    cfg = MODELS.get(model)
    if cfg is not None and cfg.hf_id:
        return cfg.hf_id
    return model  # a path or hub id given directly


def build_command(model_path: str, backend: str, autotune: str, batches: list[int],
                  input_len: int, output_len: int, result_file: str,
                  python: str | None = None, extra: list[str] | None = None) -> list[str]:
    fp4 = backend_arg(backend)
    if fp4 is None:
        raise ValueError(f"SGLang has no --fp4-gemm-backend for {backend!r}; "
                         f"valid: {', '.join(FP4_GEMM_BACKEND)}")
    module = os.environ.get(MODULE_ENV, "sglang.bench_one_batch")
    cmd = [python or sys.executable, "-m", module, "--model-path", model_path,
           "--quantization", "modelopt_fp4", "--fp4-gemm-backend", fp4,
           "--batch-size", *map(str, batches), "--input-len", str(input_len),
           "--output-len", str(output_len), "--run-name", f"nvfp4-bench-{backend}-{autotune}",
           "--result-filename", result_file]
    if autotune == "off":
        cmd.append("--disable-flashinfer-autotune")
    return cmd + list(extra or [])


def parse_rows(path: str | Path) -> list[dict]:
    rows = []
    text = Path(path).read_text() if Path(path).exists() else ""
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
        missing = [f for f in ("batch_size", "input_len", "output_len", "median_decode_latency",
                               "median_decode_throughput") if f not in row]
        if missing:
            raise ValueError(f"{path}: line {i + 1} lacks {', '.join(missing)}")
        rows.append(row)
    return rows


def fill_cell(c: DecodeCell, row: dict) -> None:
    lat = float(row["median_decode_latency"])
    tput = float(row["median_decode_throughput"])
    if not (lat > 0 and tput > 0) or lat != lat or tput != tput:
        c.status, c.reason = "failed", f"sglang reported latency {lat} and throughput {tput}"
        return
    c.status, c.reason = "ok", ""
    c.median_step_s = lat
    c.tokens_per_s = tput
    c.prefill_s = float(row["prefill_latency"]) if row.get("prefill_latency") is not None else None
    c.timing_method = "sglang.bench_one_batch median decode latency"
    c.health = {"source": "sglang", "run_name": row.get("run_name")}


def run(cells: list[DecodeCell], checkpoint: str | None = None,
        log: Callable[[str], None] = lambda s: None,
        on_cell: Callable[[DecodeCell], None] = lambda c: None,
        timeout_s: float | None = None) -> list[DecodeCell]:
    reason = available()
    groups: dict[tuple, list[DecodeCell]] = {}
    for c in cells:
        groups.setdefault((c.model, c.backend, c.autotune, c.input_len, c.output_len), []).append(c)
    for (model, backend, autotune, input_len, output_len), group in groups.items():
        why = reason or (None if backend_arg(backend) else
                         f"SGLang has no --fp4-gemm-backend for {backend} "
                         f"(it takes {', '.join(FP4_GEMM_BACKEND.values())})")
        if why:
            for c in group:
                c.status, c.reason = "skipped", why
                on_cell(c)
            continue
        with tempfile.TemporaryDirectory(prefix="nvfp4-sglang-") as tmp:
            result = str(Path(tmp) / "result.jsonl")
            cmd = build_command(model_path(model, checkpoint), backend, autotune,
                                sorted({c.batch for c in group}), input_len, output_len, result)
            log("$ " + " ".join(cmd))
            tail: deque[str] = deque(maxlen=20)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
                tail.extend((proc.stdout + proc.stderr).splitlines())
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            try:
                rows = parse_rows(result)
            except ValueError as e:
                rows, rc = [], f"{rc}; {e}"
        by_batch = {int(r["batch_size"]): r for r in rows}
        for c in group:
            row = by_batch.get(c.batch)
            if row is not None:
                fill_cell(c, row)
            else:
                last = next((line for line in reversed(tail) if line.strip()), "no output")
                c.status = "failed"
                c.reason = f"sglang.bench_one_batch exited with {rc} and no row for batch {c.batch} (last output: {last[:300]})"
            on_cell(c)
            log(f"[sglang {backend} autotune={autotune}] batch={c.batch}: {c.status} "
                f"{c.tokens_per_s or c.reason}")
    return cells
