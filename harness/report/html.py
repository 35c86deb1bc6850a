"""The static HTML report: one page, figures as SVG files beside it, no network needed."""

from __future__ import annotations

import datetime
import html
import os
from pathlib import Path

from harness import analysis, gate
from harness.backends import BACKENDS
from harness.records import atomic_write_text
from harness.report import plots
from harness.report.data import ReportData, Run, run_order

CSS = """
.headline { border: 2px solid #1f5fa8; background: #f2f7fd; padding: 0.6em 1em; margin: 1em 0; }
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1250px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.86em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #137333; font-weight: bold; } .fail { color: #c5221f; font-weight: bold; }
.na, .nodata { color: #777; } .slower { color: #c5221f; } .faster { color: #137333; }
.summary { background: #f7f9fc; border: 1px solid #d6e0f0; border-radius: 6px; padding: 0.8em 1.2em; }
.summary li { margin: 0.25em 0; } img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.muted { color: #666; font-size: 0.9em; } code { background: #f2f2f2; padding: 0 3px; }
"""


def _e(s) -> str:
    return html.escape(str(s))


def _table(header: list[str], rows: list[list], num_cols: set[int] = frozenset(),
           classes: list[str] | None = None, raw: bool = False) -> str:
    """``raw``: the cells are HTML already (escaped by the caller)."""
    cell = (lambda v: str(v)) if raw else _e
    out = ["<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(
            f'<td class="num">{cell(v)}</td>' if j in num_cols else f"<td>{cell(v)}</td>"
            for j, v in enumerate(r)) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def _img(name: str | None, alt: str) -> str:
    return f'<img src="figures/{_e(name)}" alt="{_e(alt)}">' if name else ""


def _us(v) -> str:
    return "-" if v is None else f"{v * 1e6:.1f}"


def _timing_sentence(runs: list[Run]) -> str:
    """How the shown times were taken, from the cells' own timing methods (they differ by
    machine and over the history: CPU perf_counter, CUDA events, kernel spans)."""
    parts = []
    for kind, label in (("gemm", "GEMM"), ("decode", "decode"), ("moe", "MoE")):
        counts: dict[str, int] = {}
        for r in runs:
            for c in (c for c in r.cells if c.kind == kind):
                if c.status == "ok" and c.timing_method:
                    m = c.timing_method.split(",")[0]  # the method, not the engine options
                    counts[m] = counts.get(m, 0) + 1
        if counts:
            parts.append(f"{label} cells: " + "; ".join(
                f"{m} ({n})" for m, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    return ("Times are medians of the samples; timing methods: " + ". ".join(parts) + "."
            if parts else "")


def _summary(data: ReportData) -> str:
    items = []
    main = [r for r in data.runs if not run_order(r)[0]] or data.runs
    side = len(data.runs) - len(main)
    for r in main:
        all_choices = analysis.choice_map(r.gemm) if r.gemm else []
        for family in dict.fromkeys(c.family for c in all_choices):
            ch = [c for c in all_choices if c.family == family]
            wins: dict[str, int] = {}
            for c in ch:
                if c.winner:
                    wins[c.winner] = wins.get(c.winner, 0) + 1
            best = ", ".join(f"<b>{_e(k)}</b> in {v} of {len(ch)}"
                             for k, v in sorted(wins.items(), key=lambda kv: -kv[1])) or "no healthy backend"
            wrong_auto = sum(c.auto_verdict.startswith("slower") for c in ch)
            wrong_sg = sum(c.sglang_default_verdict.startswith("slower") for c in ch)
            auto = analysis.FAMILIES[family][0]
            defaults = ""
            if any(not c.auto_verdict.startswith("n/a") for c in ch):
                defaults = f"; {_e(auto)} picks a slower backend in {wrong_auto}"
                if any(not c.sglang_default_verdict.startswith("n/a") for c in ch):
                    defaults += f", SGLang's SM120 default in {wrong_sg}"
                defaults += " (layer, M) cells"
            items.append(f"<li>GEMM {_e(family.upper())}, {_e(r.title)}: fastest healthy "
                         f"backend/autotune {best}{defaults}.</li>")
        # A reference (torch-ref) is exact, not a serving option: never the decode winner.
        ok = [c for c in r.decode if c.status == "ok"
              and getattr(BACKENDS.get(c.backend), "candidate", True)]
        if ok:
            per_batch = {}
            for c in ok:
                if c.batch not in per_batch or c.tokens_per_s > per_batch[c.batch].tokens_per_s:
                    per_batch[c.batch] = c
            best = "; ".join(f"batch {b}: <b>{_e(c.backend)}/{_e(c.autotune)}</b> {c.tokens_per_s:.1f} tok/s"
                             + (f" ({c.roofline_frac * 100:.0f}% of roofline)" if c.roofline_frac else "")
                             for b, c in sorted(per_batch.items()))
            items.append(f"<li>Decode, {_e(r.title)}: {best}.</li>")
        gains = analysis.autotune_gains(r.gemm)
        for family in dict.fromkeys(analysis.family_of(g["backend"]) for g in gains):
            mine = [g for g in gains if analysis.family_of(g["backend"]) == family]
            worse = [g for g in mine if g["gain"] < -0.02]
            items.append(f"<li>Autotune {_e(family.upper())}: on vs off over {len(mine)} GEMM cells, gain "
                         f"{min(g['gain'] for g in mine) * 100:+.0f}% to {max(g['gain'] for g in mine) * 100:+.0f}%"
                         + (f"; <span class='fail'>on is slower in {len(worse)}</span>" if worse else "")
                         + ".</li>")
    if side:
        items.append(f"<li>{side} side runs (ad hoc commands, labelled runs, suite files of "
                     f"their own) follow the suites' records below.</li>")
    for h in data.histories:
        if h.base is not None:
            slower = [r for r in h.last_compare if r.verdict == "slower"]
            failing = [r for r in h.last_compare if r.verdict == "failed" and r.head is None and r.base is not None]
            verdict = (f"<span class='fail'>{len(slower)} significant slowdowns, {len(failing)} newly failing</span>"
                       if slower or failing else "<span class='pass'>no significant regression</span>")
            items.append(f"<li>Regressions on {_e(h.machine)}, {_e(h.head.commit[:8])} vs "
                         f"{_e(h.base.commit[:8])}: {verdict}.</li>")
        else:
            items.append(f"<li>Regressions on {_e(h.machine)}: only one recorded commit, nothing to compare yet.</li>")
        counts = {v: sum(x.verdict == v for x in h.verdicts) for v in (gate.PASS, gate.FAIL, gate.NA, gate.NO_DATA)}
        if h.verdicts:
            items.append(f"<li>Claims on {_e(h.machine)}: {counts[gate.PASS]} pass, "
                         f"<span class='{'fail' if counts[gate.FAIL] else ''}'>{counts[gate.FAIL]} fail</span>, "
                         f"{counts[gate.NA]} not applicable, {counts[gate.NO_DATA]} no data.</li>")
    if data.problems:
        items.append(f"<li class='fail'>{len(data.problems)} results files could not be read (listed below).</li>")
    if not items:
        items.append("<li>No recorded data yet: run <code>nvfp4-bench record</code>.</li>")
    return "<div class='summary'><b>Which backend, tuned or not, and did anything regress?</b><ul>" + \
        "\n".join(items) + "</ul></div>"


def _env_table(runs: list[Run]) -> str:
    keys = ["machine", "gpu_name", "compute_capability", "driver", "torch_cuda", "torch", "triton",
            "flashinfer", "sglang", "cudnn", "copy_bandwidth_Bps", "hostname"]
    rows = []
    for r in runs:
        e = r.environment
        vals = []
        for k in keys:
            v = e.get(k)
            if k == "copy_bandwidth_Bps" and v:
                v = f"{v / 1e9:.0f} GB/s"
            elif k == "compute_capability" and v:
                v = f"SM{v[0]}{v[1]}"
            vals.append("-" if v in (None, "") else v)
        rows.append([r.title] + vals)
    return _table(["run"] + keys, rows)


def _gemm_table(r: Run) -> str:
    rows = []
    for c in r.gemm:
        if c.status != "ok":
            continue
        rows.append([c.layer, c.m, c.backend, c.autotune, _us(c.median_s),
                     f"{c.ci99_s[0] * 1e6:.1f}-{c.ci99_s[1] * 1e6:.1f}" if c.ci99_s else "-",
                     f"{c.gbps:.0f}" if c.gbps else "-",
                     f"{c.roofline_frac * 100:.0f}%" if c.roofline_frac else "-",
                     f"{(c.health or {}).get('rel_err', 0):.1e}"])
    return _table(["layer", "M", "backend", "autotune", "median us", "99% CI us", "GB/s", "% copy BW",
                   "rel err"], rows, num_cols={1, 4, 5, 6, 7, 8})


def _choice_table(r: Run) -> str:
    rows = [[c.family, c.layer, c.m, c.winner or "none", _us(c.winner_median_s), c.runner_up or "-",
             analysis.margin_text(c), c.auto_verdict,
             c.sglang_default_verdict] for c in analysis.choice_map(r.gemm)]
    return _table(["format", "layer", "M", "winner", "us", "runner-up", "margin",
                   "FlashInfer auto of the format", "SGLang SM120 default"], rows,
                  num_cols={2, 4, 6})


def _decode_table(r: Run) -> str:
    rows = []
    for c in r.decode:
        if c.status != "ok":
            continue
        rows.append([c.engine, c.backend, c.autotune, c.batch, c.input_len,
                     f"{c.tokens_per_s:.1f}", f"{c.median_step_s * 1e3:.2f}",
                     f"{c.ci99_s[0] * 1e3:.2f}-{c.ci99_s[1] * 1e3:.2f}" if c.ci99_s else "-",
                     f"{c.roofline_step_s * 1e3:.2f}" if c.roofline_step_s else "-",
                     f"{c.roofline_frac * 100:.0f}%" if c.roofline_frac else "-"])
    return _table(["engine", "backend", "autotune", "batch", "input len", "tokens/s", "step ms",
                   "99% CI ms", "roofline ms", "% roofline"], rows, num_cols={3, 4, 5, 6, 7, 8, 9})


def _not_ok_table(runs: list[Run]) -> str:
    """Failed and skipped cells, one row per (run, backend, autotune, status, reason) with the
    cells it covers: a backend that cannot run here is one line, not one per shape."""
    groups: dict[tuple, list[str]] = {}
    for r in runs:
        for c in r.cells:
            if c.status == "ok":
                continue
            where = (f"{c.layer} M={c.m}" if c.kind == "gemm"
                     else f"tokens={c.tokens} down={c.down}" if c.kind == "moe"
                     else f"batch={c.batch} in={c.input_len} {c.engine}")
            key = (r.title, c.kind, c.model, c.backend, c.autotune, c.status, c.reason)
            groups.setdefault(key, []).append(where)
    if not groups:
        return "<p>Every cell ran.</p>"
    rows, classes = [], []
    for (title, kind, model, backend, autotune, status, reason), wheres in sorted(
            groups.items(), key=lambda kv: (kv[0][5] != "failed", kv[0][0], kv[0][3], kv[0][4])):
        shown = ", ".join(wheres[:4]) + (f" and {len(wheres) - 4} more" if len(wheres) > 4 else "")
        rows.append([title, kind, model, backend, autotune, status, len(wheres), shown, reason])
        classes.append("fail" if status == "failed" else "na")
    return _table(["run", "kind", "model", "backend", "autotune", "status", "cells", "which",
                   "reason"], rows, classes=classes, num_cols={6})


HEADLINE = "sglang-pr26496"


def _headline(data: ReportData) -> str:
    """The question the project exists for: does SGLang PR #26496's +17% decode hold? Its
    verdict on every machine, and what deciding it needs where it is not decided."""
    claim = next((c for c in gate.load_claims() if c.id == HEADLINE), None)
    if claim is None:
        return ""
    rows = []
    for h in data.histories:
        v = next((v for v in h.verdicts if v.claim.id == HEADLINE), None)
        if v is None:
            continue
        if v.verdict in (gate.PASS, gate.FAIL):
            ci = f" (99% CI {v.ci99[0]:.3f}-{v.ci99[1]:.3f})" if v.ci99 else ""
            what = (f"measured <b>x{v.ratio:.3f}</b>{_e(ci)} at {_e(v.commit[:8])}, "
                    f"needs x{claim.threshold:.2f}: <span class='{v.verdict}'>{_e(v.verdict)}</span>")
        else:
            what = (f"<span class='na'>{_e(v.verdict)}</span>: {_e(v.reason)}")
        rows.append(f"<li>{_e(h.machine)}: {what}</li>")
    if not rows:
        rows.append("<li>No machine history yet.</li>")
    decided = any(v.claim.id == HEADLINE and v.verdict in (gate.PASS, gate.FAIL)
                  for h in data.histories for v in h.verdicts)
    need = "" if decided else (
        f"<p>To decide it: a machine with an {_e(' or '.join(claim.applies_to))} GPU and "
        f"SGLang installed runs <code>NVFP4_BENCH_SUITE=claim-pr26496 bash scripts/main.sh</code> "
        f"(the suite's cells: Qwen3.6-27B NVFP4, batch 1, input 1024, "
        f"{_e(claim.old.get('backend'))}/autotune {_e(claim.old.get('autotune'))} vs "
        f"{_e(claim.new.get('backend'))}/autotune {_e(claim.new.get('autotune'))}, served by "
        f"SGLang); the gate then reads them from its history.</p>")
    return (f"<div class='headline'><b>{_e(claim.title)}</b> — claimed "
            f"{_e(claim.source_figures)}; passes at x{claim.threshold:.2f} or more."
            f"<ul>{''.join(rows)}</ul>{need}</div>")


def _asv_regressions(data: ReportData) -> str:
    """The steps asv's own detection found over the whole published history."""
    regs = data.asv_regressions
    if regs is None:
        return ""
    if not regs:
        return ("<p>asv's step detection (<code>regressions.json</code> of its site) finds no "
                "regression in the published histories.</p>")
    rel = (os.path.relpath(data.asv_site.parent, data.out_dir) if data.asv_site is not None
           and data.out_dir is not None else "")
    rows = [[f"<a href='{_e(rel)}/index.html{_e(r.url)}'>{_e(r.benchmark)}</a>" if rel
             else _e(r.benchmark), _e(r.machine), _e(r.params.get("label") or ""),
             _fmt_t(r.before), _fmt_t(r.after), f"x{r.ratio:.3f}", _e(r.commit[:8])]
            for r in regs]
    return ("<h2>Regressions asv found</h2><p class='muted'>asv's step detection "
            "(<code>asv.step_detect</code>, run by <code>asv publish</code>) over every "
            "recorded commit: each row is a lasting step up in time.</p>"
            + _table(["benchmark", "machine", "label", "before", "after", "after/before",
                      "from commit"], rows, num_cols={3, 4, 5}, raw=True))


def _moe_table(r: Run) -> str:
    """MoE layer cells: per runner, autotune and down rule, the time per call by tokens."""
    ok = [c for c in r.moe if c.status == "ok"]
    if not ok:
        return ""
    rows = []
    for c in sorted(ok, key=lambda c: (c.runner, c.autotune, c.down, c.tokens)):
        ci = f"{c.ci99_s[0] * 1e6:.1f}-{c.ci99_s[1] * 1e6:.1f}" if c.ci99_s else "-"
        rows.append([c.runner, c.autotune, c.down, c.tokens, f"{c.median_s * 1e6:.1f}", ci,
                     c.experts_hit, f"{c.roofline_frac * 100:.0f}%" if c.roofline_frac else "-",
                     (c.up_config or {}).get("BLOCK_SIZE_M", "-"),
                     (c.down_config or {}).get("BLOCK_SIZE_M", "-"), c.config_source])
    return ("<h3>MoE layer (routing, up, silu*up, down, combine)</h3>"
            + _table(["runner", "autotune", "down", "tokens", "median us", "99% CI us",
                      "experts hit", "%BW", "up BLOCK_M", "down BLOCK_M", "configs"], rows,
                     num_cols={3, 4, 5, 6, 7}))


def _claims_table(h) -> str:
    rows, classes = [], []
    for v in h.verdicts:
        ci = f"{v.ci99[0]:.3f}-{v.ci99[1]:.3f}" if v.ci99 else "-"
        rows.append([v.claim.id, v.claim.title, v.verdict, f"x{v.ratio:.3f}" if v.ratio else "-", ci,
                     f"x{v.claim.threshold:.2f}", v.claim.source_figures, v.reason])
        classes.append({"pass": "pass", "fail": "fail"}.get(v.verdict, "na"))
    return _table(["claim", "what", "verdict", "measured", "99% CI", "threshold", "source figures",
                   "detail"], rows, classes=classes)


def _imported_table(h) -> str:
    """Benchmarks imported from pytest-benchmark runs: newest value, and the one before."""
    from harness.pytest_import import PREFIX
    if h.head is None:
        return ""
    rows = []
    for bench in sorted(k for k in h.head.results.get_all_result_keys() if k.startswith(PREFIX)):
        before = {repr(p): v for p, v, _ in h.base.cells(bench)} if h.base is not None else {}
        for params, v, samples in h.head.cells(bench):
            old = before.get(repr(params))
            change = f"{(v / old - 1) * 100:+.1f}%" if v and old else "-"
            rows.append([bench + (f"[{params[0]}]" if params else ""), _fmt_t(v),
                         len(samples or []), _fmt_t(old) if old is not None else "-", change])
    if not rows:
        return ""
    return (f"<h3>pytest-benchmark suites at {_e(h.head.commit[:8])}</h3>"
            + _table(["benchmark", "median", "samples", "previous commit", "change"], rows,
                     num_cols={1, 2, 3, 4}))


def _compare_table(h) -> str:
    rows, classes = [], []
    order = {"slower": 0, "failed": 1, "missing": 2, "not comparable": 3, "faster": 4,
             "no significant change": 5}
    for r in sorted(h.last_compare, key=lambda r: (order[r.verdict], r.name)):
        rows.append([r.name, _fmt_t(r.base), _fmt_t(r.head), f"{r.ratio:.3f}" if r.ratio else "-", r.verdict])
        classes.append({"slower": "slower", "faster": "faster", "failed": "fail"}.get(r.verdict, ""))
    return _table(["cell", "base", "head", "head/base", "verdict"], rows, num_cols={1, 2, 3},
                  classes=classes)


def _fmt_t(v) -> str:
    if v is None:
        return "failed"
    if v != v:
        return "n/a"
    return f"{v * 1e3:.3f} ms" if v >= 1e-3 else f"{v * 1e6:.2f} us"


def render(data: ReportData, out_dir: str | Path, title: str = "nvfp4-bench report",
           log=lambda s: None) -> Path:
    """``log`` gets progress lines (sections drawn of all, time left) every 10 s."""
    from harness.progress import Progress
    out_dir = Path(out_dir)
    data.out_dir = out_dir
    progress = Progress("report", len(data.histories) + len(data.runs), log, unit="sections")
    figs = out_dir / "figures"
    if figs.exists():
        for f in figs.glob("*.svg"):
            f.unlink()
    parts = [f"<h1>{_e(title)}</h1>",
             f"<p class='muted'>Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
             f"from {len(data.runs)} run records and {len(data.histories)} machine histories. "
             f"{_e(_timing_sentence(data.runs))} "
             "Every timed cell passed the NaN/Inf/zero-row and error checks first.</p>",
             _headline(data), _summary(data)]
    if data.asv_site is not None:
        rel = os.path.relpath(data.asv_site, out_dir)
        parts.append(f"<p>Full interactive histories: <a href='{_e(rel)}'>asv site</a>.</p>")
    claims_by_id = {c.id: c for c in gate.load_claims()}
    for h in data.histories:
        parts.append(f"<h2>Claims and history — {_e(h.machine)}</h2>")
        if h.info:
            parts.append("<p class='muted'>" + ", ".join(
                f"{_e(k)}: {_e(v)}" for k, v in h.info.items() if k not in ("version",) and v) + "</p>")
        parts.append(_claims_table(h))
        parts.append(_img(plots.history(h, figs, f"history-{h.machine}.svg", claims_by_id),
                          f"history of {h.machine}"))
        if h.last_compare:
            parts.append(f"<h3>{_e(h.head.commit[:8])} vs {_e(h.base.commit[:8])}</h3>")
            parts.append(_compare_table(h))
        parts.append(_imported_table(h))
        progress.tick()
    for i, r in enumerate(data.runs):
        parts.append(f"<h2>{_e(r.title)}</h2>")
        bw = r.environment.get("copy_bandwidth_Bps")
        if r.gemm:
            parts.append(_img(plots.gemm_latency(r, figs, f"gemm-latency-{i}.svg", bw),
                              f"GEMM latency vs M, {r.title}"))
            for family in dict.fromkeys(c.family for c in analysis.choice_map(r.gemm)):
                parts.append(_img(plots.choice_map(r, figs, f"choice-map-{i}-{family}.svg", family),
                                  f"{family} choice map, {r.title}"))
            parts.append(_choice_table(r))
            parts.append(_img(plots.autotune_gain(r, figs, f"autotune-gain-{i}.svg"),
                              f"autotune gain, {r.title}"))
            parts.append("<details><summary>All timed GEMM cells</summary>" + _gemm_table(r) + "</details>")
        if r.decode:
            parts.append(_img(plots.decode_throughput(r, figs, f"decode-{i}.svg"), f"decode, {r.title}"))
            parts.append(_decode_table(r))
        parts.append(_moe_table(r))
        progress.tick()
    parts.append(_asv_regressions(data))
    parts.append("<h2>Failed and skipped cells</h2>")
    parts.append(_not_ok_table(data.runs))
    if data.problems:
        parts.append("<h2>Unreadable results files</h2><ul>" +
                     "".join(f"<li>{_e(p)}</li>" for p in data.problems) + "</ul>")
    parts.append("<h2>Environments</h2>")
    parts.append(_env_table(data.runs))
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(p for p in parts if p) + "\n</body></html>\n")
    out = out_dir / "index.html"
    atomic_write_text(out, page)
    return out
