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


def test_per_row_benchmark_smoke_run(tmp_path, capsys):
    from benchmarks import per_row

    out, plot = tmp_path / "per_row.json", tmp_path / "per_row.png"
    assert per_row.main(["--model", "tiny:llama", "--batch", "4", "--ks", "1,4", "--new-tokens", "2", "--repeats", "1",
                         "--out", str(out), "--plot", str(plot)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["backend"], r["k"]) for r in rows if "distinct" in r["vectors"]} == {
        (b, k) for b in ("nnsight", "hooks") for k in (1, 4)}
    assert all(r["vs_shared"] > 0 and r["vs_unsteered"] > 0 for r in rows)
    assert plot.stat().st_size > 1000 and "| backend | vectors |" in capsys.readouterr().out


def test_eval_throughput_smoke_run(tmp_path, capsys):
    from benchmarks import eval_throughput

    out = tmp_path / "et.json"
    assert eval_throughput.main(["--model", "tiny:llama", "--scale", "0.05", "--new-tokens", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["generations"] > 0 and 0 <= r["compare_share_outside_model"] <= 1 and 0 <= r["loop_share_outside_model"] <= 1
    assert "compare / loop speed-up" in capsys.readouterr().out


def test_gpu_benchmark_cpu_dry_run(tmp_path, capsys):
    from benchmarks import gpu

    out = tmp_path / "gpu.json"
    assert gpu.main(["--tiny", "--new-tokens", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]["tiny"]
    assert {(r["method"], r["backend"]) for r in rows} == {(m, b) for m in ("mean", "per_row", "l2s")
                                                           for b in ("nnsight", "hooks")}
    assert "| batch | method | backend |" in capsys.readouterr().out


def test_peer_child_needs_no_steerlib():
    """The peers' script runs in venvs without steerlib: it must import nothing of it."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).resolve().parents[1] / "benchmarks" / "peer_child.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.split(".")[0] in ("steerlib", "benchmarks") for m in mods), mods
