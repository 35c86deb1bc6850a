"""Store a ``pytest --benchmark-json`` run in the asv histories.

Each test function becomes one asv benchmark ``pytest.<module>.<function>`` (parametrized
tests keep their ids as the asv parameter), valued in seconds per call with the raw
samples when the run kept them (``--benchmark-save-data``), so compare, gate and reports
treat kernel authors' pytest-benchmark suites like our own.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from harness.records import ResultsFileError, read_json

PREFIX = "pytest."


def _bench_name(b: dict) -> tuple[str, str | None]:
    fullname = b.get("fullname") or b["name"]
    path, _, test = fullname.partition("::")
    module = Path(path).stem if path else "tests"
    func = b["name"].split("[", 1)[0]
    if "::" in test:  # a test class: keep it in the name
        func = test.split("[", 1)[0].replace("::", ".")
    param = b.get("param")
    if param is None and "[" in b["name"]:
        param = b["name"].split("[", 1)[1].rstrip("]")
    name = PREFIX + re.sub(r"[^A-Za-z0-9_.]", "_", f"{module}.{func}")
    return name, (str(param) if param is not None else None)


def parse(path: str | Path) -> tuple[dict, dict[str, dict], dict[str, tuple[list, list]]]:
    """-> (document, asv benchmark entries, {name: (values, samples)})."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ResultsFileError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    grouped: dict[str, dict[str | None, dict]] = {}
    for b in doc["benchmarks"]:
        try:
            name, param = _bench_name(b)
            stats = b["stats"]
            float(stats["median"])
        except (KeyError, TypeError, ValueError):
            raise ResultsFileError(f"{path}: malformed benchmark entry {b.get('name', '?')!r}") from None
        grouped.setdefault(name, {})[param] = b
    entries, values = {}, {}
    for name, by_param in grouped.items():
        params = sorted(by_param, key=lambda p: (p is None, str(p)))
        has_params = params != [None]
        first = next(iter(by_param.values()))
        entries[name] = {
            "name": name, "type": "time", "unit": "seconds", "version": "pytest-benchmark",
            "code": first.get("fullname", name), "param_names": ["param"] if has_params else [],
            "params": [[repr(p) for p in params]] if has_params else [],
            "timeout": 60, "pretty_name": name,
        }
        vals, samples = [], []
        for p in params:
            st = by_param[p]["stats"]
            data = st.get("data")
            vals.append(float(st["median"]))
            samples.append([float(x) for x in data] if data and all(
                isinstance(x, (int, float)) and math.isfinite(x) for x in data) else None)
        values[name] = (vals, samples)
    return doc, entries, values


def import_file(path: str | Path, conf, machine: str | None = None, commit: str | None = None,
                label: str | None = None):
    import sys

    from harness import store
    from harness.hardware import detect

    doc, entries, values = parse(path)
    env = detect(measure_bandwidth=False)
    machine = machine or env.machine_name()
    sha = commit or (doc.get("commit_info") or {}).get("id")
    sha = store.resolve_commit(conf.repo, sha)
    env_n = store.env_name(label)
    with store.locked(conf):
        benchmarks = store.read_benchmarks(conf)
        if not benchmarks:
            benchmarks = store.write_benchmarks(conf)
        benchmarks.update(entries)
        store.atomic_write_json(conf.results_dir / "benchmarks.json", dict(benchmarks, version=2))
        info = store.machine_info(env.to_json())
        info["machine"] = machine
        store.write_machine(conf, info)
        params = dict(info, python=f"{sys.version_info.major}.{sys.version_info.minor}")
        out = store.save_cells(conf, machine, sha, env_n, store.commit_date_ms(conf.repo, sha),
                               params, [], benchmarks, extra_results=values)
    return out, list(entries)
