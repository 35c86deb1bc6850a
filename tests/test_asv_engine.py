"""asv as the engine: `asv run`, `asv continuous` and `asv find` build and measure real
commits of this project in asv's overlay environment (harness/asv_overlay.py), with our
bench/ benchmarks, samples, machine facts and benchmark versions intact.

A throwaway git repository holds the project's tree in four commits; the third makes the
bf16 GEMM about ten times slower.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import compare, store
from harness.measure import timing_version

PROJECT = Path(__file__).resolve().parent.parent
CELL = r"gemm.track_smoke\('tiny', 'o_proj', 1, 'torch-bf16', 'off'\)"
# 200 extra GEMMs per call: slower under the CPU's perf_counter and the GPU's kernel spans
# alike. On a 2-core CPU the tiny GEMM is mostly call overhead: 20 extra made it only ~2.3x
# slower (124 vs 280 us), which one noisy base round could hide from asv's significance test.
SLOW = ("    def run(self, prepared, x, x_global_scale):\n"
        "        for _ in range(200):\n            F.linear(x, prepared)\n")


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("asv-engine")
    repo = root / "repo"
    listed = subprocess.run(["git", "-C", str(PROJECT), "ls-files", "-co", "--exclude-standard"],
                            capture_output=True, text=True)
    if listed.returncode != 0:  # an unpacked archive of the project, say: no commits to build
        pytest.skip(f"the project is not a git checkout: {listed.stderr.strip()}")
    files = listed.stdout.split()
    for f in files:
        if f.startswith(("baselines/", "docs/", "reports/")) or not (PROJECT / f).is_file():
            continue
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / f, repo / f)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "t@example.invalid")
    _git(repo, "config", "user.name", "t")
    shas = []
    bf16 = repo / "harness" / "backends" / "torch_bf16.py"
    for i in range(4):
        if i == 2:
            text = bf16.read_text()
            bf16.write_text(text.replace("    def run(self, prepared, x, x_global_scale):\n", SLOW))
        else:
            (repo / "NOTES").write_text(f"{i}\n")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", f"c{i}")
        shas.append(_git(repo, "rev-parse", "HEAD"))
    home = root / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home),
               NVFP4_BENCH_ASV_MACHINE_FILE=str(home / ".asv-machine.json"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    return repo, shas, env


def _run(repo, env, *args, timeout=900):
    return subprocess.run(list(args), cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _asv(repo, env, *args):
    return _run(repo, env, sys.executable, "-m", "asv", *args)


@pytest.mark.slow
def test_asv_run_continuous_and_find_measure_real_commits(repo):
    repo, (c0, c1, c2, c3), env = repo
    mach = _run(repo, env, sys.executable, "-m", "harness.cli", "machine", "--name-only")
    assert mach.returncode == 0, mach.stderr
    machine = mach.stdout.strip()

    # asv run: one commit, built and installed into the overlay venv
    out = _asv(repo, env, "run", "--machine", machine, "--record-samples", "-b", CELL, f"{c1}^!")
    assert out.returncode == 0, out.stdout + out.stderr
    conf = store.load_config(repo / "asv.conf.json")
    path = store.results_path(conf, machine, c1, store.ENV_PREFIX)
    doc = json.loads(path.read_text())
    row = dict(zip(doc["result_columns"], doc["results"]["gemm.track_smoke"]))
    assert row["version"] == timing_version("gemm")
    assert sum(1 for s in row["samples"] if s) == 1 and len(next(s for s in row["samples"] if s)) == 15
    # machine facts survive asv's own rewrite of machine.json (from asv's machine file)
    info = json.loads((conf.results_dir / machine / "machine.json").read_text())
    assert {"gpu", "sm", "torch", "triton"} <= set(info) and doc["params"]["torch"] == info["torch"]

    # asv continuous: base vs head, interleaved rounds, samples appended; exit 1 on the slowdown
    out = _asv(repo, env, "continuous", "--machine", machine, "--factor", "1.05", "--split",
               "--append-samples", "--interleave-rounds", "-a", "rounds=2", "-b", CELL, c1, c2)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "round 2/2" in out.stdout and "PERFORMANCE DECREASED" in out.stdout
    doc = json.loads(store.results_path(conf, machine, c2, store.ENV_PREFIX).read_text())
    row = dict(zip(doc["result_columns"], doc["results"]["gemm.track_smoke"]))
    assert len(next(s for s in row["samples"] if s)) == 30  # 2 rounds x 15, appended
    # our compare reads asv's results and agrees with asv's verdict
    rows = compare.compare(store.resolve(conf, machine, c1), store.resolve(conf, machine, c2))
    (slow,) = [r for r in rows if r.verdict != compare.MISSING]
    assert slow.verdict == compare.SLOWER and slow.params[3] == "torch-bf16"

    # asv find: bisects the range by building and timing commits, and names the culprit
    out = _asv(repo, env, "find", "--machine", machine, f"{c0}..{c3}", CELL)
    assert out.returncode == 0, out.stdout + out.stderr
    measured = "\n".join(line for line in out.stdout.splitlines()
                         if "commit" in line or ("o_proj" in line and "n/a" not in line))
    assert f"Greatest regression found: {c2[:8]}" in out.stdout, (c2[:8], measured)

    # asv run rewrote benchmarks.json with bench/'s benchmarks only; the next write of ours
    # (record, import, publish) restores imported ones from their sidecar
    imported = {"pytest.test_x.test_y": {"name": "pytest.test_x.test_y", "type": "track",
                                         "params": [], "param_names": [], "version": "1",
                                         "unit": "seconds"}}
    store.write_benchmarks(conf, extra=imported)
    assert "pytest.test_x.test_y" in store.read_benchmarks(conf)
    out = _asv(repo, env, "run", "--machine", machine, "-b", CELL, f"{c3}^!")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pytest.test_x.test_y" not in store.read_benchmarks(conf)
    assert "pytest.test_x.test_y" in store.write_benchmarks(conf)
