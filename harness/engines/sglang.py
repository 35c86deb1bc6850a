"""SGLang adapter: runs SGLang's one-batch benchmark and reads its JSONL rows.

The module is ``sglang.benchmark.one_batch`` (SGLang 0.5.21 and newer) or
``sglang.bench_one_batch`` (up to 0.5.20), whichever the installed SGLang has: one process per
(backend, autotune) with every batch size of the group, ``--quantization modelopt_fp4``,
``--fp4-gemm-backend`` from our backend name and ``--disable-flashinfer-autotune`` for
``autotune off``. Each row becomes a decode cell; ``tokens_per_s`` is SGLang's
``median_decode_throughput`` (batch / median step latency). Every cell keeps the SGLang
version, the module and the whole command (``engine_info``).

Tuning caches: SGLang keeps FlashInfer's tuned tactics on disk under ``SGLANG_CACHE_DIR`` and
reuses them (``SGLANG_FLASHINFER_AUTOTUNE_CACHE``, on by default), so a second ``autotune on``
run would inherit the first one's tactics. Each process here gets a fresh, empty
``SGLANG_CACHE_DIR`` and cache reuse off: ``on`` tunes from nothing, ``off`` has nothing to
reuse. SGLang tunes FP4 GEMMs only for ``flashinfer_cutlass`` and ``flashinfer_cutedsl``
(``should_run_flashinfer_autotune``, 0.5.23): for ``flashinfer_cudnn`` on and off are the same
program, so its ``on`` cell is skipped with that reason instead of reporting a gain.
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

from harness.backends.sglang_auto import sglang_auto_choice
from harness.engines.sglang_autotune import TUNED_FP4_GEMM_RUNNERS as TUNED_FP4_BACKENDS
from harness.hardware import compute_capability, default_device
from harness.models import MODELS
from harness.records import DecodeCell

# Our backend names -> SGLang's --fp4-gemm-backend values. SGLang's `auto` is its own choice
# (sglang-auto), not FlashInfer's (flashinfer-auto, which SGLang cannot be asked for).
FP4_GEMM_BACKEND = {
    "flashinfer-cudnn": "flashinfer_cudnn",
    "flashinfer-cutlass": "flashinfer_cutlass",
    "flashinfer-cute-dsl": "flashinfer_cutedsl",
    "sglang-auto": "auto",
}
ROW_FIELDS = ("run_name", "batch_size", "input_len", "output_len", "prefill_latency",
              "prefill_throughput", "median_decode_latency", "median_decode_throughput",
              "total_latency", "overall_throughput")
# The one-batch benchmark's module, newest layout first.
ONE_BATCH_MODULES = ("sglang.benchmark.one_batch", "sglang.bench_one_batch")
# Test hook: a different module to run (a fake sglang in the tests).
MODULE_ENV = "NVFP4_BENCH_SGLANG_MODULE"


def available() -> str | None:
    """None when SGLang can run here, else the reason."""
    if importlib.util.find_spec("sglang") is None:
        return "sglang is not importable in this Python (pip install 'sglang[all]' on the GPU box)"
    return None


def backend_arg(backend: str) -> str | None:
    return FP4_GEMM_BACKEND.get(backend)


def installed_module(candidates: tuple[str, ...], override_env: str) -> str:
    """The first of ``candidates`` (newest SGLang layout first) that the installed SGLang has;
    ``override_env`` names another module to run instead (the tests' fakes)."""
    if os.environ.get(override_env):
        return os.environ[override_env]
    for m in candidates:
        try:
            if importlib.util.find_spec(m) is not None:
                return m
        except ModuleNotFoundError:
            continue
    return candidates[0]


def one_batch_module() -> str:
    """The one-batch benchmark module the installed SGLang has."""
    return installed_module(ONE_BATCH_MODULES, MODULE_ENV)


def version() -> str:
    from importlib import metadata
    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return "unknown"


def why_no_flag(backend: str) -> str | None:
    """Why SGLang cannot be asked for ``backend``, or None."""
    if backend_arg(backend):
        return None
    if backend == "flashinfer-auto":
        return ("flashinfer-auto is FlashInfer's own auto (b12x first on SM120, then cutlass, "
                "then cudnn), which SGLang cannot be asked for; SGLang's own "
                "--fp4-gemm-backend auto is sglang-auto")
    return (f"SGLang has no --fp4-gemm-backend for {backend} "
            f"(it takes {', '.join(FP4_GEMM_BACKEND.values())})")


def why_not_tuned(backend: str, autotune: str, moe_runner: str = "auto") -> str | None:
    """Why an ``autotune on`` cell of a dense model would measure the same program as
    ``off``, or None: SGLang's own rule (``sglang_autotune.decide``) on this GPU."""
    from harness.engines.sglang_autotune import EngineSettings, decide
    asked = backend_arg(backend)
    if autotune != "on" or asked is None:
        return None
    cc = compute_capability(default_device())
    runs = sglang_auto_choice(cc) if asked == "auto" else asked
    decision = decide(EngineSettings(quantization="modelopt_fp4", fp4_gemm_runner_backend=runs,
                                     moe_runner_backend=moe_runner,
                                     sm_major=cc // 10 if cc else 12))
    if decision.fp4_gemm and decision.runs:
        return None
    what = f"{asked} ({runs} on this GPU)" if asked == "auto" else asked
    if not decision.fp4_gemm:
        return (f"SGLang never runs FlashInfer's autotuner for --fp4-gemm-backend {what} (it "
                f"tunes FP4 GEMMs only for {' and '.join(TUNED_FP4_BACKENDS)} with "
                f"modelopt_fp4): on is the same program as off, whose cell is the measurement")
    return (f"SGLang does not run FlashInfer's autotuner here ({decision.reason}): on is the "
            f"same program as off, whose cell is the measurement")


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
    cmd = [python or sys.executable, "-m", one_batch_module(), "--model-path", model_path,
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


def fill_cell(c: DecodeCell, row: dict, module: str = ONE_BATCH_MODULES[0]) -> None:
    lat = float(row["median_decode_latency"])
    tput = float(row["median_decode_throughput"])
    if not (lat > 0 and tput > 0) or lat != lat or tput != tput:
        c.status, c.reason = "failed", f"sglang reported latency {lat} and throughput {tput}"
        return
    c.status, c.reason = "ok", ""
    c.median_step_s = lat
    c.tokens_per_s = tput
    c.prefill_s = float(row["prefill_latency"]) if row.get("prefill_latency") is not None else None
    c.timing_method = f"{module} median decode latency"
    c.health = {"source": "sglang", "run_name": row.get("run_name")}


def runnable_groups(cells: list[DecodeCell], on_cell: Callable[[DecodeCell], None]):
    """(model, backend, autotune, input_len, output_len) and its cells, one SGLang process
    each; a group SGLang cannot run (or would run as its "off" twin) is skipped here."""
    reason = available()
    groups: dict[tuple, list[DecodeCell]] = {}
    for c in cells:
        groups.setdefault((c.model, c.backend, c.autotune, c.input_len, c.output_len), []).append(c)
    for key, group in groups.items():
        why = reason or why_no_flag(key[1]) or why_not_tuned(key[1], key[2])
        if why:
            for c in group:
                c.status, c.reason = "skipped", why
                on_cell(c)
            continue
        yield key, group


def fresh_cache_env(tmp: str | Path) -> tuple[dict, str]:
    """The environment of one SGLang process with no FlashInfer tactics from an earlier run,
    and how the cell says so."""
    env = dict(os.environ, SGLANG_CACHE_DIR=str(Path(tmp) / "sglang-cache"),
               SGLANG_FLASHINFER_AUTOTUNE_CACHE="0")
    return env, "a fresh, empty SGLANG_CACHE_DIR per process, SGLANG_FLASHINFER_AUTOTUNE_CACHE=0"


def run(cells: list[DecodeCell], checkpoint: str | None = None,
        log: Callable[[str], None] = lambda s: None,
        on_cell: Callable[[DecodeCell], None] = lambda c: None,
        timeout_s: float | None = None) -> list[DecodeCell]:
    for (model, backend, autotune, input_len, output_len), group in runnable_groups(cells,
                                                                                    on_cell):
        with tempfile.TemporaryDirectory(prefix="nvfp4-sglang-") as tmp:
            result = str(Path(tmp) / "result.jsonl")
            cmd = build_command(model_path(model, checkpoint), backend, autotune,
                                sorted({c.batch for c in group}), input_len, output_len, result)
            env, cache_state = fresh_cache_env(tmp)
            info = {"sglang": version(), "module": cmd[2], "command": cmd,
                    "autotune_cache": cache_state}
            log("$ " + " ".join(cmd))
            tail: deque[str] = deque(maxlen=20)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                      env=env)
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
            c.engine_info = info
            row = by_batch.get(c.batch)
            if row is not None:
                fill_cell(c, row, info["module"])
            else:
                last = next((line for line in reversed(tail) if line.strip()), "no output")
                c.status = "failed"
                c.reason = (f"{info['module']} exited with {rc} and no row for batch {c.batch} "
                            f"(last output: {last[:300]})")
            on_cell(c)
            log(f"[sglang {backend} autotune={autotune}] batch={c.batch}: {c.status} "
                f"{c.tokens_per_s or c.reason}")
    return cells
