"""``nvfp4-bench compare BASE HEAD``: per-cell change, significance and verdict.

The verdicts are asv's own (``asv compare --factor``): its test on the stored samples
(Mann-Whitney U, p < 0.002; with too few samples, non-overlapping 99% intervals) and its
factor, so ``asv compare`` and this table agree. What is ours: cells matched across suite
blocks, tokens/s, the timing-method banner and the exit status (1 on a regression).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness import store

FASTER, SLOWER, SAME, MISSING, FAILED, INCOMPARABLE = (
    "faster", "slower", "no significant change", "missing", "failed", "not comparable")


@dataclass
class Row:
    bench: str                   # 'gemm' | 'decode' | an imported benchmark's name
    params: tuple
    base: float | None
    head: float | None
    ratio: float | None          # head / base of a lower-is-better time
    significant: bool
    verdict: str

    @property
    def name(self) -> str:
        return f"{self.bench}[{', '.join(map(str, self.params))}]"


def _group_cells(entry: store.Entry) -> dict[tuple[str, tuple], tuple]:
    """(group, params) -> (value, samples, stats, version): our cells by kind over all suite
    blocks (a cell keeps its identity when it moves between blocks), imports by name."""
    res = entry.results
    out: dict[tuple[str, tuple], tuple] = {}
    for bench in sorted(res.get_all_result_keys()):
        group = store.kind_of(bench) or bench
        version = res.benchmark_version.get(bench)
        for combo, value, samples, st in entry.rows(bench):
            out.setdefault((group, combo), (value, samples, st, version))
    return out


def compare(base: store.Entry, head: store.Entry, threshold: float = 0.05) -> list[Row]:
    """Each cell's verdict by asv's own rule (``asv compare --factor 1+threshold``): a
    change counts when asv's statistics on the stored samples say the runs differ and the
    ratio is beyond the factor; different benchmark versions (timing methods) are not
    comparable."""
    from asv import _stats as asv_stats
    from asv.commands.compare import _is_result_better

    factor = 1 + threshold
    cells_b, cells_h = _group_cells(base), _group_cells(head)
    rows = []
    for key in sorted(set(cells_b) | set(cells_h), key=lambda k: (k[0], tuple(map(str, k[1])))):
        group, params = key
        vb, sb, st_b, ver_b = cells_b.get(key, (math.nan, None, None, None))
        vh, sh, st_h, ver_h = cells_h.get(key, (math.nan, None, None, None))
        if _skipped(vb) or _skipped(vh):
            if not (_skipped(vb) and _skipped(vh)):
                rows.append(Row(group, params, vb, vh, None, False, MISSING))
            continue
        if ver_b is not None and ver_h is not None and ver_b != ver_h:
            rows.append(Row(group, params, vb, vh, None, False, INCOMPARABLE))
            continue
        if vb is None or vh is None:
            rows.append(Row(group, params, vb, vh, None, False, FAILED))
            continue
        ratio = vh / vb if vb > 0 else math.inf
        ss_b, ss_h = (st_b, sb), (st_h, sh)
        sig = (bool(asv_stats.is_different(sb, sh, st_b, st_h))
               if (sb or st_b) and (sh or st_h) else False)
        if _is_result_better(vh, vb, ss_h, ss_b, factor):
            verdict = FASTER
        elif _is_result_better(vb, vh, ss_b, ss_h, factor):
            verdict = SLOWER
        else:
            verdict = SAME
        rows.append(Row(group, params, vb, vh, ratio, sig, verdict))
    return rows


def _skipped(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


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
    counts = {v: sum(r.verdict == v for r in rows)
              for v in (SLOWER, FASTER, SAME, MISSING, FAILED, INCOMPARABLE)}
    icon = {SLOWER: ":red_circle:", FASTER: ":green_circle:", SAME: "", MISSING: ":grey_question:",
            FAILED: ":x:", INCOMPARABLE: ":heavy_multiplication_x:"}
    lines = [f"### nvfp4-bench: {who(head)} vs {who(base)} on `{head.machine}`", "",
             f"**{counts[SLOWER]} slower**, {counts[FASTER]} faster, {counts[SAME]} unchanged, "
             f"{counts[MISSING]} missing, {counts[FAILED]} failed"
             + (f", {counts[INCOMPARABLE]} not comparable (benchmark version changed)"
                if counts[INCOMPARABLE] else "")
             + f" (asv's rule at factor {1 + threshold:.2f}: Mann-Whitney U p < 0.002 on the "
             f"stored samples; times are lower-is-better: seconds per GEMM, seconds per "
             f"token).", ""]
    if method_notes:
        lines += ["> **The timing method changed between these runs**, so part of each change is "
                  "the measurement, not the code:"]
        lines += [f"> - {n}" for n in method_notes]
        lines.append("")
    lines += ["| cell | base | head | head/base | tokens/s change | verdict |",
              "|---|---:|---:|---:|---:|---|"]
    order = {SLOWER: 0, FAILED: 1, MISSING: 2, INCOMPARABLE: 3, FASTER: 4, SAME: 5}
    for r in sorted(rows, key=lambda r: (order[r.verdict], r.name)):
        if only_changed and r.verdict == SAME:
            continue
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else "-"
        tps = f"{(1 / r.ratio - 1) * 100:+.1f}%" if r.ratio and r.bench == "decode" else ""
        lines.append(f"| {r.name} | {_fmt_time(r.base)} | {_fmt_time(r.head)} | {ratio} | {tps} | "
                     f"{icon[r.verdict]} {r.verdict} |")
    return "\n".join(lines) + "\n"
