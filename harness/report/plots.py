"""matplotlib figures of a report, written as SVG files beside the HTML.

One colour per backend in every figure (the registry's order); autotune ``on`` is a solid
line, ``off`` dashed. Titles and axes carry units.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from harness import analysis  # noqa: E402
from harness.backends import BACKENDS  # noqa: E402

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939"]
STYLE = {"on": "-", "off": "--"}
MARK = {"on": "o", "off": "s"}


def color(backend: str) -> str:
    names = list(BACKENDS)
    i = names.index(backend) if backend in names else len(names) + (hash(backend) % 5)
    return _PALETTE[i % len(_PALETTE)]


def _save(fig, out_dir: Path, name: str) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / name, format="svg", bbox_inches="tight")
    plt.close(fig)
    return name


def gemm_latency(run, out_dir: Path, name: str, copy_bw: float | None) -> str | None:
    """Latency vs M per layer shape, one line per (backend, autotune), rooflines drawn."""
    cells = [c for c in run.gemm if c.status == "ok"]
    if not cells:
        return None
    layers = list(dict.fromkeys(c.layer for c in run.gemm))
    cols = min(3, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, layer in zip(axes.flat, layers):
        mine = [c for c in cells if c.layer == layer]
        ms = sorted({c.m for c in run.gemm if c.layer == layer})
        for (b, a) in sorted({(c.backend, c.autotune) for c in mine}):
            pts = sorted((c.m, c.median_s * 1e6) for c in mine if c.backend == b and c.autotune == a)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], STYLE[a], marker=MARK[a],
                    color=color(b), label=f"{b} ({a})", markersize=4)
        some = next((c for c in run.gemm if c.layer == layer), None)
        if copy_bw and some:
            n, k = some.n, some.k
            nv = [(n * k * 0.5625 + m * k * 2 + m * n * 2) / copy_bw * 1e6 for m in ms]
            bf = [(n * k * 2 + m * k * 2 + m * n * 2) / copy_bw * 1e6 for m in ms]
            ax.plot(ms, nv, ":", color="black", linewidth=1.2, label="NVFP4 memory roofline")
            ax.plot(ms, bf, ":", color="grey", linewidth=1.2, label="bf16 memory roofline")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{layer} (N={some.n}, K={some.k})" if some else layer, fontsize=10)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("latency (us, log)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.02 - 0.02 * rows))
    fig.suptitle(f"GEMM latency vs M — {run.title} (solid: autotune on, dashed: off)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, name)


def choice_map(run, out_dir: Path, name: str, family: str = "nvfp4") -> str | None:
    ch = [c for c in analysis.choice_map(run.gemm) if c.family == family]
    if not ch:
        return None
    layers = list(dict.fromkeys(c.layer for c in ch))
    ms = sorted({c.m for c in ch})
    fig, ax = plt.subplots(figsize=(1.1 * len(ms) + 3, 0.6 * len(layers) + 1.8))
    winners = set()
    for c in ch:
        y, x = layers.index(c.layer), ms.index(c.m)
        b = c.winner.split("/")[0] if c.winner else None
        face = color(b) if b else "#eeeeee"
        winners.add(b) if b else None
        ax.add_patch(plt.Rectangle((x, y), 1, 1, facecolor=face, edgecolor="white", alpha=0.85))
        txt = (f"{c.winner.split('/')[1]}\n+{c.margin * 100:.0f}%{' ~' if c.margin_is_noise else ''}"
               if c.winner and c.margin is not None
               else (c.winner.split("/")[1] if c.winner else "none"))
        wrong = [who for who, v in (("auto", c.auto_verdict), ("sglang", c.sglang_default_verdict))
                 if v.startswith("slower")]
        if wrong:
            txt += "\n✗ " + ",".join(wrong)
        ax.text(x + 0.5, y + 0.5, txt, ha="center", va="center", fontsize=7,
                color="white" if b else "black")
    ax.set_xlim(0, len(ms))
    ax.set_ylim(0, len(layers))
    ax.set_xticks([i + 0.5 for i in range(len(ms))], [str(m) for m in ms])
    ax.set_yticks([i + 0.5 for i in range(len(layers))], layers)
    ax.set_xlabel("M (tokens)")
    ax.invert_yaxis()
    ax.legend(handles=[Patch(color=color(b), label=b) for b in sorted(winners)],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title="winner")
    ax.set_title(f"{family.upper()} choice map — {run.title}\nfastest healthy backend per cell: autotune setting, "
                 f"margin over the next backend (~: within noise); ✗ = a default picks a slower one", fontsize=9)
    return _save(fig, out_dir, name)


def autotune_gain(run, out_dir: Path, name: str) -> str | None:
    gains = analysis.autotune_gains(run.gemm)
    if not gains:
        return None
    backends = list(dict.fromkeys(g["backend"] for g in gains))
    labels = list(dict.fromkeys(f"{g['layer']} M={g['m']}" for g in gains))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(labels) * len(backends) + 2), 4))
    width = 0.8 / len(backends)
    for j, b in enumerate(backends):
        vals = {f"{g['layer']} M={g['m']}": g["gain"] * 100 for g in gains if g["backend"] == b}
        xs = [i + j * width for i, lab in enumerate(labels) if lab in vals]
        ax.bar(xs, [vals[lab] for lab in labels if lab in vals], width, color=color(b), label=b)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=60,
                  ha="right", fontsize=7)
    ax.set_ylabel("autotune gain (% faster, on vs off)")
    ax.set_title(f"Autotune gain per backend and shape — {run.title}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, out_dir, name)


def decode_throughput(run, out_dir: Path, name: str) -> str | None:
    cells = [c for c in run.decode if c.status == "ok"]
    if not cells:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for (b, a, eng) in sorted({(c.backend, c.autotune, c.engine) for c in cells}):
        pts = sorted((c.batch, c.tokens_per_s, (c.roofline_frac or 0) * 100) for c in cells
                     if (c.backend, c.autotune, c.engine) == (b, a, eng))
        lab = f"{b} ({a}{', ' + eng if eng != 'native' else ''})"
        a1.plot([p[0] for p in pts], [p[1] for p in pts], STYLE[a], marker=MARK[a], color=color(b), label=lab)
        if eng == "native":
            a2.plot([p[0] for p in pts], [p[2] for p in pts], STYLE[a], marker=MARK[a], color=color(b), label=lab)
    model = cells[0].model
    a1.set_xscale("log", base=2)
    a1.set_xlabel("batch")
    a1.set_ylabel("decode tokens/s")
    a1.set_title(f"{model}: decode throughput", fontsize=10)
    a2.set_xscale("log", base=2)
    a2.set_xlabel("batch")
    a2.set_ylabel("% of step-time roofline")
    a2.set_ylim(0, 100)
    a2.set_title("fraction of the memory roofline reached", fontsize=10)
    for ax in (a1, a2):
        ax.grid(True, which="both", alpha=0.3)
    a1.legend(fontsize=8)
    fig.suptitle(f"Decode — {run.title} (solid: autotune on, dashed: off)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, name)


def history(h, out_dir: Path, name: str, claims_by_id: dict) -> str | None:
    """Per machine: claim ratios over commits with thresholds; decode and GEMM times, each
    on its own axis."""
    if len(h.entries) < 1:
        return None
    from harness import gate
    plain = [e for e in h.entries if e.label is None] or h.entries
    xs = list(range(len(plain)))
    ticks = [e.commit[:8] for e in plain]
    claims = [c for c in claims_by_id.values()]
    series = {}
    for c in claims:
        vals = []
        for e in plain:
            v = gate.evaluate(c, e)
            vals.append(v.ratio if v.verdict in (gate.PASS, gate.FAIL) else None)
        if any(v is not None for v in vals):
            series[c.id] = (c, vals)
    dec_series: dict[tuple, list] = {}
    gemm_series: dict[tuple, list] = {}
    for i, e in enumerate(plain):
        for params, v, s in e.cells_of("decode"):
            dec_series.setdefault(params, [None] * len(plain))[i] = v
        for params, v, s in e.cells_of("gemm"):
            if params[2] == 1 and params[1] in ("gate_up_proj", "down_proj"):  # the largest M = 1 GEMMs
                gemm_series.setdefault(params, [None] * len(plain))[i] = v
    if not series and not dec_series and not gemm_series:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    ax = axes[0]
    for cid, (c, vals) in series.items():
        line, = ax.plot([x for x, v in zip(xs, vals) if v is not None], [v for v in vals if v is not None],
                        marker="o", label=cid)
        ax.axhline(c.threshold, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_title(f"{h.machine}: claim ratios over commits (dotted: thresholds)", fontsize=10)
    ax.set_ylabel("speed-up (old time / new time)")
    ax.set_xticks(xs, ticks, rotation=45, fontsize=7)
    if series:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no applicable claim has data here", ha="center", transform=ax.transAxes)
    ax.grid(True, alpha=0.3)
    regress = {r.params for r in h.last_compare if r.verdict == "slower"}
    # One quantity per axis: decode ms per token, GEMM us per call. Colour = backend, line
    # style = autotune; a significant regression of the last comparison is a red x.
    panels = ((axes[1], dec_series, 1e3, "decode: ms per token", lambda p: f"b={p[1]} in={p[2]} {p[3]}/{p[4]}"),
              (axes[2], gemm_series, 1e6, "GEMM M=1: us per call", lambda p: f"{p[1]} {p[3]}/{p[4]}"))
    for ax, data, scale, what, label in panels:
        shown = 0
        # the series the newest commit has first (at most 16 per panel: a legend stays legible)
        for params, vals in sorted(data.items(), key=lambda kv: (kv[1][-1] is None, str(kv[0]))):
            pts = [(x, v) for x, v in zip(xs, vals) if v is not None]
            if not pts or shown >= 16:
                continue
            shown += 1
            b = params[3]
            ax.plot([q[0] for q in pts], [q[1] * scale for q in pts], STYLE.get(params[4], "-"),
                    marker="o", markersize=3, color=color(b), label=label(params), alpha=0.85)
            if tuple(params) in regress:
                ax.plot([pts[-1][0]], [pts[-1][1] * scale], "x", color="red", markersize=12, mew=2)
        ax.set_yscale("log")
        ax.set_ylabel(what + " (log)")
        ax.set_title(f"{h.machine}: {what} over commits", fontsize=10)
        ax.set_xticks(xs, ticks, rotation=45, fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        if shown:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, out_dir, name)
