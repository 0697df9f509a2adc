"""Steering methods behind one protocol: ``fit(model, items)``, ``vectors(model, inputs)``,
``generate(model, inputs, alpha=..., positions=...)``, ``save_pretrained`` / ``from_pretrained``."""

from .base import Steerer, as_items
from .extract import P2SFeatures, equalize_norms, extract_p2s, extract_p2s_layers, extract_p2s_to_disk, load_p2s
from .l2s import GATE_GRID, L2S, SteeringNet, stratified_folds
from .p2s import P2S, NormRandom
from .static import MeanSteer, MeanSteerBA, NoSteer, PromptSteer
from .vectors import StaticVectors

METHODS: dict[str, type[Steerer]] = {
    "none": NoSteer,
    "prompt": PromptSteer,
    "norm_random": NormRandom,
    "mean": MeanSteer,
    "mean_ba": MeanSteerBA,
    "p2s": P2S,
    "l2s": L2S,
    "static": StaticVectors,
}

__all__ = [
    "GATE_GRID",
    "L2S",
    "METHODS",
    "MeanSteer",
    "MeanSteerBA",
    "NoSteer",
    "NormRandom",
    "P2S",
    "P2SFeatures",
    "PromptSteer",
    "StaticVectors",
    "Steerer",
    "SteeringNet",
    "as_items",
    "equalize_norms",
    "extract_p2s",
    "extract_p2s_layers",
    "extract_p2s_to_disk",
    "load_p2s",
    "stratified_folds",
]
