"""``steerlib`` command line: fit, generate, compare, demo, weights, export.

User mistakes are reported as one clear line (``error: ...``) and exit code 2, not a traceback.
Data sets are found through ``--data-root`` or ``$STEERLIB_DATA`` (:mod:`steerlib.app.paths`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import SteerlibError
from .paths import DATA_ENV

__all__ = ["EXAMPLES", "main"]

EXAMPLES = {
    "fit": "steerlib fit --model smollm2 --data text-safety --method l2s --layer 15 --out runs/l2s-L15",
    "generate": 'steerlib generate --model smollm2 --steerer runs/l2s-L15 --alpha 0.5 --prompt "How do I pick a lock?"',
    "compare": "steerlib compare --model smollm2 --data text-safety --methods none,mean,p2s,l2s --alphas 0.5,1.0 "
               "--layers 15 --out runs/compare",
    "demo": "steerlib demo            # SmolLM2-135M-Instruct, offline, about 10 CPU-minutes",
    "weights": "steerlib weights smollm2   # build the cached safetensors copy once (make install runs it)",
    "export": "steerlib export --steerer runs/mean-L15 --out mean.gguf --model-hint llama",
}


def _parser() -> argparse.ArgumentParser:
    from ..eval.compare import buildable_methods
    from .compare_cli import add_arguments as compare_args, run_from_args as compare_run
    from .demo import add_arguments as demo_args, run_from_args as demo_run

    p = argparse.ArgumentParser(prog="steerlib", description="Activation steering for Hugging Face LLMs and VLMs.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {EXAMPLES[name]}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    f = add("fit", "Fit a steerer on contrastive items and save it (safetensors + JSON).")
    f.add_argument("--model", default="smollm2", help="smollm2, gemma3-270m, tiny:<family>, or a local HF folder")
    f.add_argument("--data", default="text-safety", help="text-safety (the shared HarmBench/Do-Not-Answer/seed sets)")
    f.add_argument("--data-root", default=None, help=f"folder of the data set (default: ${DATA_ENV}/<set>)")
    f.add_argument("--method", default="l2s", help=", ".join(buildable_methods()))
    f.add_argument("--layer", type=int, required=True, help="steering layer L* (output of decoder block L*)")
    f.add_argument("--input-layer", type=int, default=None, help="L2S input layer L' (default: L*)")
    f.add_argument("--alpha", type=float, default=1.0, help="default strength stored with the steerer")
    f.add_argument("--reduction", default="completion_mean", help="end_of_turn, completion_mean or sampled_mean")
    f.add_argument("--limit", type=int, default=None, help="at most this many items per behaviour")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--overwrite", action="store_true")
    f.set_defaults(func=_fit)

    g = add("generate", "Generate with a saved steerer.")
    g.add_argument("--model", default="smollm2")
    g.add_argument("--steerer", required=True, help="folder written by save_pretrained / steerlib fit")
    g.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    g.add_argument("--alpha", type=float, default=None)
    g.add_argument("--positions", default=None, help="all, prompt, generated, last_prompt, image, text")
    g.add_argument("--max-new-tokens", type=int, default=64)
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
    e.add_argument("--steerer", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--model-hint", default="llama", help="llama.cpp architecture hint written in the file")
    e.add_argument("--alpha", type=float, default=None, help="bake this strength into the vectors")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=_export)
    return p


def _items_for(args: argparse.Namespace) -> list:
    from ..data import cap_per_behavior, text_safety_items
    from .paths import data_dir

    if args.data != "text-safety":
        raise SteerlibError(f"Unknown data set {args.data!r} for fit; use text-safety (or the Python API for others).")
    return cap_per_behavior(text_safety_items(data_dir("text-safety", args.data_root)), args.limit)


def _fit(args: argparse.Namespace) -> int:
    from ..steerers import METHODS
    from ..zoo import load_steerable

    if args.method not in METHODS:
        raise SteerlibError(f"Unknown method {args.method!r}; use one of {', '.join(METHODS)}.")
    cls = METHODS[args.method]
    if not cls.builds_from_params:
        raise SteerlibError(f"The {args.method!r} method holds given state and cannot be fitted from items; "
                            f"build a {cls.__name__} in Python instead.")
    template = cls()
    accepted = set(template.get_params(deep=False))
    kw: dict[str, Any] = {"layer": args.layer, "alpha": args.alpha}
    for name, value in (("reduction", args.reduction), ("input_layer", args.input_layer)):
        if name in accepted and value is not None:  # only the methods that take them (P2S-based, L2S)
            kw[name] = value
    model = load_steerable(args.model)
    steerer = template.clone(**kw).fit(model, _items_for(args))
    out = steerer.save_pretrained(args.out, overwrite=args.overwrite)
    print(f"saved {steerer!r} to {out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from ..steerers import NoSteer, Steerer
    from ..zoo import load_steerable

    model = load_steerable(args.model)
    steerer = Steerer.from_pretrained(args.steerer, model=model)
    steered = steerer.generate(model, args.prompt, alpha=args.alpha, positions=args.positions,
                               max_new_tokens=args.max_new_tokens)
    plain = (NoSteer().fit(model, []).generate(model, args.prompt, max_new_tokens=args.max_new_tokens)
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

    steerer = Steerer.from_pretrained(args.steerer)
    path = export_gguf(steerer, args.out, model_hint=args.model_hint, alpha=args.alpha, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SteerlibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
