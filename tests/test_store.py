"""asv histories: record, compare, gate, pytest-benchmark import, resume, locks, corrupt files."""

import itertools
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import worker_env
from harness import compare, gate, record, store
from harness.cli import main
from harness.hardware import detect
from harness.records import GemmCell, DecodeCell, ResultsFileError

PROJECT = Path(__file__).resolve().parent.parent


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def project(tmp_path):
    """A git repository with two commits on main and an asv.conf.json that uses our bench/."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "t@example.invalid")
    _git(repo, "config", "user.name", "t")
    (repo / "f.txt").write_text("1")
    _git(repo, "add", "f.txt")
    _git(repo, "commit", "-qm", "base")
    base = _git(repo, "rev-parse", "HEAD")
    (repo / "f.txt").write_text("2")
    _git(repo, "commit", "-qam", "head")
    head = _git(repo, "rev-parse", "HEAD")
    conf = json.loads((PROJECT / "asv.conf.json").read_text())
    conf["benchmark_dir"] = str(PROJECT / "bench")
    (repo / "asv.conf.json").write_text(json.dumps(conf))
    return store.load_config(repo / "asv.conf.json"), base, head


MINI = textwrap.dedent('''
    description = "a slice of the smoke suite"
    [[gemm]]
    model = "tiny"
    m = [1, 3]
    layers = ["o_proj"]
    backends = ["torch-bf16", "torch-dequant", "flashinfer-cudnn"]
    autotune = ["off"]
    samples = 12
    warmup = 1
    [[decode]]
    model = "tiny-hybrid"
    batch = [1]
    input_len = 8
    backends = ["torch-dequant"]
    autotune = ["off"]
    output_len = 8
''')


@pytest.fixture
def mini(tmp_path):
    p = tmp_path / "mini.toml"
    p.write_text(MINI)
    return str(p)


def _asv(conf, *args):
    return subprocess.run([sys.executable, "-m", "asv", *args, "--config", str(conf.path)],
                          capture_output=True, text=True, cwd=conf.path.parent)


@pytest.mark.slow
def test_record_smoke_twice_then_asv_compare_and_publish(project):
    conf, base, head = project
    for sha in (base, head):
        rec = record.record("smoke", conf, commit=sha)
        assert rec.results_path.exists() and rec.run_path.exists()
        assert {c.status for c in rec.cells} <= {"ok", "skipped"}
        assert any(c.status == "ok" and c.kind == "decode" for c in rec.cells)
    machine = rec.machine
    saved = json.loads(rec.results_path.read_text())
    assert saved["commit_hash"] == head and saved["params"]["machine"] == machine
    gpu = detect(measure_bandwidth=False).gpu_name or "none"
    assert saved["params"]["gpu"] == gpu and "torch" in saved["params"]
    assert (conf.results_dir / machine / "machine.json").exists()

    out = _asv(conf, "compare", base, head, "--machine", machine)
    assert out.returncode == 0, out.stderr
    assert "gemm.track_smoke('tiny', 'o_proj', 1, 'torch-bf16', 'off')" in out.stdout
    assert "decode.track_smoke('tiny-hybrid', 1, 8, 'torch-ref', 'off', 'native')" in out.stdout
    pub = _asv(conf, "publish")
    assert pub.returncode == 0, pub.stderr + pub.stdout
    index = json.loads((conf.html_dir / "index.json").read_text())
    assert "gemm.track_smoke" in index["benchmarks"]
    assert list((conf.html_dir / "graphs").rglob("gemm.track_smoke.json"))
    # our compare of the same two commits: measured noise only, no planted change
    assert main(["compare", base[:8], head[:8], "--config", str(conf.path)]) in (0, 1)


def _plant(conf, sha, cells, env="nvfp4-bench", sm="none"):
    benchmarks = store.write_benchmarks(conf)
    info = {"machine": "planted", "arch": "x86_64", "cpu": "c", "num_cpu": "2", "os": "l",
            "ram": "1", "gpu": "none", "sm": sm}
    store.write_machine(conf, info)
    return store.save_cells(conf, "planted", sha, env, store.commit_date_ms(conf.repo, sha),
                            store.result_params(info, "3.11", store.label_of(env)), cells,
                            benchmarks)


def _gemm(backend, samples, layer="o_proj", m=1, autotune="off", status="ok"):
    import statistics
    return GemmCell(model="tiny", layer=layer, n=128, k=128, m=m, backend=backend,
                    autotune=autotune, status=status, samples_s=samples,
                    median_s=statistics.median(samples) if samples else None)


def _decode(backend, samples_step, batch=1, autotune="off"):
    import statistics
    return DecodeCell(model="tiny-hybrid", batch=batch, input_len=8, output_len=len(samples_step),
                      backend=backend, autotune=autotune, status="ok", samples_s=samples_step,
                      median_step_s=statistics.median(samples_step))


def _noise(center, n=40, rel=0.01, seed=0):
    rng = random.Random(seed)
    return [center * (1 + rng.gauss(0, rel)) for _ in range(n)]


def test_compare_flags_a_planted_slowdown_and_not_noise(project, capsys):
    conf, base, head = project
    _plant(conf, base, [_gemm("torch-bf16", _noise(1e-3, seed=1)),
                        _gemm("torch-dequant", _noise(2e-3, seed=2)),
                        _decode("torch-dequant", _noise(5e-3, seed=3))])
    _plant(conf, head, [_gemm("torch-bf16", _noise(1.10e-3, seed=4)),     # 10% slower
                        _gemm("torch-dequant", _noise(2.01e-3, seed=5)),  # 0.5%: noise
                        _decode("torch-dequant", _noise(4.0e-3, seed=6))])  # 25% faster
    rows = compare.compare(store.resolve(conf, "planted", base), store.resolve(conf, "planted", head))
    by = {(r.params[3] if r.bench == "gemm" else "decode"): r for r in rows}
    assert by["torch-bf16"].verdict == compare.SLOWER and by["torch-bf16"].significant
    assert by["torch-bf16"].ratio == pytest.approx(1.10, rel=0.02)
    assert by["torch-dequant"].verdict == compare.SAME
    assert by["decode"].verdict == compare.FASTER
    assert main(["compare", base, head, "--config", str(conf.path)]) == 1
    md = capsys.readouterr().out
    assert "**1 slower**" in md and "| gemm[tiny, o_proj, 1, torch-bf16, off]" in md
    import re
    assert re.search(r"\| \+2[4-6]\.\d% \|", md)  # decode also shown as a tokens/s change
    # without the slowdown: exit 0
    _plant(conf, head, [_gemm("torch-bf16", _noise(1.002e-3, seed=7))])
    assert main(["compare", base, head, "--config", str(conf.path)]) == 0


def test_compare_missing_failed_and_labels(project):
    conf, base, head = project
    _plant(conf, base, [_gemm("torch-bf16", _noise(1e-3)), _gemm("torch-dequant", _noise(2e-3))],
           env=store.env_name("fi-0.7.1"))
    _plant(conf, base, [_gemm("torch-bf16", _noise(1e-3)),
                        _gemm("torch-dequant", [], status="failed")],
           env=store.env_name("fi-0.7.2"))
    rows = compare.compare(store.resolve(conf, "planted", "fi-0.7.1"),
                           store.resolve(conf, "planted", "fi-0.7.2"))
    by = {r.params[3]: r for r in rows}
    assert by["torch-dequant"].verdict == compare.FAILED
    assert compare.regressions(rows) == [by["torch-dequant"]]  # newly failing counts
    assert main(["compare", "fi-0.7.1", "fi-0.7.2", "--config", str(conf.path)]) == 1
    assert main(["compare", "fi-0.7.1", "nope", "--config", str(conf.path)]) == 2
    # the gate of a labelled run says which label it read, not only the commit
    verdicts = gate.gate(conf, "planted", "fi-0.7.2")
    assert verdicts and all(v.label == "fi-0.7.2" for v in verdicts)
    assert f"at `{base[:8]}` (run label `fi-0.7.2`)" in gate.markdown(verdicts)


CLAIMS = textwrap.dedent('''
    [[claim]]
    id = "bf16-beats-dequant"
    title = "t"
    kind = "gemm"
    expected_ratio = {expected}
    tolerance = 0.05
    applies_to = ["none"]
    new = {{ model = "tiny", layer = "o_proj", m = 1, backend = "torch-bf16" }}
    old = {{ model = "tiny", layer = "o_proj", m = 1, backend = "torch-dequant" }}

    [[claim]]
    id = "sm120-only"
    title = "t"
    kind = "decode"
    expected_ratio = 1.17
    applies_to = ["SM120"]
    new = {{ model = "tiny-hybrid", batch = 1, backend = "torch-dequant" }}
    old = {{ model = "tiny-hybrid", batch = 1, backend = "torch-ref" }}

    [[claim]]
    id = "absent"
    title = "t"
    kind = "decode"
    expected_ratio = 1.0
    applies_to = []
    new = {{ model = "tiny-hybrid", batch = 2, backend = "torch-bf16" }}
    old = {{ model = "tiny-hybrid", batch = 2, backend = "torch-ref" }}
''')


def test_gate_pass_fail_not_applicable_no_data(project, tmp_path, capsys):
    conf, base, head = project
    _plant(conf, head, [_gemm("torch-bf16", _noise(1e-3)), _gemm("torch-dequant", _noise(1.3e-3, seed=9))])
    claims = tmp_path / "claims.toml"
    claims.write_text(CLAIMS.format(expected=1.25))
    verdicts = {v.claim.id: v for v in gate.gate(conf, claims=gate.load_claims(claims))}
    v = verdicts["bf16-beats-dequant"]
    assert v.verdict == gate.PASS and v.ratio == pytest.approx(1.3, rel=0.02)
    assert v.ci99[0] < v.ratio < v.ci99[1] and v.ci99[1] - v.ci99[0] < 0.1
    assert verdicts["sm120-only"].verdict == gate.NA and "SM120" in verdicts["sm120-only"].reason
    assert verdicts["absent"].verdict == gate.NO_DATA
    assert main(["gate", "--config", str(conf.path), "--claims", str(claims)]) == 0
    claims.write_text(CLAIMS.format(expected=1.5))
    assert main(["gate", "--config", str(conf.path), "--claims", str(claims), "--json",
                 str(tmp_path / "g.json")]) == 1
    assert json.loads((tmp_path / "g.json").read_text())[0]["verdict"] == "fail"
    assert main(["gate", "--config", str(conf.path), "--claims", str(claims), "--only", "x"]) == 2


def test_gate_and_report_read_each_claim_where_its_cells_are(project, tmp_path, capsys):
    """Suites are recorded apart: a newer commit with other cells does not hide a claim's
    cells, and the report compares the newest two runs that share cells."""
    conf, base, head = project
    (later,) = _commits(conf, 1)
    _plant(conf, base, [_gemm("torch-bf16", _noise(1e-3)), _gemm("torch-dequant", _noise(1.3e-3, seed=9))])
    _plant(conf, head, [_gemm("torch-bf16", _noise(1e-3, seed=3)),
                        _gemm("torch-dequant", _noise(1.3e-3, seed=4))])
    _plant(conf, later, [_decode("torch-dequant", _noise(5e-3))])  # another suite only
    claims = tmp_path / "claims.toml"
    claims.write_text(CLAIMS.format(expected=1.25))
    verdicts = {v.claim.id: v for v in gate.gate(conf, claims=gate.load_claims(claims))}
    assert verdicts["bf16-beats-dequant"].verdict == gate.PASS
    assert verdicts["bf16-beats-dequant"].commit == head  # the newest run with its cells
    assert verdicts["absent"].commit == later
    print(gate.markdown(list(verdicts.values())))
    out = capsys.readouterr().out
    assert f"`{head[:8]}`" in out and f"`{later[:8]}`" in out and "| at |" in out
    # an explicit commit is read as it is
    assert gate.gate(conf, rev=later, claims=gate.load_claims(claims))[0].verdict == gate.NO_DATA
    from harness import report
    (h,) = report.gather(conf, claims=gate.load_claims(claims)).histories
    assert (h.base.commit, h.head.commit) == (base, head)


def test_project_claims_file_is_valid():
    claims = {c.id: c for c in gate.load_claims()}
    pr = claims["sglang-pr26496"]
    assert pr.expected_ratio == 1.17 and pr.applies_to == ["SM120", "SM121"]
    assert "40.82" in pr.source_figures and "48.05" in pr.source_figures
    assert pr.new["backend"] == "flashinfer-cutlass" and pr.new["autotune"] == "on"
    assert pr.old["backend"] == "flashinfer-cudnn" and pr.old["autotune"] == "off"
    from harness import suite
    # every claim's cells are recorded by some suite
    for c in claims.values():
        for side in (c.new, c.old):
            assert any(all(dict(zip(gate.FIELDS[c.kind], store.cell_params(cell))).get(k) == v
                           for k, v in side.items())
                       for name in suite.available() for cell in suite.load(name).cells()
                       if cell.kind == c.kind), (c.id, side)


@pytest.mark.slow
def test_interrupted_record_resumes(project, mini, monkeypatch):
    conf, base, head = project
    from harness import decode as decode_mod

    real = decode_mod.run

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(decode_mod, "run", boom)
    with pytest.raises(KeyboardInterrupt):
        record.record(mini, conf, commit=base)
    partial = list(conf.partial_dir.rglob("*.jsonl"))
    assert len(partial) == 1 and len(partial[0].read_text().splitlines()) == 6  # gemm cells kept
    assert not list(conf.results_dir.rglob("*-nvfp4-bench.json"))

    from harness import gemm as gemm_mod
    monkeypatch.setattr(decode_mod, "run", real)
    calls = []
    real_gemm = gemm_mod.run
    monkeypatch.setattr(gemm_mod, "run", lambda cells, *a, **k: (calls.append(len(cells)), real_gemm(cells, *a, **k))[1])
    rec = record.record(mini, conf, commit=base)
    assert rec.resumed == 6 and calls == []  # only the decode cell ran
    assert rec.results_path.exists() and not partial[0].exists()
    entry = store.resolve(conf, rec.machine, base)
    vals = {p: v for p, v, s in entry.cells_of("gemm")}
    assert vals[("tiny", "o_proj", 3, "torch-bf16", "off")] > 0


@pytest.mark.slow
def test_record_merges_suites_and_records_failed_as_null(project, mini, tmp_path, monkeypatch):
    conf, base, head = project
    monkeypatch.setenv("NVFP4_BENCH_PLUGINS", "plugin_backends")
    monkeypatch.setenv("PYTHONPATH", worker_env.pythonpath(Path(__file__).parent))
    rec = record.record(mini, conf, commit=head)
    doc = json.loads(rec.results_path.read_text())
    cols = doc["result_columns"]
    gem = dict(zip(cols, doc["results"]["gemm.track_smoke"]))
    assert gem["samples"] is not None and any(s for s in gem["samples"] if s)
    # a second suite on the same commit keeps the first one's cells
    other = tmp_path / "other.toml"
    other.write_text(MINI.replace('backends = ["torch-bf16", "torch-dequant", "flashinfer-cudnn"]',
                                  'backends = ["torch-ref"]').split("[[decode]]")[0])
    record.record(str(other), conf, commit=head)
    entry = store.resolve(conf, rec.machine, head)
    vals = {p: v for p, v, s in entry.cells_of("gemm")}
    assert vals[("tiny", "o_proj", 1, "torch-bf16", "off")] > 0
    assert vals[("tiny", "o_proj", 1, "torch-ref", "off")] > 0
    # a failed cell is asv's failed value (null), not a number
    _plant(conf, base, [_gemm("torch-bf16", [], status="failed")])
    e = store.resolve(conf, "planted", base)
    assert e.value("gemm.track_smoke", ("tiny", "o_proj", 1, "torch-bf16", "off"))[0] is None


def test_corrupt_results_are_named(project, capsys):
    conf, base, head = project
    path = _plant(conf, base, [_gemm("torch-bf16", _noise(1e-3))])
    path.write_text(path.read_text()[:40])
    assert store.entries(conf, "planted") == []  # named and skipped
    assert path.name in capsys.readouterr().err
    conf.strict = True
    with pytest.raises(ResultsFileError, match=path.name):
        store.entries(conf, "planted")
    assert main(["gate", "--config", str(conf.path)]) == 2  # nothing readable is left
    assert main(["gate", "--config", str(conf.path), "--strict"]) == 2
    assert path.name in capsys.readouterr().err
    bad_conf = conf.path.parent / "bad.json"
    bad_conf.write_text("{")
    assert main(["gate", "--config", str(bad_conf)]) == 2


def test_lock_keeps_writers_apart(project):
    conf, base, head = project
    with store.locked(conf):
        with pytest.raises(store.StoreError, match="held by pid"):
            with store.locked(conf, wait_s=0.3):
                pass
    with store.locked(conf, wait_s=0.3):
        pass  # released


def test_unknown_suite_lists_valid_names(project):
    conf, base, head = project
    assert main(["record", "--suite", "nope", "--config", str(conf.path)]) == 2
    from harness import suite
    with pytest.raises(ValueError, match="valid suites: .*hopper.*smoke"):
        suite.load("nope")
    assert set(suite.available()) >= {"smoke", "hopper", "gemm-sm120", "decode-sm120", "claim-pr26496"}


def test_shards_partition_the_cells():
    from harness import suite
    cells = suite.load("hopper").cells()
    parts = [suite.shard(cells, i, 3) for i in range(3)]
    assert all(parts) and sum(len(p) for p in parts) == len(cells)
    assert len({c.key for p in parts for c in p}) == len(cells)
    for p in parts:  # a (model, backend, autotune) group never straddles shards
        for c in p:
            assert all(d in p for d in cells if (d.kind, d.model, d.backend, d.autotune)
                       == (c.kind, c.model, c.backend, c.autotune))
    with pytest.raises(ValueError):
        suite.parse_shard("3/3")


def test_import_pytest_benchmark(project, tmp_path):
    conf, base, head = project
    t = tmp_path / "test_k.py"
    t.write_text(textwrap.dedent('''
        import pytest
        @pytest.mark.parametrize("n", [10, 1000])
        def test_sum(benchmark, n):
            benchmark(sum, range(n))
    '''))
    out = tmp_path / "pb.json"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(t),
                    f"--benchmark-json={out}", "--benchmark-save-data", "--benchmark-max-time=0.02",
                    "--benchmark-min-rounds=20"], check=True, capture_output=True, cwd=tmp_path)
    assert main(["import-pytest-benchmark", str(out), "--config", str(conf.path),
                 "--commit", base, "--machine", "planted"]) == 0
    benchmarks = store.read_benchmarks(conf)
    b = benchmarks["pytest.test_k.test_sum"]
    # pytest's own parameter name and values
    assert b["param_names"] == ["n"] and b["params"] == [["10", "1000"]] and b["unit"] == "seconds"
    assert "gemm.track_smoke" in benchmarks  # our own benchmarks stay listed
    entry = store.resolve(conf, "planted", base)
    (p10, v10, s10), (p1000, v1000, s1000) = entry.cells("pytest.test_k.test_sum")
    assert p10 == (10,) and len(s10) >= 20 and v1000 > v10 > 0
    r = _asv(conf, "compare", base, base, "--machine", "planted")
    assert r.returncode == 0 and "pytest.test_k.test_sum(10)" in r.stdout
    # ... and the report shows them
    from harness import report
    page = report.render(report.gather(conf), tmp_path / "rep").read_text()
    assert "pytest-benchmark suites at" in page and "pytest.test_k.test_sum[1000]" in page
    out.write_text('{"benchmarks": [{"name": "x"}]}')
    assert main(["import-pytest-benchmark", str(out), "--config", str(conf.path)]) == 2


def test_committed_baselines_pass_the_gate(capsys):
    """The recorded H200 history under baselines/ is readable and its SM90 claims hold; with
    the H100 history beside it, a command that reads one machine asks which."""
    results = str(PROJECT / "baselines" / "results")
    conf = store.load_config(results=PROJECT / "baselines" / "results")
    assert store.machines(conf) == ["h100-80gb-hbm3-sm90", "h200-sm90"]
    verdicts = {v.claim.id: v for v in gate.gate(conf, machine="h200-sm90")}
    assert verdicts["triton-autotune-decode"].verdict == gate.PASS
    assert verdicts["sglang-pr26496"].verdict == gate.NA and "SM90" in verdicts["sglang-pr26496"].reason
    assert main(["gate", "--results", results, "--machine", "h200-sm90"]) == 0
    assert main(["compare", "ce228aa1", "d8591b4b", "--results", results,
                 "--machine", "h200-sm90"]) in (0, 1)
    capsys.readouterr()
    assert main(["gate", "--results", results]) == 2
    assert "several machines" in capsys.readouterr().err
    h100 = {v.claim.id: v for v in gate.gate(conf, machine="h100-80gb-hbm3-sm90")}
    assert h100["triton-autotune-gemm"].verdict == gate.PASS


@pytest.mark.slow
def test_record_spreads_cells_over_gpu_processes(project, mini):
    """--gpus 2: one process per device, each a shard; the parent merges their cells."""
    conf, base, head = project
    from harness import suite
    cells = suite.load(mini).cells()
    assert all(suite.shard(cells, i, 2) for i in range(2))  # both processes get work
    rec = record.record(mini, conf, commit=base, gpus=2)
    assert rec.results_path.exists()
    assert len(rec.cells) == 7 and all(c.status in ("ok", "skipped") for c in rec.cells)
    assert not list(conf.partial_dir.rglob("*.jsonl"))
    entry = store.resolve(conf, rec.machine, base)
    gem = {p: v for p, v, s in entry.cells_of("gemm")}
    dec = {p: v for p, v, s in entry.cells_of("decode")}
    assert len(gem) == 4 and len(dec) == 1  # 4 timed GEMM cells + 1 decode cell


def test_asv_benchmarks_are_one_grid_per_suite_block():
    sys.path.insert(0, str(PROJECT / "bench"))
    try:
        import decode as bench_decode
        import gemm as bench_gemm
    finally:
        sys.path.remove(str(PROJECT / "bench"))
    from harness import suite
    from harness.measure import timing_version
    f = bench_gemm.track_smoke
    assert f.unit == "seconds" and f.param_names == list(store.GEMM_PARAMS)
    assert f.params[0] == ["tiny"] and f.version == timing_version("gemm")
    # every grid point of every block is a cell of that block: nothing asv runs is unplanned
    for kind in ("gemm", "decode"):
        for g in suite.grids(kind):
            s = suite.load(g.suite)
            cells = s.gemm_blocks()[g.index][1] if kind == "gemm" else \
                s._decode_block(s.decode[g.index])
            n = 1
            for v in g.values:
                n *= len(v)
            assert n == len(cells), g.bench
            assert {store.cell_params(c) for c in cells} == set(itertools.product(*g.values))
    assert "decode.track_hopper_in2048" in {g.bench for g in suite.grids("decode")}
    out = f("tiny", "o_proj", 1, "torch-bf16", "off")
    assert out["number"] == 1 and len(out["samples"]) == 15 and 0 < min(out["samples"]) < 1
    from asv_runner.benchmarks.mark import SkipNotImplemented
    with pytest.raises(SkipNotImplemented, match="flashinfer cudnn needs"):
        f("tiny", "o_proj", 1, "flashinfer-cudnn", "off")  # asv records it as skipped
    per_token = bench_decode.track_smoke("tiny-hybrid", 2, 8, "torch-dequant", "off", "native")
    assert len(per_token["samples"]) == 8 and 0 < min(per_token["samples"]) < 1


def test_compare_says_when_the_timing_method_changed(project, capsys):
    from harness.records import write_run
    conf, base, head = project

    def run(sha, method, suite="mini", name=None):
        cell = _gemm("torch-bf16", _noise(1e-3, seed=len(method)))
        cell.timing_method = method
        _plant(conf, sha, [cell])
        extra = {"suite": suite, "commit": sha} if suite else {}
        write_run(conf.runs_dir / "planted" / (name or f"{sha[:8]}-nvfp4-bench-{suite}.json"),
                  {}, [cell], extra=extra)

    run(base, "cuda-graph+events cold-L2")
    run(head, "cuda-graph+events cold-L2")
    # an ad-hoc run stored beside the record (no suite) does not speak for the history
    run(head, "something else", suite=None, name=f"{head[:8]}-nvfp4-bench-adhoc.json")
    main(["compare", base, head, "--config", str(conf.path)])
    assert "timing method changed" not in capsys.readouterr().out
    run(head, "cuda-graph+kernel-span cold-L2(read)")
    main(["compare", base, head, "--config", str(conf.path)])
    md = capsys.readouterr().out
    assert "timing method changed" in md
    assert "gemm: base `cuda-graph+events cold-L2`, head `cuda-graph+kernel-span cold-L2(read)`" in md


def test_asv_date_is_the_commit_date_and_says_when_it_cannot_be(project):
    conf, base, head = project
    from harness.store import git
    said = []
    assert store.commit_date_ms(conf.repo, head, said.append) == int(git(conf.repo, "log", "-1", "--format=%ct", head)) * 1000
    assert said == []
    unknown = "0123456789abcdef0123456789abcdef01234567"
    t0 = __import__("time").time() * 1000
    assert store.commit_date_ms(conf.repo, unknown, said.append) >= t0
    assert said and "not in" in said[0] and "record time" in said[0]


def test_pytest_benchmark_import_keeps_its_stats_and_the_files_machine(project, tmp_path):
    """A file without raw samples keeps pytest-benchmark's own quartiles, rounds and
    iterations; a file measured on another host is stored under that host, with its facts."""
    import json
    conf, base, head = project
    doc = {"machine_info": {"node": "GPU-Box-7", "machine": "aarch64", "system": "Linux",
                            "release": "6.8", "python_version": "3.12.3",
                            "cpu": {"brand_raw": "Grace", "count": 72}},
           "commit_info": {"id": base},
           "benchmarks": [{"name": "test_mm[64]", "fullname": "bench/test_mm.py::test_mm[64]",
                           "params": {"m": 64}, "param": "64",
                           "stats": {"median": 2e-5, "q1": 1.9e-5, "q3": 2.2e-5, "rounds": 40,
                                     "iterations": 5, "min": 1.8e-5, "max": 3e-5}}]}
    f = tmp_path / "other.json"
    f.write_text(json.dumps(doc))
    assert main(["import-pytest-benchmark", str(f), "--config", str(conf.path)]) == 0
    info = json.loads((conf.results_dir / "gpu-box-7" / "machine.json").read_text())
    assert info["cpu"] == "Grace" and info["arch"] == "aarch64" and info["num_cpu"] == "72"
    res = store.load_results(store.results_path(conf, "gpu-box-7", base, store.env_name(None)))
    stats = res.get_result_stats("pytest.test_mm.test_mm", [["64"]])
    assert stats == [{"q_25": 1.9e-5, "q_75": 2.2e-5, "repeat": 40, "number": 5}]
    assert res.get_result_value("pytest.test_mm.test_mm", [["64"]]) == [2e-5]


def test_pytest_benchmark_params_that_are_not_scalars_go_by_their_test_id(tmp_path):
    """A fixture parameter holding a list ([256, 4096]) is an asv parameter by its test id."""
    import json
    from harness import pytest_import
    doc = {"benchmarks": [
        {"name": f"test_q[{i}]", "fullname": f"b/test_h.py::test_q[{i}]", "params": {"weight": w},
         "param": i, "stats": {"median": 1e-5}} for i, w in (("256x4096", [256, 4096]),
                                                               ("2048x4096", [2048, 4096]))]}
    f = tmp_path / "h.json"
    f.write_text(json.dumps(doc))
    _, entries, values = pytest_import.parse(f)
    e = entries["pytest.test_h.test_q"]
    assert e["param_names"] == ["weight"] and e["params"] == [["'2048x4096'", "'256x4096'"]]


def _commits(conf, n):
    """n more commits on the project fixture's repository, oldest first."""
    out = []
    for i in range(n):
        (conf.repo / "f.txt").write_text(f"extra {i}")
        _git(conf.repo, "commit", "-qam", f"extra {i}")
        out.append(_git(conf.repo, "rev-parse", "HEAD"))
    return out


def test_compare_gives_asvs_own_verdicts(project):
    """`nvfp4-bench compare` and `asv compare --factor 1.05` mark the same cells."""
    conf, base, head = project
    _plant(conf, base, [_gemm("torch-bf16", _noise(1e-3, seed=1)),
                        _gemm("torch-dequant", _noise(2e-3, seed=2)),
                        _gemm("torch-ref", _noise(3e-3, seed=3)),
                        _gemm("torch-fp8", _noise(1e-3, seed=4))])
    _plant(conf, head, [_gemm("torch-bf16", _noise(1.10e-3, seed=5)),   # slower
                        _gemm("torch-dequant", _noise(1.8e-3, seed=6)),  # faster
                        _gemm("torch-ref", _noise(3.03e-3, seed=7)),     # within the factor
                        _gemm("torch-fp8", [], status="failed")])        # newly failing
    ours = {r.params[3]: r.verdict for r in compare.compare(
        store.resolve(conf, "planted", base), store.resolve(conf, "planted", head))}
    out = _asv(conf, "compare", base, head, "--machine", "planted", "--factor", "1.05")
    assert out.returncode == 0, out.stderr
    marks = {}
    for line in out.stdout.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) == 5:
            marks[cols[4]] = cols[0]
    asv_verdict = {"+": compare.SLOWER, "-": compare.FASTER, "": compare.SAME,
                   "!": compare.FAILED}
    for backend in ("torch-bf16", "torch-dequant", "torch-ref", "torch-fp8"):
        mark = marks[f"gemm.track_smoke('tiny', 'o_proj', 1, '{backend}', 'off')"]
        assert ours[backend] == asv_verdict[mark], (backend, mark)


@pytest.mark.slow
def test_publish_works_offline_labels_are_series_and_regressions_reach_the_report(project, tmp_path):
    conf, base, head = project
    later = _commits(conf, 4)
    commits = [base, head, *later]
    # a lasting 30% step at the fourth commit, and a labelled run of the last commit
    for i, sha in enumerate(commits):
        _plant(conf, sha, [_gemm("torch-bf16", _noise(1e-3 if i < 3 else 1.3e-3, seed=i))])
    _plant(conf, commits[-1], [_gemm("torch-bf16", _noise(2e-3, seed=9))],
           env=store.env_name("fi-x"))
    assert main(["publish", "--config", str(conf.path)]) == 0
    site = conf.html_dir
    page = (site / "index.html").read_text()
    assert "cdn" not in page and "https://code.jquery.com" not in page
    assert (site / "jquery-3.3.1.min.js").exists() and (site / "bootstrap-3.1.0.min.css").exists()
    index = json.loads((site / "index.json").read_text())
    assert set(index["params"]["label"]) == {None, "fi-x"}  # a series of its own
    graphs = [str(p) for p in (site / "graphs").rglob("gemm.track_smoke.json")]
    assert any("label-fi-x" in g for g in graphs) and any("label-fi-x" not in g for g in graphs)
    from harness.report import asv_site
    (reg,) = asv_site.regressions(site)
    assert reg.commit == commits[3] and reg.ratio == pytest.approx(1.3, rel=0.05)
    assert "torch-bf16" in reg.benchmark and reg.machine == "planted"
    from harness import report
    lines = []
    html_page = report.render(report.gather(conf), tmp_path / "rep", log=lines.append).read_text()
    assert lines[-1].startswith("progress: 1/1 report sections")
    assert "Regressions asv found" in html_page and commits[3][:8] in html_page
    assert "SGLang PR #26496" in html_page.split("<div class='summary'>")[0]  # the headline
