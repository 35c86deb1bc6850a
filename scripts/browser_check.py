#!/usr/bin/env python3
"""Open a report, or asv's site, in headless Chromium: no console errors, every image loads,
asv's graphs are drawn; screenshot the top.

    python scripts/browser_check.py results/report/index.html --screenshot report-top.png
    python scripts/browser_check.py --asv-site results/html --screenshot asv-site.png

asv's site reads its JSON over HTTP, so it is served from a local server, and every request
to anywhere else is refused: the check fails if the site still needs the network.

Uses Debian's /usr/bin/chromium (or $CHROMIUM) through Playwright; no browser download.
"""

import argparse
import os
import sys
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def check(page_path: Path, screenshot: Path | None, executable: str) -> list[str]:
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}"))
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        images = page.evaluate("""() => Array.from(document.images).map(
            i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}))""")
        if not images:
            problems.append("the page has no images")
        problems += [f"image did not load: {i['src']}" for i in images if not i["ok"]]
        if screenshot:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=False)
        print(f"{page_path}: {len(images)} images, {len(problems)} problems")
        browser.close()
    return problems


def check_asv_site(site: Path, screenshot: Path | None, executable: str) -> list[str]:
    import functools
    import http.server
    import json
    import threading

    from playwright.sync_api import sync_playwright

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    index = json.loads((site / "index.json").read_text())
    problems: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # offline: anything not served from the site itself is refused (and reported)
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base)
                       else (problems.append(f"needs the network: {route.request.url}"),
                             route.abort())[1])
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(base + "index.html", wait_until="networkidle")
            cards = page.locator(".benchmark-container").count()
            if cards == 0:
                problems.append("the summary grid shows no benchmark (site blank?)")
            # one benchmark's graph: asv draws it with flot on a canvas
            with_data = [n for n in sorted(index["benchmarks"])
                         if (site / "graphs" / "summary" / f"{n}.json").exists()]
            if not with_data:
                problems.append("no benchmark of the site has any result")
                with_data = sorted(index["benchmarks"])[:1]
            name = with_data[0]
            page.goto(base + f"index.html#{name}", wait_until="networkidle")
            try:
                page.wait_for_selector("#main-graph canvas.flot-base", timeout=15000)
                drawn = page.evaluate("""() => { const c = document.querySelector(
                    '#main-graph canvas.flot-base'); const d = c.getContext('2d').getImageData(
                    0, 0, c.width, c.height).data; let n = 0;
                    for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }""")
                if not drawn:
                    problems.append(f"the graph of {name} is empty")
            except Exception as e:  # noqa: BLE001 - a missing graph is what we report
                problems.append(f"no graph drawn for {name} ({type(e).__name__})")
            if screenshot:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=False)
            print(f"{site}: asv site, {cards} benchmarks in the grid, graph of {name}, "
                  f"{len(problems)} problems")
            browser.close()
    finally:
        server.shutdown()
    return problems


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("page", nargs="?", help="a report's index.html")
    ap.add_argument("--asv-site", metavar="DIR", help="asv's published site instead")
    ap.add_argument("--screenshot")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    a = ap.parse_args()
    if bool(a.page) == bool(a.asv_site):
        ap.error("give a report page or --asv-site DIR")
    shot = Path(a.screenshot) if a.screenshot else None
    problems = (check_asv_site(Path(a.asv_site), shot, a.chromium) if a.asv_site
                else check(Path(a.page), shot, a.chromium))
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
