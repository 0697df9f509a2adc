"""Test helpers: tiny offline models of every supported family (:mod:`steerlib.testing.tiny`)."""

from .tiny import (
    FAMILIES,
    NESTED_IMAGE_FAMILIES,
    TEXT_FAMILIES,
    VLM_FAMILIES,
    FamilyRosters,
    TinyModel,
    build_tiny,
    family_rosters,
    tiny_image,
)

__all__ = [
    "FAMILIES",
    "FamilyRosters",
    "NESTED_IMAGE_FAMILIES",
    "TEXT_FAMILIES",
    "VLM_FAMILIES",
    "TinyModel",
    "build_tiny",
    "family_rosters",
    "tiny_image",
]
