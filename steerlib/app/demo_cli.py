"""``steerlib demo``'s arguments and entry point, without importing torch (the demo itself,
:mod:`steerlib.app.demo`, is imported when it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..defaults import DEFAULT_MAX_NEW_TOKENS
from .argtypes import blame, comma_list, finite_float, int_list, nonnegative_int, positive_float, positive_int

__all__ = ["add_arguments", "run_from_args"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``steerlib demo`` options to ``p``."""
    p.add_argument("--model", default="smollm2", help="smollm2 (default), or tiny:llama for a smoke run")
    p.add_argument("--out", default="runs/demo", help="output folder (cache, tables, plots)")
    p.add_argument("--layers", type=int_list, default="12,15", help="candidate layers, chosen on the validation split")
    p.add_argument("--alphas", type=comma_list(finite_float, "strength"), default="0.5,0.75",
                   help="candidate strengths, chosen on the validation split")
    p.add_argument("--input-layer", type=nonnegative_int, default=None,
                   help="L': the layer g reads its input from (default: the steered layer; docs/selectivity.md)")
    p.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS, help="tokens to generate")
    p.add_argument("--batch-size", type=positive_int, default=64, help="most rows per generation batch")
    p.add_argument("--batch-tokens", type=positive_int, default=4096,
                   help="most padded prompt tokens per generation batch (rows of similar length are batched together)")
    p.add_argument("--scale", type=positive_float, default=1.0,
                   help="multiply the split sizes (e.g. 0.1 for a quick run)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments."""
    import torch

    from ..zoo import load_steerable
    from .demo import run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    with blame("--model", args.model):
        model = load_steerable(args.model)
    layers = list(args.layers)
    input_layer = args.input_layer
    if args.model.startswith("tiny:"):
        layers = [min(x, model.num_layers - 1) for x in layers]
        input_layer = None if input_layer is None else min(input_layer, model.num_layers - 1)
    for flag, values in (("--layers", layers), ("--input-layer", [] if input_layer is None else [input_layer])):
        bad = [v for v in values if v >= model.num_layers]
        if bad:
            from ..errors import InputError

            raise InputError(f"{flag}: {model!r} has layers 0..{model.num_layers - 1}, not {bad[0]}.")
    run_demo(model, Path(args.out), layers=sorted(set(layers)), alphas=list(args.alphas),
             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, batch_tokens=args.batch_tokens,
             scale=args.scale, input_layer=input_layer)
    return 0
