"""One exception hierarchy for every user-facing failure in steerlib.

Every message names the problem and the fix. Catch :class:`SteerlibError` to handle
them all; the subclasses also derive from the matching builtin (``ValueError``,
``KeyError``, ``FileNotFoundError``, ...) so generic handlers keep working.
"""

from __future__ import annotations


class SteerlibError(Exception):
    """Base class of every error steerlib raises on purpose."""


class UnknownArchitectureError(SteerlibError, KeyError):
    """No adapter is registered for a model type and the fallback could not find the decoder."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class AdapterValidationError(SteerlibError, RuntimeError):
    """An adapter does not match the model it was applied to."""


class LayerIndexError(SteerlibError, IndexError):
    """A layer index is out of range, negative or not an integer."""


class PositionError(SteerlibError, ValueError):
    """An unknown position name or a position that does not exist in the batch."""


class ShapeMismatchError(SteerlibError, ValueError):
    """A vector or batch has the wrong shape (hidden size, batch size)."""


class NonFiniteError(SteerlibError, ValueError):
    """A vector or scalar contains NaN or infinity."""


class InputError(SteerlibError, ValueError):
    """Bad model inputs: images for a text-only model, a VLM prompt without its image, ..."""


class DataError(SteerlibError, ValueError):
    """Bad training or evaluation data: empty set, one class only, missing completions, ..."""


class DataFileError(SteerlibError, ValueError):
    """A data file is missing, unreadable or malformed (the message names file and line)."""


class NotFittedError(SteerlibError, RuntimeError):
    """A steerer was used before ``fit`` (or ``from_pretrained``)."""


class CompatibilityError(SteerlibError, ValueError):
    """A saved steerer does not fit this model (type, hidden size, layer count, version)."""


class PersistenceError(SteerlibError, OSError):
    """Saving or loading failed: target exists, unsafe format (pickle), corrupt file."""


class MissingDependencyError(SteerlibError, ImportError):
    """An optional package (real weights, plotting, ...) is not installed."""


class UnsupportedModelError(SteerlibError, ValueError):
    """A model steerlib cannot steer correctly (an encoder-decoder, a layer output it does not handle,
    a padded batch on a model that ignores the attention mask); refused instead of steered wrong."""


class ConcurrentWriteError(PersistenceError):
    """Another process is saving to the same path right now; nothing was written."""


class SpecialFileError(PersistenceError):
    """A FIFO, device or socket where steerlib expects a regular file."""


class ParameterError(DataError):
    """A hyperparameter of a steerer is out of range, of the wrong type or not one of its choices
    (the message names the parameter)."""


class OutsideFolderError(DataFileError):
    """A data file refers to a file outside the folder it was given (``../x``, an absolute path, a
    symlink that leaves the folder); refused instead of read."""
