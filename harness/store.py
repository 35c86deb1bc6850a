"""asv results in and out: the histories every machine and commit keeps.

Layout (paths from ``asv.conf.json``; ``results/`` is a CI artifact, not committed)::

    results/asv/benchmarks.json                  asv's benchmark list (from bench/ + imports)
    results/asv/<machine>/machine.json           machine description, GPU and versions included
    results/asv/<machine>/<sha8>-<env>.json      asv results of one commit (+ label)
    results/runs/<machine>/<sha8>-<env>-<suite>.json   full run records (for reports)
    results/partial/<machine>/...jsonl           finished cells of an interrupted record

Every quantity is lower-is-better (asv's only direction): seconds per GEMM, seconds per
decoded token. Samples are stored, so ``asv compare`` and ``nvfp4-bench compare`` can test
significance (Mann-Whitney U). A failed cell is stored as asv's failed value (null); a
skipped or absent one as NaN. Writes are atomic and serialised by a lock file.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import io
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness.records import (Cell, GemmCell, MoeCell, ResultsFileError, atomic_write_json,
                             read_json)

KINDS = ("gemm", "decode", "moe")
GEMM_PARAMS = ("model", "layer", "m", "backend", "autotune")
DECODE_PARAMS = ("model", "batch", "input_len", "backend", "autotune", "engine")
MOE_PARAMS = ("model", "tokens", "runner", "autotune", "down")
PARAMS = {"gemm": GEMM_PARAMS, "decode": DECODE_PARAMS, "moe": MOE_PARAMS}
ENV_PREFIX = "nvfp4-bench"
ROOT = Path(__file__).resolve().parent.parent


class StoreError(Exception):
    """A store that cannot be used as asked (locked, missing config, unknown revision)."""


def env_name(label: str | None) -> str:
    return f"{ENV_PREFIX}-{label}" if label else ENV_PREFIX


def label_of(env: str) -> str | None:
    return env[len(ENV_PREFIX) + 1:] if env.startswith(ENV_PREFIX + "-") else None


# ---- configuration -----------------------------------------------------------------------

@dataclass
class Config:
    path: Path
    results_dir: Path
    html_dir: Path
    repo: Path
    bench_dir: Path
    branches: list[str]
    # A history file that cannot be read: named and skipped (False), or a fatal error (True).
    strict: bool = False

    @property
    def data_dir(self) -> Path:
        return self.results_dir.parent

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def partial_dir(self) -> Path:
        return self.data_dir / "partial"


def load_config(path: str | os.PathLike | None = None,
                results: str | os.PathLike | None = None, strict: bool = False) -> Config:
    """The project's asv.conf.json (or ``path``); ``results`` points at another results tree
    (a directory holding ``asv/`` and ``runs/``, e.g. ``baselines/results``)."""
    conf = _load_config(path)
    conf.strict = strict
    if results:
        root = Path(results).resolve()
        if not (root / "asv").is_dir():
            raise StoreError(f"{root}: not a results tree (no asv/ directory)")
        conf.results_dir = root / "asv"
        conf.html_dir = root / "html"
    return conf


def _load_config(path: str | os.PathLike | None = None) -> Config:
    path = Path(path) if path else ROOT / "asv.conf.json"
    try:
        conf = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path}: no asv.conf.json") from None
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: corrupt JSON ({e.msg}, line {e.lineno})") from None
    base = path.resolve().parent

    def p(key: str, default: str) -> Path:
        v = Path(conf.get(key, default))
        return v if v.is_absolute() else base / v
    return Config(path=path, results_dir=p("results_dir", "results/asv"),
                  html_dir=p("html_dir", "results/html"), repo=p("repo", "."),
                  bench_dir=p("benchmark_dir", "bench"), branches=conf.get("branches", ["main"]))


# ---- git -----------------------------------------------------------------------------

def git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def resolve_commit(repo: Path, rev: str | None) -> str:
    sha = git(repo, "rev-parse", "--verify", f"{rev or 'HEAD'}^{{commit}}")
    if not sha and rev and re.fullmatch(r"[0-9a-f]{40}", rev):
        return rev  # a full hash, on a machine with a copy of the tree but not its history
    if not sha:
        raise StoreError(f"cannot resolve {rev or 'HEAD'!r} to a commit in {repo}")
    return sha


def commit_date_ms(repo: Path, sha: str, log=lambda s: None) -> int:
    """The commit's date, which asv orders and plots by; the record time only where this
    repository does not have the commit (e.g. --commit of a checkout made elsewhere), said."""
    out = git(repo, "log", "-1", "--format=%ct", sha)
    if out and out.isdigit():
        return int(out) * 1000
    log(f"commit {sha[:12]} is not in {repo}: its asv date is the record time, not the commit "
        f"date (record in a checkout that has the commit to date it right)")
    return int(time.time() * 1000)


# ---- cells <-> asv coordinates -----------------------------------------------------------

def cell_params(cell: Cell) -> tuple:
    """A cell's asv parameter values (in its kind's PARAMS order)."""
    if isinstance(cell, GemmCell):
        return (cell.model, cell.layer, cell.m, cell.backend, cell.autotune)
    if isinstance(cell, MoeCell):
        return (cell.model, cell.tokens, cell.runner, cell.autotune, cell.down)
    return (cell.model, cell.batch, cell.input_len, cell.backend, cell.autotune, cell.engine)


def ident(name: str) -> str:
    """A suite or block name as part of a Python (asv benchmark) name."""
    return re.sub(r"\W", "_", name)


def kind_of(bench: str) -> str | None:
    """The cell kind (one of KINDS) of one of our benchmarks (one per suite block,
    ``bench/``); None for an imported one."""
    kind = bench.split(".", 1)[0]
    return kind if kind in KINDS and bench.split(".", 1)[-1].startswith("track_") else None


def value_and_samples(cell: Cell) -> tuple[float | None, list[float] | None]:
    """asv value: seconds (lower is better); None = failed, NaN = skipped."""
    if cell.status == "failed":
        return None, None
    if cell.status != "ok":
        return math.nan, None
    if isinstance(cell, (GemmCell, MoeCell)):
        return cell.median_s, list(cell.samples_s) or None
    per_token = [s / cell.batch for s in cell.samples_s]
    return cell.median_step_s / cell.batch, per_token or None


def param_repr(v) -> str:
    return repr(v)


# ---- benchmarks.json -------------------------------------------------------------------

def discover(bench_dir: Path) -> dict[str, dict]:
    """asv's own discovery of bench/, in this process (same entries `asv run` writes)."""
    from asv_runner.discovery import list_benchmarks
    buf = io.StringIO()
    old_path = list(sys.path)
    try:
        list_benchmarks(str(bench_dir), buf)
    finally:
        sys.path[:] = old_path
    return {b["name"]: b for b in json.loads(buf.getvalue())}


def read_benchmarks(conf: Config) -> dict[str, dict]:
    path = conf.results_dir / "benchmarks.json"
    if not path.exists():
        return {}
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise ResultsFileError(f"{path}: not an asv benchmarks.json")
    return {k: v for k, v in doc.items() if k != "version"}


def imported_path(conf: Config) -> Path:
    """Imported benchmarks' entries, kept beside the histories: `asv run` rewrites
    benchmarks.json with what it discovers in bench/, and these are not there."""
    return conf.data_dir / "imported-benchmarks.json"


def write_benchmarks(conf: Config, extra: dict[str, dict] | None = None) -> dict[str, dict]:
    """benchmarks.json = asv's discovery of bench/ (one benchmark per suite block) + every
    imported benchmark. Entries of our own kinds that bench/ no longer has are dropped."""
    imported_file = imported_path(conf)
    imported = read_json(imported_file) if imported_file.exists() else {}
    current = read_benchmarks(conf)
    new_imports = {k: v for k, v in current.items() if kind_of(k) is None and k not in imported}
    new_imports.update(extra or {})
    if new_imports:
        imported.update(new_imports)
        atomic_write_json(imported_file, imported)
    entries = dict(imported)
    entries.update(discover(conf.bench_dir))
    atomic_write_json(conf.results_dir / "benchmarks.json", dict(entries, version=2))
    return entries


# ---- machine ---------------------------------------------------------------------------

def machine_info(env: dict) -> dict:
    """asv's machine.json fields plus the GPU stack (kept as strings)."""
    import platform

    ram = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            ram = str(int(f.readline().split()[1]) * 1024)
    cc = env.get("compute_capability")
    return {
        "machine": env["machine"], "arch": platform.machine(), "cpu": env.get("cpu", ""),
        "num_cpu": str(os.cpu_count() or ""), "os": platform.platform(), "ram": ram,
        "gpu": env.get("gpu_name") or "none", "sm": f"SM{cc[0]}{cc[1]}" if cc else "none",
        "driver": env.get("driver") or "", "cuda": env.get("torch_cuda") or "",
        "torch": env.get("torch") or "", "triton": env.get("triton") or "",
        "flashinfer": env.get("flashinfer") or "", "sglang": env.get("sglang") or "",
    }


def write_machine(conf: Config, info: dict) -> None:
    """machine.json of the histories, and the same facts in asv's own machine file
    (``~/.asv-machine.json``; NVFP4_BENCH_ASV_MACHINE_FILE elsewhere, for tests), from which
    `asv run --machine NAME` takes them: asv rewrites machine.json on every run, and the GPU
    fields survive only this way."""
    from asv.machine import MachineCollection
    atomic_write_json(conf.results_dir / info["machine"] / "machine.json", dict(info, version=1))
    try:
        MachineCollection.save(info["machine"], dict(info),
                               _path=os.environ.get("NVFP4_BENCH_ASV_MACHINE_FILE") or None)
    except OSError as e:  # a read-only home: the histories do not depend on it
        _warn(f"asv machine file not written ({e}); `asv run` on this machine will ask for "
              f"its description")


def result_params(info: dict, python: str, label: str | None) -> dict:
    """asv's environment parameters of a results file: the machine facts, the Python, and
    the run label. asv publish draws one graph per distinct set, so a labelled run is its
    own series instead of being averaged with the plain run of the same commit (the plain
    run carries no label key, as `asv run`'s results do not)."""
    params = dict(info, python=python)
    params.pop("version", None)
    if label:
        params["label"] = label
    return params


# ---- locking ---------------------------------------------------------------------------

@contextlib.contextmanager
def _held(path: Path, wait_s: float, busy: Callable[[str], Exception]):
    """An exclusive lock on ``path`` (which names its holder), waiting up to ``wait_s``;
    ``busy(holder)`` is raised when it stays taken."""
    with open(path, "a+") as f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    f.seek(0)
                    raise busy(f.read().strip() or "another process") from None
                time.sleep(0.2)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def locked(conf: Config, wait_s: float = 60.0):
    """One writer at a time per results tree; a second one waits, then fails clearly."""
    conf.data_dir.mkdir(parents=True, exist_ok=True)
    path = conf.data_dir / ".nvfp4-bench.lock"
    return _held(path, wait_s, lambda holder: StoreError(
        f"{path} is held by {holder}: another record is writing these histories; waited "
        f"{wait_s:.0f} s"))


def record_lock(partial: Path, what: str):
    """One ``record`` of a (machine, commit, label, suite, shard) at a time: a second one is
    refused at once, so two runs never write one resume journal (the first one's cells would
    be timed under contention and mixed into the next run)."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    path = partial.with_suffix(".lock")
    return _held(path, 0.0, lambda holder: StoreError(
        f"another record of {what} is running ({holder}; lock {path}): wait for it to "
        f"finish, or stop it and run this again to resume"))


# ---- results ---------------------------------------------------------------------------

def results_path(conf: Config, machine: str, sha: str, env: str) -> Path:
    from asv.results import get_filename
    return conf.results_dir / get_filename(machine, sha, env)


def load_results(path: Path):
    from asv import util
    from asv.results import Results
    try:
        return Results.load(str(path))
    except util.UserError as e:
        raise ResultsFileError(f"{path}: corrupt or unreadable asv results ({e})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ResultsFileError(f"{path}: malformed asv results ({type(e).__name__}: {e})") from None


def bench_of(cell: Cell, benchmarks: dict[str, dict],
             prefer: Callable[[Cell], str | None] | None = None) -> str:
    """The benchmark (suite block) that stores ``cell``: ``prefer(cell)`` (the block of the
    suite being recorded) where that is in ``benchmarks``, else the first by name of any
    block whose grid holds it."""
    name = prefer(cell) if prefer else None
    if name in benchmarks:
        return name
    fits = grids_holding(cell.kind, cell_params(cell), benchmarks)
    if not fits:
        raise StoreError(f"cell {cell.key} is in no suite block's parameter grid "
                         f"(benchmarks.json from bench/); add it to a suite file")
    return fits[0]


def grids_holding(kind: str, values: tuple, benchmarks: dict[str, dict]) -> list[str]:
    """Our benchmarks of ``kind`` whose parameter grid holds ``values``, by name."""
    reprs = [param_repr(v) for v in values]
    return sorted(n for n, b in benchmarks.items()
                  if kind_of(n) == kind and len(b.get("params", [])) == len(reprs)
                  and all(r in allowed for r, allowed in zip(reprs, b["params"])))


def flat_index(space: list[list[str]], values: tuple) -> int:
    """Position of ``values`` in asv's flattened parameter grid ``space`` (lists of reprs)."""
    idx = 0
    for v, allowed in zip(values, space):
        idx = idx * len(allowed) + allowed.index(param_repr(v))
    return idx


def save_cells(conf: Config, machine: str, sha: str, env: str, date_ms: int, params: dict,
               cells: list[Cell], benchmarks: dict[str, dict],
               extra_results: dict[str, tuple[list, list]] | None = None,
               prefer: Callable[[Cell], str | None] | None = None) -> Path:
    """Merge ``cells`` into the asv results of (machine, commit, env), atomically; each cell
    goes to the suite block that holds it (``bench_of``, suite ``prefer`` first).

    Values of other cells already stored for this commit are kept (several suites, shards
    or GPUs may record one commit). ``extra_results`` adds whole benchmarks (imports).
    """
    from asv.results import Results
    from asv.runner import BenchmarkResult

    path = results_path(conf, machine, sha, env)
    res = None
    if path.exists():
        try:
            res = load_results(path)
        except ResultsFileError as e:
            # What this run measured must not be lost to an old file: keep that one aside.
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            _warn(f"{e}; moved to {aside.name}, this commit's results start anew")
    if res is None:
        res = Results(params=params, requirements={}, commit_hash=sha, date=date_ms,
                      python=params.get("python", ""), env_name=env, env_vars={})
    res._params = params  # the latest environment description wins

    updates: dict[str, dict[int, Cell]] = {}
    for c in cells:
        name = bench_of(c, benchmarks, prefer)
        bench = benchmarks[name]
        updates.setdefault(name, {})[flat_index(bench["params"], cell_params(c))] = c

    started = datetime.datetime.now(datetime.timezone.utc)
    for name, by_idx in updates.items():
        bench = benchmarks[name]
        size = math.prod(len(p) for p in bench["params"]) if bench["params"] else 1
        result, samples, number = [math.nan] * size, [None] * size, [None] * size
        for i, c in by_idx.items():
            v, s = value_and_samples(c)
            result[i], samples[i] = v, s
            number[i] = 1 if s else None
        res.add_result(bench, BenchmarkResult(result=result, samples=samples, number=number,
                                              errcode=0, stderr="", profile=None),
                       started_at=started, record_samples=True, selected_idx=set(by_idx))
    for name, (result, samples, *own) in (extra_results or {}).items():
        bench = benchmarks[name]
        res.add_result(bench, BenchmarkResult(
            result=result, samples=samples, number=[1 if s else None for s in samples],
            errcode=0, stderr="", profile=None), started_at=started, record_samples=True)
        # Where asv had no samples to compute statistics from, keep the importer's own
        # (asv's Results has no public way to set them).
        if own and own[0]:
            stats = res._stats.get(name) or [None] * len(result)
            res._stats[name] = [st if st is not None else (o or None)
                                for st, o in zip(stats, own[0])]

    _save_results(conf, res, path)
    return path


@dataclass
class Entry:
    """One stored results file: a commit (+ label) on a machine."""

    machine: str
    commit: str
    env: str
    date_ms: int
    path: Path
    results: object  # asv.results.Results
    # cells_of per kind, unrolled once: the gate and the report ask per claim and per pair
    _by_kind: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def label(self) -> str | None:
        return label_of(self.env)

    def value(self, bench: str, values: tuple) -> tuple[float | None, list[float] | None, bool]:
        """(value, samples, present) of one parameter combination."""
        res = self.results
        if bench not in res.get_all_result_keys():
            return None, None, False
        params = res.get_result_params(bench)
        reprs = [param_repr(v) for v in values]
        if not params or len(params) != len(reprs) or any(r not in p for r, p in zip(reprs, params)):
            return None, None, False
        idx = flat_index(params, values)
        vals = res.get_result_value(bench, params)
        samples = res.get_result_samples(bench, params)
        v = vals[idx] if isinstance(vals, list) else vals
        s = samples[idx] if isinstance(samples, list) else None
        if v is not None and isinstance(v, float) and math.isnan(v):
            return v, None, False  # skipped or never run
        return v, s, True

    def rows(self, bench: str) -> list[tuple[tuple, float | None, list | None, dict | None]]:
        """Every stored combination of ``bench`` as asv unrolls it
        (``asv.commands.compare.unroll_result``): (param values, value, samples, asv's
        stats); skipped or never-run ones (NaN) are left out."""
        from asv.commands.compare import unroll_result
        res = self.results
        if bench not in res.get_all_result_keys():
            return []
        params = res.get_result_params(bench)
        combos = list(itertools.product(*params)) or [()]
        unrolled = unroll_result(bench, params, res.get_result_value(bench, params),
                                 res.get_result_samples(bench, params),
                                 res.get_result_stats(bench, params))
        return [(tuple(unrepr(x) for x in combo), v, smp, st)
                for combo, (_, v, smp, st) in zip(combos, unrolled)
                if not (isinstance(v, float) and math.isnan(v))]

    def cells(self, bench: str) -> list[tuple[tuple, float | None, list[float] | None]]:
        """Every stored combination of ``bench``: (param values, value, samples)."""
        return [(p, v, smp) for p, v, smp, _ in self.rows(bench)]


    def cells_of(self, kind: str) -> list[tuple[tuple, float | None, list[float] | None]]:
        """Every stored cell of ``kind`` (one of KINDS) over all its suite blocks; a cell
        stored in two blocks counts once (the first by name)."""
        if kind not in self._by_kind:
            seen: dict[tuple, tuple] = {}
            for bench in sorted(self.results.get_all_result_keys()):
                if kind_of(bench) == kind:
                    for params, v, s in self.cells(bench):
                        seen.setdefault(params, (params, v, s))
            self._by_kind[kind] = list(seen.values())
        return self._by_kind[kind]


def unrepr(r: str):
    import ast
    try:
        return ast.literal_eval(r)
    except (ValueError, SyntaxError):
        return r


def machines(conf: Config) -> list[str]:
    if not conf.results_dir.exists():
        return []
    return sorted(p.name for p in conf.results_dir.iterdir() if (p / "machine.json").exists())


def _warn(message: str) -> None:
    print(f"nvfp4-bench: warning: {message}", file=sys.stderr, flush=True)


_warned: set[str] = set()


def skip_bad(conf: Config, error: ResultsFileError,
             warn: Callable[[str], None] | None = None) -> None:
    """A history file that cannot be read: raise under ``conf.strict``, else name it through
    ``warn`` (by default once on stderr) and go on with the others."""
    if conf.strict:
        raise error
    if warn is not None:
        warn(f"{error}; skipped")
    elif str(error) not in _warned:
        _warned.add(str(error))
        _warn(f"{error}; skipped (--strict makes this an error)")


def scan_results(conf: Config) -> tuple[set[str], list[tuple[Path, ResultsFileError]]]:
    """One read of every asv results file of the tree: the benchmarks that have results,
    and the files that cannot be read."""
    keys: set[str] = set()
    bad = []
    for m in machines(conf):
        for path in sorted((conf.results_dir / m).glob("*.json")):
            if path.name == "machine.json":
                continue
            try:
                keys |= set(load_results(path).get_all_result_keys())
            except ResultsFileError as e:
                bad.append((path, e))
    return keys, bad


def entries(conf: Config, machine: str,
            warn: Callable[[str], None] | None = None) -> list[Entry]:
    """Every readable results file of ``machine``, oldest commit first; an unreadable one is
    named (through ``warn``) and skipped, an error under ``conf.strict``."""
    d = conf.results_dir / machine
    out = []
    for path in sorted(d.glob("*.json")):
        if path.name == "machine.json":
            continue
        try:
            res = load_results(path)
        except ResultsFileError as e:
            skip_bad(conf, e, warn)
            continue
        out.append(Entry(machine=machine, commit=res.commit_hash, env=res.env_name,
                         date_ms=res.date or 0, path=path, results=res))
    depth: dict[str, int] = {}
    for e in out:  # commits of one second are ordered by ancestry
        if e.commit not in depth:
            n = git(conf.repo, "rev-list", "--count", e.commit)
            depth[e.commit] = int(n) if n and n.isdigit() else 0
    out.sort(key=lambda e: (e.date_ms, depth[e.commit], e.path.name))
    return out


def pick_machine(conf: Config, machine: str | None) -> str:
    known = machines(conf)
    if machine:
        if machine not in known:
            raise StoreError(f"no results for machine {machine!r} in {conf.results_dir}; "
                             f"machines: {', '.join(known) or 'none'}")
        return machine
    if len(known) == 1:
        return known[0]
    if not known:
        raise StoreError(f"no results in {conf.results_dir} (run `nvfp4-bench record` first)")
    raise StoreError(f"several machines in {conf.results_dir}: {', '.join(known)}; "
                     f"choose one with --machine")


def resolve(conf: Config, machine: str, rev: str) -> Entry:
    """A run label, a commit prefix, or a git revision -> the stored entry."""
    all_entries = entries(conf, machine)
    by_label = [e for e in all_entries if e.label == rev]
    if by_label:
        return by_label[-1]
    by_prefix = [e for e in all_entries if e.commit.startswith(rev.lower())]
    if not by_prefix:
        sha = git(conf.repo, "rev-parse", "--verify", f"{rev}^{{commit}}")
        by_prefix = [e for e in all_entries if sha and e.commit == sha]
    envs = {e.env for e in by_prefix}
    if len(envs) > 1:
        plain = [e for e in by_prefix if e.env == ENV_PREFIX]
        if plain:
            return plain[-1]
        raise StoreError(f"{rev!r} has several labelled runs ({', '.join(sorted(envs))}); "
                         f"name the label instead")
    if by_prefix:
        return by_prefix[-1]
    known = sorted({e.label for e in all_entries if e.label} | {e.commit[:8] for e in all_entries})
    raise StoreError(f"no stored run {rev!r} on {machine}; stored: {', '.join(known) or 'none'}")


# ---- migration ---------------------------------------------------------------------------

def migrate(conf: Config, log: Callable[[str], None] = lambda s: None) -> int:
    """Move stored cells of benchmarks that bench/ no longer defines (the one-grid-per-kind
    benchmarks of older histories, or a renamed block) into the suite blocks that hold them
    now, each with the asv version of its timing method (from the run records beside it).
    Cells that no block holds stay where they are (our readers still see them; asv, which
    reads only benchmarks.json's benchmarks, does not). Returns the number of files changed."""
    from asv.runner import BenchmarkResult

    with locked(conf):
        benchmarks = write_benchmarks(conf)
        changed = 0
        for m in machines(conf):
            for entry in entries(conf, m):
                res = entry.results
                stale = [k for k in res.get_all_result_keys()
                         if kind_of(k) and k not in benchmarks]
                if not stale:
                    continue
                methods = _cell_methods(conf, entry)
                moved: dict[str, dict[int, tuple]] = {}
                versions: dict[str, str] = {}
                kept = 0
                for key in stale:
                    kept_here = 0
                    kind = kind_of(key)
                    for combo, value, samples in entry.cells(key):
                        target = _grid_for(kind, combo, benchmarks, methods.get((kind, combo)))
                        if target is None:
                            kept_here += 1
                            continue
                        idx = flat_index(benchmarks[target]["params"], combo)
                        moved.setdefault(target, {})[idx] = (value, samples)
                        method = methods.get((kind, combo), {}).get("method")
                        versions[target] = _version_for(kind, method)
                    if not kept_here:  # else the old benchmark keeps them all, for our readers
                        res.remove_result(key)
                    kept += kept_here
                for target, by_idx in moved.items():
                    bench = dict(benchmarks[target], version=versions[target])
                    size = math.prod(len(p) for p in bench["params"])
                    result, samples, number = [math.nan] * size, [None] * size, [None] * size
                    for i, (v, smp) in by_idx.items():
                        result[i], samples[i] = v, smp
                        number[i] = 1 if smp else None
                    res.add_result(bench, BenchmarkResult(result=result, samples=samples,
                                                          number=number, errcode=0, stderr="",
                                                          profile=None),
                                   record_samples=True, selected_idx=set(by_idx))
                _save_results(conf, res, entry.path)
                changed += 1
                log(f"{entry.path.name}: {sum(map(len, moved.values()))} cells moved to "
                    f"{len(moved)} suite blocks" + (f", {kept} kept (in no block)" if kept else ""))
        return changed


def _grid_for(kind: str, values: tuple, benchmarks: dict[str, dict],
              recorded: dict | None) -> str | None:
    """The block of the suite the cell was recorded by, else the first holding it."""
    fits = grids_holding(kind, values, benchmarks)
    suite = (recorded or {}).get("suite")
    mine = [n for n in fits if suite and (n == f"{kind}.track_{ident(suite)}"
                                          or n.startswith(f"{kind}.track_{ident(suite)}_"))]
    return (mine or fits or [None])[0]


def _version_for(kind: str, method: str | None) -> str:
    from harness.measure import TIMING_METHODS, timing_version
    if method and method.split(",")[0] in TIMING_METHODS[kind]:
        return timing_version(kind, method)
    return timing_version(kind)  # a CPU method, or no record: today's


def _cell_methods(conf: Config, entry: Entry) -> dict[tuple, dict]:
    """(kind, params) -> {"suite", "method"} from the run records of ``entry``."""
    from harness.records import read_run
    runs = []
    for path in sorted((conf.runs_dir / entry.machine).glob(f"{entry.commit[:8]}-{entry.env}-*.json")):
        try:
            runs.append(read_run(path))
        except ResultsFileError:
            continue
    out: dict[tuple, dict] = {}
    # a suite's record first: ad hoc runs beside it never name the block
    for doc, cells in sorted(runs, key=lambda r: "suite" not in r[0]):
        for c in cells:
            if c.status == "ok":
                out.setdefault((c.kind, cell_params(c)), {
                    "suite": doc.get("suite"), "method": c.timing_method})
    return out


def _save_results(conf: Config, res, path: Path) -> None:
    """Save beside the tree, then rename into place: a reader never sees half a file."""
    tmp_root = Path(tempfile.mkdtemp(prefix=".asv-save-", dir=conf.data_dir))
    try:
        res.save(str(tmp_root))
        written = tmp_root / path.relative_to(conf.results_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(written, path)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


# ---- run records beside the histories ----------------------------------------------------

def run_file(conf: Config, machine: str, sha: str, env: str, suite: str) -> Path:
    return conf.runs_dir / machine / f"{sha[:8]}-{env}-{suite}.json"


def partial_file(conf: Config, machine: str, sha: str, env: str, suite: str,
                 shard: str = "") -> Path:
    tag = f"-shard{shard.replace('/', 'of')}" if shard else ""
    return conf.partial_dir / machine / f"{sha[:8]}-{env}-{suite}{tag}.jsonl"


def timing_methods(conf: Config, entry: Entry) -> dict[str, set[str]]:
    """How the cells of ``entry`` were timed, by cell kind, from the run records that
    ``record`` wrote beside it (empty when there are none). Only the method itself counts:
    a decode method's engine description after the first comma is code, not measurement."""
    from harness.records import read_run

    out: dict[str, set[str]] = {}
    pattern = f"{entry.commit[:8]}-{entry.env}-*.json"
    for path in sorted((conf.runs_dir / entry.machine).glob(pattern)):
        try:
            doc, cells = read_run(path)
        except ResultsFileError:
            continue  # the report names unreadable records; a compare goes on without them
        if "suite" not in doc:
            continue  # an ad-hoc run stored beside the record, not what the history holds
        for c in cells:
            if c.status == "ok" and c.timing_method:
                out.setdefault(c.kind, set()).add(c.timing_method.split(",")[0])
    return out
