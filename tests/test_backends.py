"""Backends: reference math and availability reasons (the FlashInfer contract: test_flashinfer.py)."""

import types

import pytest
import torch

from harness import nvfp4
from harness.backends import BACKENDS, get_backend, resolve
from harness.backends import flashinfer_lib
from harness.backends.flashinfer_fp4 import FlashInferFP4
from harness.gemm import make_activations, make_weights, reference
from harness.models import UnknownNameError
from script_modules import ROOT, load_script

CPU = torch.device("cpu")


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture
def layer():
    w = make_weights(96, 128, seed=3, device=CPU, std=0.02)
    x = make_activations(5, 128, seed=4, device=CPU)
    return w, x, nvfp4.global_scale_for(x)


def test_torch_ref_is_alpha_times_unscaled_product(layer):
    w, x, gsf = layer
    ref = get_backend("torch-ref")
    out = ref.run(ref.prepare(w), x, gsf)
    # Independent path: dequantize both operands fully, then matmul.
    xq = nvfp4.quantize(x, gsf)
    expect = nvfp4.dequantize(xq, torch.float32) @ nvfp4.dequantize(w.fp4, torch.float32).T
    assert _rel(out, expect) < 5e-3


@pytest.mark.parametrize("name", ["torch-ref", "torch-bf16", "torch-dequant"])
def test_torch_backends_match_their_math(layer, name):
    w, x, gsf = layer
    b = get_backend(name)
    out = b.run(b.prepare(w), x, gsf)
    assert out.dtype == torch.bfloat16 and out.shape == (5, 96)
    assert _rel(out, reference(b.math, w, x, gsf)) < b.tolerance


def test_quantization_error_is_visible_between_maths(layer):
    # The references differ by the NVFP4 error, so a backend checked against the wrong one fails.
    w, x, gsf = layer
    assert _rel(reference("w4a4", w, x, gsf), reference("bf16", w, x, gsf)) > 0.05


def test_unknown_backend_lists_valid_names():
    with pytest.raises(UnknownNameError) as e:
        resolve("torch-ref,cublas-magic")
    assert "cublas-magic" in str(e.value) and "flashinfer-cutlass" in str(e.value)
    # every backend with a GEMM of its own; sglang-auto is a name for SGLang's engines
    assert [b.name for b in resolve("all")] == [n for n, b in BACKENDS.items() if b.native]
    assert "sglang-auto" in BACKENDS and "sglang-auto" not in [b.name for b in resolve("all")]


def _without_flashinfer(monkeypatch):
    monkeypatch.setattr(flashinfer_lib, "try_import",
                        lambda: (None, "flashinfer-python is not importable (ModuleNotFoundError: "
                                       "No module named 'flashinfer'); install it with: pip install "
                                       "'nvfp4-bench[flashinfer]'"))


def test_flashinfer_skip_reasons_without_the_package(monkeypatch):
    """Where FlashInfer is absent, the fallback table names the GPUs (tests/test_flashinfer.py
    checks the reasons the real package gives)."""
    _without_flashinfer(monkeypatch)
    cudnn = FlashInferFP4("cudnn")
    assert not cudnn.availability(CPU).ok
    assert "this machine has none" in cudnn.availability(CPU).reason
    monkeypatch.setattr(flashinfer_lib, "compute_capability", lambda d: 90)
    r = cudnn.availability(torch.device("cuda"))
    assert not r.ok
    assert r.reason == "flashinfer cudnn needs SM100/SM103/SM107/SM110/SM120/SM121; this GPU is SM90"
    assert "SM120/SM121; this GPU is SM90" in FlashInferFP4("b12x").availability(torch.device("cuda")).reason
    monkeypatch.setattr(flashinfer_lib, "compute_capability", lambda d: 120)
    r = FlashInferFP4("cutlass").availability(torch.device("cuda"))
    assert not r.ok and "pip install" in r.reason


@pytest.mark.parametrize("name", ["torch-fp8", "flashinfer-fp8-cublas"])
def test_fp8_backends_are_w8a8_of_one_byte_per_weight(name, layer):
    b = get_backend(name)
    w, _, _ = layer
    assert (b.math, b.family, b.weight_bytes(w)) == ("w8a8", "fp8", 96 * 128)


def test_triton_skip_reason_without_gpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    r = get_backend("triton").availability(CPU)
    assert not r.ok and "needs an NVIDIA GPU" in r.reason


def test_tuned_choice_names_the_kernel_the_tuner_kept(monkeypatch):
    """hopper_peers logs which kernel and config the tuned triton backend runs per GEMM;
    the lookup must follow the small-M path table and the right autotuner's cache."""
    triton = pytest.importorskip("triton")
    from harness.backends import triton_w4a16 as tw

    monkeypatch.setattr(tw, "_SMALL_M_PATH", {})
    n, k = 4096, 1536  # a shape no other test tunes
    assert tw.tuned_choice(n, k, 16) is None  # not tuned yet
    mma = triton.Config({"BLOCK_N": 64, "BLOCK_K": 256}, num_warps=2)
    wg = triton.Config({"BLOCK_N": 128, "BLOCK_K": 128, "STAGES": 4}, num_warps=8)
    monkeypatch.setitem(tw._swap_ab_tuned().cache, (n, k, 16, "torch.bfloat16"), mma)
    monkeypatch.setitem(tw._wgmma_tuned().cache, (n, k, 32, "torch.bfloat16"), wg)
    assert tw.tuned_choice(n, k, 16) == f"mma.sync swap-ab {mma}"
    assert tw.tuned_choice(n, k, 32) is None  # the path table still says mma.sync
    tw._SMALL_M_PATH[(n, k, 32)] = "wgmma"
    assert tw.tuned_choice(n, k, 17) == f"wgmma {wg}"  # M 17 shares the bucket of 32
    # The reordered-activation configs have their own tuner; their config names the option.
    ordered = triton.Config({"BLOCK_N": 64, "BLOCK_K": 128, "STAGES": 3, "ACT_RING": True,
                             "ACT_ORDERED": True}, num_warps=4)
    monkeypatch.setitem(tw._wgmma_ordered_tuned().cache, (n, k, 64, "torch.bfloat16"), ordered)
    tw._SMALL_M_PATH[(n, k, 64)] = "wgmma-ordered"
    assert tw.tuned_choice(n, k, 64) == f"wgmma {ordered}"
    assert "ACT_ORDERED: True" in tw.tuned_choice(n, k, 64)
    # M = 1 runs the swapped-operand kernel too, where it runs; the GEMV where it does not.
    gemv = triton.Config({"BLOCK_N": 16, "BLOCK_K": 512, "SPLIT_K": 4}, num_warps=4)
    monkeypatch.setitem(tw._kernels(True)[0].cache, (n, k, 1, "torch.bfloat16"), gemv)
    assert tw.tuned_choice(n, k, 1) == f"gemv {gemv}"
    monkeypatch.setitem(tw._swap_ab_tuned().cache, (n, k, 1, "torch.bfloat16"), mma)
    assert tw.tuned_choice(n, k, 1) == f"mma.sync swap-ab {mma}"


def test_tuner_timer_warns_when_a_candidate_was_not_graph_timed(monkeypatch):
    """The tuner ranks candidates by CUDA-graph replays; one that ``time_gpu`` could only
    time eagerly (its capture failed) carries the host's launch overhead, so the tuner says
    so instead of ranking it silently. Graph-timed candidates raise no warning."""
    pytest.importorskip("triton")
    import warnings

    from harness import measure
    from harness.backends import triton_w4a16 as tw

    def timed(method):
        def fake(fn, **kwargs):
            return measure.Timing(samples_s=[3e-5, 1e-5, 2e-5], method=method, cold_l2=True)
        return fake

    monkeypatch.setattr(measure, "time_gpu",
                        timed("cuda-events (graph capture failed: RuntimeError)+events"))
    with pytest.warns(RuntimeWarning, match="without a CUDA graph.*graph capture failed"):
        assert tw._gpu_do_bench(lambda: None) == pytest.approx(2e-2)
    monkeypatch.setattr(measure, "time_gpu", timed("cuda-graph+events cold-L2(read)"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tw._gpu_do_bench(lambda: None, quantiles=[0.5, 0.0]) == pytest.approx([2e-2, 1e-2])


def test_ordered_tuner_times_each_candidate_behind_its_reorder(monkeypatch):
    """The reordered-activation tuner runs the call's reorder kernel before every timed
    launch of a candidate (its pre-hook, which Triton's autotuner calls in its benchmark
    only): from the call's activations, into the candidate's buffer, with the call's launch
    options. Outside a ``reorder_then`` call, and in the reset after the search, it does
    nothing."""
    pytest.importorskip("triton")
    from harness.backends import triton_w4a16 as tw

    assert tw._wgmma_ordered_tuned().pre_hook is tw._reorder_before_candidate
    assert tw._wgmma_tuned().pre_hook is not tw._reorder_before_candidate
    reorders = []
    monkeypatch.setattr(tw.triton_wgmma, "launch_mma_k_order",
                        lambda x, y, launch: reorders.append((x, y, launch)) or "reorder")
    ordered = torch.empty(64, 256)

    class Workspace:
        def ordered_acts(self, device, m, k):
            return ordered

    def bench(kernel, block_b, x, words, args, launch):
        # The autotuner's search: each candidate's launch follows the hook.
        for _ in range(2):
            tw._reorder_before_candidate({"x_ptr": x})
            kernel.append(launch)
        tw._reorder_before_candidate({"x_ptr": x}, reset_only=True)
        return "gemm", (x,), launch, None

    monkeypatch.setattr(tw, "_WORKSPACE", Workspace())
    monkeypatch.setattr(tw, "_launch_swapped", bench)
    x = torch.randn(64, 256)
    launched = []
    ran = tw.reorder_then(launched, 64, x, None, (x,) * 3, {"launch_pdl": True})
    assert ran[-1] == "reorder" and ran[1][0] is ordered
    assert [(r[0] is x, r[1] is ordered, r[2]) for r in reorders] == [
        (True, True, {"launch_pdl": True})] * 3  # the call's own, then one per timing
    # The backend's hand-off (ORDERED_HANDOFF_PDL off): the caller's options only, so the
    # GEMM runs behind the reorder in stream order unless the caller asks for PDL, as here.
    assert not tw.ORDERED_HANDOFF_PDL
    assert launched == [{"launch_pdl": True}] * 2
    tw._reorder_before_candidate({"x_ptr": ordered})  # no call under way: no reorder
    assert len(reorders) == 3 and tw._REORDER_SOURCE == []
    # Per call and with the switch flipped: PDL puts AFTER_REORDER in; without it an empty
    # launch stays empty (stream order).
    for pdl_switch, kw, want in ((True, {}, tw.triton_wgmma.AFTER_REORDER),
                                 (True, {"pdl": False}, {}), (False, {}, {}),
                                 (False, {"pdl": True}, tw.triton_wgmma.AFTER_REORDER)):
        monkeypatch.setattr(tw, "ORDERED_HANDOFF_PDL", pdl_switch)
        launched.clear()
        tw.reorder_then(launched, 64, x, None, (x,) * 3, {}, **kw)
        assert launched == [want] * 2
    assert len(reorders) == 15


def test_small_m_path_chooser_keeps_each_paths_time(monkeypatch):
    """The small-M path chooser keeps, beside the path it picked, each path's time as it saw
    it (``path_times``, per N, K and M bucket), and hopper_peers' record and table carry
    them next to the kernel: a table's pick can be read against its rivals."""
    pytest.importorskip("triton")
    import json

    from harness.backends import triton_w4a16 as tw

    monkeypatch.setattr(tw, "_SMALL_M_PATH", {})
    monkeypatch.setattr(tw, "_SMALL_M_PATH_S", {})
    monkeypatch.setattr(tw, "_wgmma_ok", lambda x: True)
    ran = []
    monkeypatch.setattr(tw, "run_swap_ab", lambda *a, **kw: ran.append("mma"))
    monkeypatch.setattr(tw, "run_wgmma", lambda *a, **kw: ran.append("wgmma"))
    monkeypatch.setattr(tw, "run_wgmma_ordered", lambda *a, **kw: ran.append("wgmma-ordered"))
    monkeypatch.setattr(tw, "_best_alternating", lambda *launches: (0.050, 0.043, 0.034))  # ms
    n, k = 4096, 1536
    args = (None,) * 7 + (64, n, k)
    assert tw.path_times(n, k, 64) is None  # not chosen yet
    tw.run_small_m(torch.zeros(64, k), None, args, True)
    assert ran == ["mma", "wgmma", "wgmma-ordered", "wgmma-ordered"]  # searches, then the pick
    assert tw._SMALL_M_PATH[(n, k, 64)] == "wgmma-ordered"
    want = {"mma": 50e-6, "wgmma": 43e-6, "wgmma-ordered": 34e-6}
    assert tw.path_times(n, k, 40) == pytest.approx(want)  # M 40 shares the bucket of 64
    assert tw.path_times(n, k, 16) is None

    peers = load_script("hopper_peers")
    doc = json.loads((ROOT / "baselines/peers/h100-sm90/f90cd3ba-hopper-peers.json").read_text())
    doc["rows"][3]["triton_path_us"] = {name: t * 1e6 for name, t in want.items()}
    table = peers.markdown(doc)
    assert (f"| 34816 x 5120 | 64 | {doc['rows'][3]['triton_kernel']} | mma 50.0, wgmma 43.0, "
            "wgmma-ordered 34.0 |") in table
    assert f"| 34816 x 5120 | 1 | {doc['rows'][0]['triton_kernel']} | - |" in table


def test_hopper_peers_times_torch_fp8_gemm_alone_without_flashinfer(layer):
    """The issue table's strictest FP8 peer, the GEMM on activations already in e4m3, comes
    from torch's ``_scaled_mm`` too, so a machine without FlashInfer still has it: the call
    hopper_peers times gives torch-fp8's own output bits, a path with no FP8 GEMM alone gets
    none, and the table names the column and its ratio."""
    pytest.importorskip("triton")
    w, x, gsf = layer
    peers = load_script("hopper_peers")
    fp8 = get_backend("torch-fp8")
    p = fp8.prepare(w)
    alone = peers.gemm_alone(fp8, p, x, gsf)
    assert torch.equal(alone(), fp8.run(p, x, gsf))
    bf16 = get_backend("torch-bf16")
    assert peers.gemm_alone(bf16, bf16.prepare(w), x, gsf) is None
    row = {"layers": ["m:o_proj"], "n": 96, "k": 128, "m": 5, "nvfp4_bytes": 1,
           "read_ceiling_us": 5.0, "read_ceiling_kernel": "k", "triton_read_ceiling_frac": 0.5,
           "us": {"triton": 10.0, "torch-fp8": 30.0}, "gemm_alone_us": {"torch-fp8": 20.0},
           "read_ceiling_read_flush_us": 4.0, "gemm_alone_read_flush_us": {"torch-fp8": 16.0},
           "us_read_flush": {"triton": 8.0, "torch-fp8": 24.0}}
    table = peers.markdown({"device": "d", "torch": "t", "triton": "3", "method": "m",
                            "method_read_flush": "rf", "peers_skipped": {}, "rows": [row]})
    assert "| layers | M | triton | torch-fp8 |\n" in table
    assert "| m:o_proj | 5 | 10.0 | 20.0 |" in table
    assert "torch-fp8 GEMM alone x2.00 (min x2.00)" in table  # do_bench: 20 / 10
    assert "| m:o_proj | 5 | 8.0 | 24.0 | 16.0 | 4.0 | 50% |" in table  # read flush


def test_config_sweep_reads_what_the_tuner_kept():
    """scripts/config_sweep.py re-times the tuned configs of a hopper-peers record: every
    small-M entry of the committed records parses back to the config that was printed (the
    plain kernels' entries to None), its stream-K variants keep the tile, and the committed
    sweep lines are configs the backend's fit rules accept."""
    pytest.importorskip("triton")
    import json

    from harness.backends import triton_w4a16 as tw

    sweep = load_script("config_sweep")
    seen = 0
    for record in sorted(ROOT.glob("baselines/peers/*/*-hopper-peers.json")):
        for row in json.loads(record.read_text())["rows"]:
            choice = row.get("triton_kernel") or ""
            line = sweep.parse_kernel(choice)
            if not choice.startswith(("wgmma", "mma.sync")):
                assert line is None
                continue
            seen += 1
            kw, cfg = line["kwargs"], choice.partition("BLOCK_N")[2]
            assert all(f"{key}: {value}" in "BLOCK_N" + cfg for key, value in kw.items())
            assert f"num_warps: {line['num_warps']}" in choice
            variants = sweep.with_stream_k(line, [1, 3])
            assert [v["kwargs"].get("STREAM_K") for v in variants] == [kw.get("STREAM_K"), 1, 3]
            assert all(v["kwargs"]["BLOCK_N"] == kw["BLOCK_N"] for v in variants)
    assert seen > 20
    # --with: each config's variants with one integer kernel option set, named in the label.
    option = sweep.parse_with("SPLIT_K=2,4")
    assert option == ("SPLIT_K", [2, 4])
    ring = {"kernel": "wgmma", "kwargs": {"BLOCK_N": 64, "SPLIT_K": 2, "STAGES": 3},
            "num_warps": 4}
    variants = sweep.with_option(ring, option)
    assert [v["kwargs"]["SPLIT_K"] for v in variants] == [2, 4]  # 2 is the line itself
    assert variants[0] is ring and "SPLIT_K=4" in sweep.label(variants[1])
    trial = sweep.with_option(ring, sweep.parse_with("TRIAL=8"))[1]
    assert "TRIAL=8" in sweep.label(trial) and "TRIAL" not in sweep.label(ring)
    assert sweep.with_option(ring, None) == [ring]
    for bad in ("SPLIT_K", "SPLIT_K=", "=4", "SPLIT_K=x", "1X=2"):
        with pytest.raises(ValueError):
            sweep.parse_with(bad)
    for text in (ROOT / "scripts/sweeps/stream-k.jsonl").read_text().splitlines():
        line = json.loads(text)
        for m in line["m"]:
            fits = tw._wgmma_fits if line["kernel"] == "wgmma" else tw._swap_ab_fits
            assert fits(line["kwargs"], line["num_warps"], m, 5120), line
    for text in (ROOT / "scripts/sweeps/warp-specialized-2x2-per-sm.jsonl").read_text(
            ).splitlines():
        line = json.loads(text)
        assert all(tw._wgmma_fits(line["kwargs"], line["num_warps"], m, 5120) for m in (33, 64))
    # An ordered config's row shows its four timings, each named.
    row = {"layers": ["qwen3.6-27b:qkv_proj"], "n": 14336, "k": 5120, "m": 64,
           "config": "wgmma ...", "rel_err": 2e-3, "us": 36.7, "us_x_ordered_before": 31.7,
           "us_torch_reorder": 36.2, "us_reorder_no_pdl": 34.0}
    table = sweep.markdown({"device": "d", "torch": "t", "triton": "3", "harness": "h",
                            "method": "m", "rows": [row]})
    assert ("| 36.7 (31.7 with x reordered before, 36.2 reordered by a torch copy, 34.0 behind "
            "the reorder kernel without PDL) | 2.00e-03 |") in table
    # Which hand-off the last column times, per tree: none without reorder_then or its pdl.
    assert sweep.other_handoff(tw) is (not tw.ORDERED_HANDOFF_PDL)
    assert sweep.other_handoff(types.SimpleNamespace()) is None
    def no_pdl_reorder_then(kernel, block_b, x, words, args, launch):  # a tree before the pdl
        return None
    assert sweep.other_handoff(types.SimpleNamespace(reorder_then=no_pdl_reorder_then)) is None
    assert sweep.other_handoff(types.SimpleNamespace(reorder_then=tw.reorder_then)) is False
    assert sweep.other_handoff(types.SimpleNamespace(reorder_then=tw.reorder_then,
                                                     ORDERED_HANDOFF_PDL=False)) is True
    row["us_reorder_pdl"] = row.pop("us_reorder_no_pdl")  # a tree whose hand-off is stream order
    table = sweep.markdown({"device": "d", "torch": "t", "triton": "3", "harness": "h",
                            "method": "m", "rows": [row]})
    assert "36.2 reordered by a torch copy, 34.0 behind the reorder kernel with PDL)" in table


@pytest.mark.parametrize("script", ["hopper_peers.py", "config_sweep.py", "kernel_profile.py"])
@pytest.mark.parametrize("argv, says", [
    (["--m", "1,x"], "expected positive integers separated by commas"),
    (["--m", "0"], "expected positive integers separated by commas"),
    (["--models", "qwen3.6-27b,nope"], "valid models: qwen3.6-27b, qwen3-32b"),
])
def test_gpu_scripts_reject_bad_arguments_with_the_choices(script, argv, says):
    """The GPU scripts exit 2 on a bad --m or --models, naming what is valid, before any
    GPU work (so on this machine too, GPU or not)."""
    pytest.importorskip("triton")
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "scripts" / script), *argv],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr


def test_tuner_probe_rejects_bad_arguments_and_a_machine_without_gpu():
    """``tuner_probe.py``: a missing or non-integer seed, an unknown model or a bad ``--m``
    exits 2 with its usage (the models to choose from named); without a CUDA GPU it exits 2
    saying so, before any tuning."""
    import subprocess
    import sys
    from pathlib import Path

    torch = pytest.importorskip("torch")
    script = Path(__file__).resolve().parent.parent / "scripts" / "tuner_probe.py"
    for argv, says in (([], "required: seed"), (["x"], "invalid int value: 'x'"),
                       (["7", "--models", "qwen9"], "qwen3.6-27b"),
                       (["7", "--m", "0,64"], "expected positive integers")):
        r = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2 and says in r.stderr, r.stderr
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, str(script), "7"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr, r.stderr


def test_kernel_profile_summary_reads_ncus_raw_csv(tmp_path):
    """``kernel_profile.py --summary`` turns ncu's raw CSV (a header row, a units row, a row
    per kernel named "range/kernel") into one table row per kernel: its metrics, the share of
    elapsed cycles its SMs were active, its largest stalls first; a CSV without the metrics
    exits with the missing ones named."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = root / "scripts" / "kernel_profile.py"
    values = {"launch__grid_size": "544", "launch__registers_per_thread": "109",
              "launch__occupancy_limit_shared_mem": "3", "gpu__time_duration.sum": "83.56",
              "sm__cycles_elapsed.avg.per_second": "1.74",
              "dram__bytes_read.sum.per_second": "1.21", "lts__t_sector_hit_rate.pct": "61.8",
              "smsp__issue_active.avg.pct_of_peak_sustained_active": "38.8",
              "smsp__warps_active.avg.per_cycle_active": "2.55",
              "sm__cycles_active.avg": "104,796.66", "gpc__cycles_elapsed.max": "147,250",
              "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio": "1.24",
              "smsp__average_warps_issue_stalled_wait_per_issue_active.ratio": "0.91",
              "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio": "1.13",
              "smsp__average_warps_issue_stalled_gmma_per_issue_active.ratio": "0.09"}
    raw = tmp_path / "raw.csv"
    with open(raw, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "Kernel Name", *values])
        w.writerow(["", "", *["" for _ in values]])
        w.writerow(["0", "gate_up M=64 wgmma/wgmma_kernel", *values.values()])
    done = subprocess.run([sys.executable, str(script), "--summary", str(raw)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    row = done.stdout.splitlines()[-1]
    assert row.startswith("| gate_up M=64 wgmma | wgmma_kernel | 544 | 109 | 3 | 83.6 | 1.74 |")
    assert "| 71 | barrier 1.24, long_scoreboard 1.13, wait 0.91 |" in row, row
    with open(raw, "w", newline="") as f:
        csv.writer(f).writerows([["ID", "Kernel Name"], ["", ""], ["0", "a/b"]])
    done = subprocess.run([sys.executable, str(script), "--summary", str(raw)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "gpu__time_duration.sum" in done.stderr
    done = subprocess.run([sys.executable, str(script), "--summary", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "usage" in done.stderr
    done = subprocess.run([sys.executable, str(script), "--peers", "torch-fp8,nope"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "torch-fp8" in done.stderr and "nope" in done.stderr


def test_kernel_profile_summary_of_a_real_ncu_report(tmp_path):
    """The same on Nsight Compute 2025.3.1's own raw CSV of an H100 run (two of its kernels,
    every column; ``tests/ncu``): the rows are those of the committed record that this run
    made (``baselines/peers/h100-sm90/1e0ba0d1-kernel-profile.md``)."""
    import gzip
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    raw = tmp_path / "raw.csv"
    raw.write_bytes(gzip.decompress((root / "tests/ncu/raw-h100-2025.3.1.csv.gz").read_bytes()))
    done = subprocess.run([sys.executable, str(root / "scripts/kernel_profile.py"), "--summary",
                           str(raw)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()[2:]
    record = (root / "baselines/peers/h100-sm90/1e0ba0d1-kernel-profile.md").read_text()
    assert len(rows) == 2 and all(row in record.splitlines() for row in rows), rows
    assert "| _read | 256 | 48 | 14 | 36.8 | 1.92 | 2.72 | 1 | 17 | 3.8 | 90 |" in rows[0]
