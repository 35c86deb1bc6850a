"""Nothing lost, nothing confusing: torn journals, full disks, killed records, shards,
concurrent records, bad history files, unwritable outputs, a closed stdout, bad numbers,
orphaned workers."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness import cli, record, records, store
from harness import gemm as gemm_mod
from harness.records import append_jsonl, read_jsonl, read_run
import worker_env
from procs import alive, children, gone
from test_store import project  # noqa: F401 - the git repository + asv config fixture

SUITE = textwrap.dedent('''
    [[gemm]]
    model = "tiny"
    m = [1, 3, 16]
    layers = ["o_proj", "down_proj"]
    backends = ["torch-bf16", "torch-dequant"]
    autotune = ["off"]
    samples = 3
    warmup = 0
''')  # 12 cells, two backend groups (a shard takes whole groups)


@pytest.fixture
def suite(tmp_path):
    p = tmp_path / "faults.toml"
    p.write_text(SUITE)
    return str(p)


@pytest.fixture
def measured(monkeypatch):
    """GEMM cells 'measured' at once (the journal, not the timing, is under test); the list
    holds the keys of the cells each call measured."""
    calls = []

    def fake_run(cells, opts, log=lambda s: None, on_cell=lambda c: None):
        calls.append([c.key for c in cells])
        for c in cells:
            c.status, c.samples_s, c.median_s = "ok", [1e-5, 1.1e-5, 1.2e-5], 1.1e-5
            on_cell(c)
        return cells
    monkeypatch.setattr(gemm_mod, "run", fake_run)
    return calls


def _partial(conf):
    (p,) = list(conf.partial_dir.rglob("*.jsonl"))
    return p


def _interrupt_after(monkeypatch, n):
    """The journal's append raises KeyboardInterrupt once ``n`` cells are in."""
    real, count = records.append_jsonl, [0]

    def append(path, obj):
        if count[0] == n:
            raise KeyboardInterrupt
        count[0] += 1
        real(path, obj)
    monkeypatch.setattr(record, "append_jsonl", append)
    return real


def test_torn_journal_resumes_with_a_warning_and_loses_only_the_torn_cell(
        project, suite, measured, monkeypatch):  # noqa: F811
    conf, base, head = project
    real = _interrupt_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        record.record(suite, conf, commit=base)
    monkeypatch.setattr(record, "append_jsonl", real)
    p = _partial(conf)
    os.truncate(p, p.stat().st_size - 40)  # the last record torn, as a kill mid-write leaves it
    logs = []
    rec = record.record(suite, conf, commit=base, log=logs.append)
    assert rec.results_path.exists() and rec.resumed == 3
    assert [len(k) for k in measured] == [12, 9]  # the torn cell was measured again
    assert any(str(p) in m and "line 4 dropped" in m for m in logs), logs
    assert {c.status for c in rec.cells} == {"ok"} and len(rec.cells) == 12
    # and the next run of another commit is not blocked by anything left behind
    assert record.record(suite, conf, commit=head).results_path.exists()


def test_garbage_in_the_journal_is_dropped_not_fatal(tmp_path):
    p = tmp_path / "c.jsonl"
    append_jsonl(p, {"a": 1})
    with open(p, "a") as f:
        f.write("not json\n\x00\x01garbage\n")
    append_jsonl(p, {"a": 2})
    with open(p, "a") as f:
        f.write('{"a": 3')
    warned = []
    assert read_jsonl(p, warn=warned.append) == [{"a": 1}, {"a": 2}]
    assert [w.split(": ", 1)[1][:14] for w in warned] == ["line 2 dropped", "line 3 dropped",
                                                        "line 5 dropped"]
    assert records.repair_jsonl(p) == [{"a": 1}, {"a": 2}]
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n'  # appends now start on a clean line


def test_full_disk_while_recording_keeps_finished_cells(
        project, suite, measured, monkeypatch, capsys):  # noqa: F811
    conf, base, _ = project
    real, count = records.append_jsonl, [0]

    def append(path, obj):
        if count[0] == 2:
            with open(path, "a") as f:
                f.write('{"kind": "gemm", "mod')  # half a line, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        count[0] += 1
        real(path, obj)
    monkeypatch.setattr(record, "append_jsonl", append)
    rc = cli.main(["record", "--suite", suite, "--config", str(conf.path), "--commit", base])
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device" in err and "Traceback" not in err
    monkeypatch.setattr(record, "append_jsonl", real)
    rec = record.record(suite, conf, commit=base)
    assert rec.resumed == 2 and rec.results_path.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_record_keeps_the_cells_its_worker_finished(project, tmp_path):  # noqa: F811
    """A record killed (a CI timeout, an OOM kill) while its worker is inside a cell keeps
    the cells that worker finished before: they reach the journal while the worker runs."""
    conf, base, _ = project
    hang = tmp_path / "hang.toml"
    hang.write_text(textwrap.dedent('''
        [[gemm]]
        model = "tiny"
        m = [1, 3]
        layers = ["o_proj"]
        backends = ["test-hang"]
        autotune = ["off"]
        samples = 3
        warmup = 0
    '''))  # M=1 finishes, M=3 never returns
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, NVFP4_BENCH_PLUGINS="plugin_backends",
               PYTHONPATH=worker_env.pythonpath(tests.parent, tests))
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "record", "--suite", str(hang),
                             "--config", str(conf.path), "--commit", base], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, journal = time.monotonic() + 120, []
        while not journal and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            journal = [d for f in conf.partial_dir.rglob("*.jsonl") for d in read_jsonl(f)]
        assert proc.poll() is None, proc.stderr.read()
        workers = children(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert [(d["m"], d["status"]) for d in journal] == [(1, "ok")]
    assert workers and gone(workers)
    assert [d["m"] for d in read_jsonl(_partial(conf))] == [1]


def test_shards_of_one_commit_make_one_run_record(project, suite, measured):  # noqa: F811
    conf, base, _ = project
    a = record.record(suite, conf, commit=base, shard="0/2")
    b = record.record(suite, conf, commit=base, shard="1/2")
    assert a.run_path == b.run_path
    doc, cells = read_run(b.run_path)
    assert doc["shards"] == ["0/2", "1/2"]
    assert a.cells and b.cells
    assert len(cells) == 12 and {c.key for c in cells} == {c.key for c in a.cells + b.cells}


def test_a_second_record_of_the_same_run_is_refused(project, suite, measured, capsys):  # noqa: F811
    conf, base, _ = project
    from harness import suite as suite_mod
    from harness.hardware import detect
    s = suite_mod.load(suite)
    partial = store.partial_file(conf, detect(measure_bandwidth=False).machine_name(), base,
                                 store.env_name("c"), s.name)
    with store.record_lock(partial, "the first"):
        rc = cli.main(["record", "--suite", suite, "--config", str(conf.path), "--commit", base,
                       "--label", "c"])
        err = capsys.readouterr().err
        assert rc == 2 and "another record of" in err and f"pid {os.getpid()}" in err
    assert measured == [] and not partial.exists()  # nothing of the refused run was kept
    # another label of the same commit is another run: it may go ahead
    assert record.record(suite, conf, commit=base, label="d").results_path.exists()


def _two_commits(conf, base, head, suite):
    record.record(suite, conf, commit=base)
    record.record(suite, conf, commit=head)
    machine = store.machines(conf)[0]
    return machine, sorted((conf.results_dir / machine).glob("*-nvfp4-bench.json"))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_one_bad_history_file_is_named_and_skipped_by_every_reader(
        project, suite, measured, damage, tmp_path, capsys):  # noqa: F811
    conf, base, head = project
    machine, files = _two_commits(conf, base, head, suite)
    # a third, unrelated run whose file goes bad
    record.record(suite, conf, commit=head, label="other")
    bad = conf.results_dir / machine / f"{head[:8]}-nvfp4-bench-other.json"
    if damage == "truncated":
        bad.write_text(bad.read_text()[:100])
    else:
        bad.write_bytes(b"\x00garbage")
    args = ["--config", str(conf.path)]
    capsys.readouterr()
    assert cli.main(["compare", base[:8], head[:8], *args]) in (0, 1)
    assert cli.main(["gate", "--commit", head[:8], *args]) == 0
    out_dir = tmp_path / "rep"
    assert cli.main(["report", "--output", str(out_dir), *args]) == 0
    page = (out_dir / "index.html").read_text()
    assert bad.name in page and "0 machine histories" not in page
    assert cli.main(["publish", *args]) == 0
    err = capsys.readouterr().err
    assert bad.name in err and "skipped" in err and "Traceback" not in err
    index = json.loads((conf.html_dir / "index.json").read_text())
    assert index["benchmarks"]  # the good files were published
    for cmd in (["compare", base[:8], head[:8]], ["gate"], ["publish"],
                ["report", "--output", str(out_dir)]):
        assert cli.main([*cmd, *args, "--strict"]) == 2, cmd
        assert bad.name in capsys.readouterr().err


def test_outputs_that_cannot_be_written_are_refused_before_measuring(
        tmp_path, capsys, measured):
    (tmp_path / "file").write_text("x")
    for argv in (["gemm", "--model", "tiny", "--m", "1", "--backends", "torch-bf16",
                  "--autotune", "off", "--json", "/proc/nope/x.json"],
                 ["gemm", "--model", "tiny", "--m", "1", "--backends", "torch-bf16",
                  "--autotune", "off", "--json", str(tmp_path / "file" / "x.json")],
                 ["decode", "--model", "tiny", "--json", str(tmp_path / "file" / "d.json")],
                 ["report", "--no-history", "--output", str(tmp_path / "file")]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "cannot write" in err and "Traceback" not in err
    assert measured == []


def test_a_run_that_cannot_be_saved_after_measuring_is_kept(tmp_path, monkeypatch, capsys):
    real = records.atomic_write_text
    target = tmp_path / "run.json"

    def full(path, text):
        if str(path) == str(target):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, text)
    monkeypatch.setattr(records, "atomic_write_text", full)
    rc = cli.main(["gemm", "--model", "tiny", "--m", "1", "--layers", "o_proj", "--backends",
                   "torch-bf16", "--autotune", "off", "--samples", "3", "--warmup", "0",
                   "--in-process", "--quiet", "--json", str(target)])
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device" in err and "the run is kept in" in err
    kept = err.split("the run is kept in ")[1].split()[0]
    doc, cells = read_run(kept)
    assert cells[0].status == "ok" and cells[0].samples_s
    os.unlink(kept)


def test_filesystem_errors_and_closed_stdout_are_one_line(
        project, suite, measured, tmp_path, monkeypatch, capsys):  # noqa: F811
    conf, base, head = project
    _two_commits(conf, base, head, suite)
    from harness import report
    monkeypatch.setattr(report, "render", lambda data, out, **kw: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device", str(out / "index.html"))))
    assert cli.main(["report", "--config", str(conf.path), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("index.html: No space left on device") and "Traceback" not in err
    # `nvfp4-bench gate | head -1`: the reader goes away
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "gate", "--config",
                             str(conf.path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    proc.stdout.close()  # before it writes anything
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err and "Exception" not in err, err
    assert "output closed before it was all written" in err


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        records.atomic_write_text(tmp_path / "f.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("argv,needle", [
    (["gemm", "--model", "tiny", "--samples", "0"], "--samples: must be at least 1"),
    (["gemm", "--model", "tiny", "--samples", "-3"], "--samples: must be at least 1"),
    (["gemm", "--model", "tiny", "--warmup", "-1"], "--warmup: must be at least 0"),
    (["decode", "--model", "tiny", "--profile", "-1"], "--profile: must be at least 0"),
    (["decode", "--model", "tiny", "--input-len", "0"], "--input-len: must be at least 1"),
    (["compare", "a", "b", "--threshold", "-1"], "--threshold: must be between 0 and 1"),
    (["compare", "a", "b", "--threshold", "1.5"], "--threshold: must be between 0 and 1"),
])
def test_bad_numbers_exit_2_with_the_valid_range(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_compile_without_a_gpu_is_refused(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli.main(["decode", "--model", "tiny", "--compile"]) == 2
    assert "--compile needs a GPU" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_their_parent():
    code = ("import subprocess, sys, time\n"
            "from harness.isolate import die_with_parent\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
            " preexec_fn=die_with_parent())\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert gone([child], within=10)
