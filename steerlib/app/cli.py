"""``steerlib`` command line: fit, generate, compare, demo, weights, export.

User mistakes are reported as one clear line (``error: ...``, naming the flag) and exit code 2, not a
traceback; unexpected internal errors keep theirs. Every number is checked while parsing
(:mod:`steerlib.app.argtypes`). The parsers import nothing heavy: torch, nnsight and transformers
are imported by the handler that runs, so ``steerlib --help`` is fast.
Data sets are found through ``--data-root`` or ``$STEERLIB_DATA`` (:mod:`steerlib.app.paths`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..defaults import DEFAULT_MAX_NEW_TOKENS
from ..errors import SteerlibError
from .argtypes import (
    blame,
    device,
    finite_float,
    nonnegative_int,
    one_of,
    positive_float,
    positive_int,
)
from .data_args import add_data_arguments, items_from_args

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "EXAMPLES", "main"]

EXAMPLES = {
    "fit": "steerlib fit --model smollm2 --data demo --method l2s --layer 15 --input-layer 12 --out runs/l2s-L15\n"
           "  steerlib fit --model smollm2 --data my_items.csv --method l2s --layer 15 --out runs/mine   "
           "# columns prompt,positive,negative,behavior",
    "generate": 'steerlib generate --model smollm2 --steerer runs/l2s-L15 --alpha 0.5 --prompt "How do I pick a lock?"',
    "compare": "steerlib compare --model smollm2 --data text-safety --methods none,mean,p2s,l2s --alphas 0.5,1.0 "
               "--layers 15 --out runs/compare\n"
               "  steerlib compare --config runs/compare/command.toml   # rerun (resume) a folder's run",
    "demo": "steerlib demo            # SmolLM2-135M-Instruct, offline, up to 30 minutes on 2 CPU cores",
    "probe": "steerlib probe --model smollm2 --data demo --layers 9,12,15,18   # before a compare sweep",
    "weights": "steerlib weights smollm2   # build the cached safetensors copy once (make install runs it)",
    "export": "steerlib export --steerer runs/mean-L15 --out mean.gguf",
    "chat": "steerlib chat --model smollm2 --steerer runs/l2s-L15 --alpha 0.5 --compare   # then /alpha 1, /steer off",
    "view": "steerlib view runs/compare      # writes runs/compare/view.html: one static page, open it in a browser",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The examples as written, and every flag's default in its help."""


def _version() -> str:
    from importlib import metadata

    from ..version import __version__

    parts = [f"steerlib {__version__}"]
    for dist in ("torch", "transformers", "nnsight"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts)


class _Version(argparse.Action):
    """``--version``: the versions are read (package metadata, a few ms) only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(_version())
        parser.exit()


def _handler(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand's handler, imported when it runs (``module`` relative to this package)."""
    def run(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module, __package__), name)(args) or 0)

    return run


def _fittable_methods() -> Iterable[str]:
    """The registry's methods that a name and hyperparameters build (what ``fit`` can fit)."""
    from ..steerers import METHODS

    return [name for name, cls in METHODS.items() if cls.builds_from_params]


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revision", default=None, help="Hub revision of a --model repo id (branch, tag or commit)")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:1 (default: where the model loads)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="weights dtype")
    p.add_argument("--system", default=None, help="a system message for every prompt (chat template)")


def _parser() -> argparse.ArgumentParser:
    from .compare_cli import add_arguments as compare_args
    from .demo_cli import add_arguments as demo_args
    from .probe_cli import add_arguments as probe_args

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars and no notices (also: TQDM_DISABLE=1)")
    p = argparse.ArgumentParser(prog="steerlib", description="Activation steering for Hugging Face LLMs and VLMs.",
                                parents=[common])
    p.add_argument("--version", action=_Version, help="print the versions of steerlib, torch, transformers, nnsight")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {EXAMPLES[name]}",
                              formatter_class=HelpFormatter, parents=[common])

    f = add("fit", "Fit a steerer on contrastive items and save it (safetensors + JSON).")
    f.add_argument("--model", default="smollm2", help="smollm2, gemma3-270m, tiny:<family>, a local HF folder or a Hub repo id")
    _model_flags(f)
    add_data_arguments(f)
    f.add_argument("--method", default="l2s", type=one_of(_fittable_methods, "fittable method"),
                   help="a steering method of the registry that can be fitted (l2s, mean, p2s, ...; "
                        "a wrong name lists them)")
    f.add_argument("--recipe", default="selective", choices=("selective", "paper"),
                   help="l2s only: selective = L2S.selective (class balance, L1 weight 20, cross-validated gate; "
                        "benign prompts stay unsteered), paper = the paper's defaults")
    f.add_argument("--layer", type=nonnegative_int, required=True, help="steering layer L* (output of decoder block L*)")
    f.add_argument("--input-layer", type=nonnegative_int, default=None, help="L2S input layer L' (default: L*)")
    f.add_argument("--alpha", type=finite_float, default=1.0, help="default strength stored with the steerer")
    f.add_argument("--reduction", default="completion_mean", choices=("end_of_turn", "completion_mean", "sampled_mean"),
                   help="P2S reduction of the two forced completions")
    f.add_argument("--batch-size", type=positive_int, default=8, help="items per P2S extraction batch")
    f.add_argument("--out", required=True, help="output folder (checked before the model is loaded)")
    f.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    f.set_defaults(func=_fit)

    g = add("generate", "Generate with a saved steerer.")
    g.add_argument("--model", default="smollm2", help="the model the steerer was fitted on (name, folder or repo id)")
    _model_flags(g)
    g.add_argument("--steerer", required=True, help="folder written by save_pretrained / steerlib fit, or a Hub repo id")
    g.add_argument("--steerer-revision", default=None, help="Hub revision of a --steerer repo id")
    g.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    g.add_argument("--alpha", type=finite_float, default=None, help="strength (default: the one saved with the steerer)")
    g.add_argument("--positions", default=None, choices=("all", "prompt", "generated", "last_prompt", "image", "text"),
                   help="where to steer (default: the steerer's)")
    g.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS, help="tokens to generate")
    g.add_argument("--batch-size", type=positive_int, default=8, help="prompts per generation batch")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=positive_float, default=None, help="sampling temperature (with --do-sample)")
    g.add_argument("--compare", action="store_true", help="also print the unsteered answer")
    g.set_defaults(func=_generate)

    c = add("compare", "Compare steering methods x alphas x layers on a data set (resumable).")
    compare_args(c)
    c.set_defaults(func=_handler(".compare_cli", "run_from_args"))

    d = add("demo", "Input-dependent (gated) steering on SmolLM2-135M-Instruct, offline.")
    demo_args(d)
    d.set_defaults(func=_handler(".demo_cli", "run_from_args"))

    r = add("probe", "Which layer to steer: per-layer P2S consistency and behaviour separability, no generation.")
    probe_args(r)
    r.set_defaults(func=_handler(".probe_cli", "run_from_args"))

    w = add("weights", "Build, once, the cached safetensors copy of a real-weight model and load it as a check.")
    w.add_argument("name", nargs="?", default="smollm2", help="smollm2 (default), gemma3-270m or tiny-llava")
    w.set_defaults(func=_weights)

    e = add("export", "Export a static steerer (Mean-S) as a llama.cpp control vector (GGUF).")
    e.add_argument("--steerer", required=True, help="folder written by save_pretrained / steerlib fit")
    e.add_argument("--out", required=True, help="the .gguf file to write")
    e.add_argument("--model-hint", default=None, help="llama.cpp architecture hint written in the file "
                                                     "(default: the steerer's model_type)")
    e.add_argument("--alpha", type=finite_float, default=None, help="bake this strength into the vectors")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e.set_defaults(func=_export)

    from .chat import add_arguments as chat_args  # argparse only; the handler imports torch

    ch = add("chat", "Chat with a model and a saved steerer: change alpha, toggle steering, compare with unsteered.")
    chat_args(ch)
    ch.set_defaults(func=_handler(".chat", "run_from_args"))

    from .view import add_arguments as view_args  # stdlib only at import time

    v = add("view", "Write one static HTML page (no server) over a compare or demo run: table and generations.")
    view_args(v)
    v.set_defaults(func=_handler(".view", "run_from_args"))
    return p


def _check_out(out: str, overwrite: bool) -> None:
    if Path(out).exists() and not overwrite:
        raise SteerlibError(f"--out {out} already exists; pass --overwrite to replace it, or choose another folder.")


def _check_layers(model: Any, **flags: int | None) -> None:
    """``--layer 40`` on a 30-layer model: one line naming the flag (after the model is loaded)."""
    for flag, value in flags.items():
        if value is not None and value >= model.num_layers:
            raise SteerlibError(f"--{flag.replace('_', '-')} {value}: {model!r} has layers 0..{model.num_layers - 1}.")


def _fit(args: argparse.Namespace) -> int:
    from ..steerers import L2S, METHODS

    cls = METHODS[args.method]  # argparse checked it against the registry
    _check_out(args.out, args.overwrite)
    items = items_from_args(args)  # before the model: a bad file fails in a second, not after loading
    template = L2S.selective() if cls is L2S and args.recipe == "selective" else cls()
    accepted = set(template.get_params(deep=False))
    kw: dict[str, Any] = {"layer": args.layer, "alpha": args.alpha}
    for name, value in (("reduction", args.reduction), ("input_layer", args.input_layer),
                        ("batch_size", args.batch_size), ("progress", False if args.quiet else None)):
        if name in accepted and value is not None:  # only the methods that take them (P2S-based, L2S)
            kw[name] = value
    steerer = template.clone(**kw)
    model = _load_model(args)
    _check_layers(model, layer=args.layer, input_layer=args.input_layer)
    steerer.fit(model, items)
    out = steerer.save_pretrained(args.out, overwrite=args.overwrite)
    print(f"saved {steerer!r} to {out}")
    return 0


def _load_model(args: argparse.Namespace) -> Any:
    from ..data.chat import check_text
    from ..zoo import load_steerable

    if args.system is not None:
        check_text(args.system, "--system")
    with blame("--model", args.model):
        model = load_steerable(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
    if args.system is not None:
        model.system_prompt = args.system
    return model


def _generate(args: argparse.Namespace) -> int:
    from ..data.chat import check_text
    from ..errors import InputError
    from ..steerers import NoSteer, Steerer
    from ..steerers.base import resolve_steerer_path

    if args.temperature is not None and not args.do_sample:
        raise SteerlibError("--temperature needs --do-sample (decoding is greedy otherwise).")
    for i, prompt in enumerate(args.prompt):
        check_text(prompt, f"--prompt {prompt!r}" if len(args.prompt) == 1 else f"--prompt number {i + 1}")
    with blame("--steerer", args.steerer):  # before the model: a bad path fails fast
        path = resolve_steerer_path(args.steerer, args.steerer_revision)
    if not Path(path).is_dir():
        raise SteerlibError(f"--steerer {args.steerer}: no saved steerer there (a folder written by steerlib fit "
                            "or save_pretrained, or a Hub repo id).")
    model = _load_model(args)
    with blame("--steerer", args.steerer):
        steerer = Steerer.from_pretrained(path, model=model)
    gen: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                           "progress": not args.quiet}
    if args.do_sample:
        gen["do_sample"] = True
        if args.temperature is not None:
            gen["temperature"] = args.temperature
    try:
        steered = steerer.generate(model, args.prompt, alpha=args.alpha, positions=args.positions, **gen)
        plain = (NoSteer().fit(model, []).generate(model, args.prompt, **gen)
                 if args.compare else [None] * len(steered))
    except InputError as e:  # a prompt the model cannot take (too long for its positions, ...)
        raise InputError(f"--prompt: {e}") from e
    for prompt, s, u in zip(args.prompt, steered, plain):
        print(f"## {prompt}")
        if u is not None:
            print(f"[unsteered] {u}")
        print(f"[{steerer.method}] {s}\n")
    return 0


def _weights(args: argparse.Namespace) -> int:
    import time

    from ..zoo import load_steerable

    t0 = time.perf_counter()
    with blame("weights", args.name):
        model = load_steerable(args.name)
    print(f"{args.name}: {model!r} ready in {time.perf_counter() - t0:.1f} s")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..export import export_gguf
    from ..steerers import Steerer

    if Path(args.out).exists() and not args.overwrite:
        raise SteerlibError(f"--out {args.out} already exists; pass --overwrite to replace it.")
    with blame("--steerer", args.steerer):
        steerer = Steerer.from_pretrained(args.steerer)
    hint = args.model_hint or str(getattr(steerer, "model_info_", {}).get("model_type") or "llama")
    path = export_gguf(steerer, args.out, model_hint=hint, alpha=args.alpha, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


class _TqdmHandler(logging.Handler):
    """Library notices (``logging.getLogger("steerlib")``) on stderr, between progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _setup_output(quiet: bool) -> Callable[[], None]:
    """``--quiet``: no bars (``TQDM_DISABLE``) and warnings only; else notices at INFO. Returns the undo."""
    logger = logging.getLogger("steerlib")
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level, old_env = logger.level, os.environ.get("TQDM_DISABLE")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        if quiet:
            if old_env is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = old_env

    return undo


def _compare_config(parser: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace) -> argparse.Namespace:
    """``compare --config FILE``: the file's flags first, then the command line's (which win)."""
    from .compare_cli import config_argv

    at = argv.index("compare")
    compare_parser = parser._subparsers._group_actions[0].choices["compare"]  # type: ignore[union-attr]
    return parser.parse_args(argv[:at + 1] + config_argv(args.config, compare_parser) + argv[at + 1:])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 done, 2 a user mistake, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "config", None):
            args = _compare_config(parser, argv, args)
    except SystemExit as e:  # argparse: --help / --version (0) or a usage error (2), already printed
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except SteerlibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.quiet = bool(getattr(args, "quiet", False)) or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
    undo = _setup_output(args.quiet)
    try:
        return int(args.func(args) or 0)
    except SteerlibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        undo()


if __name__ == "__main__":
    sys.exit(main())
