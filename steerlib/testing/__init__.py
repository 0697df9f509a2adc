"""Test helpers: tiny offline models of every supported family (:mod:`steerlib.testing.tiny`)."""

from .tiny import (
    FAMILIES,
    NESTED_IMAGE_FAMILIES,
    TEXT_FAMILIES,
    VLM_FAMILIES,
    TinyModel,
    build_tiny,
    tiny_image,
)

__all__ = [
    "FAMILIES",
    "NESTED_IMAGE_FAMILIES",
    "TEXT_FAMILIES",
    "VLM_FAMILIES",
    "TinyModel",
    "build_tiny",
    "tiny_image",
]
