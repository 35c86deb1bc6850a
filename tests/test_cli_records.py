"""The nvfp4-bench command and results files."""

import json
import subprocess
import sys

import pytest

from harness import cli
from harness.records import (GemmCell, ResultsFileError, append_jsonl, read_jsonl, read_run,
                             write_run)

REQUIRED = {"kind", "model", "layer", "n", "k", "m", "backend", "autotune", "status", "reason",
            "median_s", "ci99_s", "samples_s", "health"}


def test_gemm_json_and_tables(tmp_path, capsys):
    out = tmp_path / "run.json"
    rc = cli.main(["gemm", "--model", "tiny", "--m", "1,3", "--backends",
                   "torch-ref,torch-bf16,flashinfer-cudnn", "--autotune", "on,off",
                   "--samples", "3", "--warmup", "1", "--in-process", "--quiet", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    # What this machine says, whatever it is (a CPU CI runner, an SM90 box, ...).
    from harness.backends import get_backend
    from harness.hardware import default_device, detect
    cudnn = get_backend("flashinfer-cudnn").availability(default_device())
    assert "choice map" in text
    if not cudnn.ok:  # one line per skip reason, not a row per cell
        assert f"skipped: flashinfer-cudnn autotune=off, 8 cells: {cudnn.reason}" in text
        assert text.count(cudnn.reason) == 2  # on and off
    doc, cells = read_run(out)
    assert doc["environment"]["machine"] == detect(measure_bandwidth=False).machine_name()
    assert len(cells) == 4 * 2 * 3 * 2
    for c in doc["cells"]:
        assert REQUIRED <= set(c)
    statuses = {(c.backend, c.autotune): c.status for c in cells}
    assert statuses[("torch-bf16", "off")] == "ok"
    assert statuses[("flashinfer-cudnn", "on")] == ("skipped" if not cudnn.ok else "ok")
    assert len(doc["choice_map"]) == 8
    assert all(ch["winner"] == "torch-bf16/off" for ch in doc["choice_map"])


@pytest.mark.parametrize("argv,needle", [
    (["gemm", "--model", "qwen9"], "valid models: qwen3.6-27b"),
    (["gemm", "--model", "tiny", "--backends", "cublas"], "valid backends: torch-ref"),
    (["gemm", "--model", "tiny", "--autotune", "sometimes"], "autotune must be one of"),
])
def test_cli_usage_errors_exit_2(argv, needle, capsys):
    assert cli.main(argv) == 2
    assert needle in capsys.readouterr().err


def test_cli_bad_m_is_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["gemm", "--model", "tiny", "--m", "1,x"])
    assert e.value.code == 2


def test_env_json_command():
    r = subprocess.run([sys.executable, "-m", "harness.cli", "env", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    env = json.loads(r.stdout)
    assert env["copy_bandwidth_Bps"] > 0 and env["machine"]


def test_results_files_atomic_and_named_errors(tmp_path):
    p = tmp_path / "r.json"
    write_run(p, {"machine": "x"}, [GemmCell(model="m", layer="l", n=1, k=16, m=1,
                                             backend="b", autotune="off", health={"rel_err": float("nan")})])
    doc, cells = read_run(p)
    assert cells[0].health == {"rel_err": None}  # NaN is not JSON; it becomes null
    assert not list(tmp_path.glob(".r.json.*"))  # no temp file left behind
    p.write_text(p.read_text()[:40])
    with pytest.raises(ResultsFileError, match=r"r\.json: corrupt or truncated"):
        read_run(p)
    with pytest.raises(ResultsFileError, match="no such results file"):
        read_run(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"cells": [{"kind": "weird"}]}')
    with pytest.raises(ResultsFileError, match="bad.json: malformed cell"):
        read_run(tmp_path / "bad.json")


def test_cli_reports_corrupt_file_by_name(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "broken.json"
    bad.write_text("{")

    def read_it(args):
        read_run(bad)
    monkeypatch.setattr(cli, "cmd_env", read_it)
    args = cli.build_parser().parse_args(["env"])
    args.func = read_it
    monkeypatch.setattr(cli.build_parser().__class__, "parse_args", lambda self, argv=None: args)
    assert cli.main(["env"]) == 2
    assert "broken.json: corrupt or truncated JSON" in capsys.readouterr().err


def test_jsonl_torn_tail(tmp_path):
    p = tmp_path / "c.jsonl"
    append_jsonl(p, {"a": 1})
    append_jsonl(p, {"a": 2})
    with open(p, "a") as f:
        f.write('{"a": 3')  # crash mid-write
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    p.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    warned = []
    assert read_jsonl(p, warn=warned.append) == [{"a": 1}, {"a": 2}]  # garbage never blocks
    assert len(warned) == 1 and "line 2 dropped" in warned[0]


def test_progress_says_n_of_n_and_about_how_long_is_left():
    from harness.progress import Progress
    now = [0.0]
    said = []
    p = Progress("GEMM", 4, said.append, every_s=10, clock=lambda: now[0])
    now[0] = 5
    p.tick()
    assert said == []  # not yet 10 s since the last line
    now[0] = 12
    p.tick()
    assert said == ["progress: 2/4 GEMM cells, 0m12s, about 0m12s left"]
    now[0] = 13
    p.tick(2)
    assert said[-1] == "progress: 4/4 GEMM cells, 0m13s"


def test_progress_counts_the_cells_a_run_reports():
    from harness.progress import Progress
    seen, said = [], []
    p = Progress("decode", 2, said.append, every_s=1e9)
    done = p.counting(seen.append)
    done("a")
    done("b")
    assert seen == ["a", "b"] and p.done == 2 and said == ["progress: 2/2 decode cells, 0m00s"]
