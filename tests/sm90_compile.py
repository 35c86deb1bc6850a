"""Kernels compiled for sm_90a on a machine without a GPU, by Triton's own compiler and the
ptxas it ships, in a fresh interpreter: the CPU test run sets TRITON_INTERPRET (conftest),
and inside the whole suite an in-process sm_90a compile failed."""

import json
import os
import subprocess
import sys

import worker_env


def run_compile(script: str, arg):
    """Run a compile script in a fresh interpreter without TRITON_INTERPRET, this checkout
    importable, ``arg`` as its JSON argument -> the JSON of its last output line."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = worker_env.pythonpath(root)
    done = subprocess.run([sys.executable, "-c", script, json.dumps(arg)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
