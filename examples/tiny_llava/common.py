"""Shared pieces of the tiny-LLaVA scripts: COCO128 labels, the seeded split, prompts, vision features."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from steerlib.data.loaders.pope import POPE_QUESTION
from steerlib.errors import DataFileError
from steerlib.zoo.tiny_llava import pool_patch_grid

DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco128-train2017"
SPLIT_SEED = 0
N_HELD_OUT = 32


@dataclass(frozen=True)
class Box:
    cls: int
    cx: float
    cy: float
    w: float
    h: float


@dataclass(frozen=True)
class LabelledImage:
    id: str
    path: Path
    boxes: tuple[Box, ...]

    @property
    def classes(self) -> frozenset[int]:
        return frozenset(b.cls for b in self.boxes)


def question(name: str) -> str:
    """POPE's wording: "Is there a {name} in the image?" ("an" before a vowel)."""
    return POPE_QUESTION.format(article="an" if name[:1].lower() in "aeiou" else "a", name=name)


def load_coco128(root: str | Path) -> tuple[list[str], list[LabelledImage]]:
    """Class names and every image with its YOLO boxes (an image without boxes has none)."""
    root = Path(root).resolve()
    if not (root / "classes.txt").is_file():
        raise DataFileError(f"{root} is not the coco128 folder (no classes.txt); pass --data <path>.")
    names = [s.strip() for s in (root / "classes.txt").read_text().splitlines() if s.strip()]
    out = []
    for img in sorted((root / "images").glob("*.jpg")):
        lab = root / "labels" / f"{img.stem}.txt"
        boxes = []
        if lab.is_file():
            for line in lab.read_text().splitlines():
                p = line.split()
                if len(p) >= 5:
                    boxes.append(Box(int(p[0]), *(float(x) for x in p[1:5])))
        out.append(LabelledImage(img.stem, img, tuple(boxes)))
    return names, out


def split_images(images: list[LabelledImage], n_held_out: int = N_HELD_OUT,
                 seed: int = SPLIT_SEED) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(train, held-out): a seeded sample of ``n_held_out`` images with at least one object is held out."""
    labelled = [im for im in images if im.boxes]
    held = set(random.Random(seed).sample([im.id for im in labelled], n_held_out))
    return [im for im in labelled if im.id not in held], [im for im in labelled if im.id in held]


def class_stats(images: list[LabelledImage]) -> tuple[Counter[int], dict[int, Counter[int]]]:
    """Per-class image frequency and co-occurrence counts."""
    freq: Counter[int] = Counter()
    co: dict[int, Counter[int]] = {}
    for im in images:
        cls = im.classes
        freq.update(cls)
        for a in cls:
            co.setdefault(a, Counter()).update(b for b in cls if b != a)
    return freq, co


@torch.no_grad()
def pooled_features(model: torch.nn.Module, processor: object, images: list[Image.Image],
                    batch_size: int = 8) -> Float[Tensor, "n 16 384"]:
    """What the pooled projector sees: vision ``hidden_states[-1]``, CLS dropped, grid pooled to 4x4 (fp32)."""
    out = []
    for s in range(0, len(images), batch_size):
        pix = processor.image_processor(images[s:s + batch_size], return_tensors="pt")["pixel_values"]
        hs = model.model.vision_tower(pix, output_hidden_states=True).hidden_states[-1][:, 1:]
        out.append(pool_patch_grid(hs, model.config.image_pool_size))
    return torch.cat(out)
