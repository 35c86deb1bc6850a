"""asv environment ``overlay``: asv builds and installs each commit of this project into a
small venv of its own, over the Python that already has torch, triton and FlashInfer.

asv's own environment types cannot serve a GPU box: ``existing`` measures only the working
tree (``asv continuous`` and ``asv find`` refuse it, and ``asv run`` of a range times the
same code for every commit), and ``virtualenv``/``conda`` install every dependency afresh,
which means a second multi-GB CUDA torch, from a registry many GPU machines cannot reach.
An overlay venv sees the interpreter's packages (its site directories, added by a ``.pth``
file, in the interpreter's own order) behind its own site-packages, where asv installs the
commit being measured; nothing is downloaded and the user's environment is never written.

    asv run -E overlay:same ...                  the Python running asv (the default)
    asv run -E overlay:/opt/conda/bin/python ... another interpreter (it needs asv_runner)

The project is built with ``pip wheel --no-deps --no-build-isolation`` (asv.conf.json), so
setuptools must be importable there too; scripts/setup.sh installs both. Packages the
interpreter finds only through PYTHONPATH are not site directories: asv drops PYTHONPATH and
passes its own ``ASV_PYTHONPATH`` on instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from asv import environment, util
from asv.console import log

from harness.store import ENV_PREFIX

_QUERY = r"""
import importlib.util, json, site, sys
dirs = list(site.getsitepackages())
if site.ENABLE_USER_SITE and site.getusersitepackages() not in dirs:
    dirs.append(site.getusersitepackages())
print(json.dumps({"version": "%d.%d" % sys.version_info[:2], "site": dirs,
                  "asv_runner": importlib.util.find_spec("asv_runner") is not None,
                  "setuptools": importlib.util.find_spec("setuptools") is not None,
                  "pip": importlib.util.find_spec("pip") is not None}))
"""
_PTH = "_nvfp4_bench_overlay.pth"


def _interpreter(python: str) -> str:
    if python in ("same", "", None):
        return sys.executable
    if python == f"{sys.version_info[0]}.{sys.version_info[1]}":
        return sys.executable  # asv's default `pythons`: the version running asv
    exe = f"python{python}" if python[:1].isdigit() else python
    return os.path.abspath(util.which(exe))


def _describe(exe: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # asv drops it too
    out = subprocess.run([exe, "-c", _QUERY], capture_output=True, text=True, env=env,
                         timeout=120)
    if out.returncode != 0:
        raise environment.EnvironmentUnavailable(
            f"overlay: {exe} cannot be run ({out.stderr.strip()[-300:]})")
    return json.loads(out.stdout)


class Overlay(environment.Environment):
    tool_name = "overlay"
    matches_python_fallback = False

    def __init__(self, conf, python, requirements, tagged_env_vars):
        try:
            self._executable = _interpreter(python)
        except OSError:
            raise environment.EnvironmentUnavailable(
                f"overlay: no interpreter {python!r} (give a path, 'same' or X.Y)") from None
        self._info = _describe(self._executable)
        missing = [m for m in ("asv_runner", "setuptools", "pip") if not self._info[m]]
        if missing:
            raise environment.EnvironmentUnavailable(
                f"overlay: {self._executable} lacks {', '.join(missing)}; install them there "
                f"(scripts/setup.sh does) or name another interpreter")
        if requirements:
            log.warning(f"overlay: the requirements matrix {requirements} is ignored: the "
                        f"interpreter's own packages are measured")
        super().__init__(conf, self._info["version"], {}, tagged_env_vars)

    @classmethod
    def matches(cls, python):
        try:
            _interpreter(python)
        except OSError:
            return False
        return True

    @property
    def name(self):
        # The name our own `record` stores under, so asv's runs and records of one commit
        # share one results file and one series.
        return ENV_PREFIX

    @property
    def dir_name(self):
        import hashlib
        return hashlib.md5(f"overlay:{self._executable}".encode()).hexdigest()

    def _site(self) -> str:
        return os.path.join(self._path, "lib", f"python{self._python}", "site-packages")

    def check_presence(self):
        try:
            info = self.load_info_file(self._path)
        except (util.UserError, OSError):
            return False
        if info != {"tool_name": self.tool_name, "python": self._python,
                    "requirements": {}, "build_env_vars": self.build_env_vars}:
            return False
        try:
            with open(os.path.join(self._site(), _PTH)) as f:
                if f.read() != self._pth_text():
                    return False  # the interpreter's site directories changed: rebuild
        except OSError:
            return False
        return os.path.exists(os.path.join(self._path, "bin", "python"))

    def _pth_text(self) -> str:
        dirs = [d for d in self._info["site"] if os.path.isdir(d)]
        # One line, statements only: site.py execs an "import" line of a .pth file
        return "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n"

    def _setup(self):
        log.info(f"Creating an overlay venv over {self._executable}")
        util.check_call([self._executable, "-m", "venv", "--without-pip", self._path])
        with open(os.path.join(self._site(), _PTH), "w") as f:
            f.write(self._pth_text())

    def run(self, args, **kwargs):
        log.debug(f"Running '{' '.join(args)}' in {self.name}")
        return self.run_executable("python", args, **kwargs)
