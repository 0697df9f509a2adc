"""steerlib: activation steering for Hugging Face LLMs and vision-language models."""

from .adapters import Adapter, AdapterRegistry, get_adapter, register_adapter
from .data.items import ContrastiveItem
from .engine import Batch, Generation, SteerableModel
from .errors import SteerlibError
from .intervention import Intervention
from .positions import POSITION_NAMES, Positions

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "AdapterRegistry",
    "Batch",
    "ContrastiveItem",
    "Generation",
    "Intervention",
    "POSITION_NAMES",
    "Positions",
    "SteerableModel",
    "SteerlibError",
    "get_adapter",
    "register_adapter",
    "__version__",
]
