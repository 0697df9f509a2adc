"""The append-only store of a :func:`~steerlib.eval.compare.compare` run: file names, the JSON-lines
cache and the manifest.

Everything lives in the run's ``out_dir``:

* ``generations.jsonl`` (:data:`CACHE_FILE`): one generation a line, keyed by :data:`GEN_KEY`;
* ``scores.jsonl`` (:data:`SCORES_FILE`): judge probabilities and perplexities, keyed by :data:`SCORE_KEY`;
* ``steerers/<method>-L<layer>/`` (:data:`STEERERS_DIR`): fitted steerers;
* ``run.json`` (:data:`RUN_FILE`): the manifest, read by :func:`read_manifest`.

Lines are appended with ``flush`` + ``fsync``; a truncated last line (a run killed mid-write) is cut
off on load and a key seen twice counts once, so a killed run loses and duplicates nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import CompatibilityError, PersistenceError
from ..persistence import write_text_atomic

__all__ = [
    "CACHE_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "GEN_KEY",
    "PPL_SCORER",
    "RUN_FILE",
    "SCORES_FILE",
    "SCORE_KEY",
    "STEERERS_DIR",
    "JsonlCache",
    "read_manifest",
    "write_manifest",
]

CACHE_FILE = "generations.jsonl"
SCORES_FILE = "scores.jsonl"
RUN_FILE = "run.json"
STEERERS_DIR = "steerers"
FORMAT = "steerlib-compare"
FORMAT_VERSION = 1
#: The key of a generation record and of a score record.
GEN_KEY = ("method", "config", "id")
SCORE_KEY = ("scorer", "method", "config", "id")
#: The scorer name of perplexity records.
PPL_SCORER = "ppl"


class JsonlCache:
    """Append-only JSON-lines records, unique by ``key_fields``.

    Loading ignores a truncated last line (and, with ``repair=True``, cuts it off the file so
    that later appends start on a fresh line), skips unreadable lines, and keeps the first
    record of each key. :meth:`append` writes only new keys, then flushes and fsyncs.
    """

    def __init__(self, path: str | os.PathLike[str], key_fields: Sequence[str], *, repair: bool = True) -> None:
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.records: dict[tuple[str, ...], dict[str, Any]] = {}
        self.truncated = False
        self.bad_lines = 0
        self.duplicates = 0
        self._load(repair)

    def key(self, rec: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(str(rec[k]) for k in self.key_fields)

    def _load(self, repair: bool) -> None:
        if not self.path.exists():
            return
        if not self.path.is_file():
            raise PersistenceError(f"{self.path} is not a file; remove it or choose another output folder.")
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            data = data[:cut]
            self.truncated = True
            if repair:
                os.truncate(self.path, cut)
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = self.key(rec)
            except (ValueError, KeyError, TypeError, RecursionError):
                self.bad_lines += 1
                continue
            if key in self.records:
                self.duplicates += 1
                continue
            self.records[key] = rec

    def __contains__(self, key: tuple[str, ...]) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: tuple[str, ...]) -> dict[str, Any] | None:
        return self.records.get(key)

    def append(self, records: Sequence[dict[str, Any]]) -> int:
        """Append the records whose key is new; returns how many were written."""
        new: list[dict[str, Any]] = []
        seen: set[tuple[str, ...]] = set()
        for rec in records:
            k = self.key(rec)
            if k in self.records or k in seen:
                continue
            seen.add(k)
            new.append(rec)
        if not new:
            return 0
        lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in new)
        _append_text(self.path, lines)
        for rec in new:
            self.records[self.key(rec)] = rec
        return len(new)


def _append_text(path: Path, text: str) -> None:
    """Append ``text`` and make it durable (flush + fsync) before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_manifest(out: str | os.PathLike[str], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``run.json`` atomically, ``format`` and ``format_version`` first; returns what was written."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    write_text_atomic(Path(out) / RUN_FILE, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return payload


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the run in ``out`` (``run.json``), checked for format and version."""
    path = Path(out) / RUN_FILE
    if not path.is_file():
        raise PersistenceError(f"No {RUN_FILE} in {out}: it is not a folder written by steerlib compare. "
                               "Run compare with out_dir set to it first.")
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:
        raise PersistenceError(f"{path} is not valid JSON ({e}); delete it and rerun compare (the caches are kept).") from e
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise PersistenceError(f"{path} was not written by steerlib compare; choose another output folder.")
    if man.get("format_version", 0) > FORMAT_VERSION:
        raise CompatibilityError(f"{path} has format version {man.get('format_version')}; this steerlib reads "
                                 f"<= {FORMAT_VERSION}. Upgrade steerlib.")
    return man
