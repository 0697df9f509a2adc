"""The user's own data: records, tables (a ``datasets.Dataset``, a pandas DataFrame) and files
(JSONL, CSV) to :class:`~steerlib.data.items.ContrastiveItem` lists, and the text-safety sets
shipped inside the package.

Columns: ``prompt`` plus ``positive``, ``negative`` (the desired and undesired completions) and
``behavior``; or prompts only plus a behaviour template (``template="harmful"``, ``"advice"``
or ``"benign"``, or any :class:`~steerlib.data.templates.BehaviorTemplate`), which gives the
completions. No pandas or datasets dependency: tables are read by duck typing.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import DataError, DataFileError
from .chat import is_messages
from .items import ContrastiveItem
from .templates import TEXT_SAFETY_TEMPLATES, BehaviorTemplate, apply_template

__all__ = ["items_from_file", "items_from_records", "items_from_table", "shipped_text_safety_dir"]

ITEM_FILE_SUFFIXES = (".jsonl", ".csv")


def shipped_text_safety_dir() -> Path:
    """The text-safety sets shipped with the package (HarmBench standard, Do-Not-Answer, the
    self-instruct seed tasks; licences and attribution in its ``README.md``)."""
    return Path(str(resources.files("steerlib") / "resources" / "text_safety"))


def _template(template: str | BehaviorTemplate | None) -> BehaviorTemplate | None:
    if template is None or isinstance(template, BehaviorTemplate):
        return template
    if template not in TEXT_SAFETY_TEMPLATES:
        raise DataError(f"Unknown template {template!r}; use one of {', '.join(TEXT_SAFETY_TEMPLATES)} "
                        "or a BehaviorTemplate.")
    return TEXT_SAFETY_TEMPLATES[template]


def items_from_records(records: Iterable[Mapping[str, Any]], *, prompt: str = "prompt", positive: str = "positive",
                       negative: str = "negative", behavior: str = "behavior",
                       template: str | BehaviorTemplate | None = None,
                       where: str = "records") -> list[ContrastiveItem]:
    """Records (mappings) to items; the keyword arguments name the columns.

    With ``template``, only ``prompt`` is read (plus ``behavior`` when present, overriding the
    template's label) and the template gives the completions; without it, every record needs
    ``prompt``, ``positive``, ``negative`` and ``behavior``.

    Raises:
        DataError: a record is not a mapping, or lacks a column; the message names the record.
    """
    tpl = _template(template)
    if tpl is None:
        return ContrastiveItem.from_records(records, prompt=prompt, positive=positive, negative=negative,
                                            behavior=behavior, where=where)
    out: list[ContrastiveItem] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise DataError(f"{where}: record {i} is a {type(rec).__name__}, not a mapping of column -> value.")
        text = rec.get(prompt)
        if not (isinstance(text, str) and text) and not is_messages(text):
            raise DataError(f"{where}: record {i} has no string {prompt!r} or list of chat messages "
                            f"(columns: {sorted(map(str, rec))}).")
        label = rec.get(behavior)
        out.append(apply_template(text, tpl, behavior=str(label) if label not in (None, "") else None))
    return out


def items_from_table(table: Any, **columns: Any) -> list[ContrastiveItem]:
    """A ``datasets.Dataset`` or a pandas DataFrame (duck-typed, neither is a dependency) to items;
    ``columns`` as for :func:`items_from_records`."""
    if hasattr(table, "to_dict") and hasattr(table, "columns"):  # pandas.DataFrame
        records = table.to_dict("records")
    elif hasattr(table, "column_names") and hasattr(table, "__iter__"):  # datasets.Dataset (rows are dicts)
        records = list(table)
    else:
        raise DataError(f"items_from_table takes a datasets.Dataset or a pandas DataFrame, got "
                        f"{type(table).__name__}; for a list of dicts use items_from_records.")
    return items_from_records(records, where=type(table).__name__, **columns)


def items_from_file(path: str | os.PathLike[str], *, template: str | BehaviorTemplate | None = None,
                    **columns: Any) -> list[ContrastiveItem]:
    """A JSONL (one object a line) or CSV file (a header row) to items; ``columns`` as for
    :func:`items_from_records`.

    Raises:
        DataFileError: the file is missing, has another suffix, or a line is not JSON.
    """
    path = Path(path)
    if path.suffix.lower() not in ITEM_FILE_SUFFIXES:
        raise DataFileError(f"{path}: give a .jsonl or .csv file with columns prompt, positive, negative, behavior "
                            "(or prompts plus a template).")
    from .loaders._io import require_file

    if os.path.lexists(path):
        require_file(path, "Item file")  # a FIFO or device: refused as such (a FIFO would block)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataFileError(f"{path}: cannot read it as UTF-8 text ({e}).") from e
    if path.suffix.lower() == ".csv":
        records: list[Any] = list(csv.DictReader(text.splitlines()))
    else:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as e:
                raise DataFileError(f"{path}:{n}: not a JSON object ({e}).") from e
    if not records:
        raise DataFileError(f"{path}: holds no records.")
    return items_from_records(records, template=template, where=str(path), **columns)
