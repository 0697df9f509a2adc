"""The benchmark suite runs (a smoke run on a tiny model; timings are never asserted)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.run import main


def test_benchmark_smoke_run(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["--model", "tiny:llama", "--quick", "--repeats", "1", "--skip-memory", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["rows"]) >= 8 and all(r["value"] > 0 for r in data["rows"])
    assert "| measure |" in capsys.readouterr().out
