"""``steerlib compare``: its arguments, data loading, judge loading, and printing, plus the
argument-parser helper of the example scripts. The runner itself is
:func:`steerlib.eval.compare.compare`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..defaults import DEFAULT_MAX_NEW_TOKENS
from ..errors import SteerlibError
from .argtypes import (
    blame,
    comma_list,
    device,
    finite_float,
    int_list,
    nonnegative_int,
    positive_float,
    positive_int,
    unit_fraction_list,
)
from .paths import DATA_ENV, DATA_SETS, data_dir

if TYPE_CHECKING:  # pragma: no cover - the parser is built without torch; handlers import what they run
    import torch

    from ..data.items import ContrastiveItem
    from ..eval.judges import Judge
    from ..eval.report import ReportPaths
    from ..eval.rows import CompareResult

__all__ = ["COMMAND_FILE", "DATA_PRESETS", "DATA_SETS", "HARD_SAFETY_CHOICES", "SELECTIVITY_FILES", "CompareUsageError",
           "add_arguments", "config_argv", "example_parser", "load_compare_data", "print_report",
           "print_selectivity", "run_from_args", "selectivity_against", "write_command"]


def __getattr__(name: str) -> Any:
    if name == "DATA_PRESETS":  # the recipes import the steerers (torch): on first use only
        from .recipes import DATA_PRESETS

        return DATA_PRESETS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class CompareUsageError(SteerlibError, ValueError):
    """A bad ``steerlib compare`` argument (the message says which and how to fix it)."""


#: ``--hard-safety`` values: none, or a split of :func:`steerlib.data.hard_safety.hard_safety_items`.
HARD_SAFETY_CHOICES = ("none", "train", "val", "test")
#: The files of the selectivity table ``steerlib compare`` writes into its folder.
SELECTIVITY_FILES = ("selectivity.md", "selectivity.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``steerlib compare`` options to ``p`` (nothing heavy is imported)."""
    g = p.add_argument_group("model and data")
    g.add_argument("--config", default=None, metavar="RUN.toml|run.json",
                   help="read the options from a TOML file (keys as the long flags, e.g. methods = \"none,l2s\") or "
                        "from a compare folder's run.json (rerun that manifest); flags given here win")
    g.add_argument("--model", default="smollm2",
                   help="smollm2 (SmolLM2-135M-Instruct, offline weights), gemma3-270m, tiny:<family>, or a local HF folder")
    g.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:1 (default: where the model loads)")
    g.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="weights dtype")
    g.add_argument("--data", default="text-safety", choices=DATA_SETS,
                   help="text-safety (shared HarmBench / Do-Not-Answer / seed tasks), pope (official files, needs "
                        "--image-dir), pope-coco (POPE-style questions from the shared COCO128 labels), mmsb "
                        "(MM-SafetyBench, needs --data-root)")
    g.add_argument("--data-root", default=None,
                   help=f"the data set's folder (default: ${DATA_ENV}/<set>, <set> = text-safety, pope or "
                        "coco128-train2017)")
    g.add_argument("--image-dir", default=None, help="pope: the COCO val2014 images the question files name")
    g.add_argument("--pope-split", default="random", choices=("random", "popular", "adversarial"), help="POPE split")
    g.add_argument("--limit", type=positive_int, default=None, help="at most N train and N eval items per behaviour")
    g.add_argument("--train-limit", type=positive_int, default=None,
                   help="at most N train items per behaviour (default: --limit)")
    g.add_argument("--split", type=unit_fraction_list, default="0.7,0.3",
                   help="train,eval fractions (stratified by behaviour; by image for POPE)")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="split and sampling seed")
    g.add_argument("--hard-safety", default="none", choices=HARD_SAFETY_CHOICES,
                   help="also evaluate on this split of the shipped hard-safety set (benign prompts that sound "
                        "harmful and their harmful counterparts, split by kind), capped by --limit per behaviour; "
                        "reported in the selectivity table's hard-harmful / hard-benign columns. Text safety data "
                        "only; none leaves the run as it was")
    g.add_argument("--hard-safety-train", action="store_true",
                   help="add the hard-safety set's train kinds to the training items (capped by --train-limit / "
                        "--limit per behaviour); text safety data only")
    s = p.add_argument_group("grid")
    s.add_argument("--methods", type=comma_list(str, "method"), default="none,mean,p2s,l2s",
                   help="comma list of registered methods that build from their name (an unknown one lists them)")
    s.add_argument("--alphas", type=comma_list(finite_float, "strength"), default="1.0",
                   help="comma list of strengths, e.g. 0.5,1.0")
    s.add_argument("--layers", type=int_list, default=None,
                   help="comma list of layers L*, e.g. 15 or 10,15 (default: the middle layer)")
    s.add_argument("--positions", default=None, help="all, prompt, generated, last_prompt, image, text (default all)")
    s.add_argument("--reduction", default=None,
                   help="P2S reduction: end_of_turn, completion_mean, sampled_mean (default: per data set)")
    s.add_argument("--continuation-tokens", type=positive_int, default=None,
                   help="sampled_mean: tokens sampled after the completion")
    s.add_argument("--input-layer", type=nonnegative_int, default=None, help="L2S input layer L' (default: L*)")
    s.add_argument("--input-position", default=None, choices=("last_prompt", "last_prompt_no_gen"),
                   help="L2S input token")
    s.add_argument("--hidden", type=positive_int, default=None, help="L2S width K")
    s.add_argument("--epochs", type=positive_int, default=None, help="L2S training epochs")
    s.add_argument("--lr", type=positive_float, default=None, help="L2S learning rate")
    o = p.add_argument_group("generation and output")
    o.add_argument("--out", default=None, help="output folder (cache, steerers, report); rerun to resume (required)")
    o.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS, help="tokens to generate")
    o.add_argument("--batch-size", type=positive_int, default=8, help="rows per generation batch")
    o.add_argument("--unchanged-tokens", type=positive_int, default=32,
                   help="benign unchanged: first N generated tokens")
    o.add_argument("--judge", default=None, help="local HF folder of a safety classifier (e.g. Llama-Guard-3-8B) "
                                                 "for the unsafe score, or tiny:llama for a smoke run")
    o.add_argument("--fluency", action="store_true", help="also score perplexity under the unsteered model")
    o.add_argument("--selectivity-against", default=None, metavar="METHOD",
                   help="the column the selectivity table's paired McNemar tests compare every other with: a method "
                        "with one configuration (l2s) or a row label (\"l2s L15 a=0.5\"); default l2s when it has "
                        "exactly one configuration, else no paired tests. The selectivity table (selectivity.md, "
                        "selectivity.json) is written when the eval items have harmful and benign prompts")
    o.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads for this run (default: torch's)")
    o.add_argument("--no-resume", action="store_true",
                   help="delete what an earlier compare run wrote in --out first (refuses a folder compare did not write)")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def _csv(value: str | Sequence[Any], conv: Callable[[str], Any], what: str) -> list[Any]:
    """A parsed comma list as is, or a string parsed with the argument type ``conv`` (callers that
    build their own namespace); a bad list names the flag ``--what``."""
    if not isinstance(value, str):
        return list(value)
    try:
        return comma_list(conv, what)(value)
    except argparse.ArgumentTypeError as e:
        raise CompareUsageError(f"--{what}: {e}.") from None


def load_compare_data(args: argparse.Namespace) -> tuple[list[ContrastiveItem], list[ContrastiveItem]]:
    """Training and evaluation items for the CLI's ``--data`` choice (split, capped)."""
    with blame("--data-root" if args.data_root else "--data", args.data_root or args.data):
        return _load_compare_data(args)


def _load_compare_data(args: argparse.Namespace) -> tuple[list[ContrastiveItem], list[ContrastiveItem]]:
    from ..data import (
        build_pope_from_yolo,
        cap_per_behavior,
        load_mmsafetybench,
        load_pope,
        split_by_group,
        split_items,
        text_safety_items,
    )

    fractions = args.split if not isinstance(args.split, str) else unit_fraction_list(args.split)
    if args.data == "text-safety":
        root = data_dir("text-safety", args.data_root)
        parts = split_items(text_safety_items(root, seed=args.seed), fractions, seed=args.seed)
        train, test = parts[0], parts[-1]
    elif args.data in ("pope", "pope-coco"):
        if args.data == "pope":
            root = data_dir("pope", args.data_root)
            if not args.image_dir:
                raise CompareUsageError("--data pope needs --image-dir (the COCO val2014 images the POPE files name). "
                                        "Without them, use --data pope-coco (questions built from the shared COCO128).")
            items = load_pope(root, args.image_dir, split=args.pope_split, check_images=True)
        else:
            root = data_dir("coco128-train2017", args.data_root)
            items = build_pope_from_yolo(root, args.pope_split, seed=args.seed)
        parts = split_by_group(items, fractions, seed=args.seed)
        train, test = parts[0], parts[-1]
    elif args.data == "mmsb":
        if not args.data_root:
            raise CompareUsageError("--data mmsb needs --data-root: the MM-SafetyBench folder with "
                                    "processed_questions/ and imgs/.")
        train = load_mmsafetybench(args.data_root, "train")
        test = [it.with_(prompt=str(it.meta.get("raw_prompt", it.prompt)).strip(), id=it.id)
                for it in load_mmsafetybench(args.data_root, "test")]  # the paper asks the bare question
    else:  # pragma: no cover - argparse choices
        raise CompareUsageError(f"Unknown --data {args.data!r}; use one of {', '.join(DATA_SETS)}.")
    train_limit = args.train_limit if args.train_limit is not None else args.limit
    train, test = cap_per_behavior(train, train_limit), cap_per_behavior(test, args.limit)
    return _add_hard_safety(args, train, test, train_limit)


def _add_hard_safety(args: argparse.Namespace, train: list[ContrastiveItem], test: list[ContrastiveItem],
                     train_limit: int | None) -> tuple[list[ContrastiveItem], list[ContrastiveItem]]:
    """``--hard-safety SPLIT``: that split's hard-safety items after the eval items;
    ``--hard-safety-train``: the train kinds after the training items (each capped per behaviour).
    Refused for data without harmful and benign behaviours (the set's two labels)."""
    from ..data import cap_per_behavior
    from ..data.hard_safety import hard_safety_items

    split = getattr(args, "hard_safety", "none") or "none"
    add_train = bool(getattr(args, "hard_safety_train", False))
    if split not in HARD_SAFETY_CHOICES:
        raise CompareUsageError(f"--hard-safety {split!r}: use one of {', '.join(HARD_SAFETY_CHOICES)}.")
    if split == "none" and not add_train:
        return train, test
    have = {it.behavior for it in [*train, *test]}
    if not {"harmful", "benign"} <= have:
        flag = f"--hard-safety {split}" if split != "none" else "--hard-safety-train"
        raise CompareUsageError(f"{flag}: the --data {args.data} items have no harmful and benign behaviours "
                                f"(they have: {', '.join(sorted(map(str, have))) or 'none'}); the hard-safety set is "
                                "text safety prompts (harmful -> refuse, benign -> unchanged): use it with "
                                "--data text-safety, or drop the flag.")
    if add_train:
        train = train + cap_per_behavior(hard_safety_items("train"), train_limit)
    if split != "none":
        test = test + cap_per_behavior(hard_safety_items(split), args.limit)  # type: ignore[arg-type]
    return train, test


#: The grid flags that set a steerer argument: flag attribute -> constructor argument.
_STEERER_FLAGS = {"reduction": "reduction", "continuation_tokens": "continuation_tokens", "input_layer": "input_layer",
                  "input_position": "input_position", "hidden": "hidden", "epochs": "epochs", "lr": "lr"}


def _steerer_kwargs(args: argparse.Namespace, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The data set's preset, then the grid flags: a flag goes to every method whose constructor takes
    the argument (key ``"*"``) and overrides the preset's value for it."""
    from .recipes import DATA_PRESETS

    preset = DATA_PRESETS[args.data]["steerer_kwargs"]
    kw: dict[str, dict[str, Any]] = {k: dict(v) for k, v in preset.items() if k == "*" or k in methods}
    star = kw.setdefault("*", {})
    given = {name: getattr(args, flag) for flag, name in _STEERER_FLAGS.items() if getattr(args, flag) is not None}
    for per_method in kw.values():
        for name in given:
            per_method.pop(name, None)
    star.update(given)
    star["seed"] = args.seed
    return kw


def _check_judge(spec: str | None) -> None:
    """Refuse a ``--judge`` that cannot load, before the model is loaded."""
    if not spec:
        return
    if spec.startswith("tiny:"):
        from ..testing import FAMILIES

        family = spec.split(":", 1)[1]
        if family not in FAMILIES:
            raise CompareUsageError(f"--judge {spec}: no tiny family {family!r}; use tiny:<family> with one of "
                                    f"{', '.join(FAMILIES)}, or a local Hugging Face folder.")
        return
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise CompareUsageError(f"--judge {spec!r} is not a folder; give a local Hugging Face folder of a safety "
                                "classifier such as meta-llama/Llama-Guard-3-8B (nothing is downloaded).")
    if not (path / "config.json").is_file():
        raise CompareUsageError(f"--judge {spec}: no config.json in this folder; is it a Hugging Face model folder?")


def _load_judge(spec: str | None, device: torch.device) -> Judge | None:
    if not spec:
        return None
    from ..eval.judges import SAFETY_JUDGE_TEMPLATE, ClassifierJudge

    import torch

    _check_judge(spec)
    if spec.startswith("tiny:"):
        from ..testing import build_tiny

        t = build_tiny(spec.split(":", 1)[1])
        return ClassifierJudge(t.model, t.tokenizer, SAFETY_JUDGE_TEMPLATE, mode="raw", name=f"classifier-{spec}")
    path = Path(spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()
    if getattr(tok, "chat_template", None) is not None:
        return ClassifierJudge(lm, tok, mode="conversation", name=f"classifier-{path.name}")
    return ClassifierJudge(lm, tok, SAFETY_JUDGE_TEMPLATE, " unsafe", " safe", mode="raw", name=f"classifier-{path.name}")


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``steerlib compare`` from parsed arguments; prints the table and the files written."""
    import torch

    from ..eval.compare import buildable_methods, compare
    from ..eval.report import write_report
    from ..eval.rows import MetricConfig
    from ..zoo import load_steerable
    from .recipes import DATA_PRESETS

    if not args.out:
        raise CompareUsageError("--out is required: the output folder (cache, steerers, report), given as a flag "
                                "or in the --config file.")
    methods = _csv(args.methods, str, "methods")
    alphas = _csv(args.alphas, finite_float, "alphas")
    known = buildable_methods()
    for m in methods:
        if m not in known:
            raise CompareUsageError(f"Unknown method {m!r} in --methods; use some of {', '.join(known)}.")
    _check_judge(args.judge)
    against = getattr(args, "selectivity_against", None)
    if against is not None and against.split(" ", 1)[0] not in [*methods, "none"]:
        raise CompareUsageError(f"--selectivity-against {against!r}: no such method in --methods "
                                f"({', '.join(methods)}); give one of them, or a row label such as 'l2s L15 a=0.5'.")
    train, test = load_compare_data(args)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from ..eval.distributed import local_device

        device = args.device or local_device()  # under torchrun on GPUs: one device per rank
        with blame("--model", args.model):
            model = load_steerable(args.model, dtype=getattr(torch, args.dtype), device=device)
        layers = _csv(args.layers, nonnegative_int, "layers") if args.layers else [model.num_layers // 2]
        with blame("--judge", args.judge):
            judge = _load_judge(args.judge, model.device)
        cfg = DATA_PRESETS[args.data]["metrics"]
        cfg = MetricConfig.from_dict({**cfg.as_dict(), "unchanged_tokens": args.unchanged_tokens})
        print(f"{model!r}\n{len(train)} train / {len(test)} eval items; methods {methods}; alphas {alphas}; "
              f"layers {layers}; out {args.out}", flush=True)
        result = compare(model, train, test, methods, alphas, layers, out_dir=args.out,
                         max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, positions=args.positions,
                         judge=judge, metrics=cfg, fluency=args.fluency, steerer_kwargs=_steerer_kwargs(args, methods),
                         resume=not args.no_resume, progress=not args.no_progress)
    finally:
        torch.set_num_threads(threads)
    from ..eval.distributed import is_main_process

    if is_main_process():  # every rank returns the same result; one writes the command and the report
        write_command(args, Path(args.out))
        print_report(result, write_report(result, plots=not args.no_plots))
        print_selectivity(result, test, getattr(args, "selectivity_against", None))
    return 0


def selectivity_against(rows: Sequence[dict[str, Any]], requested: str | None) -> tuple[str | None, str]:
    """The selectivity report's reference column for ``--selectivity-against`` and a note on it.

    ``requested`` None: ``l2s`` when it has exactly one row, else no paired tests (the note says
    why). Otherwise a method with one row, or a row label (``l2s L15 a=0.5``).

    Raises:
        CompareUsageError: ``requested`` is no row, or a method with several rows (the message lists them).
    """
    from ..eval.selectivity import row_labels

    labels = row_labels(rows)
    if requested is None:
        l2s = [lab for r, lab in zip(rows, labels) if r["method"] == "l2s"]
        if len(l2s) == 1:
            return l2s[0], ""
        if l2s:
            return None, (f"No paired tests: l2s has {len(l2s)} configurations ({', '.join(l2s)}); pick one with "
                          f"--selectivity-against '{l2s[0]}'.")
        return None, "No paired tests: no l2s column; pick a reference with --selectivity-against METHOD."
    if requested in labels:
        return requested, ""
    by_label = [lab for r, lab in zip(rows, labels) if r["label"] == requested]
    if len(by_label) == 1:
        return by_label[0], ""
    several = [lab for r, lab in zip(rows, labels) if r["method"] == requested]
    if several:
        raise CompareUsageError(f"--selectivity-against {requested}: {requested} has {len(several)} configurations "
                                f"({', '.join(several)}); give one of them, e.g. --selectivity-against "
                                f"'{several[0]}' (a rerun reuses the cache).")
    raise CompareUsageError(f"--selectivity-against {requested!r} is none of the rows ({', '.join(labels)}).")


def print_selectivity(result: CompareResult, items: Sequence[ContrastiveItem],
                      against: str | None = None) -> list[Path]:
    """Print the selectivity tables (keyword and strict refusal judges, :mod:`steerlib.eval.selectivity`)
    of a comparison and write ``selectivity.md`` and ``selectivity.json`` into its folder; nothing
    (an empty list) when ``items`` lack harmful or benign prompts (e.g. POPE). ``against`` as
    :func:`selectivity_against`. Returns the paths written."""
    from ..eval.selectivity import GROUPS, JUDGES, default_group, selectivity_markdown, selectivity_report
    from ..persistence import write_text_atomic

    groups = [default_group(it) for it in items]
    counts = {g: groups.count(g) for g in GROUPS}
    if not (counts["harmful"] + counts["hard_harmful"]) or not (counts["benign"] + counts["hard_benign"]):
        return []
    ref, note = selectivity_against(result.rows, against)
    rep = selectivity_report(result, items, against=ref)
    text = "\n\n".join(selectivity_markdown(rep, j) for j in JUDGES)
    if note:
        text += "\n\n" + note
    sizes = ", ".join(f"{n} {g.replace('_', '-')}" for g, n in counts.items() if n)
    head = f"Selectivity ({sizes} eval prompts; Wilson 95% intervals):"
    out = Path(result.out_dir)
    paths = [out / name for name in SELECTIVITY_FILES]
    write_text_atomic(paths[0], f"# {head}\n\n{text}\n")
    write_text_atomic(paths[1], json.dumps({**rep.as_dict(), "ids": {g: ids for g, ids in rep.ids.items() if ids},
                                            "note": note}, indent=2) + "\n")
    print(f"\n{head}\n\n{text}\n")
    for p in paths:
        print(f"wrote {p}")
    sys.stdout.flush()
    return paths


#: The flags a rerun does not repeat: the config itself, and the one that deletes the cache.
_NOT_RERUN = ("config", "no_resume", "func", "command", "quiet")
COMMAND_FILE = "command.toml"


def write_command(args: argparse.Namespace, out: Path) -> Path:
    """Write the run's options to ``out/command.toml``, so ``steerlib compare --config out/command.toml``
    (or ``--config out/run.json``) runs it again (resuming from the cache)."""
    from ..persistence import write_text_atomic

    lines = ["# steerlib compare options of this folder's run: steerlib compare --config " + str(out / COMMAND_FILE)]
    for key, value in sorted(vars(args).items()):
        if key in _NOT_RERUN or value is None or value is False or callable(value):
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        toml = "true" if value is True else (str(value) if isinstance(value, (int, float)) else json.dumps(str(value)))
        lines.append(f"{key.replace('_', '-')} = {toml}")
    write_text_atomic(out / COMMAND_FILE, "\n".join(lines) + "\n")
    return out / COMMAND_FILE


def config_argv(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The flags of a ``--config`` file: a TOML file of ``flag = value`` (``max-new-tokens = 32``,
    ``methods = "none,l2s"`` or ``["none", "l2s"]``), or a compare folder's ``run.json`` / folder (its
    ``command.toml``). Unknown keys are refused, naming them."""
    import tomllib

    p = Path(path).expanduser()
    if p.is_dir() or p.suffix.lower() == ".json":
        folder = p if p.is_dir() else p.parent
        p = folder / COMMAND_FILE
        if not p.is_file():
            raise CompareUsageError(f"--config {path}: no {COMMAND_FILE} in {folder} (steerlib compare writes it beside "
                                    "run.json); give a TOML file of options instead.")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompareUsageError(f"--config {path}: no such file.") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise CompareUsageError(f"--config {path}: not a readable TOML file ({e}).") from None
    flags = {o: a for a in parser._actions for o in a.option_strings}
    argv: list[str] = []
    for key, value in data.items():
        flag = "--" + str(key).replace("_", "-")
        action = flags.get(flag)
        if action is None or flag in ("--config", "--help"):
            raise CompareUsageError(f"--config {path}: unknown option {key!r} (keys are compare's long flags without "
                                    "the dashes, e.g. max-new-tokens).")
        if isinstance(action, argparse._StoreTrueAction):
            if value is True:
                argv.append(flag)
            elif value is not False:
                raise CompareUsageError(f"--config {path}: {key} must be true or false, got {value!r}.")
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        argv += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def print_report(result: CompareResult, paths: ReportPaths, columns: Sequence[str] | None = None) -> None:
    """Print a comparison's table (``columns``: a subset of the metrics), what was generated or
    reused, and the files its report wrote."""
    from ..eval.report import markdown_table

    print(markdown_table(result.rows, columns))
    rejected = f", {result.n_rejected} unusable in the store (set aside)" if result.n_rejected else ""
    print(f"{result.n_generated} generated, {result.n_reused} reused from the cache{rejected}")
    for p in paths.all():
        print(f"wrote {p}")
    sys.stdout.flush()


def example_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser for an example script: its docstring's first paragraph is the description,
    the rest the epilog, kept as written."""
    head, _, rest = doc.partition("\n\n")
    return argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
