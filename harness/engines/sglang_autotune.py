"""When SGLang runs FlashInfer's autotuner: ``should_run_flashinfer_autotune`` of SGLang 0.5.23
(``sglang/srt/model_executor/runner/flashinfer_autotune.py``), as a function of the settings
it reads, so an SGLang cell can say when its ``autotune on`` tunes nothing.

SGLang's function reads its global server arguments and the loaded model; here they are one
record (``EngineSettings``). Where SGLang inspects the model (a block-FP8 layer served as
MXFP8, the FP8 per-tensor support check), the caller says the answer. The test suite checks
each branch against a table and the lists below against the installed SGLang's source.
"""

from __future__ import annotations

from dataclasses import dataclass

# MoE runners SGLang tunes (``moe_needs_autotune``)
TUNED_MOE_RUNNERS = ("flashinfer_trtllm", "flashinfer_trtllm_routed", "flashinfer_mxfp4",
                     "flashinfer_cutedsl", "flashinfer_cutlass", "flashinfer_megamoe")
# Quantizations whose FP4 GEMMs are tuned, and the FP4 GEMM runners that are
FP4_QUANTIZATIONS = ("modelopt_fp4", "modelopt_mixed")
TUNED_FP4_GEMM_RUNNERS = ("flashinfer_cutlass", "flashinfer_cutedsl")
MXFP8_QUANTIZATIONS = ("mxfp8", "minimax_m3_nvfp4")
FP8_PER_TENSOR_QUANTIZATIONS = ("modelopt", "modelopt_fp8", "modelopt_mixed")


@dataclass(frozen=True)
class EngineSettings:
    """What ``should_run_flashinfer_autotune`` reads (SGLang's argument names)."""

    quantization: str | None = "modelopt_fp4"
    fp4_gemm_runner_backend: str = "auto"          # as resolved (flashinfer_cudnn, ...)
    moe_runner_backend: str = "auto"
    moe_a2a_backend: str = "none"
    sm_major: int = 12
    device: str = "cuda"
    disable_flashinfer_autotune: bool = False
    enable_deterministic_inference: bool = False
    enable_kv_cache_sharding: bool = False
    speculative: bool = False                      # a speculative algorithm is on
    is_draft_worker: bool = False
    for_speculative_draft: bool = False            # the draft's own tuning pass
    speculative_moe_runner_backend: str | None = None
    speculative_moe_a2a_backend: str | None = None
    # what SGLang finds in the model and its FP8 helpers (it inspects them; we cannot)
    mxfp8_dense_is_flashinfer: bool = False        # resolve_mxfp8_dense_gemm_backend()
    fp8_per_tensor_flashinfer: bool = False        # flashinfer_per_tensor_fp8_supported()
    block_fp8_served_as_mxfp8: bool = False        # _serves_block_fp8_as_mxfp8_on_flashinfer


@dataclass(frozen=True)
class TuneDecision:
    runs: bool
    reason: str
    moe: bool = False        # which of SGLang's three reasons to tune hold
    fp4_gemm: bool = False
    fp8_gemm: bool = False


def decide(s: EngineSettings) -> TuneDecision:
    """SGLang's decision, with the branch that made it."""
    if s.device != "cuda":
        return TuneDecision(False, f"device {s.device} is not cuda")
    if s.enable_kv_cache_sharding:
        return TuneDecision(False, "KV-cache sharding is on")
    if s.disable_flashinfer_autotune:
        return TuneDecision(False, "--disable-flashinfer-autotune")
    if s.enable_deterministic_inference:
        return TuneDecision(False, "deterministic inference is on (tuned configs follow the "
                                   "batch shape)")
    if s.for_speculative_draft:
        runner = s.speculative_moe_runner_backend or s.moe_runner_backend
        a2a = s.speculative_moe_a2a_backend or s.moe_a2a_backend
    else:
        runner, a2a = s.moe_runner_backend, s.moe_a2a_backend
    if runner == "flashinfer_cutedsl" and a2a == "deepep":
        return TuneDecision(False, "the flashinfer_cutedsl MoE runner with a deepep all-to-all")
    moe = runner in TUNED_MOE_RUNNERS
    fp4 = (s.quantization in FP4_QUANTIZATIONS
           and s.fp4_gemm_runner_backend in TUNED_FP4_GEMM_RUNNERS)
    if s.quantization in MXFP8_QUANTIZATIONS:
        fp8 = s.mxfp8_dense_is_flashinfer
    elif s.quantization in FP8_PER_TENSOR_QUANTIZATIONS:
        fp8 = s.fp8_per_tensor_flashinfer
    else:
        fp8 = s.block_fp8_served_as_mxfp8
    if not (moe or fp4 or fp8):
        return TuneDecision(False, f"nothing to tune: MoE runner {runner} is not one SGLang "
                                   f"tunes, FP4 GEMM runner {s.fp4_gemm_runner_backend} with "
                                   f"{s.quantization} is not tuned, no FlashInfer FP8 GEMM")
    if s.sm_major < 9:
        return TuneDecision(False, f"SM{s.sm_major}x is below SM90", moe, fp4, fp8)
    what = ", ".join(n for n, on in (("MoE runner " + runner, moe), ("FP4 GEMMs", fp4),
                                     ("FP8 GEMMs", fp8)) if on)
    if s.speculative:
        mine = s.is_draft_worker if s.for_speculative_draft else not s.is_draft_worker
        if not mine:
            return TuneDecision(False, "speculative decoding: this pass is not this worker's "
                                       "(the target tunes in its pass, the draft in its own)",
                                moe, fp4, fp8)
    return TuneDecision(True, f"tunes: {what}", moe, fp4, fp8)
