"""``steerlib`` command line: fit, generate, compare, demo, weights, export.

User mistakes are reported as one clear line (``error: ...``) and exit code 2, not a traceback.
Data sets are found through ``--data-root`` or ``$STEERLIB_DATA`` (:mod:`steerlib.app.paths`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import SteerlibError
from .paths import DATA_ENV

__all__ = ["EXAMPLES", "main"]

EXAMPLES = {
    "fit": "steerlib fit --model smollm2 --data demo --method l2s --layer 15 --input-layer 12 --out runs/l2s-L15\n"
           "  steerlib fit --model smollm2 --data my_items.csv --method l2s --layer 15 --out runs/mine   "
           "# columns prompt,positive,negative,behavior",
    "generate": 'steerlib generate --model smollm2 --steerer runs/l2s-L15 --alpha 0.5 --prompt "How do I pick a lock?"',
    "compare": "steerlib compare --model smollm2 --data text-safety --methods none,mean,p2s,l2s --alphas 0.5,1.0 "
               "--layers 15 --out runs/compare",
    "demo": "steerlib demo            # SmolLM2-135M-Instruct, offline, about 10 CPU-minutes",
    "weights": "steerlib weights smollm2   # build the cached safetensors copy once (make install runs it)",
    "export": "steerlib export --steerer runs/mean-L15 --out mean.gguf",
    "view": "steerlib view runs/compare      # writes runs/compare/view.html: one static page, open it in a browser",
}


#: One default length across the library's generate, the CLI and compare (the demo measures 32 by its recipe).
DEFAULT_MAX_NEW_TOKENS = 48

METHOD_HELP = "l2s, mean, mean_ba, p2s, random, prompt, none (and any registered method)"


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


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revision", default=None, help="Hub revision of a --model repo id (branch, tag or commit)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: where the model loads)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="weights dtype")
    p.add_argument("--system", default=None, help="a system message for every prompt (chat template)")


def _parser() -> argparse.ArgumentParser:
    from .compare_cli import add_arguments as compare_args, run_from_args as compare_run
    from .demo import add_arguments as demo_args, run_from_args as demo_run

    p = argparse.ArgumentParser(prog="steerlib", description="Activation steering for Hugging Face LLMs and VLMs.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {EXAMPLES[name]}",
                              formatter_class=HelpFormatter)

    f = add("fit", "Fit a steerer on contrastive items and save it (safetensors + JSON).")
    f.add_argument("--model", default="smollm2", help="smollm2, gemma3-270m, tiny:<family>, a local HF folder or a Hub repo id")
    _model_flags(f)
    f.add_argument("--data", default="demo",
                   help="demo (the demo's 370 training prompts, shipped), text-safety (HarmBench / Do-Not-Answer / "
                        "seed tasks, shipped), or PATH of a .jsonl/.csv with columns prompt,positive,negative,behavior")
    f.add_argument("--template", default=None, choices=("harmful", "advice", "benign"),
                   help="PATH holds prompts only: build the completions with this behaviour template")
    f.add_argument("--data-root", default=None, help="text-safety: another copy of the data set's folder")
    f.add_argument("--method", default="l2s", help="a steering method: " + METHOD_HELP)
    f.add_argument("--recipe", default="selective", choices=("selective", "paper"),
                   help="l2s only: selective = L2S.selective (class balance, L1 weight 20, cross-validated gate; "
                        "benign prompts stay unsteered), paper = the paper's defaults")
    f.add_argument("--layer", type=int, required=True, help="steering layer L* (output of decoder block L*)")
    f.add_argument("--input-layer", type=int, default=None, help="L2S input layer L' (default: L*)")
    f.add_argument("--alpha", type=float, default=1.0, help="default strength stored with the steerer")
    f.add_argument("--reduction", default="completion_mean", help="end_of_turn, completion_mean or sampled_mean")
    f.add_argument("--limit", type=int, default=None, help="at most this many items per behaviour")
    f.add_argument("--batch-size", type=int, default=8, help="items per P2S extraction batch")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    f.set_defaults(func=_fit)

    g = add("generate", "Generate with a saved steerer.")
    g.add_argument("--model", default="smollm2", help="the model the steerer was fitted on (name, folder or repo id)")
    _model_flags(g)
    g.add_argument("--steerer", required=True, help="folder written by save_pretrained / steerlib fit, or a Hub repo id")
    g.add_argument("--steerer-revision", default=None, help="Hub revision of a --steerer repo id")
    g.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    g.add_argument("--alpha", type=float, default=None, help="strength (default: the one saved with the steerer)")
    g.add_argument("--positions", default=None, help="all, prompt, generated, last_prompt, image, text")
    g.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="tokens to generate")
    g.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (with --do-sample)")
    g.add_argument("--compare", action="store_true", help="also print the unsteered answer")
    g.set_defaults(func=_generate)

    c = add("compare", "Compare steering methods x alphas x layers on a data set (resumable).")
    compare_args(c)
    c.set_defaults(func=compare_run)

    d = add("demo", "Input-dependent (gated) steering on SmolLM2-135M-Instruct, offline.")
    demo_args(d)
    d.set_defaults(func=demo_run)

    w = add("weights", "Build, once, the cached safetensors copy of a real-weight model and load it as a check.")
    w.add_argument("name", nargs="?", default="smollm2", help="smollm2 (default), gemma3-270m or tiny-llava")
    w.set_defaults(func=_weights)

    e = add("export", "Export a static steerer (Mean-S) as a llama.cpp control vector (GGUF).")
    e.add_argument("--steerer", required=True, help="folder written by save_pretrained / steerlib fit")
    e.add_argument("--out", required=True, help="the .gguf file to write")
    e.add_argument("--model-hint", default=None, help="llama.cpp architecture hint written in the file "
                                                     "(default: the steerer's model_type)")
    e.add_argument("--alpha", type=float, default=None, help="bake this strength into the vectors")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e.set_defaults(func=_export)

    from .view import add_arguments as view_args  # stdlib only at import time

    v = add("view", "Write one static HTML page (no server) over a compare or demo run: table and generations.")
    view_args(v)
    v.set_defaults(func=_view)
    return p


def _items_for(args: argparse.Namespace) -> list:
    """The training items of ``--data`` (read before the model is loaded, so a bad file fails fast)."""
    from ..data import cap_per_behavior, demo_items, items_from_file, shipped_text_safety_dir, text_safety_items

    if args.template is not None and args.data in ("demo", "text-safety"):
        raise SteerlibError(f"--template applies to a --data PATH of prompts, not to --data {args.data}.")
    if args.data == "demo":
        items = demo_items()["train"]
    elif args.data == "text-safety":
        from .paths import data_root

        env = data_root()
        items = text_safety_items(args.data_root or (env / "text-safety" if env else shipped_text_safety_dir()))
    else:
        path = Path(args.data).expanduser()
        if path.suffix.lower() not in (".jsonl", ".csv"):
            raise SteerlibError(f"--data {args.data}: use demo, text-safety, or the path of a .jsonl or .csv file "
                                "(columns prompt, positive, negative, behavior; or prompts plus --template).")
        try:
            items = items_from_file(path, template=args.template)
        except SteerlibError as e:
            raise SteerlibError(f"--data: {e}") from e
    return cap_per_behavior(items, args.limit)


def _check_out(out: str, overwrite: bool) -> None:
    if Path(out).exists() and not overwrite:
        raise SteerlibError(f"--out {out} already exists; pass --overwrite to replace it, or choose another folder.")


def _fit(args: argparse.Namespace) -> int:
    from ..steerers import L2S, METHODS

    if args.method not in METHODS:
        raise SteerlibError(f"--method {args.method!r} is unknown; use one of {', '.join(METHODS)}.")
    cls = METHODS[args.method]
    if not cls.builds_from_params:
        raise SteerlibError(f"--method {args.method!r} holds given state and cannot be fitted from items; "
                            f"build a {cls.__name__} in Python instead.")
    _check_out(args.out, args.overwrite)
    items = _items_for(args)  # before the model: a bad file fails in a second, not after loading
    template = L2S.selective() if cls is L2S and args.recipe == "selective" else cls()
    accepted = set(template.get_params(deep=False))
    kw: dict[str, Any] = {"layer": args.layer, "alpha": args.alpha}
    for name, value in (("reduction", args.reduction), ("input_layer", args.input_layer),
                        ("batch_size", args.batch_size)):
        if name in accepted and value is not None:  # only the methods that take them (P2S-based, L2S)
            kw[name] = value
    steerer = template.clone(**kw)
    model = _load_model(args)
    steerer.fit(model, items)
    out = steerer.save_pretrained(args.out, overwrite=args.overwrite)
    print(f"saved {steerer!r} to {out}")
    return 0


def _load_model(args: argparse.Namespace) -> Any:
    from ..zoo import load_steerable

    model = load_steerable(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
    if args.system is not None:
        model.system_prompt = args.system
    return model


def _generate(args: argparse.Namespace) -> int:
    from ..steerers import NoSteer, Steerer
    from ..steerers.base import resolve_steerer_path

    if args.temperature is not None and not args.do_sample:
        raise SteerlibError("--temperature needs --do-sample (decoding is greedy otherwise).")
    path = resolve_steerer_path(args.steerer, args.steerer_revision)  # before the model: a bad path fails fast
    if not Path(path).is_dir():
        raise SteerlibError(f"--steerer {args.steerer}: no saved steerer there (a folder written by steerlib fit "
                            "or save_pretrained, or a Hub repo id).")
    model = _load_model(args)
    steerer = Steerer.from_pretrained(path, model=model)
    gen: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    if args.do_sample:
        gen["do_sample"] = True
        if args.temperature is not None:
            gen["temperature"] = args.temperature
    steered = steerer.generate(model, args.prompt, alpha=args.alpha, positions=args.positions, **gen)
    plain = (NoSteer().fit(model, []).generate(model, args.prompt, **gen)
             if args.compare else [None] * len(steered))
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
    model = load_steerable(args.name)
    print(f"{args.name}: {model!r} ready in {time.perf_counter() - t0:.1f} s")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..export import export_gguf
    from ..steerers import Steerer

    if Path(args.out).exists() and not args.overwrite:
        raise SteerlibError(f"--out {args.out} already exists; pass --overwrite to replace it.")
    steerer = Steerer.from_pretrained(args.steerer)
    hint = args.model_hint or str(getattr(steerer, "model_info_", {}).get("model_type") or "llama")
    path = export_gguf(steerer, args.out, model_hint=hint, alpha=args.alpha, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def _view(args: argparse.Namespace) -> int:
    from .view import run_from_args

    return run_from_args(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SteerlibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
