"""``nvfp4-bench compare BASE HEAD``: per-cell change, significance and verdict.

Significance is asv's own test on the stored samples (Mann-Whitney U, p < 0.002; with too
few samples, non-overlapping 99% intervals). A change counts only when it is significant
*and* beyond the threshold, so noise never fails a PR and a real 10% slowdown always does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness import store

FASTER, SLOWER, SAME, MISSING, FAILED = ("faster", "slower", "no significant change", "missing",
                                         "failed")


@dataclass
class Row:
    bench: str
    params: tuple
    base: float | None
    head: float | None
    ratio: float | None          # head / base of a lower-is-better time
    significant: bool
    verdict: str

    @property
    def name(self) -> str:
        kind = "gemm" if self.bench == store.GEMM_BENCH else "decode" if self.bench == store.DECODE_BENCH else self.bench
        return f"{kind}[{', '.join(map(str, self.params))}]"


def _stats(entry: store.Entry, bench: str, params: tuple):
    res = entry.results
    p = res.get_result_params(bench)
    reprs = [store.param_repr(v) for v in params]
    idx = 0
    for r, vals in zip(reprs, p):
        idx = idx * len(vals) + vals.index(r)
    st = res.get_result_stats(bench, p)
    return st[idx] if isinstance(st, list) else st


def compare(base: store.Entry, head: store.Entry, threshold: float = 0.05) -> list[Row]:
    from asv import _stats as asv_stats

    rows = []
    benches = sorted(set(base.results.get_all_result_keys()) | set(head.results.get_all_result_keys()))
    for bench in benches:
        cells_b = {p: (v, s) for p, v, s in base.cells(bench)}
        cells_h = {p: (v, s) for p, v, s in head.cells(bench)}
        for params in sorted(set(cells_b) | set(cells_h), key=lambda t: tuple(map(str, t))):
            vb, sb = cells_b.get(params, (math.nan, None))
            vh, sh = cells_h.get(params, (math.nan, None))
            if params not in cells_b or params not in cells_h:
                rows.append(Row(bench, params, vb, vh, None, False, MISSING))
                continue
            if vb is None or vh is None:
                rows.append(Row(bench, params, vb, vh, None, False, FAILED))
                continue
            ratio = vh / vb if vb > 0 else math.inf
            st_b, st_h = _stats(base, bench, params), _stats(head, bench, params)
            sig = bool(asv_stats.is_different(sb, sh, st_b, st_h)) if (sb or st_b) and (sh or st_h) else False
            if sig and ratio > 1 + threshold:
                verdict = SLOWER
            elif sig and ratio < 1 / (1 + threshold):
                verdict = FASTER
            else:
                verdict = SAME
            rows.append(Row(bench, params, vb, vh, ratio, sig, verdict))
    return rows


def regressions(rows: list[Row]) -> list[Row]:
    """Significant slowdowns beyond the threshold, and cells that ran in BASE but fail in HEAD."""
    return [r for r in rows if r.verdict == SLOWER
            or (r.verdict == FAILED and r.head is None and r.base is not None)]


def _fmt_time(v: float | None) -> str:
    if v is None:
        return "failed"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if v >= 1e-3:
        return f"{v * 1e3:.3f} ms"
    return f"{v * 1e6:.2f} us"


def method_changes(base_methods: dict[str, set[str]],
                   head_methods: dict[str, set[str]]) -> list[str]:
    """Cell kinds whose timing method differs between two runs, as readable lines."""
    return [f"{kind}: base `{', '.join(sorted(base_methods[kind]))}`, "
            f"head `{', '.join(sorted(head_methods[kind]))}`"
            for kind in sorted(set(base_methods) & set(head_methods))
            if base_methods[kind] != head_methods[kind]]


def markdown(rows: list[Row], base: store.Entry, head: store.Entry, threshold: float,
             only_changed: bool = False, method_notes: list[str] = ()) -> str:
    def who(e: store.Entry) -> str:
        return f"`{e.label}` ({e.commit[:8]})" if e.label else f"`{e.commit[:8]}`"
    counts = {v: sum(r.verdict == v for r in rows) for v in (SLOWER, FASTER, SAME, MISSING, FAILED)}
    icon = {SLOWER: ":red_circle:", FASTER: ":green_circle:", SAME: "", MISSING: ":grey_question:",
            FAILED: ":x:"}
    lines = [f"### nvfp4-bench: {who(head)} vs {who(base)} on `{head.machine}`", "",
             f"**{counts[SLOWER]} slower**, {counts[FASTER]} faster, {counts[SAME]} unchanged, "
             f"{counts[MISSING]} missing, {counts[FAILED]} failed "
             f"(threshold {threshold * 100:.0f}%, Mann-Whitney U p < 0.002 on stored samples; "
             f"times are lower-is-better: seconds per GEMM, seconds per token).", ""]
    if method_notes:
        lines += ["> **The timing method changed between these runs**, so part of each change is "
                  "the measurement, not the code:"]
        lines += [f"> - {n}" for n in method_notes]
        lines.append("")
    lines += ["| cell | base | head | head/base | tokens/s change | verdict |",
              "|---|---:|---:|---:|---:|---|"]
    order = {SLOWER: 0, FAILED: 1, MISSING: 2, FASTER: 3, SAME: 4}
    for r in sorted(rows, key=lambda r: (order[r.verdict], r.name)):
        if only_changed and r.verdict == SAME:
            continue
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else "-"
        tps = (f"{(1 / r.ratio - 1) * 100:+.1f}%" if r.ratio and r.bench == store.DECODE_BENCH else "")
        lines.append(f"| {r.name} | {_fmt_time(r.base)} | {_fmt_time(r.head)} | {ratio} | {tps} | "
                     f"{icon[r.verdict]} {r.verdict} |")
    return "\n".join(lines) + "\n"
