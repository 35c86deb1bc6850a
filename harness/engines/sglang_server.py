"""SGLang serving, the way PR #26496 measured its figure (``--engine sglang-server``).

Per (model, backend, autotune, lengths): SGLang's server (``python -m sglang.launch_server``,
the command behind ``sglang serve``) with ``--quantization modelopt_fp4``,
``--fp4-gemm-backend``, ``[--disable-flashinfer-autotune]``, on a free port of 127.0.0.1, in
its own process group, with a fresh, empty ``SGLANG_CACHE_DIR`` (no tactics tuned by an
earlier run); once its ``/health`` answers, SGLang's own serving benchmark
(``sglang.benchmark.serving``, ``sglang.bench_serving`` before 0.5.21) drives it with the
random dataset at each concurrency of the group (the cell's ``batch``). Then the whole process
group is stopped (terminate, then kill), whatever happened.

A cell reads SGLang's JSON: ``median_step_s`` is the median TPOT (time per output token of one
request), so ``tokens_per_s = concurrency / median TPOT`` and, at concurrency 1, one stream's
decode tokens/s; ``serving`` keeps output tokens/s, TTFT and ITL percentiles. A server that
never becomes healthy or dies, and a benchmark that fails, make ``failed`` cells carrying the
log's last lines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Callable

from harness.engines import sglang
from harness.records import DecodeCell

SERVER_MODULE = "sglang.launch_server"
SERVING_MODULES = ("sglang.benchmark.serving", "sglang.bench_serving")
# Loading and tuning a 27B model takes minutes; NVFP4_BENCH_SGLANG_SERVER_TIMEOUT overrides.
HEALTH_TIMEOUT_S = 1800.0
BENCH_TIMEOUT_S = 3600.0
# How long a server may take to exit after SIGTERM before its group is killed.
STOP_GRACE_S = 30.0
# Requests per concurrency level: enough completed requests for a median TPOT.
PROMPTS_PER_STREAM = 8
# Test hooks: other modules to run (a fake sglang in the tests).
SERVER_MODULE_ENV = "NVFP4_BENCH_SGLANG_SERVER_MODULE"
SERVING_MODULE_ENV = "NVFP4_BENCH_SGLANG_SERVING_MODULE"


def serving_module() -> str:
    """The serving benchmark module the installed SGLang has."""
    return sglang.installed_module(SERVING_MODULES, SERVING_MODULE_ENV)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model_path: str, backend: str, autotune: str, port: int,
                   python: str | None = None) -> list[str]:
    fp4 = sglang.backend_arg(backend)
    if fp4 is None:
        raise ValueError(f"SGLang has no --fp4-gemm-backend for {backend!r}; "
                         f"valid: {', '.join(sglang.FP4_GEMM_BACKEND)}")
    cmd = [python or sys.executable, "-m", os.environ.get(SERVER_MODULE_ENV, SERVER_MODULE),
           "--model-path", model_path, "--quantization", "modelopt_fp4",
           "--fp4-gemm-backend", fp4, "--host", "127.0.0.1", "--port", str(port)]
    if autotune == "off":
        cmd.append("--disable-flashinfer-autotune")
    return cmd


def serving_command(model_path: str, port: int, input_len: int, output_len: int,
                    concurrency: int, output_file: str, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", serving_module(), "--backend", "sglang",
            "--host", "127.0.0.1", "--port", str(port), "--model", model_path,
            "--dataset-name", "random", "--random-input-len", str(input_len),
            "--random-output-len", str(output_len), "--random-range-ratio", "1",
            "--num-prompts", str(PROMPTS_PER_STREAM * concurrency),
            "--max-concurrency", str(concurrency), "--output-file", output_file]


class Server:
    """SGLang's server in its own process group, its output in ``log``; ``stop()`` ends the
    whole group (terminate, then kill after ``grace_s``)."""

    def __init__(self, cmd: list[str], log: Path, env: dict, port: int):
        self.cmd, self.log, self.port = cmd, log, port
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_healthy(self, timeout_s: float) -> str | None:
        """None once ``/health`` answers 200; else why it never did."""
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                return f"the server exited with {rc} before it was healthy"
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        return None
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.25)
        return f"the server was not healthy after {timeout_s:.0f} s"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float | None = None) -> None:
        grace_s = STOP_GRACE_S if grace_s is None else grace_s
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; children of the group may still be: kill what is left.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        self._out.close()

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:] if line.strip())


def parse_result(path: str | Path) -> dict:
    """The last result line SGLang's serving benchmark appended to its JSONL output file."""
    rows = []
    for line in Path(path).read_text().splitlines() if Path(path).exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    rows = [r for r in rows if isinstance(r, dict) and "median_tpot_ms" in r]
    if not rows:
        raise ValueError(f"{path}: no result line with median_tpot_ms")
    return rows[-1]


SERVING_FIELDS = ("output_throughput", "request_throughput", "completed", "median_tpot_ms",
                  "mean_tpot_ms", "p99_tpot_ms", "median_ttft_ms", "p99_ttft_ms",
                  "median_itl_ms", "p99_itl_ms", "max_concurrency")


def fill_cell(c: DecodeCell, result: dict, module: str) -> None:
    tpot_ms = result.get("median_tpot_ms")
    if not isinstance(tpot_ms, (int, float)) or not tpot_ms > 0 or not result.get("completed"):
        c.status, c.reason = "failed", (f"{module} reported median TPOT {tpot_ms!r} ms over "
                                        f"{result.get('completed')!r} completed requests")
        return
    c.status, c.reason = "ok", ""
    c.median_step_s = tpot_ms / 1e3
    c.tokens_per_s = c.batch / c.median_step_s
    ttft = result.get("median_ttft_ms")
    c.prefill_s = ttft / 1e3 if isinstance(ttft, (int, float)) else None
    c.timing_method = f"{module} median TPOT at max concurrency {c.batch}"
    c.serving = {k: result.get(k) for k in SERVING_FIELDS}
    c.serving["per_stream_decode_tokens_per_s"] = 1e3 / tpot_ms
    c.health = {"source": "sglang serving", "completed": result.get("completed")}


def run(cells: list[DecodeCell], checkpoint: str | None = None,
        log: Callable[[str], None] = lambda s: None,
        on_cell: Callable[[DecodeCell], None] = lambda c: None) -> list[DecodeCell]:
    timeout_s = float(os.environ.get("NVFP4_BENCH_SGLANG_SERVER_TIMEOUT", HEALTH_TIMEOUT_S))
    for (model, backend, autotune, input_len, output_len), group in sglang.runnable_groups(
            cells, on_cell):
        _run_group(group, sglang.model_path(model, checkpoint), backend, autotune, input_len,
                   output_len, timeout_s, log, on_cell)
    return cells


def _run_group(group, path, backend, autotune, input_len, output_len, timeout_s, log, on_cell):
    with tempfile.TemporaryDirectory(prefix="nvfp4-sglang-server-") as tmp:
        port = free_port()
        env, cache_state = sglang.fresh_cache_env(tmp)
        cmd = server_command(path, backend, autotune, port)
        info = {"sglang": sglang.version(), "module": cmd[2], "server_command": cmd,
                "autotune_cache": cache_state}
        log("$ " + " ".join(cmd))
        server = Server(cmd, Path(tmp) / "server.log", env, port)
        try:
            bad = server.wait_healthy(timeout_s)
            for c in sorted(group, key=lambda c: c.batch):
                c.engine_info = dict(info)
                if bad is None and not server.alive():
                    bad = f"the server exited with {server.proc.returncode} during the run"
                if bad is not None:
                    c.status, c.reason = "failed", f"{bad} (server log: {server.tail()[-600:]})"
                    on_cell(c)
                    continue
                _measure(c, path, port, input_len, output_len, Path(tmp), server, log)
                on_cell(c)
                log(f"[sglang-server {backend} autotune={autotune}] concurrency={c.batch}: "
                    f"{c.status} {c.tokens_per_s or c.reason}")
        finally:
            server.stop()


def _measure(c: DecodeCell, path: str, port: int, input_len: int, output_len: int, tmp: Path,
             server: Server, log: Callable[[str], None]) -> None:
    out = tmp / f"serving-{c.batch}.jsonl"
    cmd = serving_command(path, port, input_len, output_len, c.batch, str(out))
    c.engine_info["serving_command"] = cmd
    log("$ " + " ".join(cmd))
    tail: deque[str] = deque(maxlen=20)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S)
        tail.extend((proc.stdout + proc.stderr).splitlines())
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = f"timeout after {BENCH_TIMEOUT_S:.0f} s"
    try:
        result = parse_result(out)
    except ValueError as e:
        last = next((line for line in reversed(tail) if line.strip()), "no output")
        died = "" if server.alive() else f"; the server exited with {server.proc.returncode}"
        c.status, c.reason = "failed", (f"{cmd[2]} exited with {rc}: {e}{died} (last output: "
                                        f"{last[:300]}; server log: {server.tail()[-400:]})")
        return
    fill_cell(c, result, cmd[2])
