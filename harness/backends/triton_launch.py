"""Eager launches of the ``triton`` backend's kernels without Triton's per-call Python work.

A call through ``triton.autotune`` / ``JITFunction.run`` binds every argument, computes the
specialization and cache keys, checks globals and (in the autotuner) looks up the tuned
config: tens of microseconds of host time per call, more than a decode-size GEMM takes on
the GPU. Graph replays hide it; eager callers (prefill, engines without CUDA graphs) pay it.

:class:`Launch` resolves one (layer, M, launch options) once, after Triton has launched it
normally: the compiled kernel (from Triton's own cache, by ``warmup``), its grid and its
bound argument list, in which only the activation, output and weight tensors change from
call to call. Later calls go straight to the compiled kernel's launcher (``CompiledKernel.run``, the
call ``JITFunction.run`` itself ends in). Triton's launch hooks are honoured.
"""

from __future__ import annotations

import os

import torch

try:
    from triton import knobs
    from triton.runtime import driver
except ImportError:  # pragma: no cover - the backend reports itself unavailable
    knobs = driver = None

# "0" turns the cached launches off (every call through Triton's own launch path).
FAST_LAUNCH_ENV = "NVFP4_BENCH_TRITON_FAST_LAUNCH"


def enabled() -> bool:
    return os.environ.get(FAST_LAUNCH_ENV, "1") != "0" and driver is not None


class Launch:
    """One kernel launch with fixed grid and config; ``__call__(*tensors)`` launches it on
    new ``tensors`` (the ones named at construction, in that order: activations, output,
    the layer's weights) of the same shapes, strides and 16-byte alignment. Other arguments
    (workspaces, sizes) are kept; the named tensors are not, so a layer's weights can be
    freed while its launches are cached.

    While no launch hook is registered the named tensors go to the launcher as their
    addresses: given a tensor, Triton's launcher calls its ``data_ptr`` and then
    ``cuPointerGetAttribute`` on every pointer argument (a few microseconds a call, more
    than the call's own work), and given an empty hook chain (Triton 3.6 registers one,
    never None) it still builds the launch metadata and calls both chains. With a hook
    registered the call goes as Triton's own does, tensors, metadata and hooks."""

    def __init__(self, jit, args: tuple, kwargs: dict, grid: tuple, tensors: tuple):
        kernel = jit.warmup(*args, grid=grid, **kwargs)  # Triton's cached kernel: no compile
        if hasattr(kernel, "result"):
            kernel = kernel.result()
        device = driver.active.get_current_device()
        binder = jit.device_caches[device][4]
        bound, _, _ = binder(*args, **kwargs)
        values = list(bound.values())
        self.at = [next(i for i, v in enumerate(values) if v is t) for t in tensors]
        for i in self.at:
            values[i] = None
        self.values = values
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.kernel = kernel
        self.device = device
        self.torch_device = tensors[0].device  # where the caller allocates the output
        self.stream = driver.active.get_current_stream  # torch's current-stream query
        # The launcher's own C entry point, where the kernel needs no scratch memory (its
        # Python ``__call__`` only allocates scratch, then calls it): a microsecond a call.
        run = kernel.run
        scratch = getattr(run, "global_scratch_size", 1) or getattr(run, "profile_scratch_size", 1)
        self.launch_c = None if scratch or not hasattr(run, "launch") else run.launch
        self.launch_flags = (getattr(run, "launch_cooperative_grid", False),
                             getattr(run, "launch_pdl", False))

    def __call__(self, *tensors: torch.Tensor) -> None:
        values = self.values.copy()
        enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
        hooked = _registered(enter) or _registered(leave)
        for i, t in zip(self.at, tensors):
            values[i] = t if hooked else t.data_ptr()
        k = self.kernel
        stream = self.stream(self.device)
        gx, gy, gz = self.grid
        if hooked:
            meta = k.launch_metadata(self.grid, stream, *values)
            k.run(gx, gy, gz, stream, k.function, k.packed_metadata, meta, enter, leave, *values)
        elif self.launch_c is not None:
            self.launch_c(gx, gy, gz, stream, k.function, *self.launch_flags, None, None,
                          k.packed_metadata, None, None, None, *values)
        else:
            k.run(gx, gy, gz, stream, k.function, k.packed_metadata, None, None, None, *values)


def _registered(hook) -> bool:
    """Whether a launch hook would call anything: a callable, or a non-empty HookChain."""
    return hook is not None and bool(getattr(hook, "calls", True))


def resolved_kwargs(kernel_or_tuner, kwargs: dict, config=None) -> tuple[object, dict]:
    """(the JIT function, every keyword of the launch that just ran): an autotuner's kept
    config (``best_config``, set by its last run) or the given fixed ``config``."""
    cfg = config if config is not None else kernel_or_tuner.best_config
    jit = kernel_or_tuner.fn if config is None else kernel_or_tuner
    return jit, {**kwargs, **cfg.all_kwargs()}
