"""The import path of the worker processes a test starts."""

import os


def pythonpath(*dirs) -> str:
    """PYTHONPATH for a worker: ``dirs`` first (a test's plugin or fake package), then this
    process's own PYTHONPATH, so a GPU box whose extra packages come from it keeps them."""
    return os.pathsep.join(filter(None, [*map(str, dirs), os.environ.get("PYTHONPATH")]))
