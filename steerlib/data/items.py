"""The contrastive data model: one input with a desired and an undesired completion."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from PIL import Image

from ..errors import DataError, DataFileError, InputError
from .chat import Prompt, as_prompt, is_messages

ImageLike = Union[Image.Image, str, Path]


@dataclass(frozen=True)
class ContrastiveItem:
    """One steering example.

    ``prompt`` is the user turn: a string, or a conversation (a list of chat messages
    ``[{"role": ..., "content": ...}]`` ending with the user's, kept as a
    :class:`~steerlib.data.chat.Chat` and rendered with the model's chat template); ``positive`` / ``negative`` are the desired and undesired
    assistant completions (teacher-forced to compute the P2S vector); ``behavior`` is the
    behaviour label (``"harmful"``, ``"legal"``, ``"benign"``, ``"yes"``, ...); ``images``
    are PIL images or paths; ``id`` is stable across runs (derived from the content when not
    given) and keys caches.
    """

    prompt: Prompt
    positive: str | None = None
    negative: str | None = None
    behavior: str = "default"
    images: tuple[ImageLike, ...] = ()
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "prompt", as_prompt(self.prompt, "ContrastiveItem.prompt"))
        except InputError as e:
            raise DataError(str(e)) from None
        if not isinstance(self.images, tuple):
            imgs = self.images
            if imgs is None:
                imgs = ()
            elif isinstance(imgs, (Image.Image, str, Path)):
                imgs = (imgs,)
            object.__setattr__(self, "images", tuple(imgs))
        if not self.id:
            object.__setattr__(self, "id", self.content_hash()[:16])

    @property
    def has_completions(self) -> bool:
        return self.positive is not None and self.negative is not None

    def content_hash(self) -> str:
        """SHA-256 of everything that defines the item (images by path or pixel bytes)."""
        h = hashlib.sha256()
        imgs = []
        for im in self.images:
            if isinstance(im, Image.Image):
                imgs.append(hashlib.sha256(im.tobytes()).hexdigest())
            else:
                imgs.append(str(im))
        payload = [self.prompt, self.positive, self.negative, self.behavior, imgs]
        h.update(json.dumps(payload, ensure_ascii=False).encode())
        return h.hexdigest()

    @classmethod
    def from_records(cls, records: Iterable[Any], *, prompt: str = "prompt", positive: str = "positive",
                     negative: str = "negative", behavior: str = "behavior",
                     where: str = "records") -> list["ContrastiveItem"]:
        """Records (mappings, e.g. ``df.to_dict("records")`` or a ``datasets.Dataset``'s rows) to items;
        the keyword arguments name the columns. For prompts without completions use
        :func:`steerlib.data.items_from_records` with a template.

        Raises:
            DataError: a record is not a mapping, lacks a column, or its prompt is not a string.
        """
        from collections.abc import Mapping

        out: list[ContrastiveItem] = []
        for i, rec in enumerate(records):
            if not isinstance(rec, Mapping):
                raise DataError(f"{where}: record {i} is a {type(rec).__name__}, not a mapping of column -> value "
                                f"(give dicts with {prompt!r}, {positive!r}, {negative!r}, {behavior!r}).")
            missing = [c for c in (prompt, positive, negative, behavior) if rec.get(c) in (None, "")]
            if missing:
                raise DataError(f"{where}: record {i} has no {', '.join(repr(c) for c in missing)} "
                                f"(columns: {sorted(map(str, rec))}); or give only prompts plus a template "
                                "(steerlib.data.items_from_records(..., template='harmful'|'advice'|'benign')).")
            if not isinstance(rec[prompt], str) and not is_messages(rec[prompt]):
                raise DataError(f"{where}: record {i}'s {prompt!r} is a {type(rec[prompt]).__name__}, not a string "
                                "or a list of chat messages.")
            out.append(cls(prompt=rec[prompt], positive=str(rec[positive]), negative=str(rec[negative]),
                           behavior=str(rec[behavior])))
        return out

    def with_(self, **changes: Any) -> "ContrastiveItem":
        """A copy with some fields changed (the id is recomputed unless given)."""
        d = dict(prompt=self.prompt, positive=self.positive, negative=self.negative,
                 behavior=self.behavior, images=self.images, id="", meta=dict(self.meta))
        d.update(changes)
        return ContrastiveItem(**d)


def stable_seed(key: str) -> int:
    """A 63-bit seed from a string, the same in every process (sha256, not Python's salted hash)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def items_hash(items: Sequence[ContrastiveItem]) -> str:
    """One hash for a training set (order-sensitive), stored in saved steerers."""
    h = hashlib.sha256()
    for it in items:
        h.update(it.content_hash().encode())
    return h.hexdigest()


def check_items(items: Iterable[ContrastiveItem], *, need_completions: bool = False,
                min_behaviors: int = 1, what: str = "training set") -> list[ContrastiveItem]:
    """Validate a list of items, with errors that say what to fix."""
    items = list(items)
    if not items:
        raise DataError(f"The {what} is empty: pass at least one ContrastiveItem.")
    for i, it in enumerate(items):
        if not isinstance(it, ContrastiveItem):
            raise DataError(f"Item {i} of the {what} is a {type(it).__name__}, not a ContrastiveItem.")
        if need_completions and not it.has_completions:
            raise DataError(
                f"Item {i} (id {it.id!r}) of the {what} has no positive/negative completion; "
                "this method teacher-forces both. Build items with positive= and negative= "
                "(for example with a behaviour template from steerlib.data.templates)."
            )
    n_beh = len({it.behavior for it in items})
    if n_beh < min_behaviors:
        raise DataError(
            f"The {what} has {n_beh} behaviour label(s) but at least {min_behaviors} are needed; "
            "add items of the other class(es)."
        )
    return items


def load_image(image: ImageLike) -> Image.Image:
    """Open an image (path or PIL) as RGB, with a clear error for missing or corrupt files."""
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    path = Path(image)
    if path.is_dir():
        raise DataFileError(f"{path} is a folder, not an image file; give the path of the image itself.")
    if not path.is_file():
        raise DataFileError(f"Image file not found: {path}. Check the image folder or the path in the data file.")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except Exception as e:  # PIL raises many types for truncated or corrupt files
        raise DataFileError(f"Cannot read image {path}: {e}. The file is truncated or not an image; replace it.") from e
