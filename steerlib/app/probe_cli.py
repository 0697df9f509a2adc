"""``steerlib probe``: which layer to steer, from one P2S extraction, before any generation sweep.

For every layer, on a held-out part of the items (stratified by behaviour):

* **P2S cosine**: the cosine of each held-out item's P2S vector to the mean P2S vector of its behaviour
  on the other items (behaviours whose vectors are not zero): how consistent the steering direction is
  (a mean vector can steer where it is high, and g has a target it can learn);
* **separability**: the held-out accuracy of a linear (ridge, one-vs-rest) classifier of the behaviour
  from the input's hidden state at that layer (last prompt token): whether an input-dependent
  steerer can tell the behaviours apart there.

Both come from the teacher-forced passes of :func:`steerlib.steerers.extract_p2s_layers` (one pass pair
per item for all layers); nothing is generated.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .argtypes import blame, device, int_list, nonnegative_int, positive_float, positive_int, probability
from .data_args import add_data_arguments, items_from_args

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

__all__ = ["add_arguments", "layer_scores", "ridge_accuracy", "run_from_args"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``steerlib probe`` options to ``p`` (nothing heavy is imported)."""
    p.add_argument("--model", default="smollm2", help="smollm2, gemma3-270m, tiny:<family>, a local HF folder or a Hub repo id")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:1 (default: where the model loads)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="weights dtype")
    add_data_arguments(p)
    p.add_argument("--layers", type=int_list, default=None, help="comma list of layers (default: every layer)")
    p.add_argument("--held-out", type=probability, default=0.3, help="fraction of each behaviour held out")
    p.add_argument("--ridge", type=positive_float, default=1.0, help="ridge penalty of the separability classifier")
    p.add_argument("--reduction", default="completion_mean", choices=("end_of_turn", "completion_mean"),
                   help="P2S reduction of the two forced completions")
    p.add_argument("--batch-size", type=positive_int, default=8, help="items per extraction batch")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="split seed")


def ridge_accuracy(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, ridge: float = 1.0) -> float:
    """Held-out accuracy of a one-vs-rest ridge classifier (standardised features, closed form)."""
    import torch

    mu, sd = x_train.mean(0), x_train.std(0, unbiased=False).clamp(min=1e-6)
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    classes = torch.unique(y_train)
    targets = (y_train[:, None] == classes[None, :]).double() * 2 - 1
    a1 = torch.cat([a.double(), torch.ones(len(a), 1, dtype=torch.float64)], 1)
    eye = torch.eye(a1.shape[1], dtype=torch.float64)
    eye[-1, -1] = 0  # the intercept is not penalised
    w = torch.linalg.solve(a1.T @ a1 + ridge * eye, a1.T @ targets)
    b1 = torch.cat([b.double(), torch.ones(len(b), 1, dtype=torch.float64)], 1)
    pred = classes[(b1 @ w).argmax(1)]
    return float((pred == y_test).double().mean())


def layer_scores(z: Tensor, h: Tensor, behaviors: Sequence[str], train: Sequence[int], test: Sequence[int],
                 ridge: float = 1.0) -> dict[str, float]:
    """One layer's scores: held-out P2S cosine to the behaviour mean, and ridge separability of ``h``."""
    import torch

    names = sorted(set(behaviors))
    y = torch.tensor([names.index(b) for b in behaviors])
    tr, te = torch.tensor(list(train)), torch.tensor(list(test))
    cosines = []
    for k, _ in enumerate(names):
        mean = z[tr[y[tr] == k]].mean(0)
        rows = te[y[te] == k]
        if len(rows) == 0 or float(mean.norm()) == 0.0:
            continue  # a zero target (leave unchanged): no direction to agree with
        cosines.append(torch.nn.functional.cosine_similarity(z[rows], mean[None, :], dim=-1))
    cos = float(torch.cat(cosines).mean()) if cosines else float("nan")
    acc = ridge_accuracy(h[tr], y[tr], h[te], y[te], ridge) if len(names) > 1 else float("nan")
    chance = float(max((y[te] == k).double().mean() for k in range(len(names))))
    return {"p2s_cosine": cos, "separability": acc, "chance": chance}


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``steerlib probe``: print one row per layer."""
    from ..data import split_items
    from ..errors import DataError
    from ..steerers import extract_p2s_layers
    from ..zoo import load_steerable

    items = items_from_args(args)  # before the model
    parts = split_items(items, (1 - args.held_out, args.held_out), seed=args.seed)
    train_items, test_items = parts[0], parts[-1]
    if not train_items or not test_items:
        raise DataError(f"--held-out {args.held_out:g} leaves {len(train_items)} training and {len(test_items)} held-out "
                        "items; give more items (--limit) or another fraction.")
    with blame("--model", args.model):
        model = load_steerable(args.model, dtype=args.dtype, device=args.device)
    layers = list(args.layers) if args.layers is not None else list(range(model.num_layers))
    bad = [layer for layer in layers if layer >= model.num_layers]
    if bad:
        raise DataError(f"--layers: {model!r} has layers 0..{model.num_layers - 1}, not {bad[0]}.")
    ordered = [*train_items, *test_items]
    feats = extract_p2s_layers(model, ordered, layers, input_layers={layer: layer for layer in layers},
                               reduction=args.reduction, batch_size=args.batch_size, progress=not args.quiet)
    n = len(train_items)
    rows: list[dict[str, Any]] = []
    for layer in layers:
        f = feats[layer]
        assert f.h is not None
        rows.append({"layer": layer, **layer_scores(f.z, f.h, [it.behavior for it in ordered], range(n),
                                                    range(n, len(ordered)), args.ridge)})
    print(f"{model!r}: {n} items to fit, {len(test_items)} held out; behaviours "
          f"{', '.join(sorted({it.behavior for it in ordered}))}")
    print("| layer | P2S cosine to behaviour mean (held out) | separability (ridge, held out) | chance |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['p2s_cosine']:.3f} | {r['separability']:.3f} | {r['chance']:.3f} |")
    scored = [r for r in rows if r["p2s_cosine"] == r["p2s_cosine"]]
    if scored:
        best = max(scored, key=lambda r: (r["p2s_cosine"], r["separability"]))
        print(f"most consistent P2S direction: layer {best['layer']} (then check steering there with "
              f"steerlib compare --layers {best['layer']})")
    return 0
