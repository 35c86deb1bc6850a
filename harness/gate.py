"""``nvfp4-bench gate``: check claims (``baselines/claims.toml``) against stored histories.

Each claim names two cells and an expected speed-up ``time(old) / time(new)``; the gate
reports the measured ratio with a 99% bootstrap interval (from the stored samples) and a
verdict: pass, fail, not applicable (the claim is about other GPUs) or no data.
"""

from __future__ import annotations

import random
import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from harness import store

PASS, FAIL, NA, NO_DATA = "pass", "fail", "not applicable", "no data"
CLAIMS_FILE = store.ROOT / "baselines" / "claims.toml"
FIELDS = store.PARAMS


@dataclass
class Claim:
    id: str
    title: str
    kind: str
    new: dict
    old: dict
    expected_ratio: float
    tolerance: float
    applies_to: list[str]
    source: str = ""
    source_figures: str = ""

    @property
    def threshold(self) -> float:
        return self.expected_ratio - self.tolerance


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    reason: str = ""
    ratio: float | None = None
    ci99: tuple[float, float] | None = None
    new_value: float | None = None
    old_value: float | None = None
    new_cell: tuple = field(default_factory=tuple)
    old_cell: tuple = field(default_factory=tuple)
    commit: str = ""
    machine: str = ""
    label: str | None = None  # the run label when the gate read a labelled run

    def to_json(self) -> dict:
        return {"id": self.claim.id, "title": self.claim.title, "verdict": self.verdict,
                "reason": self.reason, "ratio": self.ratio,
                "ci99": list(self.ci99) if self.ci99 else None,
                "threshold": self.claim.threshold, "expected_ratio": self.claim.expected_ratio,
                "tolerance": self.claim.tolerance, "source": self.claim.source,
                "source_figures": self.claim.source_figures, "commit": self.commit,
                "label": self.label,
                "machine": self.machine, "new_cell": list(self.new_cell),
                "old_cell": list(self.old_cell), "new_value": self.new_value,
                "old_value": self.old_value, "kind": self.claim.kind}


def load_claims(path: str | Path | None = None) -> list[Claim]:
    path = Path(path) if path else CLAIMS_FILE
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no claims file {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"claims file {path}: {e}") from None
    out = []
    for i, c in enumerate(doc.get("claim", [])):
        try:
            kind = c["kind"]
            if kind not in FIELDS:
                raise ValueError(f"kind must be one of {', '.join(FIELDS)}, got {kind!r}")
            for side in ("new", "old"):
                bad = set(c[side]) - set(FIELDS[kind])
                if bad:
                    raise ValueError(f"{side} has unknown fields {sorted(bad)}; "
                                     f"valid: {', '.join(FIELDS[kind])}")
            out.append(Claim(id=c["id"], title=c.get("title", c["id"]), kind=kind, new=c["new"],
                             old=c["old"], expected_ratio=float(c["expected_ratio"]),
                             tolerance=float(c.get("tolerance", 0.0)),
                             applies_to=list(c.get("applies_to", [])), source=c.get("source", ""),
                             source_figures=c.get("source_figures", "")))
        except KeyError as e:
            raise ValueError(f"claims file {path}: claim {i + 1} lacks {e.args[0]!r}") from None
        except ValueError as e:
            raise ValueError(f"claims file {path}: claim {i + 1} ({c.get('id', '?')}): {e}") from None
    return out


def _find(entry: store.Entry, kind: str, spec: dict):
    names = FIELDS[kind]
    hits = []
    for params, value, samples in entry.cells_of(kind):
        d = dict(zip(names, params))
        if all(d.get(k) == v for k, v in spec.items()):
            hits.append((params, value, samples))
    return hits


def bootstrap_ratio_ci(old: list[float], new: list[float], confidence: float = 0.99,
                       resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of median(old) / median(new) over resampled samples."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        o = statistics.median(rng.choices(old, k=len(old)))
        n = statistics.median(rng.choices(new, k=len(new)))
        ratios.append(o / n)
    ratios.sort()
    lo = ratios[int((1 - confidence) / 2 * resamples)]
    hi = ratios[min(resamples - 1, int((1 + confidence) / 2 * resamples))]
    return lo, hi


def evaluate(claim: Claim, entry: store.Entry) -> Verdict:
    v = Verdict(claim, NO_DATA, commit=entry.commit, machine=entry.machine, label=entry.label)
    sm = str(entry.results.params.get("sm", "none"))
    if claim.applies_to and sm not in claim.applies_to:
        v.verdict = NA
        v.reason = (f"claim is about {'/'.join(claim.applies_to)}; machine {entry.machine} is "
                    f"{sm if sm != 'none' else 'a CPU-only machine'}")
        return v
    found = {}
    for side in ("new", "old"):
        hits = _find(entry, claim.kind, getattr(claim, side))
        if not hits:
            v.reason = f"no stored {side} cell {getattr(claim, side)} at {entry.commit[:8]}"
            return v
        if len({h[0] for h in hits}) > 1:  # e.g. several context lengths: which one is meant?
            v.reason = (f"the {side} side {getattr(claim, side)} matches {len(hits)} cells at "
                        f"{entry.commit[:8]}; the claim must name the fields that tell them "
                        f"apart")
            return v
        ok = [h for h in hits if h[1] is not None]
        if not ok:
            v.reason = f"the {side} cell {hits[0][0]} failed at {entry.commit[:8]}"
            return v
        found[side] = max(ok, key=lambda h: len(h[2] or []))
    (v.new_cell, v.new_value, new_s), (v.old_cell, v.old_value, old_s) = found["new"], found["old"]
    v.ratio = v.old_value / v.new_value
    if new_s and old_s:
        v.ci99 = bootstrap_ratio_ci(old_s, new_s)
    v.verdict = PASS if v.ratio >= claim.threshold else FAIL
    ci = f" (99% CI {v.ci99[0]:.3f}-{v.ci99[1]:.3f})" if v.ci99 else ""
    v.reason = (f"measured x{v.ratio:.3f}{ci}; needs >= x{claim.threshold:.3f} "
                f"(expected x{claim.expected_ratio:.3f} - tolerance {claim.tolerance:.3f})")
    return v


def gate(conf: store.Config, machine: str | None = None, rev: str | None = None,
         claims: list[Claim] | None = None) -> list[Verdict]:
    """Each claim's verdict at ``rev``; without one, at the newest stored run that holds the
    claim's cells (suites are recorded apart: the newest commit may hold only some)."""
    machine = store.pick_machine(conf, machine)
    claims = claims if claims is not None else load_claims()
    if rev:
        entry = store.resolve(conf, machine, rev)
        return [evaluate(c, entry) for c in claims]
    all_entries = store.entries(conf, machine)
    if not all_entries:
        raise store.StoreError(f"no stored runs for {machine}")
    return [evaluate(c, latest_for(c, all_entries)) for c in claims]


def latest_for(claim: Claim, entries: list[store.Entry]) -> store.Entry:
    """The newest entry holding both of the claim's cells, else the newest one."""
    for e in reversed(entries):
        if _find(e, claim.kind, claim.new) and _find(e, claim.kind, claim.old):
            return e
    return entries[-1]


def markdown(verdicts: list[Verdict]) -> str:
    icon = {PASS: ":white_check_mark:", FAIL: ":x:", NA: ":white_circle:", NO_DATA: ":grey_question:"}
    head = verdicts[0] if verdicts else None
    commits = list(dict.fromkeys(v.commit for v in verdicts))
    several = len(commits) > 1  # claims read at different commits: say which per row
    at = ", ".join(f"`{c[:8]}`" for c in commits) + (
        f" (run label `{head.label}`)" if head and head.label else "") if head else ""
    lines = [f"### Claims on `{head.machine}` at {at}" if head else "### Claims", "",
             "| claim | verdict | measured | threshold | source figures | detail |"
             + (" at |" if several else ""),
             "|---|---|---:|---:|---|---|" + ("---|" if several else "")]
    for v in verdicts:
        m = f"x{v.ratio:.3f}" if v.ratio is not None else "-"
        lines.append(f"| {v.claim.id} | {icon[v.verdict]} {v.verdict} | {m} | "
                     f"x{v.claim.threshold:.2f} | {v.claim.source_figures} | {v.reason} |"
                     + (f" `{v.commit[:8]}` |" if several else ""))
    return "\n".join(lines) + "\n"
