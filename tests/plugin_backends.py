"""Misbehaving backends for tests, loaded through NVFP4_BENCH_PLUGINS (workers too)."""

import os
import time

from harness.backends import register
from harness.backends.torch_bf16 import TorchBF16


class _Broken(TorchBF16):
    def __init__(self, name, mode):
        self.name, self.mode = name, mode

    def run(self, prepared, x, x_global_scale):
        out = super().run(prepared, x, x_global_scale)
        if self.mode == "nan" and x.shape[0] >= 3:
            out[1, 5] = float("nan")
        elif self.mode == "zero" and x.shape[0] >= 3:
            out[2] = 0
        elif self.mode == "inf" and x.shape[0] >= 3:
            out[0, 0] = float("inf")
        elif self.mode == "crash" and x.shape[0] == 3:
            os._exit(7)  # a native-library crash: no exception, the process is gone
        elif self.mode == "raise" and x.shape[0] == 3:
            raise RuntimeError("kernel launch failed")
        elif self.mode == "hang" and x.shape[0] == 3:
            time.sleep(600)  # a kernel that never returns: only a kill ends this worker
        return out


for mode in ("nan", "zero", "inf", "crash", "raise", "hang"):
    register(_Broken(f"test-{mode}", mode))
