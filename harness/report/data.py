"""What a report shows, gathered from stored histories and run records (nothing re-measured)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness import analysis, compare, gate, store
from harness.records import Cell, DecodeCell, GemmCell, MoeCell, ResultsFileError, read_run


@dataclass
class Run:
    """One run record: a suite (or an ad hoc command) on one machine."""

    path: Path
    machine: str
    environment: dict
    cells: list[Cell]
    suite: str = ""
    commit: str = ""
    label: str | None = None
    created: str = ""

    @property
    def gemm(self) -> list[GemmCell]:
        return [c for c in self.cells if isinstance(c, GemmCell)]

    @property
    def decode(self) -> list[DecodeCell]:
        return [c for c in self.cells if isinstance(c, DecodeCell)]

    @property
    def moe(self) -> list[MoeCell]:
        return [c for c in self.cells if isinstance(c, MoeCell)]

    @property
    def title(self) -> str:
        what = self.suite or self.path.stem
        at = f" @ {self.commit[:8]}" if self.commit else ""
        lab = f" [{self.label}]" if self.label else ""
        return f"{what}{at}{lab} on {self.machine}"


@dataclass
class MachineHistory:
    machine: str
    info: dict
    entries: list[store.Entry]
    verdicts: list[gate.Verdict] = field(default_factory=list)
    last_compare: list[compare.Row] = field(default_factory=list)
    base: store.Entry | None = None
    head: store.Entry | None = None


@dataclass
class ReportData:
    runs: list[Run]
    histories: list[MachineHistory]
    asv_site: Path | None
    problems: list[str] = field(default_factory=list)  # unreadable files, named
    asv_regressions: list | None = None  # asv_site.Regression, from the published site
    out_dir: Path | None = None          # where the report is written (for relative links)


def load_run(path: Path) -> Run:
    doc, cells = read_run(path)
    env = doc.get("environment") or {}
    return Run(path=path, machine=doc.get("machine") or env.get("machine", "unknown"),
               environment=env, cells=cells, suite=doc.get("suite", ""),
               commit=doc.get("commit", ""), label=doc.get("label"), created=doc.get("created", ""))


def run_order(r: Run) -> tuple:
    """The latest record of each of the project's suites first (newest first), then side runs
    (a suite file of its own, labelled runs, ad hoc commands)."""
    from harness import suite as suite_mod
    main = r.suite in suite_mod.available() and r.label is None
    return (not main, r.machine, _neg(r.created), r.suite)


def _neg(created: str) -> tuple:
    return tuple(-ord(ch) for ch in created)


def gather(conf: store.Config | None, run_files: list[Path] = (), latest_only: bool = True,
           claims: list[gate.Claim] | None = None) -> ReportData:
    runs, problems, histories = [], [], []
    for p in run_files:
        runs.append(load_run(Path(p)))  # files named by the user: errors are fatal
    if conf is not None and conf.runs_dir.exists():
        found = []
        for p in sorted(conf.runs_dir.rglob("*.json")):
            try:
                found.append(load_run(p))
            except ResultsFileError as e:
                if conf.strict:
                    raise
                problems.append(f"{e}; skipped")
        if latest_only:  # the newest run of each (machine, suite, label); ad hoc runs all
            newest: dict[tuple, Run] = {}
            for r in found:
                key = (r.machine, r.suite or str(r.path), r.label)
                if key not in newest or r.created >= newest[key].created:
                    newest[key] = r
            found = list(newest.values())
        runs += sorted(found, key=run_order)
    if conf is not None:
        claims = claims if claims is not None else gate.load_claims()
        for m in store.machines(conf):
            ents = store.entries(conf, m, warn=problems.append)  # names the unreadable ones
            info = {}
            try:
                from harness.records import read_json
                info = read_json(conf.results_dir / m / "machine.json")
            except ResultsFileError as e:
                problems.append(str(e))
            h = MachineHistory(machine=m, info=info, entries=ents)
            plain = [e for e in ents if e.label is None] or ents
            if plain:
                h.head = plain[-1]
                h.verdicts = [gate.evaluate(c, gate.latest_for(c, plain)) for c in claims]
            pair = _latest_pair(plain)
            if pair:
                h.base, h.head = pair
                h.last_compare = compare.compare(h.base, h.head)
            histories.append(h)
    site = conf.html_dir / "index.html" if conf is not None and (conf.html_dir / "index.html").exists() else None
    regressions = None
    if site is not None:
        from harness.report import asv_site
        try:
            regressions = asv_site.regressions(conf.html_dir)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            problems.append(f"{conf.html_dir / 'regressions.json'}: unreadable ({e}); skipped")
    return ReportData(runs=runs, histories=histories, asv_site=site, problems=problems,
                      asv_regressions=regressions)


def _stored(e: store.Entry) -> set[tuple]:
    return {(k, p) for k in store.KINDS for p, _, _ in e.cells_of(k)}


def _latest_pair(entries: list[store.Entry]) -> tuple[store.Entry, store.Entry] | None:
    """The newest two runs that share cells (suites are recorded apart: the newest commit
    may hold only a suite the one before it did not), newest pair first."""
    cells = [_stored(e) for e in entries]
    for j in range(len(entries) - 1, 0, -1):
        for i in range(j - 1, -1, -1):
            if cells[i] & cells[j]:
                return entries[i], entries[j]
    return None


def choices(run: Run) -> list[analysis.Choice]:
    return analysis.choice_map(run.gemm) if run.gemm else []
