"""The serving path (--engine sglang-server) against real local HTTP server processes: start,
health wait, timeout, crash, stop of the whole process group, a port in use."""

import json
import socket
import sys

import pytest

import fake_sglang_server
import worker_env
from procs import gone
from harness import decode
from harness.engines import sglang_server


@pytest.fixture
def fake(tmp_path, monkeypatch):
    site = tmp_path / "site"
    fake_sglang_server.install(site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", worker_env.pythonpath(site))
    log = tmp_path / "servers.jsonl"
    monkeypatch.setenv("FAKE_SGLANG_LOG", str(log))
    monkeypatch.setenv("NVFP4_BENCH_SGLANG_SERVER_TIMEOUT", "20")
    monkeypatch.setattr(sglang_server, "STOP_GRACE_S", 2.0)
    monkeypatch.setattr(sglang_server, "PROMPTS_PER_STREAM", 3)
    for name in [m for m in sys.modules if m == "sglang" or m.startswith("sglang.")]:
        monkeypatch.delitem(sys.modules, name)
    import importlib
    importlib.invalidate_caches()
    return log


def _records(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _cells(batches=(1,), backends=("flashinfer-cutlass",), autotunes=("on",)):
    return decode.plan("qwen3.6-27b", list(batches), 16, 6, list(backends), list(autotunes),
                       engine="sglang-server")


def test_serving_cells_from_a_real_server(fake, tmp_path):
    cells = _cells([1, 2], ["flashinfer-cudnn", "flashinfer-cutlass"], ["on", "off"])
    decode.run(cells, decode.DecodeOptions(checkpoint=str(tmp_path / "model")))
    by = {(c.backend, c.autotune, c.batch): c for c in cells}
    servers = [r for r in _records(fake) if "argv" in r]
    # one server per (backend, autotune); SGLang never tunes cudnn, so its "on" is skipped
    assert len(servers) == 3
    assert by[("flashinfer-cudnn", "on", 1)].status == "skipped"
    assert len({r["cache"] for r in servers}) == 3 and all(r["reuse"] == "0" for r in servers)
    for r in servers:
        argv = r["argv"]
        assert argv[argv.index("--host") + 1] == "127.0.0.1"
        assert argv[argv.index("--model-path") + 1] == str(tmp_path / "model")
        assert argv[argv.index("--quantization") + 1] == "modelopt_fp4"
    for key in [("flashinfer-cutlass", "on", 1), ("flashinfer-cutlass", "off", 2),
                ("flashinfer-cudnn", "off", 1)]:
        c = by[key]
        assert c.status == "ok", c.reason
        assert c.tokens_per_s == pytest.approx(c.batch / c.median_step_s)
        assert c.serving["completed"] == 3 * c.batch
        assert c.serving["per_stream_decode_tokens_per_s"] == pytest.approx(1 / c.median_step_s)
        assert c.serving["output_throughput"] > 0 and c.serving["p99_itl_ms"] > 0
        assert c.engine_info["server_command"][2] == "sglang.launch_server"
        assert c.engine_info["serving_command"][2] == "sglang.benchmark.serving"
        assert "--max-concurrency" in c.engine_info["serving_command"]
    # the fake decodes a token in 3 ms tuned, 4 ms untuned: the ratio comes through
    ratio = (by[("flashinfer-cutlass", "on", 1)].tokens_per_s
             / by[("flashinfer-cudnn", "off", 1)].tokens_per_s)
    assert 1.1 < ratio < 1.6
    assert gone([r["pid"] for r in servers])


@pytest.mark.parametrize("mode,needle", [
    ("never-healthy", "not healthy after 3 s"),
    ("die", "the server exited"),
])
def test_a_server_that_fails_makes_failed_cells_and_leaves_nothing(fake, monkeypatch, mode,
                                                                   needle):
    monkeypatch.setenv("FAKE_SERVER_MODE", mode)
    monkeypatch.setenv("NVFP4_BENCH_SGLANG_SERVER_TIMEOUT", "3")
    cells = _cells([1, 2])
    decode.run(cells, decode.DecodeOptions())
    assert all(c.status == "failed" for c in cells), [c.reason for c in cells]
    assert all(needle in c.reason for c in cells), [c.reason for c in cells]
    # the server's own last lines come with the cell
    assert all("server log: serving mmangkad/Qwen3.6-27B-NVFP4" in c.reason for c in cells)
    assert gone([r["pid"] for r in _records(fake) if "pid" in r])


@pytest.mark.parametrize("mode", ["orphan", "slow"])
def test_stop_ends_the_whole_process_group(fake, monkeypatch, mode):
    monkeypatch.setenv("FAKE_SERVER_MODE", mode)
    cells = _cells([1])
    decode.run(cells, decode.DecodeOptions())
    assert cells[0].status == "ok", cells[0].reason
    recs = _records(fake)
    pids = [r["pid"] for r in recs if "pid" in r] + [r["child"] for r in recs if "child" in r]
    assert len(pids) == (2 if mode == "orphan" else 1)
    assert gone(pids)  # a child that ignores SIGTERM, or a server that does, is killed


def test_a_port_in_use_is_a_failed_cell_with_the_servers_words(fake, monkeypatch):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    monkeypatch.setattr(sglang_server, "free_port", lambda: port)
    try:
        cells = _cells([1])
        decode.run(cells, decode.DecodeOptions())
    finally:
        holder.close()
    c = cells[0]
    assert c.status == "failed" and "before it was healthy" in c.reason
    assert "Address already in use" in c.reason


def test_without_sglang_the_cells_are_skipped(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sglang" else real(name, *a))
    cells = _cells([1])
    decode.run(cells, decode.DecodeOptions())
    assert cells[0].status == "skipped" and "sglang is not importable" in cells[0].reason
