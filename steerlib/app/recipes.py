"""Recipes: the steerer settings and metrics of the command line's data sets, and the demo's.

These are the application's choices (the paper's and the viability study's settings), not library
defaults: ``steerlib compare --data <set>`` starts from :data:`DATA_PRESETS`, and ``steerlib demo``
fits :func:`demo_steerers`.
"""

from __future__ import annotations

from typing import Any

from ..eval.rows import MetricConfig
from ..steerers import L2S, P2S, MeanSteer, Steerer
from .paths import DATA_SETS

__all__ = ["DATA_PRESETS", "DATA_SETS", "DEMO_EXTRACTION_BATCH_SIZE", "demo_oracle", "demo_steerers"]


#: Per data set: steerer arguments (the paper's / the viability study's recipe) and metrics.
DATA_PRESETS: dict[str, dict[str, Any]] = {
    "text-safety": {"steerer_kwargs": {"*": {"reduction": "completion_mean"}, "mean": {"behaviors": ["harmful", "advice"]},
                                       "l2s": {"hidden": 64, "lr": 1e-3}},
                    "metrics": MetricConfig()},
    "pope": {"steerer_kwargs": {"*": {"reduction": "sampled_mean", "continuation_tokens": 100},
                                "prompt": {"instruction": "Examine the image carefully and answer: ", "where": "prefix"},
                                "l2s": {"class_balance": True, "scheduler": "cosine", "lr": 5e-5}},
             "metrics": MetricConfig()},
    "mmsb": {"steerer_kwargs": {"*": {"reduction": "end_of_turn"},
                                "l2s": {"input_position": "last_prompt_no_gen", "equalize_norms_to": "harmful"}},
             "metrics": MetricConfig(unsafe_behaviors=("harmful", "legal", "financial", "health"))},
}
DATA_PRESETS["pope-coco"] = DATA_PRESETS["pope"]

#: Items per batch of the demo's P2S extraction (train and validation features, every layer at once).
DEMO_EXTRACTION_BATCH_SIZE = 16


def demo_steerers(layer: int, *, input_layer: int | None = None, hidden: int = 64,
                  epochs: int = 100) -> dict[str, Steerer]:
    """The demo's unfitted steerers at ``layer``: ``{"mean": Mean-S, "l2s": gated L2S}``.

    ``input_layer`` is g's input layer; None (the default) reads it at ``layer`` itself, which
    separates intent from topic best (``docs/selectivity.md``).

    Mean-S averages the harmful and advice vectors. L2S: class balance and a strong L1 term drive
    g's output on benign inputs (target 0) towards 0 (chosen by 5-fold cross-validation on
    train + val, never on the test split); the gate, chosen by cross-validation on the training
    items, then zeroes what is left, so those inputs run exactly unsteered.
    """
    return {
        "mean": MeanSteer(layer, behaviors=["harmful", "advice"], progress=False),
        "l2s": L2S.selective(layer, input_layer=input_layer, hidden=hidden, epochs=epochs, progress=False),
    }


def demo_oracle(layer: int) -> P2S:
    """The demo's P2S (oracle) at ``layer`` (unfitted; it learns nothing)."""
    return P2S(layer, progress=False)
