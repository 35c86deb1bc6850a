"""Store a ``pytest --benchmark-json`` run in the asv histories.

Each test function becomes one asv benchmark ``pytest.<module>.<function>`` whose asv
parameters are pytest's own (``n`` for ``@pytest.mark.parametrize("n", ...)``), valued in
seconds per call with the raw samples (``--benchmark-json`` holds them) and
pytest-benchmark's own quartiles, rounds and iterations; the machine is the one the file was
measured on (its ``machine_info``). Compare, gate and reports treat kernel authors'
pytest-benchmark suites like our own.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from harness.records import ResultsFileError, read_json

PREFIX = "pytest."


def _bench_name(b: dict) -> str:
    fullname = b.get("fullname") or b["name"]
    path, _, test = fullname.partition("::")
    module = Path(path).stem if path else "tests"
    func = b["name"].split("[", 1)[0]
    if "::" in test:  # a test class: keep it in the name
        func = test.split("[", 1)[0].replace("::", ".")
    return PREFIX + re.sub(r"[^A-Za-z0-9_.]", "_", f"{module}.{func}")


def _params(b: dict) -> dict[str, str] | None:
    """pytest's own parameter names and values ({"n": "10"}), or the test id as ``param``."""
    given = b.get("params")
    if isinstance(given, dict) and given:
        def value(v):  # asv parameters are scalars; a list or object goes by its test id
            if isinstance(v, (bool, int, float, str)) or v is None:
                return repr(v)
            return repr(str(b.get("param"))) if len(given) == 1 and b.get("param") else repr(str(v))
        return {str(k): value(v) for k, v in given.items()}
    param = b.get("param")
    if param is None and "[" in b["name"]:
        param = b["name"].split("[", 1)[1].rstrip("]")
    return {"param": repr(str(param))} if param is not None else None


def _own_stats(st: dict) -> dict:
    """pytest-benchmark's own statistics in asv's fields: quartiles, rounds, iterations (kept
    where the file has no raw samples for asv to compute them from; no interval is made up)."""
    pairs = (("q_25", "q1"), ("q_75", "q3"), ("repeat", "rounds"), ("number", "iterations"))
    return {a: st[p] for a, p in pairs if isinstance(st.get(p), (int, float))}


def parse(path: str | Path) -> tuple[dict, dict[str, dict], dict[str, tuple[list, list, list]]]:
    """-> (document, asv benchmark entries, {name: (values, samples, own stats)})."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ResultsFileError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    grouped: dict[str, list[tuple[dict | None, dict]]] = {}
    for b in doc["benchmarks"]:
        try:
            name, params = _bench_name(b), _params(b)
            float(b["stats"]["median"])
        except (KeyError, TypeError, ValueError):
            raise ResultsFileError(f"{path}: malformed benchmark entry {b.get('name', '?')!r}") from None
        grouped.setdefault(name, []).append((params, b))
    entries, values = {}, {}
    for name, items in grouped.items():
        names = list(dict.fromkeys(k for p, _ in items for k in (p or {})))
        if len(items) > 1 and any(p is None or list(p) != names for p, _ in items):
            # tests of one function with different parameters: one point per test id
            items = [({"param": repr(b["name"].partition("[")[2].rstrip("]"))}, b) for _, b in items]
            names = ["param"]
        elif items[0][0] is None:
            names = []
        grid = [sorted({p[k] for p, _ in items}, key=_natural) for k in names]
        first = items[0][1]
        entries[name] = {
            "name": name, "type": "time", "unit": "seconds", "version": "pytest-benchmark",
            "code": first.get("fullname", name), "param_names": names, "params": grid,
            "timeout": 60, "pretty_name": name,
        }
        size = math.prod(len(g) for g in grid) if grid else 1
        vals, samples, own = [math.nan] * size, [None] * size, [None] * size
        for p, b in items:
            idx = 0
            for k, g in zip(names, grid):
                idx = idx * len(g) + g.index(p[k])
            st = b["stats"]
            data = st.get("data")
            vals[idx] = float(st["median"])
            samples[idx] = ([float(x) for x in data] if data and all(
                isinstance(x, (int, float)) and math.isfinite(x) for x in data) else None)
            own[idx] = _own_stats(st)
        values[name] = (vals, samples, own)
    return doc, entries, values


def _natural(r: str):
    try:
        return (0, float(r), r)
    except ValueError:
        return (1, 0.0, r)


def file_machine(doc: dict, this_hosts: set[str], this_machine: str) -> tuple[str, dict | None]:
    """The machine the file was measured on: this machine where the file's ``machine_info``
    names this host (or names none), else a name and asv machine fields from that info."""
    mi = doc.get("machine_info") or {}
    node = str(mi.get("node") or "")
    if not node or node in this_hosts:
        return this_machine, None
    cpu = mi.get("cpu") or {}
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", node.lower()) or "unknown"
    return name, {"machine": name, "arch": str(mi.get("machine") or cpu.get("arch") or ""),
                  "cpu": str(cpu.get("brand_raw") or mi.get("processor") or ""),
                  "num_cpu": str(cpu.get("count") or ""),
                  "os": f"{mi.get('system', '')}-{mi.get('release', '')}".strip("-"), "ram": "",
                  "gpu": "unknown", "sm": "unknown", "driver": "", "cuda": "", "torch": "",
                  "triton": "", "flashinfer": "", "sglang": "",
                  "python": str(mi.get("python_version") or "")}


def import_file(path: str | Path, conf, machine: str | None = None, commit: str | None = None,
                label: str | None = None):
    import platform
    import sys

    from harness import store
    from harness.hardware import detect

    doc, entries, values = parse(path)
    env = detect(measure_bandwidth=False)
    named, info = file_machine(doc, {env.hostname, platform.node()}, env.machine_name())
    machine = machine or named
    if info is None:
        info = store.machine_info(env.to_json())
        info["python"] = f"{sys.version_info.major}.{sys.version_info.minor}"
    info["machine"] = machine
    sha = commit or (doc.get("commit_info") or {}).get("id")
    sha = store.resolve_commit(conf.repo, sha)
    env_n = store.env_name(label)
    with store.locked(conf):
        benchmarks = store.write_benchmarks(conf, extra=entries)
        store.write_machine(conf, {k: v for k, v in info.items() if k != "python"})
        params = store.result_params({k: v for k, v in info.items() if k != "python"},
                                     info.get("python", ""), label)
        out = store.save_cells(conf, machine, sha, env_n, store.commit_date_ms(conf.repo, sha),
                               params, [], benchmarks, extra_results=values)
    return out, list(entries)
