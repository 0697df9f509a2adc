"""A headless Chromium for the browser tests (Debian's ``chromium`` + ``chromium-driver``, driven by selenium).

:func:`browser` is a context manager yielding a selenium WebDriver at a fixed window size, with the
browser console captured. When chromium, its driver or selenium is missing the test is skipped with
the reason, except in CI (``CI=true``), where it fails: the browser tests must run there
(``.ci/run`` installs chromium).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)


def _which(names: tuple[str, ...]) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


def require_chromium() -> tuple[str, str]:
    """Paths of the browser and its driver; skip (locally) or fail (CI) when one is missing."""
    chrome, driver = _which(CHROMIUM), _which(DRIVER)
    missing = [what for what, have in (("chromium", chrome), ("chromedriver (chromium-driver)", driver),
                                       ("selenium", importlib.util.find_spec("selenium"))) if not have]
    if missing:
        reason = (f"{', '.join(missing)} not installed: apt-get install -y chromium chromium-driver; "
                  "pip install selenium (the dev extra)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests must run in CI, but {reason}")
        pytest.skip(reason)
    return str(chrome), str(driver)


@contextlib.contextmanager
def browser(width: int = 1280, height: int = 900) -> Iterator[Any]:
    chrome, driver_path = require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", f"--window-size={width},{height}",
                "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        drv.set_page_load_timeout(60)
        yield drv
    finally:
        drv.quit()


def console_errors(drv: Any) -> list[str]:
    """Console messages of level SEVERE (errors, failed loads, CSP violations) since the last call."""
    return [e["message"] for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def full_page_screenshot(drv: Any, path: str, width: int = 1280, max_height: int = 4000) -> None:
    """A PNG of the page at ``width``, as tall as its content (at most ``max_height``)."""
    h = int(drv.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"))
    drv.set_window_size(width, min(max(h, 600), max_height))
    drv.save_screenshot(path)
