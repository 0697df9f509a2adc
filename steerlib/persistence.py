"""Safe files: safetensors plus JSON, written atomically, never pickle; one error boundary for I/O.

Writes go through :func:`writing`, which turns every ``OSError`` / safetensors error into a
:class:`~steerlib.errors.PersistenceError` naming the path and what to do (read-only or full
disk, missing permission, a dangling symlink, a NUL byte in the path, ...). Reads go through
:func:`read_regular` / :func:`open_regular`: special files (a FIFO, a device, a socket) are
refused as such, sizes are bounded before anything is read, and a symlink may not leave the
folder it is read from.

A saved folder is replaced atomically (:func:`write_dir_atomic`): the new folder is written
beside the old one and the two are swapped with one ``renameat2(RENAME_EXCHANGE)`` on Linux, so
at every instant the path holds either the old or the new complete folder. Where the OS or the
file system has no exchange (macOS, some network file systems), the old folder is renamed aside
and the new one renamed in: a crash between those two renames leaves the old folder under
``.<name>.old-<pid>`` beside the target (documented window of two renames). Concurrent savers to
one path are serialised by an ``fcntl.flock`` on ``.<name>.lock`` beside it; the loser gets a
:class:`~steerlib.errors.ConcurrentWriteError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import shutil
import stat
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from .errors import ConcurrentWriteError, PersistenceError, SpecialFileError

TENSORS_FILE = "steerer.safetensors"
META_FILE = "steerer.json"
UNSAFE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib")
MAX_META_BYTES = 16 * 2**20
"""The largest ``steerer.json`` read (16 MiB; an L2S with 10 000 epochs of history is < 2 MiB)."""
MAX_HEADER_BYTES = 16 * 2**20
"""The largest safetensors header read (the JSON describing the tensors)."""
SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


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


# ---------------------------------------------------------------------- the error boundary ----
def check_path(path: str | os.PathLike[str], what: str = "path") -> Path:
    """``path`` as a Path; a NUL byte (which no OS call accepts) is refused with a clear error."""
    s = os.fspath(path)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    if "\x00" in s:
        raise PersistenceError(f"The {what} {s!r} contains a NUL byte (\\x00), which no file name can hold; "
                               "remove it from the path.")
    return Path(s)


def _dangling_symlink(path: Path) -> Path | None:
    """The first component of ``path`` (or of its parents) that is a symlink to nothing."""
    for p in [path, *path.parents]:
        try:
            if p.is_symlink() and not p.exists():
                return p
        except OSError:
            return None
    return None


def describe_os_error(path: Path, e: BaseException, action: str) -> str:
    """A one-line explanation of an OS error on ``path``: what happened and what to do."""
    code = getattr(e, "errno", None)
    where = getattr(e, "filename", None) or path
    if isinstance(e, SafetensorError):
        return f"Cannot {action} {path}: safetensors failed ({e}). Check the disk and write to another path."
    if code == errno.EROFS:
        fix = "the file system is read-only; write to a folder on a writable disk"
    elif code in (errno.EACCES, errno.EPERM):
        fix = f"you have no permission to write {where}; fix its permissions or choose a folder you own"
    elif code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fix = "the disk (or your quota) is full; free some space or write to another disk"
    elif code == errno.ELOOP:
        fix = f"{where} is a symlink loop; remove the link or give another path"
    elif code in (errno.ENOENT, errno.EEXIST, errno.ENOTDIR) and _dangling_symlink(path) is not None:
        link = _dangling_symlink(path)
        assert link is not None
        fix = (f"{link} is a symlink to {os.readlink(link)!r}, which does not exist; create its target, "
               "remove the link, or give another path")
    elif code == errno.ENOTDIR or code == errno.EEXIST:
        fix = f"a file is in the way of a folder on the path {where}; move it or give another path"
    elif code == errno.ENAMETOOLONG:
        fix = "the file name is too long for this file system; give a shorter path"
    elif code == errno.ENOENT:
        fix = f"{where} (or a folder above it) does not exist; create it or give another path"
    elif code == errno.EISDIR:
        fix = f"{where} is a folder; give the path of a file"
    else:
        fix = "check the path and the disk"
    name = errno.errorcode.get(code, type(e).__name__) if isinstance(code, int) else type(e).__name__
    return f"Cannot {action} {path} ({name}: {getattr(e, 'strerror', None) or e}): {fix}."


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], action: str = "write") -> Iterator[Path]:
    """The one boundary of every write: OS and safetensors errors inside become a
    :class:`PersistenceError` naming ``path`` and what to do; a NUL byte in ``path`` is refused first.

    Example:
        >>> import tempfile
        >>> with writing(tempfile.gettempdir() + "/x\\0y") as p:  # doctest: +SKIP
        ...     pass
    """
    p = check_path(path)
    try:
        yield p
    except PersistenceError:
        raise
    except (OSError, SafetensorError) as e:
        raise PersistenceError(describe_os_error(p, e, action)) from e
    except ValueError as e:
        if "null" in str(e).lower():  # "embedded null byte" from a path built inside
            raise PersistenceError(f"Cannot {action} {p}: a path holds a NUL byte; remove it.") from e
        raise


# ---------------------------------------------------------------------- reading -------------
def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def open_regular(path: str | os.PathLike[str], what: str, *, root: str | os.PathLike[str] | None = None,
                 limit: int | None = None) -> tuple[int, int]:
    """Open a regular file for reading: ``(fd, size)``; the caller closes ``fd``.

    Refused with a :class:`PersistenceError` subclass: a missing file, a special file (FIFO,
    device, socket; opened without blocking), a file larger than ``limit`` bytes, and, with
    ``root``, a symlink whose target lies outside ``root``."""
    p = check_path(path, what)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise PersistenceError(f"{what} not found: {p}.") from None
    except OSError as e:
        raise PersistenceError(describe_os_error(p, e, "read")) from e
    if stat.S_ISLNK(st.st_mode):
        real = os.path.realpath(p)
        if root is not None and not _inside(real, os.path.realpath(root)):
            raise PersistenceError(
                f"{what} {p} is a symlink to {real}, outside the folder {root}; steerlib reads only files inside "
                "the folder it was given. Copy the file into the folder instead of linking it.")
        if not os.path.exists(real):
            raise PersistenceError(f"{what} {p} is a symlink to {os.readlink(p)!r}, which does not exist; "
                                   "restore the target or save the folder again.")
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise PersistenceError(describe_os_error(p, e, "read")) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecialFileError(f"{what} {p} is {_kind(st.st_mode)}, not a regular file; steerlib reads only "
                                   "regular files. Replace it with the file itself.")
        if limit is not None and st.st_size > limit:
            raise PersistenceError(f"{what} {p} is {st.st_size} bytes, more than the {limit} bytes such a file can "
                                   "hold; it is not a file steerlib wrote. Give the right file.")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _read_exact(fd: int, n: int, what: str, p: object) -> bytes:
    chunks, left = [], n
    while left > 0:
        b = os.read(fd, min(left, 1 << 24))
        if not b:
            raise PersistenceError(f"{what} {p} is truncated (expected {n} more bytes); save it again.")
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def read_regular(path: str | os.PathLike[str], what: str, *, root: str | os.PathLike[str] | None = None,
                 limit: int = MAX_META_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (see :func:`open_regular`); the read
    itself is bounded too, so a file that grows while read cannot exhaust memory."""
    fd, size = open_regular(path, what, root=root, limit=limit)
    try:
        data = os.read(fd, limit + 1) if size == 0 else _read_exact(fd, size, what, path)
        if len(data) > limit:
            raise PersistenceError(f"{what} {path} is more than {limit} bytes; it is not a file steerlib wrote.")
        return data
    except OSError as e:
        raise PersistenceError(describe_os_error(Path(path), e, "read")) from e
    finally:
        os.close(fd)


def _finite_float(s: str) -> float:
    x = float(s)
    if not math.isfinite(x):
        raise ValueError(f"the number {s} overflows a float")
    return x


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses NaN / Infinity (and numbers that overflow to them) and duplicate
    keys, raising ``ValueError``."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys)


def read_json_file(path: str | os.PathLike[str], what: str, *, root: str | os.PathLike[str] | None = None,
                   limit: int = MAX_META_BYTES) -> Any:
    """A JSON file read with :func:`read_regular` and parsed with :func:`loads_strict`."""
    data = read_regular(path, what, root=root, limit=limit)
    try:
        return loads_strict(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, NaN, duplicate keys
        raise PersistenceError(f"{path} is not valid JSON ({e}); the folder is corrupt, save the steerer again.") from e


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a safetensors header describes it (nothing of its data read)."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def _bad(p: object, why: str) -> PersistenceError:
    return PersistenceError(f"{p} is not a readable safetensors file ({why}); save the steerer again.")


def parse_safetensors_header(fd: int, size: int, p: object) -> tuple[dict[str, TensorInfo], int]:
    """Read and check a safetensors header (8-byte little-endian length, then JSON) from ``fd``.

    Returns the tensors and the header's length. Every entry's dtype, shape and byte range must
    be consistent with each other and with the file's ``size``, and the data must fill the file
    exactly, so nothing beyond what the header announces is ever read."""
    what = "steerer.safetensors"
    if size < 8:
        raise _bad(p, f"{size} bytes, no header")
    (n,) = struct.unpack("<Q", _read_exact(fd, 8, what, p))
    if n > MAX_HEADER_BYTES or n > size - 8:
        raise _bad(p, f"a header of {n} bytes in a {size}-byte file")
    try:
        header = loads_strict(_read_exact(fd, n, what, p).decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise _bad(p, f"bad header: {e}") from e
    if not isinstance(header, dict):
        raise _bad(p, "the header is not an object")
    out: dict[str, TensorInfo] = {}
    data_len = size - 8 - n
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(info, dict) and info.get("dtype") in SAFETENSORS_DTYPES
              and isinstance(info.get("shape"), list) and isinstance(info.get("data_offsets"), list)
              and len(info["data_offsets"]) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                      for x in [*info["shape"], *info["data_offsets"]]))
        if not ok:
            raise _bad(p, f"the header entry of tensor {name!r} is malformed: {info!r}")
        shape = tuple(info["shape"])
        start, end = info["data_offsets"]
        numel = math.prod(shape)
        if end < start or end - start != numel * SAFETENSORS_DTYPES[info["dtype"]][1] or end > data_len:
            raise _bad(p, f"tensor {name!r} ({info['dtype']} {list(shape)}) claims bytes {start}..{end} of a "
                          f"{data_len}-byte data section: truncated or corrupt")
        end_max = max(end_max, end)
        out[name] = TensorInfo(info["dtype"], shape, start, end)
    if end_max != data_len:
        raise _bad(p, f"the header describes {end_max} bytes of tensor data but the file holds {data_len}: "
                      "corrupt or padded")
    return out, n


def read_safetensors_checked(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None,
                             check: Callable[[dict[str, TensorInfo]], None] | None = None,
                             finite: bool = True) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, with the header checked (:func:`parse_safetensors_header`,
    then ``check(header)``, e.g. shapes against a model) before any tensor byte is read; with
    ``finite``, every floating tensor must hold no NaN or infinity."""
    fd, size = open_regular(path, "steerer.safetensors", root=root)
    try:
        header, n = parse_safetensors_header(fd, size, path)
        if check is not None:
            check(header)
        os.lseek(fd, 0, os.SEEK_SET)
        blob = _read_exact(fd, size, "steerer.safetensors", path)
    except OSError as e:
        if isinstance(e, PersistenceError):
            raise
        raise PersistenceError(describe_os_error(Path(path), e, "read")) from e
    finally:
        os.close(fd)
    try:
        tensors = load_bytes(blob)
    except Exception as e:
        raise PersistenceError(f"{path} is not a readable safetensors file ({e}); save the steerer again.") from e
    if finite:
        from .errors import NonFiniteError

        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"{path}: tensor {name!r} holds NaN or infinite values; the steerer is corrupt "
                                     "(or was trained into a divergence). Fit it again and save it.")
    return tensors


def read_steerer_dir(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None,
                     check: Callable[[dict[str, Any], dict[str, TensorInfo]], None] | None = None,
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read ``steerer.json`` and ``steerer.safetensors`` from a saved folder.

    ``steerer.json`` is read bounded (:data:`MAX_META_BYTES`) and strictly (no NaN / Infinity,
    no duplicate keys); ``check(meta, header)`` sees the tensors' header before any tensor is
    read. ``root`` (default: the folder itself, symlinks resolved) is where symlinks may point.
    """
    path = check_path(path, "steerer folder")
    refuse_unsafe(path)
    if not path.is_dir():
        raise PersistenceError(f"No saved steerer at {path}: expected a folder written by save_pretrained.")
    root = os.path.realpath(root if root is not None else path)
    meta_p, tens_p = path / META_FILE, path / TENSORS_FILE
    for p in (meta_p, tens_p):
        if not os.path.lexists(p):
            others = sorted(x.name for x in path.iterdir())
            bad = [x for x in others if Path(x).suffix.lower() in UNSAFE_SUFFIXES]
            hint = f" It holds pickle-based files {bad}, which steerlib refuses to load." if bad else ""
            raise PersistenceError(f"{path} is missing {p.name} (found {others}).{hint} Save with save_pretrained.")
    meta = read_json_file(meta_p, META_FILE, root=root)
    if not isinstance(meta, dict):
        raise PersistenceError(
            f"{meta_p} holds a JSON {type(meta).__name__}, not the metadata object save_pretrained writes; "
            "the folder is corrupt, save the steerer again."
        )
    tensors = read_safetensors_checked(tens_p, root=root,
                                       check=None if check is None else (lambda header: check(meta, header)))
    return meta, tensors


# ---------------------------------------------------------------------- writing -------------
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)`` through libc; False when the OS or file system lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)):
        return False
    raise OSError(code, os.strerror(code), str(dst))


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``); False where unavailable."""
    return _renameat2(a, b, RENAME_EXCHANGE)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def save_lock(target: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``target`` (``fcntl.flock``, not blocking) while saving to it.

    A second saver raises :class:`ConcurrentWriteError`. The lock file is removed on release; a
    process that opened it before the removal sees another inode and tries again, so two savers
    can never both believe they hold it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, documented
        yield
        return
    lock = target.parent / f".{target.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), umask_mode("file"))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConcurrentWriteError(
                f"Another process is saving to {target} right now (it holds {lock}); nothing was written. Wait for "
                "it to finish and save again, or save to another path.") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _clean_stale(target: Path) -> None:
    """Remove temporary folders a killed saver left beside ``target`` (called under the lock)."""
    for p in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def _write_files(tmp: Path, files: Mapping[str, Any]) -> None:
    for name, content in files.items():
        p = tmp / name
        if name.endswith(".safetensors"):
            tensors = {k: v.detach().cpu().contiguous() for k, v in content.items()}
            save_file(tensors, str(p))
        else:
            if name.endswith(".json"):
                try:
                    data = (json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
                            + "\n").encode("utf-8")
                except ValueError as e:  # NaN / infinity (allow_nan=False) or a lone surrogate
                    from .errors import NonFiniteError

                    cls = NonFiniteError if "JSON compliant" in str(e) else PersistenceError
                    raise cls(f"Cannot write {name}: its content holds a value JSON cannot store exactly ({e}); "
                              "a NaN or infinite number in the steerer's state means it is broken (fit it again), "
                              "an invalid string (a lone surrogate) must be fixed in the parameter that holds it.") from e
            elif isinstance(content, bytes):
                data = content
            else:
                data = str(content).encode("utf-8")
            with open(p, "wb") as f:
                f.write(data)
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(p, umask_mode("file"))


def write_dir_atomic(target: str | os.PathLike[str], files: Mapping[str, bytes | dict[str, Any] | dict[str, torch.Tensor]],
                     *, overwrite: bool = False) -> Path:
    """Write a folder of files so that a crash never leaves it half-written or missing.

    ``files`` maps file names to bytes, a JSON-able dict (``*.json``) or tensors (``*.safetensors``).
    Everything is written (and fsync-ed) into a temporary sibling folder, which then replaces
    ``target`` in one ``renameat2(RENAME_EXCHANGE)`` (see the module docstring for the fallback).
    An existing ``target`` is kept unless ``overwrite=True``. Errors are :class:`PersistenceError` s.
    """
    target = check_path(target, "folder to save")
    with writing(target, "save to"):
        if target.is_symlink():
            if not target.exists():
                raise PersistenceError(f"{target} is a symlink to {os.readlink(target)!r}, which does not exist; "
                                       "remove the link or give another path.")
            target = Path(os.path.realpath(target))
        target.parent.mkdir(parents=True, exist_ok=True)
        with save_lock(target):
            _clean_stale(target)
            exists = os.path.lexists(target)
            if exists and not overwrite:
                raise PersistenceError(f"{target} already exists; pass overwrite=True to replace it, or choose "
                                       "another path.")
            if exists and not target.is_dir():
                raise PersistenceError(f"{target} exists and is not a folder; choose another path.")
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
            try:
                _write_files(tmp, files)
                os.chmod(tmp, umask_mode("dir"))
                _fsync_dir(tmp)
                if exists:
                    _replace_dir(tmp, target)
                elif not _renameat2(tmp, target, RENAME_NOREPLACE):
                    if os.path.lexists(target):  # pragma: no cover - appeared since the check, under our lock
                        raise PersistenceError(f"{target} appeared while saving; choose another path.")
                    os.rename(tmp, target)
                _fsync_dir(target.parent)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # the old folder after an exchange, or a failed write
    return target


def _replace_dir(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``; afterwards ``new`` holds the old folder (removed by the caller)."""
    if exchange(new, target):
        return
    # Fallback without an atomic exchange: two renames (the documented window between them).
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)  # put the previous folder back
        raise
    os.replace(old, new)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file via a temporary file and a rename (OS errors as :class:`PersistenceError`)."""
    with writing(path) as path:
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
