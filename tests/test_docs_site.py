"""The docs site in a real headless Chromium at 1280 px: nothing is clipped, the API reads.

``mkdocs build --strict`` builds the site; a local HTTP server (127.0.0.1, no network) serves it;
Chromium loads the index, a steerer page and the API pages. Checked in the DOM:

* no table, code block or picture reaches past the content column, and no code block or table
  scrolls sideways (``scrollWidth <= clientWidth``): tables and long code wrap;
* every mkdocstrings symbol badge has its label (no empty boxes), signatures show their type
  annotations, and the engine page puts ``SteerableModel`` before its bookkeeping classes;
* no console error; a screenshot of each page is written (to ``$STEERLIB_SCREENSHOT_DIR`` when set,
  e.g. ``docs/img``, else a temporary folder).

Skipped locally without chromium or mkdocs; required in CI (``CI=true``).
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chromium import browser, console_errors, full_page_screenshot

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"index": "", "steerer-l2s": "steerers/l2s/", "api-steerers": "api/steerers/", "api-engine": "api/engine/",
         "evaluation": "evaluation/", "concepts": "concepts/"}
SHOTS = ("index", "steerer-l2s", "api-steerers")

OVERFLOW_JS = """
const art = document.querySelector('article.md-content__inner') || document.querySelector('.md-content');
const right = art.getBoundingClientRect().right;
const bad = [];
for (const el of art.querySelectorAll('table, pre, pre > code, img, .doc-signature')) {
  const r = el.getBoundingClientRect();
  if (r.width === 0) continue;
  const scrolls = el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).display !== 'inline';
  if (r.right > right + 1 || scrolls) {
    bad.push(el.tagName + ' ' + Math.round(r.right) + '>' + Math.round(right) + ' scroll ' + el.scrollWidth + '/' +
             el.clientWidth + ': ' + (el.textContent || el.src || '').slice(0, 80));
  }
}
return bad;
"""
SYMBOLS_JS = """
const out = {n: 0, empty: []};
for (const el of document.querySelectorAll('code.doc-symbol')) {
  if (el.getClientRects().length === 0) continue;  // inside a collapsed part of the table of contents
  out.n++;
  const c = getComputedStyle(el, '::after').content;
  if (!c || c === 'none' || c === '""' || el.getBoundingClientRect().width < 4) out.empty.push(el.className);
}
return out;
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for mod in ("mkdocs", "mkdocstrings", "material"):
        if importlib.util.find_spec(mod) is None:
            reason = f"{mod} is not installed: pip install -e '.[docs]'"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"the docs screenshots must run in CI, but {reason}")
            pytest.skip(reason)
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_pages_fit_at_1280px_and_the_api_reads(site, tmp_path):
    shots = Path(os.environ.get("STEERLIB_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    problems: dict[str, list] = {}
    with browser(1280, 1000) as drv:
        for name, rel in PAGES.items():
            drv.set_window_size(1280, 1000)
            drv.get(site + rel)
            errors = [e for e in console_errors(drv) if "favicon" not in e]
            bad = drv.execute_script(OVERFLOW_JS)
            if errors or bad:
                problems[name] = errors + bad
            if name.startswith("api-"):
                sym = drv.execute_script(SYMBOLS_JS)
                assert sym["n"] > 10 and sym["empty"] == [], (name, sym)
            if name in SHOTS:
                path = shots / f"docs-{name}.png"
                full_page_screenshot(drv, str(path))
                assert path.stat().st_size > 30_000
        drv.get(site + "api/engine/")
        html = drv.page_source
        assert html.index('id="steerlib.engine.SteerableModel"') < html.index('id="steerlib.engine.Generation"')
        drv.get(site + "api/steerers/")
        fit = drv.find_element("css selector", '[id="steerlib.steerers.base.Steerer.fit"]')
        sig = fit.find_element("xpath", "following::div[contains(@class,'doc-signature')][1]").text
        assert "model: SteerableModel" in sig and "Sequence[ContrastiveItem]" in sig, sig
    assert not problems, problems
