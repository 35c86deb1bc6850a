"""SGLang's "does FlashInfer's autotuner run" rule: every branch from a table, and the lists
it tests against, read from the installed SGLang's own source (0.5.23, ./.sglang-parsers)."""

import ast
import os
from dataclasses import replace
from pathlib import Path

import pytest

from harness.engines import sglang_autotune as sa
from harness.engines.sglang_autotune import EngineSettings as S

ROOT = Path(__file__).resolve().parent.parent
SOURCE = (ROOT / ".sglang-parsers" / "sglang" / "srt" / "model_executor" / "runner"
          / "flashinfer_autotune.py")

BASE = S(quantization="modelopt_fp4", fp4_gemm_runner_backend="flashinfer_cudnn",
         moe_runner_backend="auto", sm_major=12)

CASES = [
    # (what, settings, runs, reason contains)
    ("cudnn FP4 GEMMs, no tuned MoE runner", BASE, False, "nothing to tune"),
    ("cutlass FP4 GEMMs", replace(BASE, fp4_gemm_runner_backend="flashinfer_cutlass"), True,
     "FP4 GEMMs"),
    ("cutedsl FP4 GEMMs", replace(BASE, fp4_gemm_runner_backend="flashinfer_cutedsl"), True,
     "FP4 GEMMs"),
    ("cutlass FP4 GEMMs, not an FP4 model", replace(BASE, quantization="fp8",
                                                    fp4_gemm_runner_backend="flashinfer_cutlass"),
     False, "nothing to tune"),
    ("modelopt_mixed uses FP4", replace(BASE, quantization="modelopt_mixed",
                                        fp4_gemm_runner_backend="flashinfer_cutlass"), True, ""),
    ("the PR's SM120 MoE runner", replace(BASE, moe_runner_backend="flashinfer_cutlass"), True,
     "MoE runner flashinfer_cutlass"),
    ("flashinfer_trtllm (SM100's former default)",
     replace(BASE, moe_runner_backend="flashinfer_trtllm"), True, "MoE runner"),
    ("flashinfer_trtllm_routed", replace(BASE, moe_runner_backend="flashinfer_trtllm_routed"),
     True, "MoE runner"),
    ("flashinfer_mxfp4", replace(BASE, moe_runner_backend="flashinfer_mxfp4"), True, ""),
    ("flashinfer_megamoe", replace(BASE, moe_runner_backend="flashinfer_megamoe"), True, ""),
    ("triton MoE runner is not tuned", replace(BASE, moe_runner_backend="triton"), False,
     "nothing to tune"),
    ("cutedsl MoE with deepep", replace(BASE, moe_runner_backend="flashinfer_cutedsl",
                                        moe_a2a_backend="deepep"), False, "deepep"),
    ("cutedsl MoE without deepep", replace(BASE, moe_runner_backend="flashinfer_cutedsl"), True,
     ""),
    ("below SM90", replace(BASE, fp4_gemm_runner_backend="flashinfer_cutlass", sm_major=8),
     False, "below SM90"),
    ("SM90 itself", replace(BASE, moe_runner_backend="flashinfer_cutlass", sm_major=9), True, ""),
    ("disabled", replace(BASE, fp4_gemm_runner_backend="flashinfer_cutlass",
                         disable_flashinfer_autotune=True), False, "--disable-flashinfer-autotune"),
    ("deterministic", replace(BASE, fp4_gemm_runner_backend="flashinfer_cutlass",
                              enable_deterministic_inference=True), False, "deterministic"),
    ("KV-cache sharding", replace(BASE, fp4_gemm_runner_backend="flashinfer_cutlass",
                                  enable_kv_cache_sharding=True), False, "sharding"),
    ("not cuda", replace(BASE, fp4_gemm_runner_backend="flashinfer_cutlass", device="cpu"),
     False, "not cuda"),
    ("speculative: the target worker tunes in its pass",
     replace(BASE, fp4_gemm_runner_backend="flashinfer_cutlass", speculative=True), True, ""),
    ("speculative: the draft worker skips the target's pass",
     replace(BASE, fp4_gemm_runner_backend="flashinfer_cutlass", speculative=True,
             is_draft_worker=True), False, "speculative"),
    ("speculative: the draft worker tunes in the draft pass",
     replace(BASE, fp4_gemm_runner_backend="flashinfer_cutlass", speculative=True,
             is_draft_worker=True, for_speculative_draft=True), True, ""),
    ("speculative: the target skips the draft pass",
     replace(BASE, fp4_gemm_runner_backend="flashinfer_cutlass", speculative=True,
             for_speculative_draft=True), False, "speculative"),
    ("draft pass reads the draft's MoE runner",
     replace(BASE, speculative=True, is_draft_worker=True, for_speculative_draft=True,
             moe_runner_backend="triton", speculative_moe_runner_backend="flashinfer_cutlass"),
     True, "MoE runner flashinfer_cutlass"),
    ("draft pass: cutedsl draft MoE with the target's deepep",
     replace(BASE, speculative=True, is_draft_worker=True, for_speculative_draft=True,
             moe_a2a_backend="deepep", speculative_moe_runner_backend="flashinfer_cutedsl"),
     False, "deepep"),
    ("mxfp8 model with a FlashInfer dense backend", replace(BASE, quantization="mxfp8",
                                                           mxfp8_dense_is_flashinfer=True),
     True, "FP8 GEMMs"),
    ("mxfp8 model without", replace(BASE, quantization="mxfp8"), False, "nothing"),
    ("modelopt_fp8 per-tensor on FlashInfer", replace(BASE, quantization="modelopt_fp8",
                                                     fp8_per_tensor_flashinfer=True), True, ""),
    ("block FP8 served as MXFP8", replace(BASE, quantization="fp8",
                                          block_fp8_served_as_mxfp8=True), True, "FP8 GEMMs"),
]


@pytest.mark.parametrize("what,settings,runs,reason", CASES, ids=[c[0] for c in CASES])
def test_every_branch(what, settings, runs, reason):
    d = sa.decide(settings)
    assert d.runs is runs, d.reason
    assert reason in d.reason


def test_why_not_tuned_for_dense_cells(monkeypatch):
    from harness.engines import sglang
    monkeypatch.setattr(sglang, "compute_capability", lambda dev: 120)
    assert sglang.why_not_tuned("flashinfer-cutlass", "on") is None
    assert "never runs FlashInfer's autotuner" in sglang.why_not_tuned("flashinfer-cudnn", "on")
    # with the PR's MoE runner the tuner does run, but a dense model's cuDNN GEMMs stay untuned
    assert "never runs" in sglang.why_not_tuned("flashinfer-cudnn", "on", "flashinfer_cutlass")
    monkeypatch.setattr(sglang, "compute_capability", lambda dev: 89)
    assert "below SM90" in sglang.why_not_tuned("flashinfer-cutlass", "on")


def _sglang_source():
    if not SOURCE.exists():
        if os.environ.get("NVFP4_BENCH_REQUIRE_SGLANG_PARSERS"):
            raise RuntimeError(f"{SOURCE} missing (scripts/setup.sh installs SGLang's source)")
        pytest.skip("SGLang's source is not installed here (./.sglang-parsers)")
    return ast.parse(SOURCE.read_text())


def _literals(fn: ast.FunctionDef) -> dict[str, list]:
    """Names compared with `in [...]` / `in (...)` / `==` inside SGLang's function."""
    out: dict[str, list] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
            for cmp in ast.walk(node.value):
                if isinstance(cmp, ast.Compare) and isinstance(cmp.comparators[0], (ast.List, ast.Tuple)):
                    out[target] = [e.value for e in cmp.comparators[0].elts]
        if isinstance(node, ast.If):
            for cmp in ast.walk(node.test):
                if isinstance(cmp, ast.Compare) and isinstance(cmp.left, ast.Name):
                    vals = cmp.comparators[0]
                    if isinstance(vals, (ast.List, ast.Tuple)):
                        out.setdefault(f"if {cmp.left.id}", []).append(
                            tuple(e.value for e in vals.elts))
                    elif isinstance(vals, ast.Constant):
                        out.setdefault(f"if {cmp.left.id}", []).append(vals.value)
    return out


def test_lists_match_sglangs_source():
    tree = _sglang_source()
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
              and n.name == "should_run_flashinfer_autotune")
    lit = _literals(fn)
    assert tuple(lit["moe_needs_autotune"]) == sa.TUNED_MOE_RUNNERS
    assert tuple(lit["model_uses_fp4"]) == sa.FP4_QUANTIZATIONS
    q = lit["if model_quantization"]
    assert "mxfp8" in q and "minimax_m3_nvfp4" in q and sa.FP8_PER_TENSOR_QUANTIZATIONS in q
    assert set(sa.MXFP8_QUANTIZATIONS) == {"mxfp8", "minimax_m3_nvfp4"}
    assert "flashinfer_cutedsl" in lit["if backend_str"] and "deepep" in lit["if a2a_backend_str"]
    text = ast.unparse(fn)
    assert "is_flashinfer_cutlass()" in text and "is_flashinfer_cutedsl()" in text
    assert "get_device_capability()[0] < 9" in text
    for knob in ("enable_kv_cache_sharding", "disable_flashinfer_autotune",
                 "enable_deterministic_inference", "is_draft_worker"):
        assert knob in text, knob
