"""The ``--data`` flags of ``steerlib fit`` and ``steerlib probe``: the shipped sets or the user's own file,
read before any model is loaded (so a bad file fails in a second)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SteerlibError
from .argtypes import positive_int
from .paths import data_root

if TYPE_CHECKING:  # pragma: no cover
    from ..data.items import ContrastiveItem

__all__ = ["add_data_arguments", "items_from_args"]


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """``--data``, ``--template``, ``--data-root`` and ``--limit``."""
    p.add_argument("--data", default="demo",
                   help="demo (the demo's 370 training prompts, shipped), demo+hard (those plus the hard-safety set's "
                        "train kinds: what steerlib demo trains L2S on; docs/selectivity.md), text-safety (HarmBench / "
                        "Do-Not-Answer / seed tasks, shipped), or PATH of a .jsonl/.csv with columns prompt,positive,negative,behavior")
    p.add_argument("--template", default=None, choices=("harmful", "advice", "benign"),
                   help="PATH holds prompts only: build the completions with this behaviour template")
    p.add_argument("--data-root", default=None, help="text-safety: another copy of the data set's folder")
    p.add_argument("--limit", type=positive_int, default=None, help="at most this many items per behaviour")


def items_from_args(args: argparse.Namespace) -> list[ContrastiveItem]:
    """The training items of ``--data`` (read before the model is loaded, so a bad file fails fast)."""
    from ..data import cap_per_behavior, demo_items, items_from_file, shipped_text_safety_dir, text_safety_items

    if args.template is not None and args.data in ("demo", "demo+hard", "text-safety"):
        raise SteerlibError(f"--template applies to a --data PATH of prompts, not to --data {args.data}.")
    if args.data == "demo":
        items = demo_items()["train"]
    elif args.data == "demo+hard":
        from ..data.hard_safety import hard_safety_items

        items = demo_items()["train"] + hard_safety_items("train")
    elif args.data == "text-safety":
        env = data_root()
        items = text_safety_items(args.data_root or (env / "text-safety" if env else shipped_text_safety_dir()))
    else:
        path = Path(args.data).expanduser()
        if path.suffix.lower() not in (".jsonl", ".csv"):
            raise SteerlibError(f"--data {args.data}: use demo, demo+hard, text-safety, or the path of a .jsonl or .csv file "
                                "(columns prompt, positive, negative, behavior; or prompts plus --template).")
        try:
            items = items_from_file(path, template=args.template)
        except SteerlibError as e:
            raise SteerlibError(f"--data: {e}") from e
    return cap_per_behavior(items, args.limit)
