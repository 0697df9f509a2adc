"""Interoperability: write static steering vectors for other tools, and read them back.

:func:`export_gguf` writes a llama.cpp control vector (``--control-vector file.gguf``);
:func:`import_gguf` reads one back as a :class:`StaticVectors` steerer. The ``gguf`` package is
needed only when a file is written or read (``pip install gguf``).
"""

from .gguf import (
    ARCH,
    StaticVectors,
    export_gguf,
    import_gguf,
    layer_from_tensor_name,
    read_gguf,
    tensor_name,
)

__all__ = ["ARCH", "StaticVectors", "export_gguf", "import_gguf", "layer_from_tensor_name", "read_gguf",
           "tensor_name"]
