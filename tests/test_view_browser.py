"""``steerlib view`` in a real headless Chromium: the page loads with no console error, the filters
change which prompts are shown (counts checked against the records, computed in Python), and a
screenshot is written. Skipped locally without chromium; required in CI (``CI=true``)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from steerlib.app.view import write_view

from chromium import browser, console_errors, full_page_screenshot
from view_fixture import expected_rows, make_run


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[Path, Path]:
    run = make_run(tmp_path_factory.mktemp("viewb") / "run")
    return run, write_view(run)


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_filters_in_a_browser(page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    run, html_path = page
    man = json.loads((run / "run.json").read_text())
    n = len(man["items"])
    l2s4 = next(s for s in man["specs"] if s["method"] == "l2s" and s["alpha"] == 4.0)
    ref = man["reference"]["config"]
    configs = [ref] + [s["config"] for s in man["specs"] if s["config"] != ref]  # the page's column order
    l2s4_col = str(configs.index(l2s4["config"]))
    with browser() as drv:
        drv.get(html_path.as_uri())
        assert console_errors(drv) == []
        section = drv.find_element(By.CSS_SELECTOR, "section.run")

        def shown() -> list[str]:
            rows = section.find_elements(By.CSS_SELECTOR, "tbody tr.item")
            return [r.get_attribute("data-behavior") for r in rows if r.is_displayed()]

        def choose(name: str, value: str) -> None:
            Select(section.find_element(By.CSS_SELECTOR, f'[data-filter="{name}"]')).select_by_value(value)

        count = section.find_element(By.CSS_SELECTOR, ".count")
        assert len(shown()) == n and count.text == f"{n} of {n} prompts shown"
        cases = [
            ({"behavior": "harmful"}, {"behavior": "harmful"}),
            ({"behavior": "all", "outcome": "refused"}, {"outcome": "refused"}),
            ({"outcome": "not"}, {"outcome": "not"}),
            ({"outcome": "any", "changed": "changed"}, {"changed": "changed"}),
            ({"changed": "unchanged"}, {"changed": "unchanged"}),
            ({"changed": "changed", "column": l2s4_col}, {"changed": "changed", "column": l2s4["config"]}),
            ({"behavior": "advice"}, {"behavior": "advice", "changed": "changed", "column": l2s4["config"]}),
        ]
        seen = set()
        for setting, want in cases:
            for name, value in setting.items():
                choose(name, value)
            expect = expected_rows(run, **want)
            got = shown()
            assert len(got) == len(expect), (setting, got, expect)
            assert count.text == f"{len(expect)} of {n} prompts shown"
            seen.add(len(expect))
        assert len(seen) >= 4, f"the cases should show different counts, got {seen}"
        search = section.find_element(By.CSS_SELECTOR, '[data-filter="text"]')
        for name, value in (("behavior", "all"), ("changed", "any"), ("column", "steered")):
            choose(name, value)
        search.send_keys("number 101")
        assert len(shown()) == 3  # one per behaviour
        search.clear()
        search.send_keys("x")  # an input event with a value: the clear() above fires none
        search.clear()
        choose("behavior", "all")
        assert console_errors(drv) == []
        shot = tmp_path / "view.png"
        full_page_screenshot(drv, str(shot))
        assert console_errors(drv) == []
    w, h = _png_size(shot)
    assert w == 1280 and h > 600 and shot.stat().st_size > 20_000
