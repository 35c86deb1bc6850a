"""Worker processes: one per (backend, autotune) group of cells; a crash loses one cell.

Cells of one (backend, autotune) pair run in their own process, so a tactic tuned for
``on`` can never leak into the ``off`` numbers, and a crash (a CUDA fault, a segfault in a
native library) costs only the cell in flight: the parent marks it failed, starts a fresh
worker for the rest, and keeps every finished cell: the worker appends each one to a JSONL
file the moment it finishes, and the parent hands it on (to ``record``'s journal) while the
worker still runs, so killing the parent loses no finished cell either.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Callable

from harness.hardware import BANDWIDTH_ENV, copy_bandwidth
from harness.records import Cell, cell_from_json, cell_to_json, read_jsonl


def groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells sharing one (model, backend, autotune): one worker prepares that model's layers
    once for them (a suite may list several models)."""
    out: dict[tuple, list[Cell]] = {}
    for c in cells:
        out.setdefault((c.model, c.backend, c.autotune), []).append(c)
    return list(out.values())


def worker_env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[BANDWIDTH_ENV] = repr(copy_bandwidth())
    # FlashInfer reads tactics tuned elsewhere from its bundled files when this is 1: an
    # autotune-off cell must run FlashInfer's default choice, an on cell only its own tuning.
    env["FLASHINFER_AUTOTUNER_LOAD_FROM_FILE"] = "0"
    return env


def die_with_parent():
    """A ``preexec_fn`` for worker processes: on Linux the kernel kills the worker when the
    process that started it dies (a SIGKILL of ``record`` included), so no worker is left
    running on its own; elsewhere None (no such facility)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the child
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)
    return preexec


POLL_S = 0.5  # how often a worker's finished cells are handed on while it runs


def _spawn(kind: str, cells: list[Cell], options: dict, out_path: Path,
           log: Callable[[str], None], poll: Callable[[], None]) -> tuple[int, list[str]]:
    """Run one worker to its end, calling ``poll`` every ``POLL_S`` while it runs; the worker
    is killed if the parent leaves early (an exception, Ctrl-C)."""
    spec_fd, spec_path = tempfile.mkstemp(suffix=".json", prefix=f"nvfp4-{kind}-spec-")
    with os.fdopen(spec_fd, "w") as f:
        json.dump({"options": options, "cells": [cell_to_json(c) for c in cells]}, f)
    tail: deque[str] = deque(maxlen=30)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "harness.worker", kind, spec_path,
                                 str(out_path)], env=worker_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent())

        def pump():
            for line in proc.stderr:
                tail.append(line.rstrip())
                log(line.rstrip())
        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            while True:
                try:
                    rc = proc.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    poll()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        t.join(timeout=5)
        return rc, list(tail)
    finally:
        os.unlink(spec_path)


def copy_into(dst: Cell, src: Cell) -> None:
    for f in dataclasses.fields(dst):
        setattr(dst, f.name, getattr(src, f.name))


def run_isolated(kind: str, cells: list[Cell], options: dict,
                 skip_reason: Callable[[Cell], str | None],
                 log: Callable[[str], None] = lambda s: None,
                 on_cell: Callable[[Cell], None] = lambda c: None) -> list[Cell]:
    """Run every (backend, autotune) group in fresh worker processes.

    ``skip_reason(first cell of a group)`` decides skips in the parent (no process needed);
    ``on_cell`` sees every cell as soon as it is final (for resumable recording).
    """
    for group in groups(cells):
        reason = skip_reason(group[0])
        if reason is not None:
            for c in group:
                c.status, c.reason = "skipped", reason
                on_cell(c)
            log(f"[{group[0].backend} autotune={group[0].autotune}] {len(group)} cells skipped: "
                f"{reason}")
            continue
        remaining = list(group)
        while remaining:
            pending = {c.key: c for c in remaining}
            with tempfile.TemporaryDirectory(prefix=f"nvfp4-{kind}-") as tmp:
                out_path = Path(tmp) / "cells.jsonl"
                read_size = [0]

                def hand_on() -> None:
                    # Read again only when the file grew (one stat a poll, not a parse);
                    # whole lines only (read_jsonl leaves out the one being written); a cell
                    # handed on once is not handed on again.
                    size = out_path.stat().st_size if out_path.exists() else 0
                    if size == read_size[0]:
                        return
                    read_size[0] = size
                    for d in read_jsonl(out_path):
                        got = cell_from_json(d)
                        c = pending.pop(got.key, None)
                        if c is not None:
                            copy_into(c, got)
                            on_cell(c)
                rc, tail = _spawn(kind, remaining, options, out_path, log, hand_on)
                hand_on()
            remaining = [c for c in remaining if c.key in pending]
            if not remaining:
                break
            # The worker died (or exited early) while running the first unfinished cell.
            culprit = remaining.pop(0)
            detail = next((line for line in reversed(tail) if line.strip()), "no output")
            culprit.status = "failed"
            culprit.reason = (f"worker process exited with code {rc} while running this cell "
                              f"(last output: {detail[:300]})")
            on_cell(culprit)
            log(f"[{culprit.backend} autotune={culprit.autotune}] {culprit.reason}")
    return cells
