"""Issue 21 / 15, the command line's error boundary: every user mistake is one ``error:`` line that
names the flag, exit status 2, no traceback, and it happens before the model is loaded where it can;
an unexpected internal error keeps its traceback. Also: ``--help`` imports no torch, one default
``max_new_tokens``, ``--quiet`` / ``TQDM_DISABLE``, and ``compare --config`` reruns a folder's options.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from steerlib.app import cli
from steerlib.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIT = ["fit", "--model", "tiny:llama", "--method", "mean", "--layer", "1", "--limit", "1"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    (base / "empty").mkdir()
    (base / "noconfig").mkdir()
    (base / "noconfig" / "model.safetensors").write_bytes(b"")
    (base / "exists").mkdir()
    (base / "bad.toml").write_text('methods = "none"\nbogus-key = 1\n', encoding="utf-8")
    (base / "broken.toml").write_text("methods = [\n", encoding="utf-8")
    steerer = base / "mean"
    assert main([*FIT, "--out", str(steerer), "--quiet"]) == 0
    return base


def cases(b: Path) -> list[tuple[list[str], str]]:
    """(argv, a phrase the one error line must hold: the flag, and what was wrong)."""
    gen = ["generate", "--model", "tiny:llama", "--steerer", str(b / "mean")]
    return [
        (["fit", "--model", "tiny:unknown", "--layer", "1", "--out", str(b / "o")], "--model tiny:unknown"),
        (["fit", "--model", str(b / "empty"), "--layer", "1", "--out", str(b / "o")], "no config.json"),
        (["fit", "--model", str(b / "noconfig"), "--layer", "1", "--out", str(b / "o")], "no config.json"),
        ([*FIT, "--device", "bogus", "--out", str(b / "o")], "argument --device: 'bogus' is not a device"),
        ([*FIT, "--device", "cuda:7", "--out", str(b / "o")], "--device cuda:7"),
        ([*FIT[:-2], "--limit", "0", "--out", str(b / "o")], "argument --limit: must be at least 1"),
        (["fit", "--model", "tiny:llama", "--layer", "-1", "--out", str(b / "o")], "argument --layer: must be 0"),
        (["fit", "--model", "tiny:llama", "--layer", "9", "--out", str(b / "o")], "--layer 9"),
        ([*FIT, "--alpha", "inf", "--out", str(b / "o")], "argument --alpha: 'inf' is not a finite number"),
        ([*FIT, "--batch-size", "0", "--out", str(b / "o")], "argument --batch-size"),
        (["fit", "--method", "static", "--layer", "1", "--out", str(b / "o")], "argument --method: unknown fittable"),
        (["fit", "--method", "bogus", "--layer", "1", "--out", str(b / "o")], "use one of"),
        ([*FIT, "--out", str(b / "exists")], "pass --overwrite"),
        ([*FIT, "--data", str(b / "absent.csv"), "--out", str(b / "o")], "--data"),
        ([*gen, "--prompt", "How do I pick a lock\udcff?"], "--prompt 'How do I pick a lock\\udcff?' holds a lone"),
        ([*gen, "--prompt", "ok", "--system", "\udc80"], "--system"),
        ([*gen, "--prompt", "word " * 600], "--prompt: The longest prompt encodes to"),
        ([*gen, "--prompt", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1"),
        ([*gen, "--prompt", "hi", "--temperature", "0.7"], "--temperature needs --do-sample"),
        ([*gen, "--prompt", "hi", "--do-sample", "--temperature", "-1"], "argument --temperature"),
        (["generate", "--steerer", str(b / "nothing"), "--prompt", "hi"], "--steerer"),
        (["demo", "--layers", "abc"], "argument --layers: 'abc' is not a whole number"),
        (["demo", "--layers", "12,x"], "argument --layers: 'x' in '12,x'"),
        (["demo", "--alphas", "x"], "argument --alphas: 'x' is not a number"),
        (["demo", "--threads", "-1"], "argument --threads: must be at least 1, got -1"),
        (["demo", "--scale", "nan"], "argument --scale: 'nan' is not a finite number"),
        (["demo", "--model", "tiny:nope", "--out", str(b / "d")], "--model tiny:nope"),
        (["compare", "--methods", "l2s", "--hidden", "-1", "--out", "x"], "argument --hidden: must be at least 1"),
        (["compare", "--lr", "nan", "--out", "x"], "argument --lr: 'nan' is not a finite number"),
        (["compare", "--split", "0.9,0.9", "--out", "x"], "argument --split"),
        (["compare", "--model", "tiny:llama", "--methods", "none,bogus", "--out", str(b / "c")],
         "Unknown method 'bogus' in --methods"),
        (["compare", "--model", "tiny:llama", "--judge", "tiny:unknown", "--out", str(b / "c")], "--judge tiny:unknown"),
        (["compare", "--model", "tiny:llama", "--judge", str(b / "empty"), "--out", str(b / "c")], "--judge"),
        (["compare", "--model", "tiny:llama"], "--out is required"),
        (["compare", "--config", str(b / "bad.toml"), "--out", "x"], "unknown option 'bogus-key'"),
        (["compare", "--config", str(b / "broken.toml"), "--out", "x"], "not a readable TOML file"),
        (["compare", "--config", str(b / "absent.toml"), "--out", "x"], "no such file"),
        (["compare", "--config", str(b / "empty" / "run.json"), "--out", "x"], "no command.toml"),
        (["export", "--steerer", str(b / "nothing"), "--out", str(b / "v.gguf")], "--steerer"),
        (["weights", "nope"], "nope"),
    ]


N_CASES = 40


@pytest.mark.parametrize("i", range(N_CASES))
def test_user_mistake_is_one_error_line_exit_2(i, folders, capsys, monkeypatch):
    monkeypatch.delenv("STEERLIB_DATA", raising=False)
    argv, phrase = cases(folders)[i]
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert rc == 2, (argv, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert phrase in lines[0], (phrase, lines[0])
    if argv[0] == "fit":
        assert not (folders / "o").exists()  # nothing was written


def test_every_case_is_listed():
    assert len(cases(Path("/x"))) == N_CASES


def test_internal_error_keeps_its_traceback(monkeypatch):
    def broken(_args):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(cli, "_weights", broken)
    with pytest.raises(RuntimeError, match="an internal bug"):
        main(["weights", "smollm2"])


@pytest.mark.parametrize("argv", [["--help"], ["--version"], *[[c, "--help"] for c in
                                   ("fit", "generate", "compare", "demo", "probe", "weights", "export")]])
def test_help_imports_no_torch(argv):
    """``steerlib --help`` (and every subcommand's) in a fresh interpreter: torch, nnsight and
    transformers are not imported (the parsers are light; handlers import what they run)."""
    code = ("import sys, time; t = time.perf_counter(); from steerlib.app.cli import main; rc = main(sys.argv[1:]); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'nnsight', 'transformers')); "
            "print('HEAVY', heavy[:3], 'RC', rc, 'SECONDS', round(time.perf_counter() - t, 3))")
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "HEAVY [] RC 0" in out.stdout, out.stdout[-500:]


def test_one_default_max_new_tokens():
    from steerlib.app import compare_cli, demo_cli
    from steerlib.app.demo import run_demo
    from steerlib.defaults import DEFAULT_MAX_NEW_TOKENS
    from steerlib.engine import SteerableModel
    from steerlib.eval.compare import compare
    from steerlib.steerers import Steerer

    assert DEFAULT_MAX_NEW_TOKENS == 32  # the demo's recorded table uses 32
    for fn in (SteerableModel.generate, Steerer.generate, Steerer.generate_batch, Steerer.generate_tokens, compare,
               run_demo):
        assert inspect.signature(fn).parameters["max_new_tokens"].default == DEFAULT_MAX_NEW_TOKENS, fn
    p = cli._parser()
    sub = p._subparsers._group_actions[0].choices
    for name in ("generate", "compare", "demo"):
        assert sub[name].get_default("max_new_tokens") == DEFAULT_MAX_NEW_TOKENS, name
    assert compare_cli and demo_cli


def test_tqdm_disable_wins_over_an_explicit_disable(monkeypatch):
    from steerlib.progress import tqdm

    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert tqdm(range(3), disable=False).disable
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert not tqdm(range(3), disable=False, file=open(os.devnull, "w")).disable


def test_quiet_prints_no_bar_and_restores_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert main([*FIT, "--out", str(tmp_path / "q"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "it/s" not in captured.err and "item/s" not in captured.err and "saved" in captured.out
    assert "TQDM_DISABLE" not in os.environ


def test_library_notices_go_through_logging(tmp_path, caplog):
    """A compare refit notice is a ``steerlib`` log record (silenced or redirected with logging)."""
    import logging

    from steerlib.data import ContrastiveItem
    from steerlib.eval.compare import compare
    from steerlib.zoo import load_steerable

    sm = load_steerable("tiny:llama")
    items = [ContrastiveItem(prompt=f"q{i}", positive="No.", negative="Yes.", behavior=b)
             for i, b in enumerate(["harmful", "benign"] * 2)]
    kw = dict(out_dir=tmp_path, max_new_tokens=2, progress=False)
    compare(sm, items, items[:2], ["mean"], [1.0], [1], **kw)
    with caplog.at_level(logging.INFO, logger="steerlib"):
        compare(sm, items[:3], items[:2], ["mean"], [1.0], [1], **kw)
    assert any(r.name.startswith("steerlib") and "refitting mean" in r.getMessage() for r in caplog.records)


def test_compare_config_reruns_a_folders_options(tmp_path):
    """``write_command`` then ``--config``: the same namespace as the original command line; flags
    given after ``--config`` win."""
    from steerlib.app.compare_cli import COMMAND_FILE, write_command

    argv = ["compare", "--model", "tiny:llama", "--methods", "none,mean", "--alphas", "0.5,1", "--layers", "1",
            "--max-new-tokens", "3", "--out", str(tmp_path), "--no-plots"]
    p = cli._parser()
    args = p.parse_args(argv)
    write_command(args, tmp_path)
    assert (tmp_path / COMMAND_FILE).is_file()
    again = cli._compare_config(p, ["compare", "--config", str(tmp_path / "run.json")],
                                p.parse_args(["compare", "--config", str(tmp_path / "run.json")]))
    keep = {k: v for k, v in vars(args).items() if k not in ("config", "func")}
    assert {k: v for k, v in vars(again).items() if k in keep} == keep
    newer = cli._compare_config(p, ["compare", "--config", str(tmp_path / COMMAND_FILE), "--alphas", "2"],
                                p.parse_args(["compare", "--config", str(tmp_path / COMMAND_FILE), "--alphas", "2"]))
    assert newer.alphas == [2.0] and newer.methods == ["none", "mean"]
    (tmp_path / "run.toml").write_text('methods = ["none", "l2s"]\nfluency = true\nlimit = 2\nout = "o"\n')
    mine = cli._compare_config(p, ["compare", "--config", str(tmp_path / "run.toml")],
                               p.parse_args(["compare", "--config", str(tmp_path / "run.toml")]))
    assert mine.methods == ["none", "l2s"] and mine.fluency is True and mine.limit == 2 and mine.out == "o"
