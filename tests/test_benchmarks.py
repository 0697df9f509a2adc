"""The benchmark suite runs (a smoke run on a tiny model; timings are never asserted)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.run import main


def test_benchmark_smoke_run(tmp_path, capsys):
    out = tmp_path / "results.json"
    plot = tmp_path / "scaling.png"
    assert main(["--model", "tiny:llama", "--quick", "--repeats", "1", "--skip-memory", "--out", str(out),
                 "--plot", str(plot)]) == 0
    data = json.loads(out.read_text())
    assert len(data["rows"]) >= 12 and all(r["value"] > 0 for r in data["rows"])
    assert {p["axis"] for p in data["scaling"]} == {"batch size", "new tokens", "steered layers"}
    assert all(p["hf_s"] > 0 and p["nnsight_ratio"] > 0 and p["hooks_ratio"] > 0 for p in data["scaling"])
    assert plot.stat().st_size > 1000
    assert "| measure |" in capsys.readouterr().out
