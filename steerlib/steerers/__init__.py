"""Steering methods behind one protocol: ``fit(model, items)``, ``vectors(model, inputs)``,
``generate(model, inputs, alpha=..., positions=...)``, ``save_pretrained`` / ``from_pretrained``."""

from collections.abc import Mapping
from types import MappingProxyType

from .base import Steerer, as_items
from .baselines import NoSteer, PromptSteer
from .extract import (
    P2SExtraction,
    P2SFeatures,
    equalize_norms,
    extract_p2s,
    extract_p2s_layers,
    extract_p2s_to_disk,
    load_p2s,
)
from .l2s import GATE_GRID, L2S, SteeringNet, stratified_folds
from .mean import MeanSteer, MeanSteerBA
from .p2s import P2S, NormRandom, P2SBased, P2SParams
from .sharing import fit_sharing_extraction
from .static import StaticVectors
from .pca import PCACenter, PCADiff
from .probe import LinearProbe, LogisticProbe
from .classify import ClassifySteer
from .ablation import AblateThenAdd, DirectionalAblation
from .conditional import ConditionalSteer
from .compose import Composite

#: Every steering method by name: a read-only view of the registry that each ``Steerer`` subclass
#: joins by setting ``method`` (so a new method is one module here, and nothing else names it).
METHODS: Mapping[str, type[Steerer]] = MappingProxyType(Steerer._registry)

__all__ = [
    "AblateThenAdd",
    "ClassifySteer",
    "Composite",
    "ConditionalSteer",
    "DirectionalAblation",
    "LinearProbe",
    "LogisticProbe",
    "PCACenter",
    "PCADiff",
    "GATE_GRID",
    "L2S",
    "METHODS",
    "MeanSteer",
    "MeanSteerBA",
    "NoSteer",
    "NormRandom",
    "P2S",
    "P2SBased",
    "P2SExtraction",
    "P2SFeatures",
    "P2SParams",
    "PromptSteer",
    "StaticVectors",
    "Steerer",
    "SteeringNet",
    "as_items",
    "equalize_norms",
    "extract_p2s",
    "extract_p2s_layers",
    "extract_p2s_to_disk",
    "fit_sharing_extraction",
    "load_p2s",
    "stratified_folds",
]
