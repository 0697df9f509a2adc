"""``steerlib view``: the page's content on a tiny compare run with scripted answers.

The expected flags (refused, changed) come from the records through the keyword judge and a
token comparison done here; the browser behaviour is in tests/test_view_browser.py.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlib.app.view import GENERATOR, build_page, find_runs, word_diff, write_view
from steerlib.errors import DataError, PersistenceError

from view_fixture import XSS, expected_rows, make_run, records

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("view") / "run")


class Grid(HTMLParser):
    """Collects the grid's rows (behaviour, cell attributes and text), the scripts and the metric cells."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.scripts = 0
        self.metric_cells: list[str] = []
        self._cell: dict | None = None
        self._in_metrics = False
        self._td_metric: list[str] | None = None
        self.heads: list[str] = []
        self._th: list[str] | None = None
        self._skip = 0  # inside <del> or a badge: not part of the answer as written

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if self._cell is not None and (tag == "del" or (tag == "span" and "badge" in (a.get("class") or ""))):
            self._skip += 1
        if tag == "table":
            self._in_metrics = a.get("class") == "metrics"
        if tag == "tr" and a.get("class") == "item":
            self.rows.append({"behavior": a["data-behavior"], "cells": []})
        if tag == "td" and "gen" in (a.get("class") or ""):
            self._cell = {**a, "text": []}
            self.rows[-1]["cells"].append(self._cell)
        if tag == "td" and self._in_metrics:
            self._td_metric = []
        if tag == "th" and not self._in_metrics:
            self._th = []

    def handle_endtag(self, tag):
        if self._skip and tag in ("del", "span"):
            self._skip -= 1
        if tag == "td":
            if self._cell is not None:
                self._cell["text"] = "".join(self._cell["text"])
            self._cell = None
            if self._td_metric is not None:
                self.metric_cells.append("".join(self._td_metric))
                self._td_metric = None
        if tag == "th" and self._th is not None:
            self.heads.append("".join(self._th))
            self._th = None

    def handle_data(self, data):
        if self._cell is not None and not self._skip:
            self._cell["text"].append(data)
        if self._td_metric is not None:
            self._td_metric.append(data)
        if self._th is not None:
            self._th.append(data)


def parse(page: str) -> Grid:
    g = Grid()
    g.feed(page)
    return g


def test_grid_has_every_prompt_and_configuration(run):
    man = json.loads((run / "run.json").read_text())
    g = parse(build_page(run))
    assert [r["behavior"] for r in g.rows] == [it["behavior"] for it in man["items"]]
    assert all(len(r["cells"]) == len(man["specs"]) for r in g.rows)
    assert g.heads[:2] == ["prompt", "unsteered (none)"]


def test_flags_follow_the_records(run):
    """data-refused / data-changed equal the keyword judge and a token comparison of the records."""
    from steerlib.eval.metrics import is_refusal

    man = json.loads((run / "run.json").read_text())
    recs = {(r["config"], r["id"]): r for r in records(run)}
    ref = man["reference"]["config"]
    configs = [ref] + [s["config"] for s in man["specs"] if s["config"] != ref]
    g = parse(build_page(run))
    n_changed = n_refused = 0
    for it, row in zip(man["items"], g.rows):
        for conf, cell in zip(configs, row["cells"]):
            rec = recs[(conf, it["id"])]
            assert cell["data-refused"] == str(int(is_refusal(rec["text"])))
            if conf == ref:
                assert cell["data-changed"] == "" and cell["data-ref"] == "1"
            else:
                changed = rec["token_ids"] != recs[(ref, it["id"])]["token_ids"]
                assert cell["data-changed"] == str(int(changed))
                n_changed += changed
            n_refused += is_refusal(rec["text"])
    assert n_changed == 2 * 2 + 2 + 1 and n_refused == 4  # the script: 4 refusals, 3 changed-not-refused


def test_text_is_escaped(run):
    page = build_page(run)
    g = parse(page)
    assert g.scripts == 1, "only the page's own script"
    assert "<script>alert" not in page and "<b>now</b>" not in page
    texts = [c["text"] for r in g.rows for c in r["cells"]]
    assert XSS in texts, "the answer reads as the model wrote it (once the parser unescapes it)"


def test_metric_table_matches_the_report(run):
    from steerlib.eval.rows import load_result

    g = parse(build_page(run))
    row = load_result(run).row("mean", alpha=4.0)
    assert row["refusal"] == 1.0  # both harmful answers at alpha 4 are refusals
    want = f"{row['refusal']:.3f} [{row['refusal_low']:.2f}, {row['refusal_high']:.2f}]"
    assert want in g.metric_cells


def test_diff_marks_the_changed_word():
    assert word_diff("the cat sat", "the dog sat") == "the <del>cat</del><ins>dog</ins> sat"
    assert word_diff("a <b>", "a <b>") == "a &lt;b&gt;"
    assert word_diff("", "new words") == "<ins>new words</ins>"


def _read(diff: str, drop: str) -> str:
    return html.unescape(re.sub(r"</?(ins|del)>", "", re.sub(rf"<{drop}>.*?</{drop}>", "", diff, flags=re.S)))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab <>&\n", max_size=30), st.text(alphabet="ab <>&\n", max_size=30))
def test_diff_reads_as_old_and_new(old, new):
    d = word_diff(old, new)
    assert _read(d, "del") == new
    assert _read(d, "ins").split() == old.split()


def test_demo_folder_shows_each_split(run, tmp_path):
    import shutil

    demo = tmp_path / "demo"
    for split in ("validation", "test"):
        shutil.copytree(run, demo / split)
    (demo / "results.md").write_text("| method | harmful refused |\n|---|---|\n| L2S <i> | 0.9 |\n")
    assert [p.name for p in find_runs(demo)] == ["test", "validation"]
    page = build_page(demo)
    assert page.count('<section class="run"') == 2 and "L2S &lt;i&gt;" in page


def test_no_run_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not the output folder of steerlib compare"):
        build_page(tmp_path)


def test_write_keeps_a_foreign_file(run, tmp_path):
    out = tmp_path / "page.html"
    out.write_text("my notes")
    with pytest.raises(PersistenceError, match="--overwrite"):
        write_view(run, out)
    assert out.read_text() == "my notes"
    write_view(run, out, overwrite=True)
    assert GENERATOR in out.read_text()
    write_view(run, out)  # its own page is replaced without asking


def test_cli_writes_the_page(run, tmp_path):
    out = tmp_path / "v.html"
    proc = subprocess.run([sys.executable, "-m", "steerlib.app.cli", "view", str(run), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "wrote" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "steerlib.app.cli", "view", str(tmp_path / "nothing")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
