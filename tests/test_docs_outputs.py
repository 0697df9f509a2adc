"""Every Python block on the quickstart (docs/index.md) and concepts (docs/concepts.md) pages is
followed by the output it prints on SmolLM2-135M-Instruct, and that output is what the code prints.

The fast test checks the pages' shape (each block has its ``text`` output block). The ``real`` test
runs each block as written on the real weights (one CPU thread, as the output was recorded) and
compares its printed lines with the block shown after it, so the docs cannot drift from the code.
Regenerate the shown outputs after a deliberate change with
``HF_HUB_OFFLINE=1 python tests/test_docs_outputs.py --write``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "docs" / "index.md", ROOT / "docs" / "concepts.md"]
PY = re.compile(r"```python\n(.*?)```", re.S)
WITH_OUTPUT = re.compile(r"```python\n(?P<code>.*?)```\n(?P<gap>(?:[^`\n][^\n]*\n|\n){0,4}?)```text\n(?P<out>.*?)```", re.S)


def blocks(page: Path) -> list[re.Match]:
    return list(WITH_OUTPUT.finditer(page.read_text(encoding="utf-8")))


def run_block(code: str, where: str, cwd: Path) -> str:
    """Run ``code`` on one thread in ``cwd``; return what it printed."""
    import torch

    threads = torch.get_num_threads()
    here = Path.cwd()
    buf = io.StringIO()
    try:
        torch.set_num_threads(1)
        os.chdir(cwd)
        with contextlib.redirect_stdout(buf):
            exec(compile(code, where, "exec"), {})
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    return buf.getvalue()


def _norm(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_python_block_shows_its_output(page):
    text = page.read_text(encoding="utf-8")
    n_code = len(PY.findall(text))
    found = blocks(page)
    assert n_code >= 1 and len(found) == n_code, (
        f"{page.name}: {n_code} python blocks but {len(found)} are followed by a ```text block of their output")
    for m in found:
        assert "OUTPUT-PENDING" not in m["out"] and m["out"].strip(), f"{page.name}: an output block is empty"
        assert 'MODEL = "smollm2"' in m["code"], "the shown output is SmolLM2's: the block must load it"


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_shown_output_is_what_the_code_prints_on_smollm2(page, tmp_path):
    for i, m in enumerate(blocks(page)):
        printed = run_block(m["code"], f"{page.name} block {i}", tmp_path)
        assert _norm(printed) == _norm(m["out"]), (
            f"{page.name} block {i} printed:\n{printed}\nbut the page shows:\n{m['out']}\n"
            "(rerun: python tests/test_docs_outputs.py --write, after checking the change is intended)")


def _write() -> None:  # pragma: no cover - a maintainer's tool
    import tempfile

    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for i, m in reversed(list(enumerate(blocks(page)))):
            with tempfile.TemporaryDirectory() as tmp:
                printed = run_block(m["code"], f"{page.name} block {i}", Path(tmp))
            text = text[:m.start("out")] + printed.strip("\n") + "\n" + text[m.end("out"):]
        page.write_text(text, encoding="utf-8")
        print(f"wrote the outputs of {page}")


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--write"]:
        _write()
    else:
        sys.exit("usage: python tests/test_docs_outputs.py --write")
