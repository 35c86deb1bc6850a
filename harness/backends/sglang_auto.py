"""``sglang-auto``: SGLang's own ``--fp4-gemm-backend auto``, a name for SGLang's engines only.

Not FlashInfer's ``auto`` (``flashinfer-auto``: b12x first on SM120 with CUDA >= 12.9, then
cutlass, then cudnn): SGLang decides for itself by GPU (flashinfer_cutedsl on SM100, marlin on
SM80-SM90, flashinfer_cutlass otherwise, SM120 included, sglang 0.5.16-0.5.23). There is no
GEMM to run here, so the native engine and GEMM cells skip it with that reason.
"""

from __future__ import annotations

import torch

from harness.backends.base import Availability, GemmBackend

# What SGLang's auto runs, by compute capability (DESIGN.md section 5).
SGLANG_AUTO = {100: "flashinfer_cutedsl", 103: "flashinfer_cutedsl", 80: "marlin",
               86: "marlin", 89: "marlin", 90: "marlin"}


def sglang_auto_choice(sm: int | None) -> str:
    return SGLANG_AUTO.get(sm or 0, "flashinfer_cutlass")


class SGLangAuto(GemmBackend):
    name = "sglang-auto"
    math = "w4a4"
    family = "nvfp4"
    tunable = True
    native = False  # not a GEMM of its own: `--backends all` leaves it out
    description = "SGLang's --fp4-gemm-backend auto (SGLang's engines only)"

    def availability(self, device: torch.device) -> Availability:
        return Availability.no("sglang-auto is SGLang's own --fp4-gemm-backend auto (SGLang "
                               "chooses by GPU); it runs only with --engine sglang or "
                               "sglang-server")
