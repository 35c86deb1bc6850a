"""GEMM cells: health turns bad outputs into failed cells, crashes lose nothing, timing stats."""

import math

import pytest
import torch

import worker_env
from harness import analysis, gemm
from harness.health import check
from harness.measure import summarize, time_cpu

FAST = gemm.GemmOptions(samples=3, warmup=1, isolate=False)


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.setenv("NVFP4_BENCH_PLUGINS", "plugin_backends")
    import os
    tests = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.setenv("PYTHONPATH", worker_env.pythonpath(tests))
    import plugin_backends  # noqa: F401  (registers in this process)


def test_health_counts_rows():
    ref = torch.ones(4, 8)
    out = ref.clone()
    out[0, 1] = float("nan")
    out[1, 2] = float("inf")
    out[2] = 0
    h = check(out, ref, 0.01)
    assert (h.nan_rows, h.inf_rows, h.zero_rows) == (1, 1, 1)
    assert not h.ok and len(h.problems()) == 4  # NaN, Inf, zero, error
    assert check(ref * 1.001, ref, 0.01).ok
    assert not check(ref * 1.5, ref, 0.01).ok


@pytest.mark.parametrize("mode,words", [("nan", "NaN"), ("zero", "all zero"), ("inf", "Inf"),
                                        ("raise", "kernel launch failed")])
def test_bad_outputs_make_failed_cells(plugins, mode, words):
    cells = gemm.plan("tiny", [1, 3], [f"test-{mode}"], ["off"], layers=["o_proj"])
    gemm.run(cells, FAST)
    by_m = {c.m: c for c in cells}
    assert by_m[1].status == "ok" and by_m[1].median_s > 0
    assert by_m[3].status == "failed" and words in by_m[3].reason
    assert by_m[3].median_s is None and by_m[3].samples_s == []


@pytest.mark.slow
def test_worker_crash_keeps_other_cells(plugins):
    cells = gemm.plan("tiny", [1, 3, 5], ["test-crash"], ["off"], layers=["o_proj", "qkv_proj"])
    gemm.run(cells, gemm.GemmOptions(samples=3, warmup=1, isolate=True))
    status = {(c.layer, c.m): c.status for c in cells}
    assert status[("o_proj", 3)] == "failed" and status[("qkv_proj", 3)] == "failed"
    assert all(s == "ok" for k, s in status.items() if k[1] != 3)
    crashed = next(c for c in cells if c.m == 3)
    assert "exited with code 7" in crashed.reason


@pytest.mark.slow
def test_skips_without_a_process(monkeypatch):
    cells = gemm.plan("tiny", [1], ["flashinfer-cutlass", "torch-bf16"], ["on", "off"],
                      layers=["o_proj"])
    gemm.run(cells, gemm.GemmOptions(samples=3, warmup=1, isolate=True))
    got = {(c.backend, c.autotune): c for c in cells}
    assert got[("flashinfer-cutlass", "off")].status == "skipped"
    assert "no autotuner" in got[("torch-bf16", "on")].reason
    assert got[("torch-bf16", "off")].status == "ok"


def test_cell_fields_and_roofline():
    cells = gemm.plan("tiny", [2], ["torch-bf16", "torch-dequant"], ["off"], layers=["gate_up_proj"])
    gemm.run(cells, FAST)
    c = cells[0]
    assert c.status == "ok" and len(c.samples_s) == 3
    assert c.flops == 2 * 2 * 512 * 128
    assert c.bytes == 512 * 128 * 2 + 2 * 128 * 2 + 2 * 512 * 2
    assert math.isclose(c.gbps, c.bytes / c.median_s / 1e9)
    assert c.ci99_s[0] <= c.median_s <= c.ci99_s[1]
    assert cells[1].bytes == 512 * 64 + 512 * 8 + 4 + 2 * 128 * 2 + 2 * 512 * 2


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="valid models"):
        gemm.plan("qwen9", [1], ["torch-ref"], ["off"])
    with pytest.raises(ValueError, match="autotune must be"):
        gemm.plan("tiny", [1], ["torch-ref"], ["maybe"])
    with pytest.raises(ValueError, match="no layer"):
        gemm.plan("tiny", [1], ["torch-ref"], ["off"], layers=["lm_head"])


def test_choice_map_and_autotune_gain():
    from harness.records import GemmCell

    def cell(b, a, t, status="ok"):
        return GemmCell(model="m", layer="l", n=1, k=16, m=1, backend=b, autotune=a,
                        status=status, median_s=t, reason="" if status == "ok" else "x")
    cells = [cell("flashinfer-cudnn", "on", 10e-6), cell("flashinfer-cutlass", "on", 12e-6),
             cell("flashinfer-cutlass", "off", 15e-6), cell("flashinfer-auto", "on", 10.1e-6),
             cell("torch-ref", "off", 1e-6), cell("triton", "off", None, "failed")]
    ch = analysis.choice_map(cells)[0]
    assert ch.winner == "flashinfer-cudnn/on"  # torch-ref is a reference, never a winner
    assert ch.runner_up == "flashinfer-auto/on"
    assert ch.auto_verdict == "picks winner"
    assert ch.sglang_default_verdict.startswith("slower than winner by 20.0%")
    gains = analysis.autotune_gains(cells)
    assert gains == [{"backend": "flashinfer-cutlass", "layer": "l", "m": 1, "off_s": 15e-6,
                      "on_s": 12e-6, "gain": pytest.approx(0.25)}]


def test_choice_maps_per_weight_format_judge_auto_within_its_format():
    """NVFP4 and FP8 backends compete in separate maps, bf16 in both; a format's auto is
    judged against that format's fastest, not against bf16 (which it cannot pick)."""
    from harness.records import GemmCell

    def cell(b, a, t):
        return GemmCell(model="m", layer="l", n=1, k=16, m=64, backend=b, autotune=a,
                        status="ok", median_s=t)
    cells = [cell("torch-bf16", "off", 17e-6), cell("triton", "on", 30e-6),
             cell("flashinfer-fp8-cublas", "on", 25e-6), cell("flashinfer-fp8-auto", "on", 25.2e-6),
             cell("torch-fp8", "off", 28e-6), cell("flashinfer-fp8-cublas", "off", 26e-6)]
    maps = analysis.choice_map(cells)
    assert [c.family for c in maps] == ["nvfp4", "fp8"]
    nv, f8 = maps
    assert (nv.winner, nv.runner_up, nv.candidates) == ("torch-bf16/off", "triton/on", 2)
    assert (f8.winner, f8.runner_up, f8.candidates) == ("torch-bf16/off", "flashinfer-fp8-cublas/on", 4)
    assert f8.auto_verdict == "picks winner"  # within 3% of the fastest FP8 cell
    assert f8.sglang_default_verdict.startswith("n/a")
    gains = analysis.autotune_gains(cells)
    assert [g["backend"] for g in gains] == ["flashinfer-fp8-cublas"]


def test_choice_margin_within_the_intervals_is_marked_noise():
    from harness.records import GemmCell

    def cell(b, t, ci):
        return GemmCell(model="m", layer="l", n=1, k=16, m=1, backend=b, autotune="off",
                        status="ok", median_s=t, ci99_s=ci)
    close = analysis.choice_map([cell("torch-bf16", 10e-6, [9e-6, 11e-6]),
                                 cell("triton", 10.5e-6, [10.2e-6, 30e-6])])[0]
    clear = analysis.choice_map([cell("torch-bf16", 10e-6, [9.9e-6, 10.1e-6]),
                                 cell("triton", 12e-6, [11.9e-6, 12.1e-6])])[0]
    assert close.margin_is_noise and analysis.margin_text(close) == "5.0% (noise)"
    assert clear.margin_is_noise is False and analysis.margin_text(clear) == "20.0%"


@pytest.mark.parametrize("n", [5, 10, 20, 50, 100, 400])
def test_median_ci_is_asvs_own(n):
    """The stored 99% interval is asv_runner's quantile_ci (asv compares with it), with the
    whole range where too few samples give asv an infinite one."""
    from asv_runner.statistics import quantile_ci
    xs = [((i * 7919) % 1009) / 1009 for i in range(n)]
    _, (lo, hi) = quantile_ci(sorted(xs), 0.5, alpha_min=0.01)
    st = summarize(xs)
    if math.isfinite(lo):
        assert st.ci99_s == (lo, hi)
    else:
        assert st.ci99_s == (min(xs), max(xs))
    assert st.ci99_s[0] <= st.median_s <= st.ci99_s[1]


def test_timing_versions_follow_the_method():
    from harness.measure import TIMING_METHODS, timing_version
    assert timing_version("gemm") == timing_version("gemm", TIMING_METHODS["gemm"][-1])
    assert timing_version("gemm", "cuda-graph+events cold-L2") != timing_version("gemm")
    assert timing_version("decode", "cuda-graph per step + events, compiled") == \
        timing_version("decode")  # the engine description after the comma is not the method
    with pytest.raises(ValueError, match="not in TIMING_METHODS"):
        timing_version("gemm", "stopwatch")


def test_summarize_and_cpu_timer():
    st = summarize([3.0, 1.0, 2.0, 100.0, 2.5])
    assert st.median_s == 2.5 and st.n == 5 and st.ci99_s == (1.0, 100.0)
    t = time_cpu(lambda: sum(range(1000)), samples=7, warmup=1)
    assert len(t.samples_s) == 7 and all(s > 0 for s in t.samples_s)
    with pytest.raises(ValueError):
        summarize([])


def _acts(pattern):
    """GpuActivity records laid end to end from (name, duration_us) pairs, 1 us apart."""
    from harness.measure import GpuActivity
    out, t = [], 0.0
    for name, dur in pattern:
        out.append(GpuActivity(name, t, t + dur))
        t += dur + 1.0
    return out


def test_sample_spans_take_the_callables_kernels_between_flushes():
    from harness.measure import sample_spans
    # flush = one reduction; the callable = a memset and two kernels
    per = [("flush", 30.0), ("memset", 0.5), ("gemm", 10.0), ("reduce", 2.0)]
    acts = _acts(per * 3)
    spans = sample_spans(list(reversed(acts)), ["flush"], 3)  # order of records is not trusted
    # span = first start of the callable to its last end: 0.5 + 1 + 10 + 1 + 2 us
    assert spans == pytest.approx([14.5e-6] * 3)


@pytest.mark.parametrize("broken", ["missing", "extra", "renamed", "no_body"])
def test_sample_spans_refuse_an_ambiguous_record(broken):
    from harness.measure import sample_spans
    per = [("flush", 30.0), ("gemm", 10.0)]
    pattern = per * 4
    if broken == "missing":
        pattern = pattern[:-1]
    elif broken == "extra":
        pattern = pattern + [("gemm", 1.0)] * 4  # divisible by 4, but not the pattern
    elif broken == "renamed":
        pattern[5] = ("other", 10.0)
    else:
        pattern = [("flush", 30.0)] * 4
    assert sample_spans(_acts(pattern), ["flush"], 4) is None
