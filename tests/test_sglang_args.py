"""Every flag the SGLang adapters pass, checked against the real sglang package (0.5.23, in
./.sglang-parsers, installed by scripts/setup.sh apart from the test environment): server
arguments through SGLang's own parser (ServerArgs.add_cli_args, which checks choices too),
the one-batch and serving benchmarks' own flags against the parsers in their source."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.engines import sglang, sglang_server

ROOT = Path(__file__).resolve().parent.parent
PARSERS = ROOT / ".sglang-parsers"

if not (PARSERS / "sglang").is_dir():
    if os.environ.get("NVFP4_BENCH_REQUIRE_SGLANG_PARSERS"):  # CI: a skip would hide a break
        raise RuntimeError(f"{PARSERS} holds no sglang (scripts/setup.sh installs it)")
    pytest.skip("SGLang's argument parsers are not installed here (scripts/setup.sh puts them "
                "in .sglang-parsers where an index is reachable)", allow_module_level=True)

PARSE = r'''
import argparse, json, sys
from sglang.srt.server_args import ServerArgs
p = argparse.ArgumentParser(exit_on_error=False)
ServerArgs.add_cli_args(p)
out = []
for argv in json.loads(sys.stdin.read()):
    try:
        ns, rest = p.parse_known_args(argv)
        out.append({"ok": True, "rest": rest, "args": {k: v for k, v in vars(ns).items()
                    if k in ("model_path", "quantization", "fp4_gemm_runner_backend",
                             "disable_flashinfer_autotune", "host", "port")}})
    except (argparse.ArgumentError, SystemExit) as e:
        out.append({"ok": False, "error": str(e)})
import sglang.version as v
print(json.dumps({"version": v.__version__, "results": out}))
'''


def _server_args(commands: list[list[str]]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(PARSERS))
    proc = subprocess.run([sys.executable, "-c", PARSE], input=json.dumps(commands), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _source_flags(module: str) -> set[str]:
    """The option strings a module's own argparse calls declare."""
    path = PARSERS / (module.replace(".", "/") + ".py")
    flags = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant)
                      and isinstance(a.value, str) and a.value.startswith("-")}
    return flags


def test_server_and_one_batch_commands_parse_with_sglangs_own_parser():
    cmds = [sglang_server.server_command("/ckpt", b, a, 31000)[3:]
            for b in sglang.FP4_GEMM_BACKEND for a in ("on", "off")]
    one_batch = [sglang.build_command("/ckpt", b, a, [1, 8], 1024, 128, "r.jsonl")[3:]
                 for b in sglang.FP4_GEMM_BACKEND for a in ("on", "off")]
    got = _server_args(cmds + one_batch)
    assert got["version"] == "0.5.23"
    res = got["results"]
    for argv, r in zip(cmds + one_batch, res):
        assert r["ok"], (argv, r)
        a = r["args"]
        assert a["model_path"] == "/ckpt" and a["quantization"] == "modelopt_fp4"
        assert a["fp4_gemm_runner_backend"] == argv[argv.index("--fp4-gemm-backend") + 1]
        assert a["disable_flashinfer_autotune"] == ("--disable-flashinfer-autotune" in argv)
    for r in res[:len(cmds)]:  # the server takes every flag we pass
        assert r["rest"] == [] and r["args"]["host"] == "127.0.0.1" and r["args"]["port"] == 31000
    # what the server parser leaves of a one-batch command is the one-batch benchmark's own
    bench = _source_flags("sglang.benchmark.one_batch")
    for r in res[len(cmds):]:
        assert {x for x in r["rest"] if x.startswith("--")} <= bench, r["rest"]


def test_sglangs_parser_refuses_what_it_does_not_take():
    """The check can fail: a backend name SGLang does not know is refused with its choices."""
    res = _server_args([["--model-path", "m", "--fp4-gemm-backend", "cudnn"]])["results"]
    assert not res[0]["ok"] and "flashinfer_cutlass" in res[0]["error"]


def test_serving_command_flags_are_the_serving_benchmarks_own():
    cmd = sglang_server.serving_command("/ckpt", 31000, 1024, 128, 4, "out.jsonl")
    flags = {x for x in cmd if x.startswith("--")}
    assert flags <= _source_flags("sglang.benchmark.serving")
    assert "--no-such-flag" not in _source_flags("sglang.benchmark.serving")
