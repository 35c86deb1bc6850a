"""asv's published site, made to work offline, and what it found: its regressions.

`asv publish` writes an index.html that loads jQuery, flot, bootstrap and three small
plugins from CDNs; on a GPU box or CI runner without the internet (and in any browser
that blocks them) the site is blank. ``localize`` copies the same libraries, vendored in
``asv_www/`` (the files asv itself shipped before it moved to CDNs; MIT licensed, see
their headers), into the published directory and points index.html at them.

``regressions`` reads the ``regressions.json`` that publish computes with asv's own step
detection (``asv.step_detect``), for the report.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

VENDOR = Path(__file__).resolve().parent / "asv_www"

# CDN address (as asv 0.6.6's index.html has it) -> vendored file
LOCAL = {
    "https://code.jquery.com/jquery-3.3.1.min.js": "jquery-3.3.1.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js":
        "jquery.flot-0.8.3.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js":
        "jquery.flot-0.8.3.time.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js":
        "jquery.flot-0.8.3.selection.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js":
        "jquery.flot-0.8.3.categories.min.js",
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js":
        "jquery.flot.orderBars.js",
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js":
        "stupidtable.js",
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js": "md5.js",
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js":
        "bootstrap-3.1.0.min.js",
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css":
        "bootstrap-3.1.0.min.css",
}
_TAG = re.compile(r'(<(?:script|link)\b[^>]*?\b(?:src|href)=")(https://[^"]+)("[^>]*>)')


class SiteError(Exception):
    """The published site still needs the network."""


def localize(html_dir: Path) -> list[str]:
    """Serve the site's scripts from ``html_dir``; returns the addresses replaced. An
    address we have no copy of (a newer asv) is an error naming it, not a blank page."""
    index = html_dir / "index.html"
    text = index.read_text()
    replaced, unknown = [], []

    def swap(m: re.Match) -> str:
        url = m.group(2)
        if url not in LOCAL:
            unknown.append(url)
            return m.group(0)
        replaced.append(url)
        # integrity/crossorigin name the CDN's bytes; the local copy is served plainly
        tail = re.sub(r'\s(?:integrity|crossorigin|referrerpolicy)="[^"]*"', "", m.group(3))
        return m.group(1) + LOCAL[url] + tail

    text = _TAG.sub(swap, text)
    if unknown:
        raise SiteError(f"{index}: no local copy of {', '.join(unknown)} (asv's index.html "
                        f"changed); add them to {VENDOR}")
    for name in set(LOCAL.values()):
        shutil.copyfile(VENDOR / name, html_dir / name)
    tmp = index.with_name(index.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(index)
    return replaced


@dataclass(frozen=True)
class Regression:
    """One step asv's detection found in a published graph (times are lower-is-better)."""

    benchmark: str        # with its parameter values, as asv names the graph's series
    machine: str
    params: dict          # the graph's environment parameters (machine, label, ...)
    before: float         # seconds, the level before the step
    after: float          # seconds, the level after it
    commit: str           # first commit of the new level (revision range end)
    url: str              # the graph in asv's site

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before else float("inf")


def regressions(html_dir: Path) -> list[Regression] | None:
    """The regressions asv publish found, worst first; None when the site has no
    regressions.json (not published)."""
    path = html_dir / "regressions.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    index = json.loads((html_dir / "index.json").read_text())
    hashes = index.get("revision_to_hash", {})
    out = []
    # asv's rows: [series name (with parameter values), graph path, the graph's varying
    # environment parameters, parameter index, last value, best value, jumps]
    for item in doc.get("regressions", []):
        name, graph_path, params = item[0], item[1], dict(item[2] or {})
        graph = dict(part.split("-", 1) for part in graph_path.split("/")[1:-1] if "-" in part)
        params = {**graph, **params}
        for _rev_a, rev_b, before, after in item[6] or []:
            out.append(Regression(benchmark=name, machine=graph.get("machine", ""),
                                  params=params, before=before, after=after,
                                  commit=str(hashes.get(str(rev_b), rev_b)), url="#regressions"))
    out.sort(key=lambda r: -r.ratio)
    return out
