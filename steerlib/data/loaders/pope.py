"""POPE: the official question files, and POPE-style questions built from YOLO/COCO box labels."""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from pathlib import Path
from typing import Literal

from ...errors import DataError, DataFileError
from ..items import ContrastiveItem
from ..templates import apply_template, pope_template
from ._io import (
    check_image,
    confined,
    iter_json_records,
    read_text_lines,
    require_dir,
    require_file,
    require_keys,
)

PopeSplit = Literal["random", "popular", "adversarial"]
POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")

#: POPE's question; ``{article}`` is "a" or "an" (POPE uses "an" before a vowel).
POPE_QUESTION = "Is there {article} {name} in the image?"

_PAPER_STRIP = "Answer with just one word."

__all__ = ["POPE_SPLITS", "POPE_QUESTION", "load_pope", "build_pope_from_yolo", "read_yolo_labels"]


def _check_split(split: str) -> str:
    if split not in POPE_SPLITS:
        raise DataError(f"Unknown POPE split {split!r}; use one of {', '.join(POPE_SPLITS)}.")
    return split


def _pope_file(questions: Path, split: str | None) -> tuple[Path, str | None]:
    if questions.is_dir():
        if split is None:
            raise DataError(
                f"{questions} is a folder: pass split='random', 'popular' or 'adversarial' "
                "(or the path of one question file)."
            )
        _check_split(split)
        cand = questions / f"coco_pope_{split}.json"
        if os.path.lexists(cand):
            cand = confined(questions, cand.name, questions, "-", "question file")
        if not cand.is_file():
            found = sorted(questions.glob(f"*_pope_{split}.json*"))
            if len(found) != 1:
                raise DataFileError(
                    f"POPE question file for split {split!r} not found in {questions} "
                    f"(looked for coco_pope_{split}.json or one *_pope_{split}.json[l]). Pass the file path instead."
                )
            cand = found[0]
        return cand, split
    require_file(questions, "POPE question file")
    if split is None:
        m = re.search(r"_pope_(random|popular|adversarial)\b", questions.name)
        split = m.group(1) if m else None
    else:
        _check_split(split)
    return questions, split


def load_pope(
    questions: str | Path,
    image_dir: str | Path,
    split: str | None = None,
    *,
    check_images: bool = False,
    limit: int | None = None,
) -> list[ContrastiveItem]:
    """Load POPE in its official format: JSON lines ``{question_id, image, text, label}``.

    ``questions`` is one question file (e.g. ``coco_pope_random.json``) or the folder holding
    ``coco_pope_{split}.json`` (then ``split`` is required). The question text is the prompt
    ("Answer with just one word." is stripped, as the paper's code does); the behaviour is the
    label ("yes"/"no"); positive/negative are ``pope_completions(label)`` forced as an assistant
    prefix. Images are paths ``image_dir / image``; they must exist only if ``check_images``.
    ``meta``: dataset, split, label, question_id, image, source_file, line.
    """
    path, split = _pope_file(Path(questions), split)
    img_dir = Path(image_dir)
    if check_images:
        require_dir(img_dir, "POPE image")
    items: list[ContrastiveItem] = []
    seen: set[str] = set()
    for line, rec in iter_json_records(path):
        require_keys(rec, ("question_id", "image", "text", "label"), path, line)
        label = rec["label"]
        if not isinstance(label, str) or label.strip().lower() not in ("yes", "no"):
            raise DataFileError(f"{path}:{line}: label must be 'yes' or 'no', got {label!r}.")
        label = label.strip().lower()
        text, image = rec["text"], rec["image"]
        if not isinstance(text, str) or not text.strip():
            raise DataFileError(f"{path}:{line}: 'text' must be a non-empty string, got {text!r}.")
        if not isinstance(image, str) or not image:
            raise DataFileError(f"{path}:{line}: 'image' must be a file name, got {image!r}.")
        qid = rec["question_id"]
        if str(qid) in seen:
            raise DataFileError(f"{path}:{line}: duplicate question_id {qid!r}; question ids must be unique.")
        seen.add(str(qid))
        img_path = confined(img_dir, image, path, line, "image")
        if check_images:
            check_image(img_path, path, line)
        prompt = text.split(_PAPER_STRIP)[0].strip()
        items.append(apply_template(
            prompt, pope_template(label), images=(img_path,),
            id=f"pope-{split or path.stem}-{qid}",
            meta={"dataset": "pope", "split": split, "label": label, "question_id": qid,
                  "image": image, "source_file": str(path), "line": line},
        ))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise DataFileError(f"{path}: no questions found; the file is empty.")
    return items


# ---------------------------------------------------------------------------------------------
# POPE-style questions from YOLO labels
# ---------------------------------------------------------------------------------------------

def _read_classes(path: Path) -> list[str]:
    names = [(i, s.strip()) for i, s in read_text_lines(path)]
    while names and not names[-1][1]:
        names.pop()
    for i, s in names:
        if not s:
            raise DataFileError(f"{path}:{i}: empty class name. classes.txt must have one name a line.")
    if not names:
        raise DataFileError(f"{path}: no class names. classes.txt must have one name a line.")
    return [s for _, s in names]


def read_yolo_labels(path: Path, n_classes: int) -> list[int]:
    """Class ids present in a YOLO label file (``class cx cy w h`` a line), in order of first appearance."""
    out: list[int] = []
    for i, line in read_text_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 5:
            raise DataFileError(
                f"{path}:{i}: a YOLO label line needs 'class cx cy w h' (5 fields), got {len(parts)}: {line!r}."
            )
        try:
            cls = int(parts[0])
            [float(x) for x in parts[1:]]
        except ValueError:
            raise DataFileError(f"{path}:{i}: not a YOLO label line (integer class, then numbers): {line!r}.") from None
        if not 0 <= cls < n_classes:
            raise DataFileError(
                f"{path}:{i}: class id {cls} is out of range for {n_classes} class names; check classes.txt."
            )
        if cls not in out:
            out.append(cls)
    return out


def _question(template: str, name: str) -> str:
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return template.format(article=article, name=name)


def build_pope_from_yolo(
    root: str | Path,
    split: str = "random",
    *,
    n_positive: int = 3,
    seed: int = 0,
    exhaustive: bool = False,
    question_template: str = POPE_QUESTION,
    image_dir: str | Path | None = None,
    label_dir: str | Path | None = None,
    classes_file: str | Path | None = None,
) -> list[ContrastiveItem]:
    """POPE-style yes/no questions from YOLO box labels (POPE's own recipe, seeded).

    Layout: ``root/images/*.jpg|png``, ``root/labels/<stem>.txt`` (``class cx cy w h``, 0-based),
    ``root/classes.txt`` (one name a line). Per image, up to ``n_positive`` present classes
    (a seeded sample, identical across splits) give "yes" questions; each is followed by one "no"
    question about an absent class, drawn as POPE does:

    * ``random``: uniformly from the classes that occur in the label set;
    * ``popular``: the most frequent absent class (frequency = number of images containing it);
    * ``adversarial``: the absent class co-occurring most often with that positive class.

    Popular/adversarial fall back to random when no candidate is left. Frequencies and
    co-occurrences are counted over the images used. Images without a label file are
    background (no objects) and are skipped. ``exhaustive=True`` instead asks about every class
    for every image (present -> "yes", absent -> "no"; ``split`` is then ignored and set to
    ``"exhaustive"``). Question ids count from 1; meta has split, label, question_id, image,
    object, class_id.
    """
    root = Path(root)
    if not exhaustive:
        _check_split(split)
    if n_positive < 1:
        raise DataError(f"n_positive must be at least 1, got {n_positive}.")
    img_dir = require_dir(Path(image_dir) if image_dir is not None else root / "images", "Image")
    lab_dir = require_dir(Path(label_dir) if label_dir is not None else root / "labels", "Label")
    names = _read_classes(require_file(
        Path(classes_file) if classes_file is not None else root / "classes.txt", "Class-name file (classes.txt)"
    ))
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp"))
    if not images:
        raise DataFileError(f"No images (*.jpg, *.png) in {img_dir}.")
    present: list[tuple[Path, list[int]]] = []
    for img in images:
        confined(img_dir, img.name, img_dir, "-", "image")
        lab = confined(lab_dir, f"{img.stem}.txt", lab_dir, "-", "label file")
        present.append((img, read_yolo_labels(lab, len(names)) if lab.is_file() else []))

    freq: Counter[int] = Counter()
    co: dict[int, Counter[int]] = {}
    for _, cls in present:
        freq.update(cls)
        for a in cls:
            co.setdefault(a, Counter()).update(b for b in cls if b != a)
    seen_classes = sorted(freq)
    by_freq = sorted(seen_classes, key=lambda c: (-freq[c], c))

    items: list[ContrastiveItem] = []
    tag = "exhaustive" if exhaustive else split
    qid = 0

    def add(img: Path, cls: int, label: str) -> None:
        nonlocal qid
        qid += 1
        items.append(apply_template(
            _question(question_template, names[cls]), pope_template(label), images=(img,),
            id=f"pope-{root.name}-{tag}-{qid}",
            meta={"dataset": f"pope-{root.name}", "split": tag, "label": label, "question_id": qid,
                  "image": img.name, "object": names[cls], "class_id": cls},
        ))

    for img, cls in present:
        if exhaustive:
            for c in range(len(names)):
                add(img, c, "yes" if c in cls else "no")
            continue
        if not cls:
            continue
        pos_rng = random.Random(f"{seed}:positives:{img.stem}")
        neg_rng = random.Random(f"{seed}:{split}:{img.stem}")
        chosen = pos_rng.sample(cls, n_positive) if len(cls) > n_positive else list(cls)
        asked: set[int] = set(chosen)
        for pos in chosen:
            add(img, pos, "yes")
            if split == "popular":
                cands = [c for c in by_freq if c not in asked and c not in cls]
            elif split == "adversarial":
                ranked = sorted(co.get(pos, Counter()).items(), key=lambda kv: (-kv[1], kv[0]))
                cands = [c for c, _ in ranked if c not in asked and c not in cls]
            else:
                cands = []
            if cands:
                neg = cands[0]
            else:
                pool = [c for c in seen_classes if c not in asked and c not in cls]
                if not pool:
                    pool = [c for c in range(len(names)) if c not in asked and c not in cls]
                if not pool:
                    continue
                neg = neg_rng.choice(pool)
            asked.add(neg)
            add(img, neg, "no")
    if not items:
        raise DataFileError(f"No labelled images under {lab_dir}: every image lacks a label file or objects.")
    return items
