"""The real FlashInfer, as the ``flashinfer-*`` backends meet it: import, its own support
tables, its refusals and its tuner.

FlashInfer guards each GEMM API with ``@backend_requirement``: before any kernel runs, a
wrapper checks the backend against its compute-capability table and the call against the
backend's problem-size checker, and raises ``BackendSupportedError`` or ``ValueError`` (or a
library error from a checker) in its own words. Those refusals are what a cell reports as
``skipped``; anything raised once the wrapped function itself runs is a real failure.
"""

from __future__ import annotations

import importlib
import types

import torch

from harness.hardware import compute_capability

INSTALL_HINT = "install it with: pip install 'nvfp4-bench[flashinfer]'"
# Compute capabilities asked of FlashInfer's tables when no GPU is here to name one.
KNOWN_SMS = (80, 86, 87, 89, 90, 100, 103, 107, 110, 120, 121)


class BackendRefused(Exception):
    """The library refused this call for this GPU or shape before running anything; the
    message is the library's own. Cells that meet it are ``skipped``, not ``failed``."""


def module():
    return importlib.import_module("flashinfer")


def try_import() -> tuple[types.ModuleType | None, str]:
    """(flashinfer, "") or (None, why it is not importable)."""
    try:
        return module(), ""
    except Exception as e:  # noqa: BLE001 - any import failure is a reason to skip
        return None, (f"flashinfer-python is not importable ({type(e).__name__}: "
                      f"{str(e).strip()[:200]}); {INSTALL_HINT}")


def version(fi) -> str:
    return str(getattr(fi, "__version__", "?"))


def supported_sms(api, backend: str) -> tuple[int, ...]:
    """The compute capabilities FlashInfer's own table lists for ``api(backend=...)``."""
    if backend == "auto":
        return tuple(sm for sm in KNOWN_SMS if api.is_compute_capability_supported(sm))
    return tuple(sm for sm in KNOWN_SMS if api.is_backend_supported(backend, sm))


def sm_list(sms) -> str:
    return "/".join(f"SM{s}" for s in sms) or "no GPU it knows"


def _requirement_frames(tb) -> list[str]:
    """Function names of the frames below FlashInfer's ``backend_requirement`` wrapper."""
    names: list[str] = []
    inside = False
    while tb is not None:
        code = tb.tb_frame.f_code
        if inside:
            names.append(code.co_name)
        elif code.co_name == "wrapper" and code.co_filename.replace("\\", "/").endswith(
                "flashinfer/utils.py"):
            inside = True
        tb = tb.tb_next
    return names if inside else ["<not through backend_requirement>"]


# Frames of the wrapper's own checks (flashinfer-python 0.7.x): the problem-size check, the
# auto backend search and the support table. The decorated API's body is never among them.
_CHECK_FRAMES = {"_is_problem_size_supported", "suitable_auto_backends", "is_backend_supported",
                 "is_compute_capability_supported", "_get_capability"}


def refusal(e: BaseException) -> str | None:
    """FlashInfer's words when ``e`` was raised by its requirement checks, else None."""
    frames = _requirement_frames(e.__traceback__)
    if frames and frames[0] not in _CHECK_FRAMES:
        return None  # raised after the checks passed: the call itself failed
    msg = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {msg[:400]}"


def call(fi, api_name: str, *args, **kwargs):
    """``fi.<api_name>(*args, **kwargs)``, a refusal by its checks raised as BackendRefused."""
    try:
        return getattr(fi, api_name)(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - classified, then re-raised
        why = refusal(e)
        if why is None:
            raise
        raise BackendRefused(f"flashinfer {version(fi)} {api_name} refuses: {why}") from e


def device_refusal(fi, api_name: str, backend: str, sm: int, probe) -> str | None:
    """Why FlashInfer's table refuses ``backend`` on this GPU, in its own words, or None.

    Where the table says no, ``probe()`` makes the call on the GPU: the wrapper refuses it
    before any kernel, and its message is the reason."""
    api = getattr(fi, api_name)
    ok = (api.is_compute_capability_supported(sm) if backend == "auto"
          else api.is_backend_supported(backend, sm))
    if ok:
        return None
    try:
        call(fi, api_name, *probe(), backend=backend)
    except BackendRefused as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - the table said no; keep its verdict
        return (f"flashinfer {version(fi)} lists {api_name} backend {backend!r} for "
                f"{sm_list(supported_sms(api, backend))}, not SM{sm} ({type(e).__name__})")
    return (f"flashinfer {version(fi)} lists {api_name} backend {backend!r} for "
            f"{sm_list(supported_sms(api, backend))}, not SM{sm}")


def availability(api_name: str, backend: str, what: str, fallback_sms, device: torch.device,
                 probe) -> str | None:
    """Why ``fi.<api_name>(backend=...)`` cannot run on ``device``, or None: FlashInfer's own
    table and words where it is installed, ``fallback_sms`` only to name the GPUs where not."""
    fi, why = try_import()
    sms = supported_sms(getattr(fi, api_name), backend) if fi is not None else fallback_sms
    if device.type != "cuda":
        return f"{what} needs an NVIDIA GPU ({sm_list(sms)}); this machine has none"
    sm = compute_capability(device)
    if fi is None:
        return why if sm in sms else f"{what} needs {sm_list(sms)}; this GPU is SM{sm}"
    return device_refusal(fi, api_name, backend, sm, lambda: probe(device))


def fresh_tuner() -> str:
    """Empty FlashInfer's in-process tuning cache, so the next tune starts from nothing and
    no tactic of an earlier cell is reused. Returns the cache state to record."""
    autotuner = importlib.import_module("flashinfer.autotuner")
    tuner = autotuner.AutoTuner.get()
    tuner.clear_cache()
    return "flashinfer AutoTuner cache cleared before tuning; no cache file"


def tune(run, passes: int = 3) -> None:
    """``passes`` calls of ``run()`` inside ``flashinfer.autotuner.autotune(True)``: FlashInfer
    profiles every tactic of every candidate runner and keeps the fastest for later calls."""
    autotune = importlib.import_module("flashinfer.autotuner").autotune
    with autotune(True):
        for _ in range(passes):
            run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class FlashInferGemm:
    """What every ``flashinfer-*`` backend shares (mixed in before ``GemmBackend``): one
    FlashInfer GEMM API (``api``) called with the backend's ``arguments()``, its refusals
    raised as BackendRefused, tuning inside ``autotune(True)`` from a cleared cache."""

    api: str = ""
    fi_backend: str = ""
    what: str = ""  # how skip reasons name it where FlashInfer is absent
    fallback_sms: dict[str, tuple[int, ...]] = {}

    def refused(self, device: torch.device, probe) -> str | None:
        return availability(self.api, self.fi_backend, self.what,
                            self.fallback_sms[self.fi_backend], device, probe)

    def arguments(self, prepared, x: torch.Tensor, x_global_scale: torch.Tensor) -> tuple[tuple, dict]:
        raise NotImplementedError

    def run(self, prepared, x, x_global_scale):
        args, kwargs = self.arguments(prepared, x, x_global_scale)
        return call(module(), self.api, *args, **kwargs)

    def tune(self, prepared, x, x_global_scale):
        tune(lambda: self.run(prepared, x, x_global_scale))

    def fresh_tuning(self) -> str:
        return fresh_tuner()
