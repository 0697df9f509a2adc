"""The cache-folder protocol shared by every model builder of the zoo (real weights, the tiny LLaVA).

A built model lives in ``<root>/<name>``; ``<root>`` is the ``cache_dir`` argument, else the
``STEERLIB_CACHE`` environment variable, else ``~/.cache/steerlib/models`` (:func:`cache_root`).

A build is written into a temporary sibling folder (``.<name>.tmp-*``) and renamed into place
(:func:`build_atomically`), so a crash never leaves a half-written cache. The JSON record
``steerlib_cache.json`` is written last; it holds the cache format, the model name, whatever the
builder records about its sources, and the size of every file. :func:`record_problem` says why a
folder is not a usable cache (no record, another format or name, another source, a missing or
resized file); such a folder is rebuilt, never used (:func:`load_or_build`). Build folders left
by crashed runs are removed after a few hours (:func:`remove_stale_builds`).

Source packages are found without importing them (:func:`find_package_dir`); a missing one is a
:class:`~steerlib.errors.MissingDependencyError` naming the ``pip`` command
(:func:`require_packages`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import MissingDependencyError, PersistenceError

__all__ = [
    "CACHE_RECORD",
    "ENV_CACHE",
    "STALE_BUILD_SECONDS",
    "build_atomically",
    "cache_root",
    "default_cache_dir",
    "dist_version",
    "file_sizes",
    "find_package_dir",
    "finish_build",
    "load_or_build",
    "read_record",
    "record_problem",
    "remove_stale_builds",
    "require_packages",
    "sha256",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

CACHE_RECORD = "steerlib_cache.json"
"""Name of the JSON record written last into every cache folder."""

ENV_CACHE = "STEERLIB_CACHE"
"""Environment variable naming the cache root."""

STALE_BUILD_SECONDS = 6 * 3600
"""Leftover build folders older than this are removed by the next build."""


# --------------------------------------------------------------------------------------------------
# Where caches live
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Root folder of the model cache (one sub-folder per model).

    ``$STEERLIB_CACHE`` if set (and non-empty), else ``~/.cache/steerlib/models``. Nothing is created.
    """
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "steerlib" / "models"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` (``~`` expanded) if given, else :func:`default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


# --------------------------------------------------------------------------------------------------
# Source packages
# --------------------------------------------------------------------------------------------------


def find_package_dir(module: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it; ``None`` if absent."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        if Path(loc).is_dir():
            return Path(loc)
    return None


def dist_version(distribution: str) -> str:
    """The installed version of a distribution, or ``"unknown"``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def require_packages(modules: Sequence[str], distributions: Sequence[str], *, needed_by: str, install: str,
                     hint: str = "") -> dict[str, Path]:
    """The folder of every package in ``modules`` (``distributions``: their PyPI names, same order).

    Raises:
        MissingDependencyError: "``needed_by`` needs the package(s) ..., which are not installed", with
            the ``install`` command and ``hint`` on the lines after.
    """
    found: dict[str, Path] = {}
    missing: list[str] = []
    for module, dist in zip(modules, distributions):
        loc = find_package_dir(module)
        if loc is None:
            missing.append(dist)
        else:
            found[module] = loc
    if missing:
        raise MissingDependencyError(
            f"{needed_by} needs the package(s) {', '.join(missing)}, which are not installed. Install with:\n"
            f"    {install}" + (f"\n{hint}" if hint else "")
        )
    return found


# --------------------------------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------------------------------


def sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(folder: Path) -> dict[str, Any] | None:
    """The folder's ``steerlib_cache.json`` as a dict, or ``None`` when missing or unreadable."""
    try:
        data = json.loads((folder / CACHE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def file_sizes(folder: Path) -> dict[str, int]:
    """``{relative path: size}`` of every file under ``folder``, sorted (the record's ``files``)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def record_problem(folder: Path, *, name: str, fmt: int, expected: Mapping[str, Any]) -> str | None:
    """Why ``folder`` is not a usable cache of model ``name`` (``None`` when it is usable).

    Usable means: a readable record of format ``fmt`` and model ``name``, whose fields equal
    ``expected`` (the installed sources), listing a ``config.json`` and safetensors weights, and
    every listed file present with its recorded size.
    """
    if not folder.exists():
        return "no cache yet"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    record = read_record(folder)
    if record is None:
        return f"{CACHE_RECORD} is missing or unreadable (incomplete cache)"
    if record.get("format") != fmt or record.get("name") != name:
        return f"{CACHE_RECORD} has another format or model name"
    for key, value in expected.items():
        if record.get(key) != value:
            return f"cache was built from {key}={record.get(key)!r}, installed is {value!r}"
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return f"{CACHE_RECORD} lists no files"
    if "config.json" not in files or not any(str(n).endswith(".safetensors") for n in files):
        return f"{CACHE_RECORD} lists no config.json or safetensors weights"
    for fname, size in files.items():
        p = folder / fname
        if not p.is_file():
            return f"{fname} is missing"
        if p.stat().st_size != size:
            return f"{fname} has {p.stat().st_size} bytes, expected {size}"
    return None


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def remove_stale_builds(folder: Path) -> None:
    """Delete leftover temporary build folders of ``folder`` from crashed runs (older than a few hours)."""
    parent = folder.parent
    if not parent.is_dir():
        return
    now = time.time()
    for p in parent.glob(f".{folder.name}.*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def build_atomically(folder: Path, fill: Callable[[Path], dict[str, Any]], *, name: str) -> None:
    """Build the cache ``folder`` of model ``name``: ``fill(tmp)`` writes the files into a fresh temporary
    sibling folder and returns the record; the record gets ``files`` (:func:`file_sizes`) and is written
    last, then the folder is renamed into place (:func:`finish_build`). On any error the temporary
    folder is removed and ``folder`` is left as it was.

    Raises:
        PersistenceError: the cache root cannot be written (names ``STEERLIB_CACHE``).
    """
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_builds(folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    except OSError as e:
        raise PersistenceError(
            f"Cannot write the {name} cache under {folder.parent}: {e}. Pass another cache_dir "
            f"or set {ENV_CACHE} to a writable folder."
        ) from e
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the cache may be shared (STEERLIB_CACHE)
        record = fill(tmp)
        record["files"] = file_sizes(tmp)
        finish_build(tmp, folder, record)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finish_build(tmp: Path, folder: Path, record: Mapping[str, Any]) -> None:
    """Write the build record into ``tmp``, last (a folder without it is never taken for a complete
    cache), then move ``tmp`` onto ``folder``."""
    part = tmp / (CACHE_RECORD + ".part")
    part.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(part, tmp / CACHE_RECORD)
    _move_into_place(tmp, folder)


def _move_into_place(tmp: Path, folder: Path) -> None:
    """Rename the finished build folder ``tmp`` onto ``folder`` (replacing a broken one)."""
    if folder.exists() or folder.is_symlink():
        old: Path | None = folder.parent / f".{folder.name}.old-{os.getpid()}-{time.time_ns()}"
        try:
            os.replace(folder, old)  # type: ignore[arg-type]
        except FileNotFoundError:  # another process moved it away first
            old = None
        except OSError as e:
            raise PersistenceError(f"Cannot replace the broken cache folder {folder}: {e}. Delete it by hand.") from e
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process finished its build in between: keep theirs, drop ours.
            if not folder.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        return
    try:
        os.replace(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent build won the race


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_or_build(folder: Path, *, name: str, problem: Callable[[], str | None], load: Callable[[], T],
                  build: Callable[[], None], force_rebuild: bool = False) -> T:
    """``load()`` the cache ``folder`` when ``problem()`` finds nothing wrong with it; otherwise (or when
    loading fails, or with ``force_rebuild``) ``build()`` it, check it again and load the fresh copy.

    The fresh copy is always loaded from disk, so the first and later calls give bit-identical models.

    Raises:
        PersistenceError: the freshly built cache is still not usable.
    """
    why = "rebuild requested" if force_rebuild else problem()
    if why is None:
        try:
            return load()
        except Exception as e:  # noqa: BLE001 - a corrupt file with the right size: rebuild once
            why = f"loading it failed ({type(e).__name__}: {e})"
    if why != "no cache yet":
        logger.warning("steerlib: rebuilding the %s cache in %s: %s", name, folder, why)
    else:
        logger.info("steerlib: building the %s cache in %s (once)", name, folder)
    build()
    why = problem()
    if why is not None:
        raise PersistenceError(f"The freshly built cache {folder} is not usable ({why}). Delete it and retry.")
    return load()
