"""Suites are data: one TOML file per suite in ``harness/suites/`` (or any path).

A suite lists GEMM and decode blocks; each block expands to cells exactly as the ``gemm``
and ``decode`` commands would plan them. ``samples``/``warmup`` of a GEMM block set its
sample counts; a decode block's samples are its ``output_len`` steps.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from harness import decode, gemm, store
from harness.models import UnknownNameError
from harness.records import Cell

SUITES_DIR = Path(__file__).resolve().parent / "suites"
GEMM_KEYS = {"model", "m", "backends", "autotune", "layers", "samples", "warmup", "cold_l2"}
DECODE_KEYS = {"model", "batch", "input_len", "output_len", "backends", "autotune", "engine"}


@dataclass
class Suite:
    name: str
    description: str
    path: Path
    gemm: list[dict] = field(default_factory=list)
    decode: list[dict] = field(default_factory=list)

    def gemm_blocks(self) -> list[tuple[gemm.GemmOptions, list[Cell]]]:
        out = []
        for b in self.gemm:
            cells = gemm.plan(b["model"], b["m"], b["backends"], b.get("autotune", ["on", "off"]),
                              layers=b.get("layers"))
            opts = gemm.GemmOptions(samples=b.get("samples", 50), warmup=b.get("warmup", 5),
                                    cold_l2=b.get("cold_l2", True))
            out.append((opts, cells))
        return out

    def decode_cells(self) -> list[Cell]:
        cells = []
        for b in self.decode:
            cells += decode.plan(b["model"], b["batch"], b["input_len"], b["output_len"],
                                 b["backends"], b.get("autotune", ["on", "off"]),
                                 engine=b.get("engine", "native"))
        return cells

    def cells(self) -> list[Cell]:
        out = [c for _, cells in self.gemm_blocks() for c in cells] + self.decode_cells()
        seen = set()
        unique = []
        for c in out:
            if c.key not in seen:
                seen.add(c.key)
                unique.append(c)
        return unique


def available() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def load(name_or_path: str) -> Suite:
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.exists()):
        path = SUITES_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise UnknownNameError("suite", name_or_path, available())
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"suite file {path}: {e}") from None
    suite = Suite(name=path.stem, description=doc.get("description", ""), path=path,
                  gemm=doc.get("gemm", []), decode=doc.get("decode", []))
    for kind, blocks, keys in (("gemm", suite.gemm, GEMM_KEYS), ("decode", suite.decode, DECODE_KEYS)):
        for i, b in enumerate(blocks):
            unknown = set(b) - keys
            if unknown:
                raise ValueError(f"suite file {path}: [[{kind}]] block {i + 1} has unknown "
                                 f"keys {sorted(unknown)}; valid keys: {sorted(keys)}")
    suite.cells()  # validates names (models, backends, layers) with clear errors
    return suite


def shard(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Cells of shard ``index`` of ``count``: the same on every machine for one suite.

    Whole (kind, model, backend, autotune) groups go to one shard, so a worker prepares its
    layers once; the groups, in sorted order, are dealt round-robin.
    """
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    groups = sorted({(c.kind, c.model, c.backend, c.autotune) for c in cells})
    mine = {g for i, g in enumerate(groups) if i % count == index}
    return [c for c in cells if (c.kind, c.model, c.backend, c.autotune) in mine]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard takes i/n with 0 <= i < n, got {text!r}")
    return i, n


def param_space(kind: str) -> tuple[list[str], list[list]]:
    """asv parameter names and values for ``kind`` ('gemm' | 'decode'): the union of every
    suite's cells, so one benchmark holds every suite's history."""
    names = store.GEMM_PARAMS if kind == "gemm" else store.DECODE_PARAMS
    values: list[list] = [[] for _ in names]
    for _, cell in _all_cells(kind):
        for slot, v in zip(values, store.coords(cell)[1]):
            if v not in slot:
                slot.append(v)
    return list(names), values


def _all_cells(kind: str):
    """(options, cell) for every cell of ``kind`` in every suite; options of GEMM blocks."""
    for name in available():
        s = load(name)
        if kind == "gemm":
            for opts, cells in s.gemm_blocks():
                for c in cells:
                    yield opts, c
        else:
            for c in s.decode_cells():
                yield decode.DecodeOptions(), c


def run_one(kind: str, values: tuple) -> float:
    """Run the suite cell at these asv parameter values in this process (what ``bench/``
    calls); returns the asv value, raises asv's SkipNotImplemented (asv records the cell as
    skipped, not failed) or RuntimeError."""
    from asv_runner.benchmarks.mark import SkipNotImplemented
    found = next(((o, c) for o, c in _all_cells(kind) if store.coords(c)[1] == tuple(values)), None)
    if found is None:
        raise SkipNotImplemented("no suite has this combination")
    opts, cell = found
    if kind == "gemm":
        gemm.run([cell], dataclasses.replace(opts, isolate=False))
    else:
        decode.run([cell], dataclasses.replace(opts, isolate=False))
    if cell.status == "skipped":
        raise SkipNotImplemented(cell.reason)
    if cell.status != "ok":
        raise RuntimeError(cell.reason)
    return store.value_and_samples(cell)[0]
