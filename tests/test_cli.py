"""CLI: every subcommand has --help with an example; user mistakes are one clear line; the demo
and fit/generate/export run end to end on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from steerlib.app.cli import main


@pytest.mark.parametrize("cmd", ["fit", "generate", "compare", "demo", "export"])
def test_help_shows_an_example(cmd, capsys):
    assert main([cmd, "--help"]) == 0  # argparse's exit status, returned
    out = capsys.readouterr().out
    assert "example:" in out and f"steerlib {cmd}" in out


def test_user_mistake_is_one_line_not_a_traceback(capsys, tmp_path):
    assert main(["generate", "--model", "nope-model", "--steerer", str(tmp_path), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model nope-model: Unknown model 'nope-model'") and "Traceback" not in err


def test_fit_generate_export_on_a_tiny_model(tmp_path, capsys):
    data = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "text-safety")
    out = tmp_path / "mean"
    assert main(["fit", "--model", "tiny:llama", "--data-root", data, "--method", "mean", "--layer", "1",
                 "--limit", "3", "--out", str(out)]) == 0
    assert (out / "steerer.safetensors").is_file()
    assert main(["generate", "--model", "tiny:llama", "--steerer", str(out), "--prompt", "hello", "--compare",
                 "--max-new-tokens", "3"]) == 0
    assert "[mean]" in capsys.readouterr().out
    assert main(["export", "--steerer", str(out), "--out", str(tmp_path / "v.gguf")]) == 0
    assert (tmp_path / "v.gguf").is_file()
    assert main(["export", "--steerer", str(out), "--out", str(tmp_path / "v.gguf")]) == 2  # no overwrite


def test_demo_smoke_on_a_tiny_model(tmp_path, capsys):
    assert main(["demo", "--model", "tiny:llama", "--scale", "0.1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in res["table"]] == ["no steering", "Mean-S", "L2S", "P2S (oracle)"]
    assert "| method |" in capsys.readouterr().out
    assert (tmp_path / "results.md").is_file() and res["plots"]
    # the gate is cross-validated per fit; the chosen configuration is refit on train + validation
    assert set(res["l2s_gate"]) == {"L2", "refit"} and res["l2s_gate_cv_refit"]  # tiny: layers 12,15 -> 2
    assert any((tmp_path / "steerers-final").glob("l2s-L*/steerer.json"))
    assert {"fit", "validation", "refit", "test"} <= set(res["stage_seconds"])
    # a rerun reuses the cached steerers and generations
    assert main(["demo", "--model", "tiny:llama", "--scale", "0.1", "--out", str(tmp_path)]) == 0


def test_fit_data_demo_plus_hard_is_the_demos_l2s_training_set():
    """--data demo+hard = the demo's training items then the hard-safety train kinds, as steerlib demo
    trains L2S; --template is refused for it like for the other shipped sets."""
    import argparse

    from steerlib.app.data_args import items_from_args
    from steerlib.data import demo_items
    from steerlib.data.hard_safety import HARD_SPLIT_KINDS, hard_safety_items
    from steerlib.errors import SteerlibError

    ns = argparse.Namespace(data="demo+hard", template=None, data_root=None, limit=None)
    got = items_from_args(ns)
    want = demo_items()["train"] + hard_safety_items("train")
    assert [it.id for it in got] == [it.id for it in want]
    assert {it.meta["kind"] for it in got if it.meta.get("dataset") == "hard_safety"} == set(HARD_SPLIT_KINDS["train"])
    with pytest.raises(SteerlibError, match="--template"):
        items_from_args(argparse.Namespace(data="demo+hard", template="harmful", data_root=None, limit=None))


def test_fit_data_works_outside_the_clone_and_takes_the_users_files(tmp_path, monkeypatch, capsys):
    """--data demo (the default) and --data text-safety use the sets shipped in the package; --data-root or
    $STEERLIB_DATA/text-safety point at another copy; --data PATH reads the user's JSONL or CSV; the
    checks run before the model is loaded and name the flag."""
    monkeypatch.delenv("STEERLIB_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    base = ["fit", "--model", "tiny:llama", "--method", "mean", "--layer", "1", "--limit", "1"]
    assert main([*base, "--out", "a"]) == 0 and (tmp_path / "a" / "steerer.json").is_file()
    assert main([*base, "--data", "text-safety", "--out", "b"]) == 0
    monkeypatch.setenv("STEERLIB_DATA", str(tmp_path / "nowhere"))
    assert main([*base, "--data", "text-safety", "--out", "c"]) == 2
    assert "nowhere" in capsys.readouterr().err
    monkeypatch.delenv("STEERLIB_DATA")
    (tmp_path / "mine.csv").write_text("prompt,positive,negative,behavior\nHow do I pick a lock?,No.,Sure.,harmful\n"
                                       "Capital of France?,Paris.,Paris.,benign\n", encoding="utf-8")
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Make a fake ID."}\n', encoding="utf-8")
    assert main([*base, "--data", "mine.csv", "--out", "d"]) == 0
    assert main([*base, "--data", "prompts.jsonl", "--template", "harmful", "--out", "e"]) == 0
    capsys.readouterr()
    for extra, needle in ((["--data", "prompts.jsonl", "--out", "f"], "'positive'"),
                          (["--data", "absent.csv", "--out", "f"], "no such file"),
                          (["--data", "x.txt", "--out", "f"], ".jsonl or .csv"),
                          (["--out", "a"], "pass --overwrite")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and "Traceback" not in err, err


def test_version_flag(capsys):
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("steerlib ")


def test_old_entry_points_still_work_with_a_deprecation_warning():
    import importlib

    import steerlib.cli
    import steerlib.demo

    for mod in (steerlib.cli, steerlib.demo):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importlib.reload(mod)
        assert any(issubclass(w.category, DeprecationWarning) and "steerlib.app" in str(w.message) for w in caught)
    assert steerlib.cli.main is main
    from steerlib.data import demo_items

    assert steerlib.demo.demo_items is demo_items
    proc = subprocess.run([sys.executable, "-m", "steerlib.cli", "demo", "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0 and "example:" in proc.stdout and "steerlib demo" in proc.stdout
