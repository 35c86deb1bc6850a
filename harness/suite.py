"""Suites are data: one TOML file per suite in ``harness/suites/`` (or any path).

A suite lists GEMM and decode blocks; each block expands to cells exactly as the ``gemm``
and ``decode`` commands would plan them. ``samples``/``warmup`` of a GEMM block set its
sample counts; a decode block's samples are its ``output_len`` steps.
"""

from __future__ import annotations

import dataclasses
import tomllib
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness import decode, gemm, store
from harness.models import UnknownNameError
from harness.records import Cell

SUITES_DIR = Path(__file__).resolve().parent / "suites"
GEMM_KEYS = {"name", "model", "m", "backends", "autotune", "layers", "samples", "warmup",
             "cold_l2"}
DECODE_KEYS = {"name", "model", "batch", "input_len", "output_len", "backends", "autotune",
               "engine"}
MOE_KEYS = {"name", "model", "tokens", "runners", "autotune", "down", "samples", "warmup"}


@dataclass(frozen=True)
class Grid:
    """One suite block as asv sees it: one benchmark whose parameter grid is exactly the
    block's cells (every point measurable), named ``<kind>.track_<suite>[_<block>]``."""

    kind: str                      # "gemm" | "decode" | "moe"
    suite: str
    block: str                     # "" when the suite has one block of this kind
    names: tuple[str, ...]         # asv param_names
    values: tuple[tuple, ...]      # per name, the block's values in plan order
    index: int                     # position among the suite's blocks of this kind

    @property
    def func(self) -> str:
        return f"track_{store.ident(self.suite)}" + (f"_{self.block}" if self.block else "")

    @property
    def bench(self) -> str:
        return f"{self.kind}.{self.func}"

    def __contains__(self, values: tuple) -> bool:
        return len(values) == len(self.values) and all(
            v in allowed for v, allowed in zip(values, self.values))


@dataclass
class Suite:
    name: str
    description: str
    path: Path
    gemm: list[dict] = field(default_factory=list)
    decode: list[dict] = field(default_factory=list)
    moe: list[dict] = field(default_factory=list)
    # grids per kind, planned once: grid_of() asks for them per cell when a record is saved
    _grids: dict[str, list] = field(default_factory=dict, repr=False, compare=False)

    def gemm_blocks(self) -> list[tuple[gemm.GemmOptions, list[Cell]]]:
        out = []
        for b in self.gemm:
            cells = gemm.plan(b["model"], b["m"], b["backends"], b.get("autotune", ["on", "off"]),
                              layers=b.get("layers"))
            opts = gemm.GemmOptions(samples=b.get("samples", 50), warmup=b.get("warmup", 5),
                                    cold_l2=b.get("cold_l2", True))
            out.append((opts, cells))
        return out

    @staticmethod
    def _decode_block(b: dict) -> list[Cell]:
        return decode.plan(b["model"], b["batch"], b["input_len"], b["output_len"],
                           b["backends"], b.get("autotune", ["on", "off"]),
                           engine=b.get("engine", "native"))

    def decode_cells(self) -> list[Cell]:
        return [c for b in self.decode for c in self._decode_block(b)]

    def moe_blocks(self) -> list[tuple[object, list[Cell]]]:
        from harness.moe import run as moe_run
        return [(moe_run.moe_options_from(b),
                 moe_run.plan(b["model"], b["tokens"], b["runners"],
                              b.get("autotune", ["on", "off"]), b.get("down", ["shared", "own"])))
                for b in self.moe]

    def blocks(self, kind: str) -> list[tuple[dict, object, list[Cell]]]:
        """(block as written, its run options, its cells) of every block of ``kind``."""
        if kind == "gemm":
            return [(b, o, c) for b, (o, c) in zip(self.gemm, self.gemm_blocks())]
        if kind == "moe":
            return [(b, o, c) for b, (o, c) in zip(self.moe, self.moe_blocks())]
        return [(b, decode.DecodeOptions(), self._decode_block(b)) for b in self.decode]

    def grids(self, kind: str) -> list[Grid]:
        if kind not in self._grids:
            self._grids[kind] = self._plan_grids(kind)
        return self._grids[kind]

    def _plan_grids(self, kind: str) -> list[Grid]:
        blocks = self.blocks(kind)
        names = store.PARAMS[kind]
        unnamed = sum(1 for b, _, _ in blocks if not b.get("name"))
        out = []
        for i, (b, _, cells) in enumerate(blocks):
            values: list[list] = [[] for _ in names]
            for c in cells:
                for slot, v in zip(values, store.cell_params(c)):
                    if v not in slot:
                        slot.append(v)
            # Unnamed blocks are numbered only when there are several of them, so naming a
            # new block keeps the benchmark name (and history) of the one unnamed block.
            block = str(b.get("name", "")) or (str(i + 1) if unnamed > 1 else "")
            out.append(Grid(kind, self.name, block, tuple(names),
                            tuple(tuple(v) for v in values), i))
        return out

    def grid_of(self, cell: Cell) -> Grid | None:
        """The first block of this suite whose grid holds ``cell``."""
        values = store.cell_params(cell)
        return next((g for g in self.grids(cell.kind) if values in g), None)

    def cells(self) -> list[Cell]:
        out = ([c for _, cells in self.gemm_blocks() for c in cells] + self.decode_cells()
               + [c for _, cells in self.moe_blocks() for c in cells])
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
                  gemm=doc.get("gemm", []), decode=doc.get("decode", []), moe=doc.get("moe", []))
    for kind, blocks, keys in (("gemm", suite.gemm, GEMM_KEYS), ("decode", suite.decode, DECODE_KEYS),
                               ("moe", suite.moe, MOE_KEYS)):
        for i, b in enumerate(blocks):
            unknown = set(b) - keys
            if unknown:
                raise ValueError(f"suite file {path}: [[{kind}]] block {i + 1} has unknown "
                                 f"keys {sorted(unknown)}; valid keys: {sorted(keys)}")
            name = b.get("name", "")
            if name and not re.fullmatch(r"[A-Za-z0-9_]+", str(name)):
                raise ValueError(f"suite file {path}: [[{kind}]] block {i + 1} name {name!r}: "
                                 f"use letters, digits and _ (it names an asv benchmark)")
        names = [g.block for g in suite.grids(kind)]
        if len(set(names)) != len(names):
            raise ValueError(f"suite file {path}: two [[{kind}]] blocks share the name "
                             f"{sorted(n for n in names if names.count(n) > 1)[0]!r}")
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


def grids(kind: str) -> list[Grid]:
    """Every suite's blocks of ``kind`` ('gemm' | 'decode' | 'moe') as asv benchmarks."""
    return [g for name in available() for g in load(name).grids(kind)]


def asv_benchmark(grid: Grid):
    """The asv benchmark of one suite block (what ``bench/`` exposes): a ``track_`` function
    over the block's grid, lower-is-better seconds, versioned by the timing method."""
    from harness.measure import timing_version

    def track(*values):
        return run_one(grid.kind, grid.suite, grid.index, values)

    track.__name__ = track.__qualname__ = grid.func
    track.params = [list(v) for v in grid.values]
    track.param_names = list(grid.names)
    track.unit = "seconds"
    track.version = timing_version(grid.kind)
    track.timeout = 3600
    return track


def run_one(kind: str, suite_name: str, block: int, values: tuple) -> dict:
    """Run the cell at these asv parameter values of a suite block in this process (what
    ``bench/`` calls). Returns asv's timing result (``samples`` in seconds per GEMM or per
    token, ``number`` 1), so asv keeps the samples and tests significance on them; raises
    asv's SkipNotImplemented (asv records a skip, not a failure) or RuntimeError."""
    from asv_runner.benchmarks.mark import SkipNotImplemented
    s = load(suite_name)
    values = tuple(values)
    _, opts, cells = s.blocks(kind)[block]
    cell = next((c for c in cells if store.cell_params(c) == values), None)
    if cell is None:  # a grid point is always a cell of its block; this is a changed suite
        raise SkipNotImplemented(f"suite {suite_name} block {block + 1} has no cell {values}")
    if kind == "moe":
        from harness.moe import run as moe_run
        moe_run.run([cell], opts)
    else:
        runner = gemm.run if kind == "gemm" else decode.run
        runner([cell], dataclasses.replace(opts, isolate=False))
    if cell.status == "skipped":
        raise SkipNotImplemented(cell.reason)
    if cell.status != "ok":
        raise RuntimeError(cell.reason)
    _, samples = store.value_and_samples(cell)
    return {"samples": samples, "number": 1}
