"""Result records (one per cell) and the run file that holds them.

A run file is JSON: ``{"schema", "tool", "created", "environment", "command", "cells": [...]}``.
It is written atomically (temp file + rename), and a file that cannot be read is reported by
name (:class:`ResultsFileError`), never with a bare traceback.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

SCHEMA = 1
STATUSES = ("ok", "skipped", "failed")


class ResultsFileError(Exception):
    """A results file is missing, truncated, corrupt or of the wrong shape."""


@dataclass
class GemmCell:
    model: str
    layer: str
    n: int
    k: int
    m: int
    backend: str
    autotune: str              # "on" | "off"
    count: int = 1             # how many layers of this shape the model has
    status: str = "skipped"    # "ok" | "skipped" | "failed"
    reason: str = ""
    median_s: float | None = None
    ci99_s: list[float] | None = None
    cv: float | None = None
    samples_s: list[float] = field(default_factory=list)
    timing_method: str = ""
    flops: int = 0
    bytes: int = 0             # weight (+ scales) + activations in + output, as the backend reads them
    tflops: float | None = None
    gbps: float | None = None
    roofline_frac: float | None = None
    health: dict | None = None
    tuning: str = ""           # with autotune on: the tuner's cache state before this cell
    kind: str = "gemm"

    @property
    def key(self) -> tuple:
        return (self.kind, self.model, self.layer, self.m, self.backend, self.autotune)


@dataclass
class DecodeCell:
    model: str
    batch: int
    input_len: int
    output_len: int
    backend: str
    autotune: str
    engine: str = "native"
    status: str = "skipped"
    reason: str = ""
    moe_runner: str = ""       # MoE models: the runner of the routed experts (moe.runners)
    tokens_per_s: float | None = None
    median_step_s: float | None = None
    ci99_s: list[float] | None = None
    cv: float | None = None
    samples_s: list[float] = field(default_factory=list)
    roofline_step_s: float | None = None
    roofline_frac: float | None = None
    step_bytes: int = 0
    step_bytes_detail: dict | None = None
    prefill_s: float | None = None
    timing_method: str = ""
    weight_bytes: int | None = None     # linear weights in the backend's format
    model_bytes: int | None = None      # all weights as loaded (NVFP4 linears + dense)
    load_peak_bytes: int | None = None  # peak GPU memory while loading them
    weights: str = ""                   # synthetic(seed=...) or the checkpoint it loaded
    weights_notes: list[str] = field(default_factory=list)  # what loading them decided
    # An external engine's run: its version, module, command line and tuning-cache state.
    engine_info: dict | None = None
    # Through SGLang's server: output tokens/s, TPOT, TTFT and ITL percentiles, one stream's
    # decode tokens/s (SGLang's serving benchmark's own figures).
    serving: dict | None = None
    health: dict | None = None
    # With --profile: [{name, ms_per_call, launches_per_call}] per decode step, largest first.
    kernels: list[dict] | None = None
    kernels_note: str = ""  # how the profiled steps differ from the timed ones, if they do
    kind: str = "decode"

    @property
    def key(self) -> tuple:
        return (self.kind, self.model, self.batch, self.input_len, self.backend, self.autotune,
                self.engine)


@dataclass
class MoeCell:
    """One MoE layer (routing, up, silu*up, down, combine) at ``tokens`` tokens."""

    model: str
    tokens: int
    runner: str
    autotune: str              # "on": the device's tuned configs; "off": SGLang's defaults
    down: str = "shared"       # "shared": down's BLOCK_SIZE_M forced to up's (SGLang); "own"
    experts: int = 0
    top_k: int = 0
    hidden: int = 0
    intermediate: int = 0
    status: str = "skipped"
    reason: str = ""
    median_s: float | None = None
    ci99_s: list[float] | None = None
    cv: float | None = None
    samples_s: list[float] = field(default_factory=list)
    timing_method: str = ""
    experts_hit: int = 0       # distinct experts the routed tokens use
    bytes: int = 0             # their weights + activations in and out
    gbps: float | None = None
    roofline_frac: float | None = None
    up_config: dict | None = None
    down_config: dict | None = None
    config_source: str = ""    # the config file used, or "SGLang's default config"
    health: dict | None = None
    kind: str = "moe"

    @property
    def key(self) -> tuple:
        return (self.kind, self.model, self.tokens, self.runner, self.autotune, self.down)

    @property
    def backend(self) -> str:  # what the tables group by for every kind of cell
        return self.runner


Cell = GemmCell | DecodeCell | MoeCell


def _clean(v: Any) -> Any:
    """JSON has no NaN/Inf: non-finite floats become null (the reason text keeps the story)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def cell_to_json(cell: Cell) -> dict:
    return _clean(asdict(cell))


def cell_from_json(d: dict) -> Cell:
    kind = d.get("kind")
    cls = {"gemm": GemmCell, "decode": DecodeCell, "moe": MoeCell}.get(kind)
    if cls is None:
        raise ValueError(f"unknown cell kind {kind!r}")
    names = {f for f in cls.__dataclass_fields__}
    return cls(**{k: v for k, v in d.items() if k in names})


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``path`` whole or not at all (temp file + rename), with the permissions an
    ordinary file gets under the umask: published reports and histories stay readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 whatever the umask
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=1, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ResultsFileError(f"{path}: no such results file") from None
    except OSError as e:
        raise ResultsFileError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsFileError(f"{path}: corrupt or truncated JSON (line {e.lineno}, "
                               f"column {e.colno}: {e.msg})") from None


def write_run(path: str | os.PathLike, environment: dict, cells: list[Cell],
              command: list[str] | None = None, extra: dict | None = None) -> None:
    import datetime

    doc = {
        "schema": SCHEMA,
        "tool": "nvfp4-bench",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment,
        "command": command or [],
        "cells": [cell_to_json(c) for c in cells],
    }
    if extra:
        doc.update(extra)
    atomic_write_json(path, doc)


def read_run(path: str | os.PathLike) -> tuple[dict, list[Cell]]:
    doc = read_json(path)
    if not isinstance(doc, dict) or "cells" not in doc or not isinstance(doc["cells"], list):
        raise ResultsFileError(f"{path}: not an nvfp4-bench run file (no 'cells' list)")
    try:
        cells = [cell_from_json(c) for c in doc["cells"]]
    except (TypeError, ValueError) as e:
        raise ResultsFileError(f"{path}: malformed cell ({e})") from None
    return doc, cells


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """One line per finished cell, flushed and synced: a crash loses at most the cell in flight."""
    with open(path, "a") as f:
        f.write(json.dumps(_clean(obj), allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike,
               warn: Callable[[str], None] | None = None) -> list[Any]:
    """The complete records of a JSONL journal. Only a newline-terminated line that parses as
    a JSON object counts: a torn line (a crash, a kill or a full disk mid-write) or garbage is
    dropped, named by file and line through ``warn``; it never blocks what comes after."""
    out = []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return out
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        last = i == len(lines) - 1  # the bytes after the final newline: never complete
        if not raw.strip():
            continue
        try:
            rec = None if last else json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        elif warn is not None:
            what = "an unterminated (torn) last line" if last else "not a JSON record"
            warn(f"{path}: line {i + 1} dropped ({what}, {len(raw)} bytes); the cell it held "
                 f"will be measured again")
    return out


def repair_jsonl(path: str | os.PathLike, warn: Callable[[str], None] | None = None) -> list[Any]:
    """``read_jsonl``, and where lines were dropped, the journal rewritten (atomically) to its
    complete records, so new records are never appended after a torn one."""
    dropped: list[str] = []
    recs = read_jsonl(path, warn=lambda m: (dropped.append(m), warn and warn(m)))
    if dropped:
        atomic_write_text(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in recs))
    return recs
