"""The HTML report from recorded smoke data: every cell, verdicts, skip reasons, figures."""

import html
import re

import pytest

from harness import record
from harness.cli import main
from harness.records import GemmCell

from test_store import MINI, _gemm, _noise, _plant, project  # noqa: F401  (fixtures)


@pytest.mark.slow
def test_report_from_recorded_data(project, tmp_path):  # noqa: F811
    conf, base, head = project
    suite = tmp_path / "mini.toml"
    suite.write_text(MINI)
    # a slice of the smoke suite at the base commit, the whole smoke suite at the head
    recs = [record.record(str(suite), conf, commit=base), record.record("smoke", conf, commit=head)]
    out = tmp_path / "report"
    assert main(["report", "--config", str(conf.path), "--output", str(out)]) == 0
    page = (out / "index.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    cells = recs[-1].cells
    # every timed cell has its row; every skipped one its reason
    for c in cells:
        if c.status == "ok" and c.kind == "gemm":
            assert re.search(rf"<td>{c.layer}</td><td class=\"num\">{c.m}</td><td>{c.backend}</td>"
                             rf"<td>{c.autotune}</td><td class=\"num\">{c.median_s * 1e6:.1f}</td>", page), c.key
        elif c.status == "ok" and c.kind == "moe":
            assert re.search(rf"<td>{c.runner}</td><td>{c.autotune}</td><td>{c.down}</td>"
                             rf"<td class=\"num\">{c.tokens}</td><td class=\"num\">"
                             rf"{c.median_s * 1e6:.1f}</td>", page), c.key
        elif c.status == "ok":
            assert f"<td>{c.tokens_per_s:.1f}</td>" in page.replace('<td class="num">', "<td>")
        else:
            assert c.reason in text, c.reason
    from harness.backends import get_backend
    from harness.hardware import default_device
    cudnn = get_backend("flashinfer-cudnn").availability(default_device())
    assert cudnn.ok or cudnn.reason in text
    # claims with verdicts, the comparison of the two commits, the summary question
    for cid in ("sglang-pr26496", "triton-autotune-decode", "nvfp4-decode-vs-bf16"):
        assert cid in text
    assert "not applicable" in text
    assert f"{head[:8]} vs {base[:8]}" in text
    assert "Which backend, tuned or not, and did anything regress?" in text
    # the timing methods are the cells' own (CPU here), not a fixed sentence about CUDA
    methods = {c.timing_method.split(",")[0] for c in cells if c.status == "ok"}
    assert all(m in text for m in methods) and "timed by events" not in text
    # every figure referenced exists and is an SVG
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert len(imgs) >= 4
    for src in imgs:
        f = out / src
        assert f.exists() and f.read_text().lstrip().startswith("<?xml") and "<svg" in f.read_text()[:500]
    assert "https://" not in page.split("<body>")[1].split("asv site")[0]  # nothing fetched


def test_report_lists_failed_cells_and_unreadable_files(project, tmp_path):  # noqa: F811
    conf, base, head = project
    run = tmp_path / "run.json"
    from harness.records import write_run
    cells = [_gemm("torch-bf16", _noise(1e-3)),
             GemmCell(model="tiny", layer="o_proj", n=128, k=128, m=1, backend="triton",
                      autotune="on", status="failed", reason="3/3 rows contain NaN"),
             GemmCell(model="tiny", layer="o_proj", n=128, k=128, m=1, backend="flashinfer-b12x",
                      autotune="on", status="skipped", reason="flashinfer b12x needs SM120/SM121; this GPU is SM90")]
    cells[0].health = {"rel_err": 1e-3}
    write_run(run, {"machine": "m1", "gpu_name": "H200", "compute_capability": [9, 0],
                    "driver": "580", "copy_bandwidth_Bps": 4.1e12}, cells)
    _plant(conf, base, [_gemm("torch-bf16", _noise(1e-3))])
    bad = conf.runs_dir / "planted" / "broken.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"cells": [')
    out = tmp_path / "r"
    assert main(["report", str(run), "--config", str(conf.path), "--output", str(out)]) == 0
    text = html.unescape(re.sub(r"<[^>]+>", " ", (out / "index.html").read_text()))
    assert "3/3 rows contain NaN" in text and "failed" in text
    assert "flashinfer b12x needs SM120/SM121; this GPU is SM90" in text
    assert "broken.json" in text and "corrupt" in text
    assert "H200" in text and "4100 GB/s" in text
    # a run file that is named and unreadable is an error, by name
    assert main(["report", str(bad), "--config", str(conf.path), "--output", str(out)]) == 2


def test_summary_never_names_a_reference_the_decode_winner(tmp_path):
    from pathlib import Path

    from harness.records import DecodeCell
    from harness.report.data import ReportData, Run
    from harness.report.html import _summary

    def dec(backend, tps):
        return DecodeCell(model="tiny", batch=1, input_len=8, output_len=8, backend=backend,
                          autotune="off", status="ok", tokens_per_s=tps, median_step_s=1 / tps,
                          timing_method="perf_counter")
    run = Run(path=Path("r.json"), machine="m", environment={},
              cells=[dec("torch-ref", 900.0), dec("torch-bf16", 500.0)])
    text = _summary(ReportData(runs=[run], histories=[], asv_site=None))
    assert "torch-bf16/off" in text and "torch-ref" not in text
