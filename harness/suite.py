"""Suites are data: one TOML file per suite in ``harness/suites/`` (or any path).

A suite lists GEMM and decode blocks; each block expands to cells exactly as the ``gemm``
and ``decode`` commands would plan them. ``samples``/``warmup`` of a GEMM block set its
sample counts; a decode block's samples are its ``output_len`` steps.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from harness import decode, gemm
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
    from harness.store import DECODE_PARAMS, GEMM_PARAMS

    names = GEMM_PARAMS if kind == "gemm" else DECODE_PARAMS
    values: list[list] = [[] for _ in names]
    for name in available():
        for c in load(name).cells():
            if c.kind != kind:
                continue
            from harness.store import coords
            for slot, v in zip(values, coords(c)[1]):
                if v not in slot:
                    slot.append(v)
    return list(names), values


def suite_cell(kind: str, values: tuple) -> Cell | None:
    """The suite cell at these asv parameter values, or None when no suite has it."""
    from harness.store import coords
    for name in available():
        for c in load(name).cells():
            if c.kind == kind and coords(c)[1] == tuple(values):
                return c
    return None


def run_one(kind: str, values: tuple) -> float:
    """Run one suite cell in this process; the asv value (raises if it cannot be timed)."""
    from harness.store import value_and_samples

    cell = suite_cell(kind, values)
    if cell is None:
        raise NotImplementedError("no suite has this combination")  # asv: skipped
    if kind == "gemm":
        opts = next(o for o, cells in _blocks_with(cell) if any(c.key == cell.key for c in cells))
        gemm.run([cell], dataclasses_replace(opts, isolate=False))
    else:
        decode.run([cell], decode.DecodeOptions(isolate=False))
    if cell.status == "skipped":
        raise NotImplementedError(cell.reason)
    if cell.status != "ok":
        raise RuntimeError(cell.reason)
    return value_and_samples(cell)[0]


def _blocks_with(cell: Cell):
    for name in available():
        yield from load(name).gemm_blocks()


def dataclasses_replace(obj, **changes):
    import dataclasses
    return dataclasses.replace(obj, **changes)
