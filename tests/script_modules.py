"""The project's scripts (``scripts/*.py``, not a package) loaded as modules, so tests call
their functions rather than run them as processes."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    """``scripts/<name>.py`` executed as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
