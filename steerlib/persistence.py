"""Safe files: safetensors plus JSON, written atomically, never pickle."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import PersistenceError

TENSORS_FILE = "steerer.safetensors"
META_FILE = "steerer.json"
UNSAFE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib")


def refuse_unsafe(path: Path) -> None:
    """Refuse pickle-based files with an explanation (loading them can run arbitrary code)."""
    if path.suffix.lower() in UNSAFE_SUFFIXES:
        raise PersistenceError(
            f"{path} looks like a pickle-based file ({path.suffix}). steerlib never loads pickle, because "
            "unpickling can run arbitrary code. Load it yourself only if you trust it, then save it with "
            "save_pretrained (safetensors + JSON)."
        )


def umask_mode(kind: str) -> int:
    """The mode a plain ``open`` / ``mkdir`` would give under the user's umask (``kind``: "file" or "dir").

    ``tempfile`` creates 0600 files and 0700 folders; files steerlib writes are chmod-ed to this,
    so a saved steerer is as readable as any other file the user writes."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if kind == "dir" else 0o666) & ~mask


def write_dir_atomic(target: str | os.PathLike[str], files: Mapping[str, bytes | dict[str, Any] | dict[str, torch.Tensor]],
                     *, overwrite: bool = False) -> Path:
    """Write a folder of files so that a crash never leaves it half-written.

    ``files`` maps file names to bytes, a JSON-able dict (``*.json``) or tensors (``*.safetensors``).
    Everything is written into a temporary sibling folder, which then replaces ``target``.
    An existing ``target`` is kept unless ``overwrite=True``.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise PersistenceError(f"{target} already exists; pass overwrite=True to replace it, or choose another path.")
    if target.exists() and not target.is_dir():
        raise PersistenceError(f"{target} exists and is not a folder; choose another path.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for name, content in files.items():
            p = tmp / name
            if name.endswith(".safetensors"):
                tensors = {k: v.detach().cpu().contiguous() for k, v in content.items()}  # type: ignore[union-attr]
                save_file(tensors, str(p))
            elif name.endswith(".json"):
                p.write_text(json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
            elif isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(str(content), encoding="utf-8")
            os.chmod(p, umask_mode("file"))
        os.chmod(tmp, umask_mode("dir"))
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)  # put the previous folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode("file"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_steerer_dir(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read ``steerer.json`` and ``steerer.safetensors`` from a saved folder."""
    path = Path(path)
    refuse_unsafe(path)
    if not path.is_dir():
        raise PersistenceError(f"No saved steerer at {path}: expected a folder written by save_pretrained.")
    meta_p, tens_p = path / META_FILE, path / TENSORS_FILE
    for p in (meta_p, tens_p):
        if not p.is_file():
            others = sorted(x.name for x in path.iterdir())
            bad = [x for x in others if Path(x).suffix.lower() in UNSAFE_SUFFIXES]
            hint = f" It holds pickle-based files {bad}, which steerlib refuses to load." if bad else ""
            raise PersistenceError(f"{path} is missing {p.name} (found {others}).{hint} Save with save_pretrained.")
    try:
        meta = json.loads(meta_p.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError (binary/pickle bytes)
        raise PersistenceError(f"{meta_p} is not valid JSON ({e}); the folder is corrupt, save the steerer again.") from e
    if not isinstance(meta, dict):
        raise PersistenceError(
            f"{meta_p} holds a JSON {type(meta).__name__}, not the metadata object save_pretrained writes; "
            "the folder is corrupt, save the steerer again."
        )
    try:
        tensors = load_file(str(tens_p))
    except Exception as e:
        raise PersistenceError(f"{tens_p} is not a readable safetensors file ({e}); save the steerer again.") from e
    return meta, tensors
