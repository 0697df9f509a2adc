"""The benchmark suite runs (a smoke run on a tiny model; timings are never asserted)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.run import main


def test_benchmark_smoke_run(tmp_path, capsys):
    out = tmp_path / "results.json"
    plot = tmp_path / "scaling.png"
    assert main(["--model", "tiny:llama", "--quick", "--repeats", "2", "--other-repeats", "1", "--skip-memory", "--out", str(out),
                 "--plot", str(plot)]) == 0
    data = json.loads(out.read_text())
    assert len(data["rows"]) >= 12 and all(r["value"] > 0 for r in data["rows"])
    assert {p["axis"] for p in data["scaling"]} == {"batch size", "new tokens", "steered layers"}
    assert all(p["hf_s"] > 0 and p["nnsight_ratio"] > 0 and p["hooks_ratio"] > 0 for p in data["scaling"])
    assert plot.stat().st_size > 1000
    assert "| measure |" in capsys.readouterr().out


def test_paired_ratio_is_the_median_of_per_repeat_ratios():
    from benchmarks.run import paired, timeit

    calls = []
    times = timeit({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=6, warmup=0)
    assert len(times["a"]) == len(times["b"]) == 6 and sorted(calls) == ["a"] * 6 + ["b"] * 6
    assert calls[0::2] != ["a"] * 6  # the order is shuffled per repeat, not always a before b
    t = {"x": [2.0, 3.0, 10.0], "y": [1.0, 2.0, 4.0]}  # per-repeat ratios 2, 1.5, 2.5
    r = paired("x over y", t, "x", "y", "<= 2.2")
    assert r["value"] == 2.0 and r["ratio_range"] == [1.5, 2.5] and r["met"] is True
    assert r["numerator_s"] == 3.0 and r["denominator_s"] == 2.0
