"""``nvfp4-bench record``: run a suite and store it in the asv histories.

Resumable: every finished cell is appended to a partial file first; an interrupted record
keeps those, and running it again measures only the missing cells. Cells can be split
across the GPUs of a host (one process per GPU, each a shard) or across CI jobs
(``--shard i/n``); the results of one commit merge into one asv results file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness import decode, gemm, isolate, store
from harness import suite as suite_mod
from harness.hardware import detect
from harness.records import (Cell, ResultsFileError, append_jsonl, cell_from_json, cell_to_json,
                             read_jsonl, read_run, repair_jsonl, write_run)


@dataclass
class Recorded:
    machine: str
    commit: str
    env: str
    cells: list[Cell]
    results_path: Path | None
    run_path: Path | None
    resumed: int


def _run_cells(s: suite_mod.Suite, todo_keys: set, on_cell: Callable[[Cell], None],
               log: Callable[[str], None]) -> list[Cell]:
    done: list[Cell] = []
    for opts, cells in s.gemm_blocks():
        mine = [c for c in cells if c.key in todo_keys]
        if mine:
            gemm.run(mine, opts, log=log, on_cell=on_cell)
            done += mine
    mine = [c for c in s.decode_cells() if c.key in todo_keys]
    if mine:
        decode.run(mine, decode.DecodeOptions(), log=log, on_cell=on_cell)
        done += mine
    for opts, cells in s.moe_blocks():
        mine = [c for c in cells if c.key in todo_keys]
        if mine:
            from harness.moe import run as moe_run
            moe_run.run(mine, opts, log=log, on_cell=on_cell)
            done += mine
    return done


def _spawn_gpu_shards(args_base: list[str], gpus: int, log: Callable[[str], None]) -> int:
    procs = []
    for j in range(gpus):
        env = dict(isolate.worker_env(), CUDA_VISIBLE_DEVICES=str(j))
        cmd = [sys.executable, "-m", "harness.cli", "record", *args_base,
               "--shard", f"{j}/{gpus}", "--partial-only"]
        log(f"GPU {j}: {' '.join(cmd[2:])}")
        procs.append(subprocess.Popen(cmd, env=env, preexec_fn=isolate.die_with_parent()))
    return max(p.wait() for p in procs)


def record(suite_name: str, conf: store.Config, commit: str | None = None,
           label: str | None = None, machine: str | None = None, shard: str | None = None,
           gpus: int = 1, fresh: bool = False, partial_only: bool = False,
           log: Callable[[str], None] = lambda s: None) -> Recorded:
    s = suite_mod.load(suite_name)
    cells = s.cells()
    if shard:
        i, n = suite_mod.parse_shard(shard)
        cells = suite_mod.shard(cells, i, n)
    env = detect()
    machine = machine or env.machine_name()
    sha = store.resolve_commit(conf.repo, commit)
    env_n = store.env_name(label)
    partial = store.partial_file(conf, machine, sha, env_n, s.name, shard or "")
    with store.record_lock(partial, f"{s.name} at {sha[:8]} ({env_n}) on {machine}"):
        if fresh and partial.exists():
            partial.unlink()
        partial.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(partial, warn=log)  # a torn tail would swallow the next appended cell

        def finished_cells() -> dict[tuple, Cell]:
            out = {}
            for f in [partial, *sorted(partial.parent.glob(f"{partial.stem}-shard*.jsonl"))]:
                for d in read_jsonl(f, warn=log):
                    try:
                        c = cell_from_json(d)
                    except (TypeError, ValueError) as e:
                        log(f"{f}: a record that is not a cell dropped ({e})")
                        continue
                    out[c.key] = c
            return out

        finished = finished_cells()
        resumed = sum(1 for c in cells if c.key in finished)
        todo = {c.key for c in cells if c.key not in finished}
        if resumed:
            log(f"resuming: {resumed} of {len(cells)} cells already recorded in {partial}")
        if todo and gpus > 1 and not shard:
            base = [s.name if s.path.parent == suite_mod.SUITES_DIR else str(s.path),
                    "--config", str(conf.path), "--commit", sha, "--machine", machine]
            if label:
                base += ["--label", label]
            rc = _spawn_gpu_shards(["--suite", *base], gpus, log)
            if rc != 0:
                log(f"a GPU shard exited with {rc}; its finished cells are kept")
            finished = finished_cells()
        elif todo:
            _run_cells(s, todo, lambda c: append_jsonl(partial, cell_to_json(c)), log)
            finished = finished_cells()
        final = [finished.get(c.key, c) for c in cells]
        missing = [c for c in final if c.status == "pending"]
        if partial_only or missing:
            if missing:
                log(f"{len(missing)} cells not finished; re-run the same command to resume")
            return Recorded(machine, sha, env_n, final, None, None, resumed)

        with store.locked(conf):
            benchmarks = store.write_benchmarks(conf)
            info = store.machine_info(env.to_json())
            info["machine"] = machine
            store.write_machine(conf, info)
            params = store.result_params(
                info, f"{sys.version_info.major}.{sys.version_info.minor}", label)
            path = store.save_cells(conf, machine, sha, env_n,
                                    store.commit_date_ms(conf.repo, sha, log), params, final,
                                    benchmarks, prefer=_block_bench(s))
            run_path = store.run_file(conf, machine, sha, env_n, s.name)
            cells_out, shards = _merge_shard_record(run_path, sha, shard, final, log)
            write_run(run_path, env.to_json(), cells_out, command=sys.argv,
                      extra={"suite": s.name, "commit": sha, "label": label, "machine": machine,
                             "shards": shards})
        for f in [partial, *partial.parent.glob(f"{partial.stem}-shard*.jsonl")]:
            if f.exists():
                os.unlink(f)
        return Recorded(machine, sha, env_n, final, path, run_path, resumed)


def _block_bench(s: suite_mod.Suite) -> Callable[[Cell], str | None]:
    def bench(cell: Cell) -> str | None:
        grid = s.grid_of(cell)
        return grid.bench if grid else None
    return bench


def _merge_shard_record(run_path: Path, sha: str, shard: str | None, cells: list[Cell],
                        log: Callable[[str], None]) -> tuple[list[Cell], list[str]]:
    """A shard's cells join the run record the other shards of this commit wrote, as they
    join its asv results; an unsharded record stands alone."""
    if not shard or not run_path.exists():
        return cells, [shard] if shard else []
    try:
        doc, previous = read_run(run_path)
    except ResultsFileError as e:
        log(f"{e}: replaced by this shard's record (the asv results keep every shard)")
        return cells, [shard]
    if doc.get("commit") != sha:
        return cells, [shard]
    merged = {c.key: c for c in previous}
    merged.update({c.key: c for c in cells})
    return list(merged.values()), sorted(set(doc.get("shards") or []) | {shard})
