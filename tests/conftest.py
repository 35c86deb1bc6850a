import os
import sys
import tempfile

import pytest
import torch

# Without a GPU the Triton kernels run under the interpreter; the mode is fixed when
# triton first decorates a kernel, so it is set before any test module imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Records write asv's machine file too (~/.asv-machine.json): the tests' go to a scratch one.
os.environ.setdefault("NVFP4_BENCH_ASV_MACHINE_FILE",
                      os.path.join(tempfile.mkdtemp(prefix="nvfp4-asv-machine-"), "machine.json"))

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


@pytest.fixture
def cpu():
    import torch
    return torch.device("cpu")
