"""MoE runner backends: one MoE layer's routed experts, ready to run for one runner.

- ``moe-ref``: the exact fp32 reference on the dequantized experts (the health reference,
  never a candidate; it reads expert ids back to the host, so it is not graph-capturable);
- ``triton-moe``: the Triton fused NVFP4 W4A16 MoE (:mod:`harness.moe.triton_moe`) with
  SGLang-format configs: ``autotune off`` SGLang's default config, ``on`` this device's tuned
  files (``nvfp4-bench tune-moe``); ``down`` picks SGLang's shared BLOCK_SIZE_M rule or not;
- ``flashinfer-cutlass-moe``: FlashInfer's ``cutlass_fused_moe`` on NVFP4 (W4A4) experts, what
  SGLang's ``--moe-runner-backend flashinfer_cutlass`` runs for ``modelopt_fp4`` (FP4 tensor
  cores: SM100/SM120);
- ``flashinfer-cutlass-moe-fp8`` / ``-bf16``: the same FlashInfer entry point on FP8 (per-tensor
  W8A8, static scales) or bf16 experts, what a Hopper user runs instead (SM90 and newer);
- ``flashinfer-trtllm-moe``: FlashInfer's TensorRT-LLM-gen MoE (SGLang's ``flashinfer_trtllm``),
  listed so its refusal off SM100 is recorded in FlashInfer's words.

FlashInfer's ``autotune(True)`` picks the CUTLASS tactics of both GEMMs on the first call of an
``autotune on`` cell; FlashInfer's FP8/bf16 weights are made from the same NVFP4 experts (gate
and up swapped into FlashInfer's [up; gate] order), so every runner computes the same layer.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from harness import nvfp4
from harness.hardware import compute_capability
from harness.models import UnknownNameError
from harness.moe import configs
from harness.moe.layer import MoeWeights, reference

# Let a run build FlashInfer's fused-MoE JIT module when its cache lacks it (the SM90 module
# compiles ~20 CUTLASS/TensorRT-LLM sources: tens of minutes on 16 cores).
FLASHINFER_JIT_ENV = "NVFP4_BENCH_FLASHINFER_JIT"
E4M3_MAX = 448.0


@dataclass(frozen=True)
class Runner:
    name: str
    description: str
    candidate: bool = True
    tunable: bool = False
    tolerance: float = 2e-2
    graph_safe: bool = True          # capturable in a CUDA graph (no host reads)
    has_block_sizes: bool = False    # the down=own/shared comparison applies


RUNNERS = {r.name: r for r in [
    Runner("moe-ref", "exact fp32 reference on the dequantized experts", candidate=False,
           tolerance=1e-5, graph_safe=False),
    Runner("triton-moe", "Triton fused MoE, NVFP4 weights decoded in registers, bf16 math",
           tunable=True, has_block_sizes=True),
    Runner("flashinfer-cutlass-moe", "FlashInfer cutlass_fused_moe, NVFP4 W4A4 (SM100/SM120)",
           tunable=True, tolerance=6e-2),
    Runner("flashinfer-cutlass-moe-fp8", "FlashInfer cutlass_fused_moe, FP8 W8A8 per-tensor",
           tunable=True, tolerance=4e-2),
    Runner("flashinfer-cutlass-moe-bf16", "FlashInfer cutlass_fused_moe, bf16 experts",
           tunable=True),
    Runner("flashinfer-trtllm-moe", "FlashInfer TensorRT-LLM-gen NVFP4 MoE (SM100)",
           tunable=True, tolerance=6e-2),
]}
FLASHINFER_CUTLASS = ("flashinfer-cutlass-moe", "flashinfer-cutlass-moe-fp8",
                      "flashinfer-cutlass-moe-bf16")


# The MoE runner a decode cell's experts use with each GEMM backend: what SGLang pairs them
# with (PR #26496 on SM120: cutlass GEMMs with flashinfer_cutlass MoE; before it, on SM100,
# flashinfer_trtllm), and for the peers the same precision through FlashInfer's MoE.
FOR_BACKEND = {
    "triton": "triton-moe",
    "torch-ref": "moe-ref", "torch-dequant": "moe-ref",
    "torch-bf16": "flashinfer-cutlass-moe-bf16",
    "torch-fp8": "flashinfer-cutlass-moe-fp8", "flashinfer-fp8-cublas": "flashinfer-cutlass-moe-fp8",
    "flashinfer-fp8-cudnn": "flashinfer-cutlass-moe-fp8",
    "flashinfer-fp8-auto": "flashinfer-cutlass-moe-fp8",
    "flashinfer-cutlass": "flashinfer-cutlass-moe", "flashinfer-b12x": "flashinfer-cutlass-moe",
    "flashinfer-cute-dsl": "flashinfer-cutlass-moe", "flashinfer-auto": "flashinfer-cutlass-moe",
    "sglang-auto": "flashinfer-cutlass-moe",
    "flashinfer-cudnn": "flashinfer-trtllm-moe",
}


def for_backend(backend: str) -> str | None:
    """The MoE runner of a decode cell on ``backend`` (None: no runner pairs with it)."""
    return FOR_BACKEND.get(backend)


def resident_bytes_per_element(runner: str) -> float:
    """GPU bytes per expert weight element a prepared layer holds: the NVFP4 experts, plus
    FlashInfer's bf16 or FP8 copy for those runners."""
    nvfp4_bytes = nvfp4.BYTES_PER_ELEMENT
    return nvfp4_bytes + {"flashinfer-cutlass-moe-bf16": 2.0, "flashinfer-cutlass-moe-fp8": 1.0,
                          "flashinfer-cutlass-moe": nvfp4_bytes}.get(runner, 0.0)


def get_runner(name: str) -> Runner:
    if name not in RUNNERS:
        raise UnknownNameError("MoE runner", name, sorted(RUNNERS))
    return RUNNERS[name]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def tuned_paths(shape, device: torch.device, root: Path) -> tuple[Path, Path]:
    """Where this device's tuned Triton up and down configs live (SGLang's layout)."""
    import triton
    d = root / "configs" / configs.version_dir(triton.__version__)
    name = device_name(device)
    return (d / configs.file_name(shape.experts, shape.intermediate, name, configs.NVFP4_W4A16),
            d / configs.file_name(shape.experts, shape.intermediate, name, configs.NVFP4_W4A16,
                                  down=True))


# ---- availability --------------------------------------------------------------------

def why_not(runner: str, shape, autotune: str, down: str, device: torch.device,
            root: Path, model: str = "") -> str | None:
    """Why this runner cannot run this (autotune, down) here, or None."""
    r = get_runner(runner)
    if autotune == "on" and not r.tunable:
        return f"{r.name} has no configs to tune (its autotune=off row is the measurement)"
    if down == "own" and not r.has_block_sizes:
        return (f"{r.name} has no Triton block sizes (its down=shared row is the measurement)")
    if runner == "triton-moe":
        return _why_not_triton(shape, autotune, down, device, root, model)
    if runner.startswith("flashinfer-"):
        return _why_not_flashinfer(runner, device)
    return None


def _why_not_triton(shape, autotune, down, device, root, model) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'nvfp4-bench[gpu]')"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "triton-moe needs an NVIDIA GPU or TRITON_INTERPRET=1; this machine has no GPU"
    if device.type == "cuda" and compute_capability(device) < 80:
        return f"triton-moe needs SM80 or newer; this GPU is SM{compute_capability(device)}"
    if autotune == "off" and down == "own":
        return ("autotune off runs SGLang's one default config for both kernels, so down's "
                "BLOCK_SIZE_M is up's already (the down=shared row is the measurement)")
    if autotune == "on":
        up, _ = tuned_paths(shape, device, root)
        if not up.exists():
            return (f"no tuned configs for {device_name(device)} ({up}): "
                    f"`nvfp4-bench tune-moe{' --model ' + model if model else ''}` writes them")
    return None


def _why_not_flashinfer(runner: str, device: torch.device) -> str | None:
    from harness.backends import flashinfer_lib
    fi, why = flashinfer_lib.try_import()
    if fi is None:
        return why
    if device.type != "cuda":
        return f"{runner} needs an NVIDIA GPU; this machine has none"
    sm = compute_capability(device)
    if runner == "flashinfer-trtllm-moe":
        # FlashInfer's own gate: the module's nvcc targets for this GPU, as it builds them.
        from flashinfer.compilation_context import CompilationContext
        try:
            CompilationContext().get_nvcc_flags_list(supported_major_versions=[10, 12],
                                                     map_sm107_to_100f=True)
        except RuntimeError as e:
            return f"FlashInfer trtllm fused MoE on SM{sm}: {e}"
        return ("flashinfer-trtllm-moe is not wired into the harness yet (its NVFP4 weights "
                "need trtllm_fp4_block_scale_moe's shuffled layout)")
    if runner == "flashinfer-cutlass-moe" and sm // 10 not in (10, 11, 12):
        return (f"FlashInfer's cutlass_fused_moe runs NVFP4 (W4A4) experts on FP4 tensor "
                f"cores, SM100/SM103/SM110/SM120/SM121; this GPU is SM{sm}")
    if sm < 89:
        return f"FlashInfer's cutlass_fused_moe has no module for SM{sm} (SM89 and newer)"
    spec = _cutlass_spec(sm)
    if not spec.is_compiled and os.environ.get(FLASHINFER_JIT_ENV) != "build":
        return (f"FlashInfer's {spec.name} module is not built ({spec.get_library_path()} is "
                f"absent); its JIT build compiles the CUTLASS MoE GEMMs (tens of minutes): "
                f"set {FLASHINFER_JIT_ENV}=build to let this run build it, or install "
                f"flashinfer-jit-cache")
    return None


@functools.lru_cache(maxsize=None)
def _cutlass_spec(sm: int):
    """FlashInfer's own JIT spec of the fused-MoE module it would load on this GPU (made
    once per process: making it writes the module's generated CUTLASS sources)."""
    from flashinfer.jit import fused_moe as jit_moe
    gen = {90: "gen_cutlass_fused_moe_sm90_module", 89: "gen_cutlass_fused_moe_sm89_module",
           103: "gen_cutlass_fused_moe_sm103_module"}.get(sm)
    if gen is None:
        gen = ("gen_cutlass_fused_moe_sm120_module" if sm // 10 == 12
               else "gen_cutlass_fused_moe_sm100_module")
    return getattr(jit_moe, gen)()


# ---- prepared layers -----------------------------------------------------------------

class PreparedMoe:
    """One layer's experts in a runner's format; ``__call__(x, topk_weights, topk_ids)``
    -> [M, H] (bf16; fp32 from the exact ``moe-ref``). ``calibrate`` sets static activation scales (W8A8/W4A4 runners) from a
    call's inputs; ``tune`` runs the runner's tuner on a call (autotune on)."""

    def __init__(self, runner: str, weights: MoeWeights, autotune: bool, down: str,
                 root: Path | None = None, device: torch.device | None = None):
        self.runner, self.weights, self.autotune, self.down = runner, weights, autotune, down
        self.shape = weights.shape
        self.nvfp4_bytes = weights.w13.nbytes() + weights.w2.nbytes()  # the experts as stored
        self.device = device or weights.router.device
        self.config_source = ""
        self._tuned = False
        if runner == "triton-moe":
            from harness.moe.triton_moe import FusedMoe
            self.fused = FusedMoe(weights)
            self.weights = None  # the kernels read their own word copy; the codes can go
            self.up_table = self.down_table = None
            if autotune:
                up_path, down_path = tuned_paths(self.shape, self.device, root)
                self.up_table = configs.load(up_path)
                self.down_table = configs.load(down_path) if down_path.exists() else None
                self.config_source = str(up_path if self.down_table is None
                                         else f"{up_path} + {down_path.name}")
            else:
                self.config_source = "SGLang's default config"
        elif runner in FLASHINFER_CUTLASS:
            self.fi = _FlashInferCutlass(runner, weights)

    def configs_for(self, m: int) -> tuple[dict, dict]:
        """(up, down) Triton configs at M tokens."""
        if self.up_table is None:
            cfg = configs.default_config(m, self.shape.experts)
            return cfg, dict(cfg)
        picked = configs.pick(self.up_table, self.down_table, m,
                              force_shared_block_m=(self.down == "shared"))
        return picked.up, picked.down

    def calibrate(self, x, topk_weights, topk_ids) -> None:
        if self.runner in FLASHINFER_CUTLASS:
            self.fi.calibrate(x, topk_weights, topk_ids)

    def tune(self, x, topk_weights, topk_ids) -> None:
        if self.runner in FLASHINFER_CUTLASS and self.autotune and not self._tuned:
            from flashinfer.autotuner import autotune
            with autotune(True):
                self(x, topk_weights, topk_ids)
            self._tuned = True

    def __call__(self, x, topk_weights, topk_ids) -> torch.Tensor:
        if self.runner == "moe-ref":
            return reference(x, self.weights, topk_weights, topk_ids)  # fp32: it is exact
        if self.runner == "triton-moe":
            up, down = self.configs_for(x.shape[0])
            return self.fused(x, topk_weights, topk_ids, up, down)
        if self.runner in FLASHINFER_CUTLASS:
            return self.fi(x, topk_weights, topk_ids)
        raise RuntimeError(f"{self.runner} cannot run here")


def _up_gate(w: torch.Tensor) -> torch.Tensor:
    """[.., 2I, H] gate rows then up rows -> FlashInfer's (TensorRT-LLM's) [up; gate]."""
    gate, up = w.chunk(2, dim=-2)
    return torch.cat((up, gate), dim=-2).contiguous()


class _FlashInferCutlass:
    """The arguments of ``flashinfer.fused_moe.cutlass_fused_moe`` for one precision."""

    def __init__(self, runner: str, weights: MoeWeights):
        self.runner = runner
        s = weights.shape
        self.mode = {"flashinfer-cutlass-moe": "nvfp4", "flashinfer-cutlass-moe-fp8": "fp8",
                     "flashinfer-cutlass-moe-bf16": "bf16"}[runner]
        dev = weights.router.device
        self.a1 = torch.ones(1, dtype=torch.float32, device=dev)   # static input scales
        self.a2 = torch.ones(1, dtype=torch.float32, device=dev)
        self.calibrated = self.mode == "bf16"
        if self.mode == "nvfp4":
            self.fc1 = _up_gate(weights.w13.codes)
            self.fc2 = weights.w2.codes.contiguous()
            # e4m3 block scales in the 128x4 swizzled layout, as int32 words (FlashInfer's)
            self.fc1_sf = torch.stack([nvfp4.swizzle_128x4(_up_gate(weights.w13.scales)[e])
                                       for e in range(s.experts)]).view(torch.int32)
            self.fc2_sf = torch.stack([nvfp4.swizzle_128x4(weights.w2.scales[e])
                                       for e in range(s.experts)]).view(torch.int32)
            self.w1_gsf, self.w2_gsf = weights.w13.global_scale, weights.w2.global_scale
        else:
            w13 = torch.stack([nvfp4.dequantize(weights.w13.expert(e), torch.float32)
                               for e in range(s.experts)])
            w2 = torch.stack([nvfp4.dequantize(weights.w2.expert(e), torch.float32)
                              for e in range(s.experts)])
            w13 = _up_gate(w13)
            if self.mode == "bf16":
                self.fc1, self.fc2 = w13.to(torch.bfloat16), w2.to(torch.bfloat16)
            else:  # per-expert per-tensor FP8 weights
                self.w1_scale = w13.abs().amax(dim=(1, 2)).clamp(min=1e-12) / E4M3_MAX
                self.w2_scale = w2.abs().amax(dim=(1, 2)).clamp(min=1e-12) / E4M3_MAX
                self.fc1 = (w13 / self.w1_scale[:, None, None]).to(torch.float8_e4m3fn)
                self.fc2 = (w2 / self.w2_scale[:, None, None]).to(torch.float8_e4m3fn)
            del w13, w2
        self.weights = weights

    def calibrate(self, x, topk_weights, topk_ids) -> None:
        """Static activation scales from this call (what ModelOpt calibration stores): the
        input's amax and the amax of silu(gate) * up over the routed pairs."""
        if self.mode == "bf16":
            return
        from harness.moe.layer import silu_and_mul
        xf = x.float()
        inter = torch.zeros((), device=x.device)
        for e in torch.unique(topk_ids).tolist():
            tok = (topk_ids == e).any(dim=-1)
            w13 = nvfp4.dequantize(self.weights.w13.expert(e), torch.float32)
            inter = torch.maximum(inter, silu_and_mul(xf[tok] @ w13.t()).abs().amax())
        limit = E4M3_MAX * (nvfp4.E2M1_MAX if self.mode == "nvfp4" else 1.0)
        self.a1.copy_((xf.abs().amax().clamp(min=1e-12) / limit).reshape(1))
        self.a2.copy_((inter.clamp(min=1e-12) / limit).reshape(1))
        self.calibrated = True

    def quant_scales(self) -> list[torch.Tensor]:
        if self.mode == "nvfp4":
            # [a1 gsf, fc1 block scales, fc1 alpha per expert, a2 gsf, fc2 block scales,
            #  fc2 alpha]; gsf = 1 / scale, alpha = 1 / (gsf_a * gsf_w)
            return [1.0 / self.a1, self.fc1_sf, self.a1 / self.w1_gsf,
                    1.0 / self.a2, self.fc2_sf, self.a2 / self.w2_gsf]
        if self.mode == "fp8":
            # [fc1 dequant per expert, fc2 activation quant, fc2 dequant per expert, fc1
            #  input dequant] (cutlass_fused_moe's docstring order)
            return [self.a1 * self.w1_scale, 1.0 / self.a2, self.a2 * self.w2_scale, self.a1]
        return []

    def __call__(self, x, topk_weights, topk_ids) -> torch.Tensor:
        if not self.calibrated:
            self.calibrate(x, topk_weights, topk_ids)
        from flashinfer.fused_moe import cutlass_fused_moe
        inp = x
        if self.mode == "fp8":
            inp = (x.float() / self.a1).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        out = cutlass_fused_moe(inp, topk_ids.to(torch.int32).contiguous(),
                                topk_weights.float().contiguous(), self.fc1, self.fc2,
                                torch.bfloat16, self.quant_scales())
        return out[0] if isinstance(out, (list, tuple)) else out
