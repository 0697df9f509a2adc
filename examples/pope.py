"""POPE (object hallucination): L2S against Mean-S, P2S, prompting and no steering on a VLM.

The official POPE questions are about COCO val2014 images, which are not shipped here, so this
example builds POPE-style questions from the shared COCO128 box labels with POPE's own recipe
(``build_pope_from_yolo``: present classes give "yes", absent ones "no", drawn at random, by
frequency or by co-occurrence). Images are split 50/50 between training and test (no image in
both). The hallucination pair is the paper's: the correct answer "Yes, the image" / "No, the
image" is forced as the start of the assistant turn against the wrong one, and P2S vectors are
averaged over the forced answer plus sampled continuation tokens (``sampled_mean``, 100 tokens).
The Prompt baseline prefixes "Examine the image carefully and answer: ".

    python examples/pope.py --model /models/llava-1.5-7b-hf --out runs/pope --device cuda
    python examples/pope.py --model /models/llava-1.5-7b-hf --questions /data/POPE/coco \\
        --image-dir /data/coco/val2014 --out runs/pope-official            # the official files
    python examples/pope.py --tiny --out /tmp/pope                           # smoke run, seconds

Metrics: accuracy, standard F1 ("yes" positive), yes-ratio (with Wilson intervals), and the
paper's accuracy (GT word in the first 15 characters) and its "F1" 2*Acc/(1+Acc).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from steerlib.app.compare_cli import example_parser, print_report
from steerlib.app.paths import data_dir
from steerlib.data import PROMPT_BASELINE_POPE, build_pope_from_yolo, cap_per_behavior, load_pope, split_by_group
from steerlib.eval import CompareResult, write_report
from steerlib.eval.compare import compare
from steerlib.zoo import load_steerable
from steerlib.steerers import L2S, P2S, MeanSteer, NoSteer, PromptSteer, Steerer


def default_coco128() -> Path:
    """``$STEERLIB_DATA/coco128-train2017``."""
    return data_dir("coco128-train2017", flag="--coco-root")


def build_parser() -> argparse.ArgumentParser:
    p = example_parser(__doc__)
    p.add_argument("--tiny", action="store_true", help="smoke run: tiny random LLaVA, a few questions, 4 tokens")
    p.add_argument("--model", default=None, help="local Hugging Face folder of a VLM (e.g. llava-1.5-7b-hf)")
    p.add_argument("--device", default=None, help="cuda, cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                   help="default float16 on GPU (as the paper), float32 on CPU")
    p.add_argument("--out", default=None, help="output folder (default runs/pope[-tiny])")
    p.add_argument("--coco-root", default=None, help="YOLO folder (images/, labels/, classes.txt); default $STEERLIB_DATA/coco128-train2017")
    p.add_argument("--questions", default=None, help="official POPE question file or folder (needs --image-dir)")
    p.add_argument("--image-dir", default=None, help="the images the official POPE files name (COCO val2014)")
    p.add_argument("--split", default="random", choices=("random", "popular", "adversarial"), help="POPE subset")
    p.add_argument("--layer", type=int, default=None, help="steered layer L* (default 14, LLaVA-1.5's; tiny 1)")
    p.add_argument("--alphas", default="1.0", help="comma list of strengths (paper: 1.0)")
    p.add_argument("--methods", default="none,prompt,mean,p2s,l2s")
    p.add_argument("--limit", type=int, default=None, help="at most N test questions per label (tiny 2)")
    p.add_argument("--train-limit", type=int, default=None, help="at most N training questions per label (tiny 3)")
    p.add_argument("--continuation-tokens", type=int, default=None, help="sampled_mean tokens (default 100; tiny 3)")
    p.add_argument("--hidden", type=int, default=100, help="L2S width K (paper: 100 for LLaVA, 400 for Qwen2-VL)")
    p.add_argument("--epochs", type=int, default=None, help="L2S epochs (default 100; tiny 4)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 16 (the metrics read the first words)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sample", action="store_true", help="sample as the paper does (default: greedy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")
    return p


def load_items(args: argparse.Namespace) -> list:
    if args.questions:
        if not args.image_dir:
            raise SystemExit("error: --questions needs --image-dir (the COCO val2014 images)")
        return load_pope(args.questions, args.image_dir, split=args.split)
    return build_pope_from_yolo(args.coco_root or default_coco128(), args.split, seed=args.seed)


def methods_for(names: Sequence[str], layer: int, *, continuation: int, hidden: int, epochs: int,
                seed: int) -> dict[str, Steerer]:
    """The paper's POPE recipe (l2s-method.md section 1): sampled_mean P2S, class-balanced L2S
    with a cosine schedule, g reading the last prompt token of L*."""
    p2s = {"reduction": "sampled_mean", "continuation_tokens": continuation, "seed": seed}
    all_methods: dict[str, Steerer] = {
        "none": NoSteer(),
        "prompt": PromptSteer(instruction=PROMPT_BASELINE_POPE.text, where=PROMPT_BASELINE_POPE.position),
        "mean": MeanSteer(layer, **p2s),
        "p2s": P2S(layer, **p2s),
        "l2s": L2S(layer, hidden=hidden, input_position="last_prompt", init="svd", lr=5e-5, epochs=epochs,
                   scheduler="cosine", warmup_epochs=min(50, epochs // 2), cos_weight=0.1,
                   cos_warmup_epochs=epochs, class_balance=True, **p2s),
    }
    unknown = [n for n in names if n not in all_methods]
    if unknown:
        raise SystemExit(f"error: unknown method(s) {unknown}; use some of {', '.join(all_methods)}")
    return {n: all_methods[n] for n in names}


def main(argv: Sequence[str] | None = None) -> CompareResult:
    args = build_parser().parse_args(argv)
    tiny = args.tiny
    layer = args.layer if args.layer is not None else (1 if tiny else 14)
    alphas = [float(a) for a in args.alphas.split(",")]
    limit = args.limit if args.limit is not None else (2 if tiny else None)
    train_limit = args.train_limit if args.train_limit is not None else (3 if tiny else None)
    out = Path(args.out or ("runs/pope-tiny" if tiny else "runs/pope"))
    if not tiny and not args.model:
        raise SystemExit("error: pass --model (a local VLM folder, e.g. llava-1.5-7b-hf) or --tiny")

    threads = torch.get_num_threads()
    if tiny:
        torch.set_num_threads(1)
    try:
        items = load_items(args)
        train, test = split_by_group(items, (0.5, 0.5), seed=args.seed)  # by image: none in both parts
        train, test = cap_per_behavior(train, train_limit), cap_per_behavior(test, limit)
        if tiny:
            model = load_steerable("tiny:llava")
        else:
            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = getattr(torch, args.dtype or ("float16" if device.startswith("cuda") else "float32"))
            model = load_steerable(args.model, dtype=dtype, device=device)
        print(f"{model!r}\nPOPE-{args.split}: {len(train)} train / {len(test)} test questions; layer {layer}; "
              f"alphas {alphas}", flush=True)
        methods = methods_for(args.methods.split(","), layer, continuation=args.continuation_tokens or (3 if tiny else 100),
                              hidden=8 if tiny else args.hidden, epochs=args.epochs or (4 if tiny else 100),
                              seed=args.seed)
        result = compare(model, train, test, methods, alphas, [layer], out_dir=out,
                         max_new_tokens=args.max_new_tokens or (4 if tiny else 16), batch_size=args.batch_size,
                         generate_kwargs={"do_sample": True} if args.sample else None, progress=not tiny)
        paths = write_report(result, metrics=["pope_acc", "pope_f1", "pope_yes_ratio", "pope_acc_paper",
                                              "pope_f1_paper"], plots=not args.no_plots)
    finally:
        torch.set_num_threads(threads)
    print_report(result, paths, ["pope_acc", "pope_f1", "pope_yes_ratio", "pope_acc_paper", "pope_f1_paper"])
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
