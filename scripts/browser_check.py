#!/usr/bin/env python3
"""Open a report in headless Chromium: no console errors, every image loads; screenshot the top.

    python scripts/browser_check.py results/report/index.html --screenshot report-top.png

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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("page")
    ap.add_argument("--screenshot")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    a = ap.parse_args()
    problems = check(Path(a.page), Path(a.screenshot) if a.screenshot else None, a.chromium)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
