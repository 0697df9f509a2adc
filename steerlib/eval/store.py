"""The append-only, content-addressed store of a :func:`~steerlib.eval.compare.compare` run: file
names, the JSON-lines cache, its consolidation, the manifest, the folder lock and the fingerprints
that key it.

Everything lives in the run's ``out_dir``:

* ``generations.jsonl`` (:data:`CACHE_FILE`): one generation a line, keyed by :data:`GEN_KEY`;
* ``scores.jsonl`` (:data:`SCORES_FILE`): judge probabilities and perplexities, keyed by :data:`SCORE_KEY`;
* ``generations.rank<r>.jsonl`` / ``scores.rank<r>.jsonl`` (:func:`part_file`): what rank ``r`` of a
  ``torchrun`` run appended, merged into the files above by rank 0 (and by any later run);
* ``generations.rejected.jsonl`` / ``scores.rejected.jsonl`` (:func:`rejected_file`): lines set
  aside by a consolidation (unreadable, failing their checksum, or made for an item whose content
  has changed since); kept, never read back;
* ``steerers/<method>-L<layer>/`` (:data:`STEERERS_DIR`): fitted steerers;
* ``run.json`` (:data:`RUN_FILE`): the manifest, read by :func:`read_manifest`; it lists every
  file compare wrote (``written``), the only ones ``resume=False`` deletes;
* ``compare.lock`` (:data:`LOCK_FILE`): held (``fcntl.flock``) while a run uses the folder.

**Content addressing.** A generation's key is ``(method, config, id)``, where ``config`` holds a
fingerprint of the fitted steerer *and of the model* (:func:`model_fingerprint`: config, dtype
and a sample of every weight's bytes) and the generation settings; each record also carries
``item``, the digest of the item's content (:func:`item_digest`: prompt, completions, behaviour,
image bytes), and ``sha``, a checksum of the whole record (:func:`seal`). Loading drops a record
whose checksum fails (a line edited by hand, a torn write) and :func:`consolidate` sets aside the
records of an item whose content changed, so the runner regenerates both and says how many.
A score record carries ``gen``, the checksum of the generation it scored.

Lines are appended with ``flush`` + ``fsync``; a truncated last line (a run killed mid-write) is cut
off on load and a key seen twice counts once, so a killed run loses and duplicates nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import CompatibilityError, InputError, PersistenceError
from ..persistence import write_text_atomic

__all__ = [
    "CACHE_FILE",
    "CHECKSUM_FIELD",
    "FORMAT",
    "FORMAT_VERSION",
    "GEN_KEY",
    "LOCK_FILE",
    "PPL_SCORER",
    "RUN_FILE",
    "SCORES_FILE",
    "SCORE_KEY",
    "STEERERS_DIR",
    "JsonlCache",
    "StoreCheck",
    "consolidate",
    "folder_lock",
    "item_digest",
    "model_fingerprint",
    "part_file",
    "read_manifest",
    "record_checksum",
    "rejected_file",
    "seal",
    "write_manifest",
]

CACHE_FILE = "generations.jsonl"
SCORES_FILE = "scores.jsonl"
RUN_FILE = "run.json"
STEERERS_DIR = "steerers"
LOCK_FILE = "compare.lock"
FORMAT = "steerlib-compare"
#: 2: records carry ``sha`` (checksum) and ``item`` (content digest); the manifest lists ``written``.
FORMAT_VERSION = 2
#: The key of a generation record and of a score record.
GEN_KEY = ("method", "config", "id")
SCORE_KEY = ("scorer", "method", "config", "id")
#: The scorer name of perplexity records.
PPL_SCORER = "ppl"
#: The field holding a record's checksum.
CHECKSUM_FIELD = "sha"
#: Elements sampled from each weight tensor by :func:`model_fingerprint`.
FINGERPRINT_SAMPLES = 64


def part_file(name: str, rank: int) -> str:
    """The file rank ``rank`` appends to instead of ``name``: ``generations.rank3.jsonl``."""
    stem, dot, ext = name.partition(".")
    return f"{stem}.rank{int(rank)}{dot}{ext}"


def rejected_file(name: str) -> str:
    """Where :func:`consolidate` sets aside the lines of ``name`` it does not keep."""
    stem, dot, ext = name.partition(".")
    return f"{stem}.rejected{dot}{ext}"


def _part_rank(name: str, fname: str) -> int | None:
    stem, dot, ext = name.partition(".")
    m = re.fullmatch(re.escape(stem) + r"\.rank(\d+)" + re.escape(dot + ext), fname)
    return int(m.group(1)) if m else None


def _canon(rec: Mapping[str, Any]) -> bytes:
    return json.dumps(rec, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def record_checksum(rec: Mapping[str, Any]) -> str:
    """SHA-256 (first 32 hex digits) of the record's canonical JSON without its ``sha`` field."""
    return hashlib.sha256(_canon({k: v for k, v in rec.items() if k != CHECKSUM_FIELD})).hexdigest()[:32]


def seal(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The record with its checksum (``sha``) set."""
    body = {k: v for k, v in rec.items() if k != CHECKSUM_FIELD}
    return {**body, CHECKSUM_FIELD: record_checksum(body)}


#: A record check: the reason a record is unusable, or None.
Validator = Callable[[Mapping[str, Any]], "str | None"]


class JsonlCache:
    """Append-only JSON-lines records, unique by ``key_fields``.

    Loading ignores a truncated last line (and, with ``repair=True``, cuts it off the file so
    that later appends start on a fresh line), skips unreadable lines (``bad_lines``) and, with
    ``checksum=True``, records whose ``sha`` is missing or wrong or that ``validate`` refuses
    (``invalid``), and keeps the first record of each key (``duplicates`` counts the others).
    The raw lines dropped are in ``rejected``. :meth:`append` seals and writes only new keys, to
    ``write_to`` when given (a rank's part of the store) else to ``path``, then flushes and fsyncs.
    """

    def __init__(self, path: str | os.PathLike[str], key_fields: Sequence[str], *, repair: bool = True,
                 checksum: bool = True, validate: Validator | None = None,
                 write_to: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.checksum = checksum
        self.validate = validate
        self.write_to = Path(write_to) if write_to is not None else self.path
        self.records: dict[tuple[str, ...], dict[str, Any]] = {}
        self.truncated = False
        self.bad_lines = 0
        self.invalid = 0
        self.duplicates = 0
        self.rejected: list[bytes] = []
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
                if not isinstance(rec, dict):
                    raise TypeError("not an object")
                key = self.key(rec)
            except (ValueError, KeyError, TypeError, RecursionError):
                self.bad_lines += 1
                self.rejected.append(line)
                continue
            if self.checksum and (rec.get(CHECKSUM_FIELD) != record_checksum(rec)
                                  or (self.validate is not None and self.validate(rec) is not None)):
                self.invalid += 1
                self.rejected.append(line)
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

    def append(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Append the records whose key is new (sealed with their checksum); returns how many were written."""
        new: list[dict[str, Any]] = []
        seen: set[tuple[str, ...]] = set()
        for rec in records:
            k = self.key(rec)
            if k in self.records or k in seen:
                continue
            seen.add(k)
            new.append(seal(rec) if self.checksum else dict(rec))
        if not new:
            return 0
        lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in new)
        _append_text(self.write_to, lines)
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


@dataclass
class StoreCheck:
    """What :func:`consolidate` found in one file of the store (and its rank parts)."""

    file: str
    records: int = 0
    truncated: int = 0
    bad_lines: int = 0
    invalid: int = 0
    duplicates: int = 0
    stale: int = 0
    parts: int = 0
    merged: int = 0

    @property
    def dropped(self) -> int:
        """Records not used: unreadable, failing their checksum or check, or of changed items."""
        return self.bad_lines + self.invalid + self.stale

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str | None:
        """One line saying what was repaired, or None when the file was clean."""
        bits = [f"{n} {what}" for n, what in (
            (self.invalid, "record(s) failing their checksum or check"), (self.bad_lines, "unreadable line(s)"),
            (self.stale, "record(s) of items whose content changed"), (self.duplicates, "duplicate key(s)"),
            (self.truncated, "truncated last line(s)"), (self.merged, f"record(s) merged from {self.parts} rank part(s)"),
        ) if n]
        if not bits:
            return None
        aside = f"; set aside in {rejected_file(self.file)}, regenerated if needed" if self.dropped else ""
        return f"{self.file}: {', '.join(bits)}{aside}"


def consolidate(out: str | os.PathLike[str], name: str, key_fields: Sequence[str], *,
                stale: Callable[[Mapping[str, Any]], bool] | None = None,
                validate: Validator | None = None) -> tuple[JsonlCache, StoreCheck]:
    """Load ``out/name``, merge the rank parts of it into it, and leave it holding each key once.

    The parts (``name`` written by ranks of an earlier run, whatever its world size) are merged
    in rank order; records failing their checksum or ``validate``, unreadable lines and records
    ``stale`` says are outdated are appended to :func:`rejected_file` (nothing is deleted); when
    anything changed, ``name`` is rewritten atomically with the kept records and the parts are
    removed afterwards (a kill in between only leaves duplicates for the next run to drop).
    Call it while holding :func:`folder_lock`.
    """
    out = Path(out)
    main = JsonlCache(out / name, key_fields, repair=True, validate=validate)
    check = StoreCheck(file=name, truncated=int(main.truncated), bad_lines=main.bad_lines, invalid=main.invalid,
                       duplicates=main.duplicates)
    kept = dict(main.records)
    aside = list(main.rejected)
    parts = sorted((r, p) for p in out.glob(part_file(name, 0).replace(".rank0", ".rank*"))
                   if (r := _part_rank(name, p.name)) is not None and p.is_file())
    for _, p in parts:
        c = JsonlCache(p, key_fields, repair=False, validate=validate)
        check.truncated += int(c.truncated)
        check.bad_lines += c.bad_lines
        check.invalid += c.invalid
        check.duplicates += c.duplicates
        aside += c.rejected
        for k, rec in c.records.items():
            if k in kept:
                check.duplicates += 1
            else:
                kept[k] = rec
                check.merged += 1
    check.parts = len(parts)
    if stale is not None:
        old = [k for k, rec in kept.items() if stale(rec)]
        check.stale = len(old)
        aside += [json.dumps(kept.pop(k), ensure_ascii=False, sort_keys=True).encode() for k in old]
    if aside:
        _append_text(out / rejected_file(name), b"".join(line.rstrip(b"\n") + b"\n" for line in aside).decode(
            "utf-8", errors="replace"))
    if parts or check.dropped or check.duplicates:
        write_text_atomic(out / name, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                                              for r in kept.values()))
        for _, p in parts:
            p.unlink(missing_ok=True)
    main.records = kept
    check.records = len(kept)
    return main, check


# ------------------------------------------------------------------------------- fingerprints
def item_digest(prompt: str, positive: str | None, negative: str | None, behavior: str,
                images: Sequence[Any]) -> str:
    """SHA-256 (first 32 hex digits) of what defines an item's generation: prompt, completions,
    behaviour and the images' bytes (a PIL image's mode, size and pixels; a file's bytes)."""
    from PIL import Image

    digests = []
    for im in images:
        if isinstance(im, Image.Image):
            h = hashlib.sha256(f"{im.mode}|{im.size}|".encode())
            h.update(im.tobytes())
        else:
            try:
                h = hashlib.sha256(Path(im).read_bytes())
            except OSError as e:
                raise InputError(f"Cannot read the image {im!r} of an evaluation item ({e}); fix the path or "
                                 "pass PIL images.") from e
        digests.append(h.hexdigest())
    payload = json.dumps([prompt, positive, negative, behavior, digests], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def model_fingerprint(module: Any, *, samples: int = FINGERPRINT_SAMPLES) -> dict[str, Any]:
    """The identity of a model's weights, cheaply: its config (without paths), the dtypes, and a
    hash of every parameter's and buffer's name, shape, dtype and ``samples`` evenly spaced
    elements' bytes (in the tensor's own dtype). Two checkpoints of one architecture, or one
    checkpoint in float32 and in bfloat16, get different ``weights``.

    Returns ``{"dtype": <the most common parameter dtype>, "weights": <hex digest>}``.
    """
    import torch

    h = hashlib.sha256()
    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        d = {k: v for k, v in cfg.to_dict().items() if k not in ("_name_or_path", "_commit_hash", "transformers_version")}
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    counts: dict[str, int] = {}
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, t in tensors:
        t = t.detach()
        counts[str(t.dtype)] = counts.get(str(t.dtype), 0) + t.numel()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel() == 0 or t.device.type == "meta":
            continue
        flat = t.reshape(-1)
        n = flat.numel()
        k = min(samples, n)  # evenly spaced, in integers (a float linspace rounds past the end for big tensors)
        idx = torch.arange(k, dtype=torch.int64, device=flat.device) * (n - 1) // max(k - 1, 1)
        part = flat[idx].cpu().contiguous()
        if part.dtype == torch.bool:
            part = part.to(torch.uint8)
        h.update(part.view(torch.uint8).numpy().tobytes())
    dtype = max(counts, key=lambda k: counts[k]) if counts else "none"
    return {"dtype": dtype.removeprefix("torch."), "weights": h.hexdigest()[:32]}


# ------------------------------------------------------------------------------- folder lock
@contextmanager
def folder_lock(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``out/compare.lock`` exclusively (``fcntl.flock``, released by the OS if the process
    dies); a second run on the folder is refused at once with a :class:`PersistenceError` naming
    the holder. On systems without ``fcntl`` no lock is taken."""
    path = Path(out) / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield path
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise PersistenceError(f"Cannot create the lock file {path} ({e}); check that the folder is writable.") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip() or "another process"
            raise PersistenceError(f"{out} is in use by another compare run ({holder}); wait for it to finish, "
                                   "or give this run another output folder.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


# ------------------------------------------------------------------------------- manifest
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
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise PersistenceError(f"{path} is not valid JSON ({e}); delete it and rerun compare (the caches are kept).") from e
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise PersistenceError(f"{path} was not written by steerlib compare; choose another output folder.")
    if man.get("format_version", 0) > FORMAT_VERSION:
        raise CompatibilityError(f"{path} has format version {man.get('format_version')}; this steerlib reads "
                                 f"<= {FORMAT_VERSION}. Upgrade steerlib.")
    return man
