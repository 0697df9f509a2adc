"""File-reading helpers shared by the loaders: every failure is a DataFileError naming file and line."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ...errors import DataFileError

__all__ = ["require_file", "require_dir", "read_text_lines", "iter_json_records", "read_json",
           "iter_csv_rows", "require_keys", "check_image"]


def require_file(path: str | Path, what: str) -> Path:
    """The path, or a DataFileError saying which file is missing."""
    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"{what} not found: {p}. Check the path (and that the dataset is downloaded there).")
    return p


def require_dir(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise DataFileError(f"{what} folder not found: {p}. Check the path (and that the dataset is downloaded there).")
    return p


def _read_text(path: Path) -> str:
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
        data = json.loads(text)
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
