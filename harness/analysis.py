"""Derived views of recorded cells: the backend choice map and autotune gains."""

from __future__ import annotations

from dataclasses import dataclass

from harness.backends import BACKENDS, FLASHINFER_AUTO, FLASHINFER_FP8_AUTO, SGLANG_SM120_DEFAULT
from harness.records import GemmCell

# Two timings closer than this are a tie for "does the default pick the winner".
TIE_FRACTION = 0.03


# Per weight format: the engine default whose choice is judged ("would it pick the winner").
FAMILIES = {"nvfp4": (FLASHINFER_AUTO, SGLANG_SM120_DEFAULT), "fp8": (FLASHINFER_FP8_AUTO, None)}


@dataclass
class Choice:
    family: str                    # "nvfp4" | "fp8": whose backends compete (bf16 joins both)
    layer: str
    m: int
    winner: str | None             # "backend/autotune"
    winner_median_s: float | None
    runner_up: str | None
    margin: float | None           # runner-up time / winner time - 1
    # The margin's interval (from both cells' 99% intervals of the median) includes zero:
    # the winner is not told apart from the runner-up.
    margin_is_noise: bool | None
    candidates: int
    auto_verdict: str              # "picks winner" | "slower by X%" | "n/a: <why>"
    sglang_default_verdict: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _label(c: GemmCell) -> str:
    return f"{c.backend}/{c.autotune}"


def _verdict(cells: list[GemmCell], backend: str, best: GemmCell | None) -> str:
    mine = [c for c in cells if c.backend == backend]
    ok = [c for c in mine if c.status == "ok"]
    if not mine:
        return f"n/a: {backend} not in this run"
    if not ok:
        why = mine[0].reason or mine[0].status
        return f"n/a: {backend} {mine[0].status} ({why})"
    if best is None:
        return "n/a: no healthy candidate"
    fastest = min(ok, key=lambda c: c.median_s)
    slower = fastest.median_s / best.median_s - 1
    if fastest is best or slower <= TIE_FRACTION:
        return "picks winner"
    return f"slower than winner by {slower * 100:.1f}%"


def _overlap(a: GemmCell, b: GemmCell) -> bool | None:
    if not a.ci99_s or not b.ci99_s:
        return None
    return b.ci99_s[0] <= a.ci99_s[1] and a.ci99_s[0] <= b.ci99_s[1]


def margin_text(ch: "Choice") -> str:
    if ch.margin is None:
        return "-"
    return f"{ch.margin * 100:.1f}%" + (" (noise)" if ch.margin_is_noise else "")


def family_of(backend: str) -> str:
    b = BACKENDS.get(backend)
    return b.family if b is not None else ""


def choice_map(cells: list[GemmCell]) -> list[Choice]:
    """Per weight format and (layer, M): the fastest healthy backend (either autotune setting,
    bf16 competing in every format), and whether FlashInfer's ``auto`` of that format and
    SGLang's SM120 default would have picked it."""
    cells = [c for c in cells if c.kind == "gemm"]
    present = {family_of(c.backend) for c in cells}
    families = [f for f in FAMILIES if f in present] or ["nvfp4"]
    order = [c.layer for c in cells]
    keys = sorted({(c.layer, c.m) for c in cells}, key=lambda t: (order.index(t[0]), t[1]))
    rows = []
    for family in families:
        auto, sglang = FAMILIES[family]
        mine = [c for c in cells if family_of(c.backend) in (family, "")]
        for layer, m in keys:
            here = [c for c in mine if c.layer == layer and c.m == m]
            ok = [c for c in here if c.status == "ok" and c.median_s
                  and BACKENDS.get(c.backend) is not None and BACKENDS[c.backend].candidate]
            ok.sort(key=lambda c: c.median_s)
            best = ok[0] if ok else None
            runner = next((c for c in ok[1:] if c.backend != best.backend), None) if best else None
            # A format's defaults choose among that format's backends: judged against its best.
            own = next((c for c in ok if family_of(c.backend) == family), None)
            rows.append(Choice(
                family=family, layer=layer, m=m,
                winner=_label(best) if best else None,
                winner_median_s=best.median_s if best else None,
                runner_up=_label(runner) if runner else None,
                margin=(runner.median_s / best.median_s - 1) if runner else None,
                margin_is_noise=_overlap(best, runner) if runner else None,
                candidates=len({c.backend for c in ok}),
                auto_verdict=_verdict(here, auto, own),
                sglang_default_verdict=(_verdict(here, sglang, own) if sglang else
                                        "n/a: no SGLang default modelled for this format"),
            ))
    return rows


def autotune_gains(cells: list[GemmCell]) -> list[dict]:
    """Per (backend, layer, M) with both settings measured: off/on time ratio - 1."""
    on = {(c.backend, c.layer, c.m): c for c in cells if c.autotune == "on" and c.status == "ok"}
    out = []
    for c in cells:
        if c.autotune != "off" or c.status != "ok":
            continue
        t = on.get((c.backend, c.layer, c.m))
        if t is None:
            continue
        out.append({"backend": c.backend, "layer": c.layer, "m": c.m, "off_s": c.median_s,
                    "on_s": t.median_s, "gain": c.median_s / t.median_s - 1})
    return out
