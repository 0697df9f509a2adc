"""File-reading helpers shared by the loaders: every failure is a DataFileError naming file and line."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any

from ...errors import DataFileError, OutsideFolderError

__all__ = ["require_file", "require_dir", "read_text_lines", "iter_json_records", "read_json",
           "iter_csv_rows", "require_keys", "check_image", "confined", "check_unique"]


def _special(p: Path) -> str | None:
    """What ``p`` is when it exists but is not a regular file or folder (a FIFO, a device, ...)."""
    try:
        mode = os.stat(p).st_mode
    except (OSError, ValueError):
        return None
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None


def require_file(path: str | Path, what: str) -> Path:
    """The path, or a DataFileError saying which file is missing (or that it is a special file)."""
    p = Path(path)
    if "\x00" in str(p):
        raise DataFileError(f"{what} path {str(p)!r} contains a NUL byte; remove it.")
    kind = _special(p)
    if kind is not None:
        raise DataFileError(f"{what} {p} is {kind}, not a regular file; give the data file itself.")
    if not p.is_file():
        raise DataFileError(f"{what} not found: {p}. Check the path (and that the dataset is downloaded there).")
    return p


def confined(base: Path, name: str, data_file: Path | str, line: int | str, what: str = "image") -> Path:
    """``base / name`` for a file reference ``name`` read from ``data_file``, refused
    (:class:`~steerlib.errors.OutsideFolderError`) unless it stays inside ``base``: no absolute path,
    no ``..`` leaving it, no symlink (of the file or of a folder on the way) pointing outside.

    The reference need not exist (images are opened later); when it does, its real path is checked."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise DataFileError(f"{data_file}:{line}: {what} reference {name!r} is not a usable file name.")
    where = f"{data_file}:{line}"
    fix = f"File references must be relative paths inside {base}; copy the file there and name it relative to it."
    if PurePath(name).is_absolute() or name.startswith("~") or "\\" in name:
        raise OutsideFolderError(f"{where}: {what} {name!r} is an absolute path (or not a plain relative path), "
                                 f"outside the folder {base}; steerlib refuses to read it. {fix}")
    full = base / name
    lexical = os.path.normpath(os.path.join(os.path.abspath(base), name))
    root = os.path.normpath(os.path.abspath(base))
    if not _inside(lexical, root):
        raise OutsideFolderError(f"{where}: {what} {name!r} leaves the folder {base} (through '..'); steerlib "
                                 f"refuses to read it. {fix}")
    real_root = os.path.realpath(base)
    if os.path.lexists(full) and not _inside(os.path.realpath(full), real_root):
        raise OutsideFolderError(f"{where}: {what} {name!r} is (or goes through) a symlink to "
                                 f"{os.path.realpath(full)}, outside the folder {base}; steerlib refuses to read it. "
                                 f"{fix}")
    return full


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_unique(seen: dict[str, int | str], key: str, path: Path, line: int | str, what: str) -> None:
    """Record ``key`` (an item id); a second occurrence is a DataFileError naming both lines."""
    if key in seen:
        raise DataFileError(f"{path}:{line}: duplicate {what} {key!r} (first at {seen[key]}); ids must be unique, "
                            "or one item would silently replace the other. Remove or renumber the duplicate.")
    seen[key] = line


def require_dir(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise DataFileError(f"{what} folder not found: {p}. Check the path (and that the dataset is downloaded there).")
    return p


def _read_text(path: Path) -> str:
    kind = _special(path)
    if kind is not None:
        raise DataFileError(f"{path} is {kind}, not a regular file; give the data file itself.")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path}: not UTF-8 text ({e}). Re-save the file as UTF-8.") from e
    except OSError as e:
        raise DataFileError(f"Cannot read {path}: {e}.") from e


def read_text_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, line without newline) for every line of a text file."""
    return [(i, line.rstrip("\r")) for i, line in enumerate(_read_text(path).split("\n"), start=1)]


def iter_json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Records of a JSON-lines file (one object a line; blank lines skipped), with line numbers.

    A file holding one top-level JSON array of objects is accepted too (the "line" is then the
    1-based index in the array).
    """
    text = _read_text(path)
    if text.lstrip().startswith("["):
        data = _loads(text, path, None)
        for i, rec in enumerate(data, start=1):
            if not isinstance(rec, dict):
                raise DataFileError(f"{path}: entry {i} is a {type(rec).__name__}, expected a JSON object.")
            yield i, rec
        return
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        rec = _loads(line, path, lineno)
        if not isinstance(rec, dict):
            raise DataFileError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}.")
        yield lineno, rec


def _loads(text: str, path: Path, lineno: int | None) -> Any:
    """``json.loads`` with every failure as a DataFileError naming the file and line.

    ``lineno`` is the line of a JSON-lines record (None: ``text`` is the whole file). Besides
    syntax errors this catches what ``json`` raises outside ``JSONDecodeError``: integers too
    long to convert (ValueError), nesting too deep (RecursionError), and lone UTF-16 surrogate
    escapes such as ``"\ud800"``, which decode to strings no tokenizer or hash can encode.
    """
    what = "malformed JSON line" if lineno is not None else "malformed JSON"
    fix = ("Each line must be one JSON object; fix or remove that line." if lineno is not None
           else "Fix or re-download the file.")
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as e:
        where = f"{path}:{lineno}" if lineno is not None else str(path)
        raise DataFileError(f"{where}: a JSON object has the key {e.args[0]!r} twice; the last one would silently "
                            "win. Remove the duplicate (ids and fields must be unique).") from e
    except json.JSONDecodeError as e:
        line = lineno if lineno is not None else e.lineno
        raise DataFileError(f"{path}:{line}: {what} ({e.msg}). {fix}") from e
    except (ValueError, RecursionError) as e:
        where = f"{path}:{lineno}" if lineno is not None else str(path)
        raise DataFileError(f"{where}: {what} ({type(e).__name__}: {e}). {fix}") from e
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        where = f"{path}:{lineno}" if lineno is not None else str(path)
        raise DataFileError(
            f"{where}: the JSON holds an invalid Unicode escape (a lone surrogate such as \\ud800). {fix}"
        ) from e
    except (ValueError, RecursionError) as e:  # pragma: no cover - json.loads output always re-encodes
        where = f"{path}:{lineno}" if lineno is not None else str(path)
        raise DataFileError(f"{where}: {what} ({e}). {fix}") from e
    return data


class _DuplicateKey(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def read_json(path: Path) -> Any:
    """A whole JSON file."""
    return _loads(_read_text(path), path, None)


def require_keys(rec: dict[str, Any], keys: Sequence[str], path: Path, line: int | str) -> None:
    missing = [k for k in keys if k not in rec]
    if missing:
        raise DataFileError(
            f"{path}:{line}: missing key(s) {', '.join(repr(k) for k in missing)} "
            f"(present: {', '.join(repr(k) for k in rec) or 'none'}). Each record needs {list(keys)}."
        )


def iter_csv_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with a header, as dicts, with the line number where each row starts."""
    text = _read_text(path)
    # strict: an unclosed quote is an error, not a field that silently swallows the rest of the file
    # (io.StringIO with newline="" splits lines like the file on disk: not at \x0c, \u2028, ...)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataFileError(f"{path}: empty CSV file; expected a header with {list(columns)}.") from None
    except csv.Error as e:
        raise DataFileError(f"{path}:1: malformed CSV header ({e}).") from e
    header = [h.strip() for h in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataFileError(
            f"{path}:1: CSV header lacks column(s) {missing}; found {header}. The file must have {list(columns)}."
        )
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataFileError(f"{path}:{start}: malformed CSV row ({e}). Fix the quoting on that line.") from e
        line = start
        start = reader.line_num + 1
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataFileError(
                f"{path}:{line}: CSV row has {len(row)} fields, the header has {len(header)}. "
                "Quote fields that contain commas, or fix that line."
            )
        yield line, dict(zip(header, row))


def check_image(image: Path, data_file: Path, line: int | str) -> None:
    """Raise if the image a data record points to does not exist."""
    if not image.is_file():
        raise DataFileError(
            f"{data_file}:{line}: image not found: {image}. Check the image folder, or pass "
            "check_images=False to load the questions without the images."
        )
