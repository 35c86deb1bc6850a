"""scripts/setup.sh decides by the machine: what it would do (NVFP4_BENCH_SETUP_PLAN=1), and
its stop on a GPU box without torch. Nothing is installed by these tests."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "setup.sh"


def _setup(tmp_path, python, gpu_cuda=None, plan=True, **extra_env):
    """Run set-up from a copy of the scripts (so no ./.venv of the checkout is seen)."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True, exist_ok=True)
    (root / "scripts" / "setup.sh").write_text(SETUP.read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # This machine's GPU, whatever the real one: an nvidia-smi that reports one GPU and its
    # driver's CUDA, or one that finds none.
    smi = bin_dir / "nvidia-smi"
    if gpu_cuda is not None:
        smi.write_text("#!/bin/sh\n"
                       "if [ \"$1\" = -L ]; then echo 'GPU 0: NVIDIA H200 (UUID: GPU-0)'; exit 0; fi\n"
                       f"echo '| NVIDIA-SMI 580.159  Driver Version: 580.159  CUDA Version: {gpu_cuda} |'\n")
    else:
        smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed: no devices were found'\nexit 9\n")
    smi.chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    env = dict(os.environ, PYTHON=str(python), PATH=path)
    env.pop("NVFP4_BENCH_VENV", None)
    env.update(extra_env)
    if plan:
        env["NVFP4_BENCH_SETUP_PLAN"] = "1"
    return subprocess.run(["bash", str(root / "scripts" / "setup.sh"), "test"], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """An interpreter without torch (a fresh venv without the system's packages)."""
    d = tmp_path_factory.mktemp("bare")
    venv.EnvBuilder(with_pip=False).create(d)
    py = d / "bin" / "python"
    assert subprocess.run([py, "-c", "import torch"], capture_output=True).returncode != 0
    return py


def test_torch_in_a_venv_is_used_as_it_is(tmp_path):
    out = _setup(tmp_path, sys.executable)  # the tests' own interpreter has torch
    assert out.returncode == 0, out.stderr
    if sys.prefix != sys.base_prefix or os.environ.get("CONDA_PREFIX"):
        assert out.stdout.strip() == (f"nvfp4-bench setup plan: torch in a venv or conda env: "
                                      f"install into {sys.executable}")
    else:
        assert "torch system-wide: venv" in out.stdout and "--system-site-packages" in out.stdout


def test_no_torch_and_no_gpu_gets_a_venv_with_the_cpu_build(tmp_path, bare_python):
    out = _setup(tmp_path, bare_python)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (f"nvfp4-bench setup plan: no torch, no GPU: venv "
                                  f"{tmp_path / 'checkout' / '.venv'}")
    assert not (tmp_path / "checkout" / ".venv").exists()  # a plan creates nothing


def test_a_gpu_without_torch_is_told_which_build_to_install(tmp_path, bare_python):
    out = _setup(tmp_path, bare_python, gpu_cuda="12.8", plan=False)
    assert out.returncode == 1
    assert "has an NVIDIA GPU but" in out.stderr and "supports CUDA 12.8" in out.stderr
    assert "--index-url https://download.pytorch.org/whl/cu128" in out.stderr
    assert not (tmp_path / "checkout" / ".venv").exists()  # and nothing was installed


def test_a_forced_venv_sees_the_system_packages(tmp_path, bare_python):
    env_dir = tmp_path / "mine"
    out = _setup(tmp_path, bare_python, NVFP4_BENCH_VENV=str(env_dir))
    assert out.stdout.strip() == (f"nvfp4-bench setup plan: NVFP4_BENCH_VENV: venv {env_dir} "
                                  f"--system-site-packages")
