import os
import sys

import pytest
import torch

# Without a GPU the Triton kernels run under the interpreter; the mode is fixed when
# triton first decorates a kernel, so it is set before any test module imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


@pytest.fixture
def cpu():
    import torch
    return torch.device("cpu")
