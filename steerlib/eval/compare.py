"""``compare``: steering methods x alphas x layers on one data set, resumable.

:func:`compare` fits every (method, layer) once, generates for every evaluation item under every
configuration in batches with per-row vectors, and scores the outputs per behaviour label.
Everything it produces lives in ``out_dir`` (the store, :mod:`steerlib.eval.store`):

* ``generations.jsonl``: one JSON object a line per generation, keyed by ``(method, config, id)``
  where ``config`` spells out layer, alpha, positions, ``max_new_tokens``, a fingerprint of what
  was fitted (class, hyperparameters, training set, model shapes, dtype and weights), any extra
  ``generate`` arguments and the batching; each record carries the digest of its item's content
  and its own checksum (:mod:`steerlib.eval.store`: records failing either are set aside and
  generated again, and the run says how many). Lines are appended per batch with ``flush`` +
  ``fsync``. On load a truncated last line (a run killed mid-write) is cut off and ignored, and a
  key seen twice counts once, so a run killed at any point and started again loses and duplicates
  nothing. Generated token ids are stored, so "benign unchanged" is computed against the
  unsteered outputs from the cache alone.
* ``scores.jsonl``: judge probabilities and perplexities, cached the same way (each tied to the
  checksum of the generation it scored).
* ``generations.rank<r>.jsonl``: under ``torchrun``, what rank ``r`` appended, merged by rank 0
  after each phase (see :mod:`steerlib.eval.distributed`).
* ``compare.lock``: held while a run uses the folder (a second run is refused).
* ``steerers/<method>-L<layer>/``: fitted steerers (``save_pretrained``), reloaded on rerun.
* ``run.json``: the manifest (model, configurations, evaluation items, metric settings, the files
  written), so :func:`~steerlib.eval.rows.load_result` rebuilds the table from ``out_dir`` alone.

Batches are deterministic functions of the evaluation list (a partly cached batch is generated
again whole, only its missing rows are written), so a resumed run sees the same padding as an
uninterrupted one and greedy outputs, hence the table, are identical. ``batching="slices"`` (the
default) cuts the list into fixed slices of ``batch_size``; ``batching="length"`` groups rows of
similar prompt length (:func:`~steerlib.batching.length_batches`, at most ``max_batch_tokens``
padded prompt tokens a batch), as :meth:`~steerlib.steerers.Steerer.generate` does. With
``reuse_unsteered_rows=True`` only the rows a steerer changes at all
(:meth:`~steerlib.steerers.Steerer.steered_rows`) are generated, batched among themselves; the
others are copied from the unsteered run, which they equal exactly.

The metrics are those of :mod:`steerlib.eval.rows`; tables and plots come from
:mod:`steerlib.eval.report`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..batching import length_batches
from ..data.items import ContrastiveItem, items_hash, stable_seed
from ..data.loaders.splits import cap_per_behavior, split_by_group
from ..defaults import DEFAULT_MAX_NEW_TOKENS
from ..engine import Generation, SteerableModel
from ..errors import CompatibilityError, DataError, InputError, PersistenceError, SteerlibError
from ..intervention import check_finite, check_layers
from ..positions import as_positions
from ..progress import tqdm
from ..steerers import METHODS, NoSteer, Steerer, fit_sharing_extraction
from ..steerers.base import model_info
from .distributed import Distributed, ranks, shard, sharded_extraction
from .judges import Judge
from .metrics import perplexity, strip_trailing_pad
from .rows import CompareResult, MetricConfig, RunSpec, compute_rows, load_result
from .store import (
    CACHE_FILE,
    CHECKSUM_FIELD,
    GEN_KEY,
    LOCK_FILE,
    PPL_SCORER,
    RUN_FILE,
    SCORE_KEY,
    SCORES_FILE,
    STEERERS_DIR,
    JsonlCache,
    consolidate,
    folder_lock,
    item_digest,
    model_fingerprint,
    part_file,
    read_manifest,
    rejected_file,
    write_manifest,
)

#: Notices (refits of saved steerers, store checks): ``logging.getLogger("steerlib")`` and its children.
_log = logging.getLogger(__name__)

__all__ = [
    "BATCHING",
    "CACHE_FILE",
    "RUN_FILE",
    "SCORES_FILE",
    "CompareResult",
    "JsonlCache",
    "MetricConfig",
    "RunSpec",
    "cap_per_behavior",
    "compare",
    "compute_rows",
    "load_result",
    "split_by_group",
]

#: How :func:`compare` cuts the evaluation rows into generation batches.
BATCHING = ("slices", "length")
#: Steerer hyperparameters that do not change what is fitted (left out of fingerprints).
_NOT_FITTED = ("alpha", "progress", "positions", "batch_size")
#: The command-line helpers that lived here before; they are the application's, not the library's.
_MOVED_TO_APP = ("DATA_SETS", "DATA_PRESETS", "CompareUsageError", "add_arguments", "load_compare_data",
                 "run_from_args", "print_report", "example_parser")


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_APP:
        raise AttributeError(f"steerlib.eval.compare.{name} moved to steerlib.app.compare_cli (the command line "
                             f"is not part of the library): from steerlib.app.compare_cli import {name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def compare(
    model: SteerableModel,
    train_items: Sequence[ContrastiveItem],
    eval_items: Sequence[ContrastiveItem],
    methods: Mapping[str, Steerer] | Sequence[str],
    alphas: Sequence[float] | Mapping[str, Sequence[float]] = (1.0,),
    layers: Sequence[int] = (0,),
    *,
    out_dir: str | os.PathLike[str],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
    batching: str = "slices",
    max_batch_tokens: int | None = None,
    reuse_unsteered_rows: bool = False,
    positions: str | None = None,
    judge: Judge | None = None,
    metrics: MetricConfig | None = None,
    fluency: bool = False,
    fluency_batch_size: int | None = None,
    steerer_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    generate_kwargs: Mapping[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
    save_steerers: bool = True,
    distributed: Distributed = "auto",
) -> CompareResult:
    """Run every method x alpha x layer on ``eval_items`` and score the outputs.

    Args:
        model: the model to steer.
        train_items: contrastive items the steerers are fitted on (may be empty when no method
            learns anything).
        eval_items: the items generated for; ids must be unique (they key the cache). Their
            ``behavior`` (and ``meta["label"]`` for POPE) picks the metrics.
        methods: method names of :data:`steerlib.steerers.METHODS` (``"none"``, ``"prompt"``,
            ``"mean"``, ``"p2s"``, ``"l2s"``, ...), or ``{name: steerer}``. An unfitted steerer is a
            template, cloned at every layer and fitted there; a fitted one (e.g. loaded with
            ``from_pretrained``) is used as is, at its own layer. Methods that add no vector
            (no steering, prompting) run once, with ``alpha`` and ``layer`` ``None``. The
            unsteered model is always run too (row ``"none"``, or the name of a given unsteered
            steerer): it is the "unchanged" reference.
        alphas: the strengths of the grid, or ``{name: strengths}`` per method (the key ``"*"``
            for the others).
        layers: the steering layers of the grid.
        out_dir: where the cache, fitted steerers and manifest live (see the module docstring).
        max_new_tokens: tokens generated per item (greedy unless ``generate_kwargs`` say
            otherwise; sampled batches are seeded from the configuration and the batch).
        batch_size: rows per generation batch.
        batching: ``"slices"`` (fixed slices of the evaluation list) or ``"length"`` (rows of
            similar prompt length together, see the module docstring).
        max_batch_tokens: with ``batching="length"``, the most padded prompt tokens a batch.
        reuse_unsteered_rows: generate only the rows each steerer changes
            (:meth:`~steerlib.steerers.Steerer.steered_rows`) and copy the others from the
            unsteered run (greedy decoding only).
        positions: where vectors are added (default: each steerer's own, ``"all"``).
        judge: scores ``MetricConfig.unsafe_behaviors`` items for p(unsafe) (e.g. a
            :class:`~steerlib.eval.judges.ClassifierJudge`); scores are cached.
        metrics: which behaviour labels get which metric (:class:`~steerlib.eval.rows.MetricConfig`).
        fluency: also compute the perplexity of every output under the unsteered model. With
            ``batching="length"`` each distinct (item, output) is scored once, in length buckets
            of at most ``max_batch_tokens`` tokens, and whitespace-only outputs are not scored.
        fluency_batch_size: rows per perplexity batch (default ``batch_size``).
        steerer_kwargs: constructor arguments per method name; the key ``"*"`` goes to every
            method whose constructor takes the argument (e.g. ``{"*": {"reduction": "last"}}``).
        generate_kwargs: extra ``model.generate`` arguments (part of the cache key).
        resume: reuse ``out_dir``'s cache and fitted steerers; ``False`` first deletes the files an
            earlier compare run listed as written there (and refuses a folder that holds files but
            no compare manifest).
        progress: tqdm bars on fitting, generation and scoring.
        save_steerers: save fitted steerers under ``out_dir/steerers`` (always, with several ranks).
        distributed: ``"auto"``: under ``torchrun`` (or with ``torch.distributed`` initialised), the
            ranks share the work (see :mod:`steerlib.eval.distributed` and the docs' "Running on
            several processes / GPUs"); every rank returns the same result. ``"off"``: one process.

    Returns:
        A :class:`~steerlib.eval.rows.CompareResult` whose rows are computed from the cache.

    Raises:
        DataError: unknown method, bad grid, duplicate item ids, no training items for a method
            that learns. InputError: image items for a text-only model. CompatibilityError:
            ``out_dir`` holds a run of another model (use another folder or ``resume=False``).
            PersistenceError: another run holds ``out_dir``'s lock, or ``resume=False`` on a folder
            that is not a compare folder.
    """
    runner = _Runner(model, train_items, eval_items, methods, alphas, layers, out_dir=Path(out_dir),
                     max_new_tokens=max_new_tokens, batch_size=batch_size, batching=batching,
                     max_batch_tokens=max_batch_tokens, reuse_unsteered_rows=reuse_unsteered_rows,
                     positions=positions, judge=judge, metrics=metrics or MetricConfig(), fluency=fluency,
                     fluency_batch_size=fluency_batch_size, steerer_kwargs=steerer_kwargs or {},
                     generate_kwargs=dict(generate_kwargs or {}), resume=resume, progress=progress,
                     save_steerers=save_steerers, distributed=distributed)
    return runner.run()


class _Runner:
    """State of one :func:`compare` call (nothing global)."""

    def __init__(self, model: SteerableModel, train_items: Sequence[ContrastiveItem],
                 eval_items: Sequence[ContrastiveItem], methods: Mapping[str, Steerer] | Sequence[str],
                 alphas: Sequence[float] | Mapping[str, Sequence[float]], layers: Sequence[int], *, out_dir: Path,
                 max_new_tokens: int, batch_size: int, batching: str, max_batch_tokens: int | None,
                 reuse_unsteered_rows: bool, positions: str | None, judge: Judge | None, metrics: MetricConfig,
                 fluency: bool, fluency_batch_size: int | None, steerer_kwargs: Mapping[str, Mapping[str, Any]],
                 generate_kwargs: dict[str, Any], resume: bool, progress: bool, save_steerers: bool,
                 distributed: Distributed = "auto") -> None:
        if not isinstance(model, SteerableModel):
            raise InputError(f"compare needs a SteerableModel, got {type(model).__name__}; wrap it with "
                             "SteerableModel(model, processor).")
        self.model = model
        self.out = out_dir
        self.train = _check_item_list(train_items, "train_items", allow_empty=True)
        self.eval = _check_item_list(eval_items, "eval_items", allow_empty=False)
        _check_unique_ids(self.eval)
        if any(it.images for it in self.eval) and not model.adapter.is_vlm:
            raise InputError(f"Some evaluation items have images, but {model.name!r} is a text-only model; "
                             "load a vision-language model or drop the images.")
        _check_positive_int(max_new_tokens, "max_new_tokens")
        _check_positive_int(batch_size, "batch_size")
        if fluency_batch_size is not None:
            _check_positive_int(fluency_batch_size, "fluency_batch_size")
        if batching not in BATCHING:
            raise DataError(f"batching must be one of {BATCHING}, got {batching!r}.")
        if max_batch_tokens is not None:
            if batching != "length":
                raise DataError("max_batch_tokens limits length-bucketed batches; pass batching='length' with it.")
            _check_positive_int(max_batch_tokens, "max_batch_tokens")
        self.layers = list(check_layers(layers if isinstance(layers, int) else list(layers), model.num_layers))
        if positions is not None:
            as_positions(positions)
        self.positions = positions
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.batching = batching
        self.max_batch_tokens = max_batch_tokens
        self.reuse_unsteered = bool(reuse_unsteered_rows)
        self.judge = judge
        if judge is not None and not (hasattr(judge, "judge") and hasattr(judge, "name")):
            raise DataError(f"judge must have a name and judge(prompts, responses) -> list[float]; got "
                            f"{type(judge).__name__}. Use steerlib.eval.ClassifierJudge or KeywordJudge.")
        jm = getattr(judge, "model", None)
        self.judge_fp = model_fingerprint(jm)["weights"] if isinstance(jm, torch.nn.Module) else ""
        self.cfg = metrics
        self.fluency = fluency
        self.fluency_batch_size = fluency_batch_size or batch_size
        self.kwargs = {k: dict(v) for k, v in steerer_kwargs.items()}
        self.gen_kwargs = generate_kwargs
        for bad in ("max_new_tokens", "return_dict_in_generate"):
            if bad in self.gen_kwargs:
                raise DataError(f"generate_kwargs must not set {bad!r}; use compare's own argument.")
        if self.reuse_unsteered and self.gen_kwargs.get("do_sample"):
            raise DataError("reuse_unsteered_rows copies unsteered outputs, which only greedy decoding reproduces; "
                            "drop do_sample or reuse_unsteered_rows.")
        self.gen_json = _canon_json(self.gen_kwargs)
        self.resume = resume
        self.progress = progress
        self.save_steerers = save_steerers
        self.model_info = _run_model_info(model)
        self.model_fp = model_fingerprint(model.model)
        self.digests = {it.id: item_digest(it.prompt, it.positive, it.negative, it.behavior, it.images)
                        for it in self.eval}
        self.batch_key = f"{batching}:{batch_size}" + (f":{max_batch_tokens}" if max_batch_tokens else "")
        self.distributed: Distributed = distributed
        self.fits: dict[str, str] = {}
        self.written: set[str] = set()
        self.n_rejected = 0
        self.train_hash = items_hash(self.train) if self.train else ""
        self.templates = self._templates(methods)
        self.alphas = self._alpha_grid(alphas)
        self.n_unchanged = min(metrics.unchanged_tokens, max_new_tokens)
        tok = model.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.n_generated = 0
        self.n_reused = 0
        self.n_copied = 0
        self._memo: dict[tuple[str, int, tuple[str, ...]], torch.Tensor] = {}
        self._lengths: list[int] | None = None
        self._rows: dict[tuple[str, int | None, str], list[int]] = {}

    # ---------------------------------------------------------------------------- methods ---
    def _templates(self, methods: Mapping[str, Steerer] | Sequence[str]) -> dict[str, Steerer]:
        """``{name: steerer}``: fitted steerers as given, the others as unfitted templates."""
        if isinstance(methods, str):
            methods = [m for m in methods.split(",") if m.strip()]
        if isinstance(methods, Mapping):
            out: dict[str, Steerer] = {}
            for name, s in methods.items():
                if not isinstance(name, str) or not name or any(c in name for c in "|/\\\n"):
                    raise DataError(f"Method name {name!r} must be a non-empty string without '|', '/' or newlines.")
                if isinstance(s, str):
                    s = self._make(s, self.layers[0], label=name)
                if not isinstance(s, Steerer):
                    raise DataError(f"methods[{name!r}] is a {type(s).__name__}, not a Steerer; pass an instance "
                                    "(e.g. L2S(15, hidden=64)) or a method name.")
                if not s.is_fitted and s.adds_vectors and not s.builds_from_params:
                    raise DataError(f"methods[{name!r}] is an unfitted {type(s).__name__}, which cannot be fitted "
                                    "here; pass a fitted one.")
                out[name] = s
        else:
            names = [str(m).strip() for m in methods]
            if len(set(names)) != len(names):
                raise DataError(f"methods lists a name twice: {names}; give each method once.")
            out = {name: self._make(name, self.layers[0]) for name in names}
        if not out:
            raise DataError(f"No method given; pass some of {', '.join(buildable_methods())}.")
        unknown = set(self.kwargs) - set(out) - set(METHODS) - {"*"}
        if unknown:  # a typo (kwargs for a known method that is not compared this time are fine)
            raise DataError(f"steerer_kwargs names method(s) {sorted(unknown)} that are neither compared "
                            f"({', '.join(out)}) nor known ({', '.join(METHODS)}); fix the names.")
        needs = [n for n, s in out.items() if not s.is_fitted and s.needs_fit]
        if needs and not self.train:
            raise DataError(f"Method(s) {needs} learn from training items, but train_items is empty; "
                            "pass training items or drop those methods.")
        return out

    def _make(self, method: str, layer: int, *, label: str | None = None) -> Steerer:
        """A steerer of ``method`` at ``layer``, built from its name and ``steerer_kwargs``."""
        if method not in METHODS:
            raise DataError(f"Unknown method {method!r}; use some of {', '.join(buildable_methods())}.")
        cls = METHODS[method]
        if not cls.builds_from_params:
            raise DataError(f"The {method!r} method holds given state and cannot be built from its name: pass a "
                            f"{cls.__name__} instance in methods={{'name': steerer}} instead (e.g. "
                            f"{cls.__name__}.from_vectors(model, {{layer: v}})).")
        name = label or method
        try:
            template = cls()
        except (TypeError, ValueError) as e:
            raise DataError(f"Cannot build {cls.__name__} for method {name!r}: {e}") from e
        accepted = set(template.get_params(deep=False))
        kw: dict[str, Any] = {}
        for shared, value in (("progress", self.progress), ("batch_size", self.batch_size)):
            if shared in accepted:
                kw[shared] = value
        kw.update({k: v for k, v in self.kwargs.get("*", {}).items() if k in accepted})
        kw.update(self.kwargs.get(name, {}))
        bad = sorted(set(kw) - accepted)
        if bad:
            raise DataError(f"{cls.__name__} (method {name!r}) takes no argument(s) {bad}; it takes "
                            f"{sorted(accepted - {'layer'})}.")
        return _clone(template, name, layer=layer, **kw)

    def _at_layer(self, name: str, template: Steerer, layer: int) -> Steerer:
        """A fresh (unfitted) copy of ``template`` at ``layer``; compare's progress setting rules every bar."""
        params = template.get_params(deep=False)
        over: dict[str, Any] = {"layer": layer}
        if "progress" in params:
            over["progress"] = self.progress
        return _clone(template, name, **over)

    def _alpha_grid(self, alphas: Sequence[float] | Mapping[str, Sequence[float]]) -> list[float] | dict[str, list[float]]:
        if not isinstance(alphas, Mapping):
            return _check_alphas(alphas)
        unknown = sorted(set(alphas) - set(self.templates) - {"*"})
        if unknown:
            raise DataError(f"alphas names method(s) {unknown} that are not compared ({', '.join(self.templates)}).")
        grid = {str(k): _check_alphas(v) for k, v in alphas.items()}
        missing = [n for n, s in self.templates.items() if s.adds_vectors and n not in grid and "*" not in grid]
        if missing:
            raise DataError(f"alphas gives no strengths for {missing}; add them or a '*' entry.")
        return grid

    def _alphas_for(self, name: str) -> list[float]:
        if isinstance(self.alphas, list):
            return self.alphas
        return self.alphas.get(name, self.alphas.get("*", []))

    # ---------------------------------------------------------------------------- specs -----
    def _baseline_spec(self, name: str, s: Steerer) -> RunSpec:
        return RunSpec(name, None, None, None, self.max_new_tokens, self._fingerprint(s, "baseline"), self.gen_json,
                       self.batch_key)

    def _fingerprint(self, s: Steerer, kind: str) -> str:
        """What was fitted: class and hyperparameters, plus the training set (``"learner"``: fitted
        here) or the learned state (``"given"``: fitted before); ``"baseline"`` ignores the layer."""
        params = _fitted_params(s)
        if kind == "baseline":
            params.pop("layer", None)
        payload: dict[str, Any] = {"class": type(s).__name__, "method": s.method, "params": params,
                                   "model": self.model_info, "weights": self.model_fp}
        if kind == "given":
            payload["items"] = getattr(s, "items_hash_", "")
            payload["tensors"] = _tensor_digest(s)
        elif kind == "learner" and s.needs_fit:
            payload["items"] = self.train_hash
        return hashlib.sha256(_canon_json(payload).encode()).hexdigest()[:12]

    def _reference(self) -> tuple[str, Steerer]:
        for name, s in self.templates.items():
            if s.is_unsteered:
                return name, s
        name = "none" if "none" not in self.templates else "unsteered"
        return name, NoSteer()

    # ---------------------------------------------------------------------------- run -------
    def _plan(self) -> tuple[list[list[tuple[str, RunSpec, int | None]]], dict[str, Steerer], dict[str, Steerer]]:
        """The grid in run order, as phases: the unsteered reference, the other baselines and given
        steerers, then one phase per layer (its learners share one fit). Sets ``self.specs``."""
        ref_name, ref = self._reference()
        self.ref_name = ref_name
        baselines = {ref_name: ref, **{n: s for n, s in self.templates.items() if not s.adds_vectors}}
        fitted_given = {n: s for n, s in self.templates.items() if s.is_fitted and s.adds_vectors}
        learners = {n: s for n, s in self.templates.items() if n not in baselines and n not in fitted_given}
        ready: list[tuple[str, RunSpec, int | None]] = []
        for name, s in baselines.items():
            ready.append((name, self._baseline_spec(name, s), None))
        for name, s in fitted_given.items():
            for a in self._alphas_for(name):
                ready.append((name, RunSpec(name, s.layer, a, self.positions or s.positions, self.max_new_tokens,
                                            self._fingerprint(s, "given"), self.gen_json, self.batch_key), None))
        phases = [ready[:1], ready[1:]]
        for layer in self.layers:
            phase = []
            for name, t in learners.items():
                s = self._at_layer(name, t, layer)
                fp = self._fingerprint(s, "learner")
                for a in self._alphas_for(name):
                    phase.append((name, RunSpec(name, layer, a, self.positions or s.positions, self.max_new_tokens,
                                                fp, self.gen_json, self.batch_key), layer))
            phases.append(phase)
        self.specs = [sp for phase in phases for _, sp, _ in phase]
        self.ref_spec = self.specs[0]
        return [p for p in phases if p], {**baselines, **fitted_given}, learners

    def run(self) -> CompareResult:
        self.ranks = ranks(self.distributed, self.model.device)
        R = self.ranks
        if R.distributed:
            self.save_steerers = True  # the other ranks load what rank 0 fits
        phases, given, learners = self._plan()
        with contextlib.ExitStack() as stack:
            self._on_main(lambda: self._open_out_dir(stack))
            self._on_main(self._consolidate)
            self.fits = R.broadcast(self.fits)
            self.written = R.broadcast(self.written)
            if not R.is_main:
                self._reload()
            return self._run_phases(phases, given, learners)

    def _on_main(self, fn: Callable[[], None]) -> None:
        """Collective: run ``fn`` on rank 0; a user-facing error there stops every rank with its message."""
        err: BaseException | None = None
        if self.ranks.is_main:
            try:
                fn()
            except (SteerlibError, OSError) as e:
                err = e
        self.ranks.raise_if_any(err)

    def _run_phases(self, phases: list[list[tuple[str, RunSpec, int | None]]], given: Mapping[str, Steerer],
                    learners: Mapping[str, Steerer]) -> CompareResult:
        R = self.ranks
        ready: dict[str, Steerer] = {n: (s if s.is_fitted else s.fit(self.model, [])) for n, s in given.items()}
        bar = tqdm(total=len(self.specs), desc="compare", unit="config", disable=not self.progress or not R.is_main)
        try:
            for phase in phases:
                layer = phase[0][2]
                missing = [self._missing(sp) for _, sp, _ in phase]
                self.n_reused += sum(len(self.eval) - len(m) for m in missing)
                if not any(missing):
                    bar.update(len(phase))
                    continue
                steerers = ready if layer is None else self._fit_collectively(layer, learners)
                work: list[tuple[int, str, list[int]]] = []

                def plan_work(phase=phase, missing=missing, steerers=steerers, work=work) -> None:
                    for k, ((name, sp, _), miss) in enumerate(zip(phase, missing)):
                        if miss:
                            work += [(k, kind, rows) for kind, rows in self._units(sp, steerers[name], miss)]

                self._on_main(plan_work)  # rank 0 plans the phase's work; every rank takes its share
                units = [(phase[k][1], steerers[phase[k][0]], kind, rows) for k, kind, rows in R.broadcast(work)]
                mine = shard(units, R.rank, R.world_size)
                desc = "generate" if layer is None else f"generate L{layer}"
                for sp, steerer, kind, rows in tqdm(mine, desc=desc, unit="batch", leave=False,
                                                    disable=not self.progress or len(mine) < 2):
                    bar.set_postfix_str(sp.label)
                    if kind == "copy":
                        self._copy_unsteered(sp, rows)
                    else:
                        self._generate_rows(sp, steerer, rows)
                bar.update(len(phase))
                self._sync()
        finally:
            bar.close()
        if self.judge is not None or self.fluency:
            self._on_main(self._score)
            self._sync()
        counts = R.gather((self.n_generated, self.n_copied))
        self.n_generated = sum(c[0] for c in counts)
        self.n_copied = sum(c[1] for c in counts)
        if R.is_main:
            self._write_manifest(complete=True)
        self.manifest = R.broadcast(getattr(self, "manifest", {}))
        R.barrier()
        rows = compute_rows(self.gens.records, self.specs, self._items_info(), self.ref_spec, self.cfg,
                            scores=self.scores.records, judge_name=getattr(self.judge, "name", None),
                            pad_token_id=self.pad_id, fluency=self.fluency, max_new_tokens=self.max_new_tokens)
        return CompareResult(rows=rows, out_dir=self.out, specs=list(self.specs), manifest=self.manifest,
                             n_generated=self.n_generated, n_reused=self.n_reused, n_copied=self.n_copied,
                             n_rejected=self.n_rejected)

    def _score(self) -> None:
        if self.judge is not None:
            self._judge()
        if self.fluency:
            self._fluency()

    # ---------------------------------------------------------------------------- the store -
    def _open_out_dir(self, stack: contextlib.ExitStack) -> None:
        """Rank 0: check ``out_dir``, take its lock, and (``resume=False``) delete what compare wrote there."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise PersistenceError(f"{out} exists and is not a folder; choose another output folder.")
        old = read_manifest(out) if (out / RUN_FILE).is_file() else None  # refuses a foreign run.json
        if old is None and not self.resume and out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):
            raise PersistenceError(
                f"{out} is not a compare folder (it has files but no {RUN_FILE} written by compare), so "
                "resume=False (--no-resume) will not delete anything there. Give an empty or new output folder.")
        if old is None:
            for name, key in ((CACHE_FILE, GEN_KEY), (SCORES_FILE, SCORE_KEY)):
                p = out / name
                if p.is_file() and p.stat().st_size and not JsonlCache(p, key, repair=False).records:
                    raise PersistenceError(
                        f"{p} was not written by compare (no record in it is one compare wrote) and {out} has no "
                        f"{RUN_FILE}; compare will not change it. Give compare another output folder.")
        out.mkdir(parents=True, exist_ok=True)
        stack.enter_context(folder_lock(out))
        if old is not None and self.resume:
            if old.get("model") != self.model_info:
                raise CompatibilityError(
                    f"{out} holds a comparison of model {old.get('model', {}).get('name')!r} "
                    f"({old.get('model')}), but this model is {self.model_info}. Use another output folder, "
                    "or pass resume=False (CLI: --no-resume) to start over there.")
            self.fits = {str(k): str(v) for k, v in (old.get("steerers") or {}).items()}
            self.written = set(_written_by(old)) | self.written
        elif old is not None:
            for rel in sorted(_written_by(old), reverse=True):
                _remove_written(out, rel)
            steerers = out / STEERERS_DIR
            if steerers.is_dir() and not any(steerers.iterdir()):
                steerers.rmdir()

    def _consolidate(self) -> None:
        """Rank 0: merge rank parts, set aside bad and stale records, say what was found, write the manifest."""
        digests = self.digests
        gens, gcheck = consolidate(self.out, CACHE_FILE, GEN_KEY, validate=_check_generation,
                                   stale=lambda r: r.get("id") in digests and r.get("item") != digests[r["id"]])
        shas = {k: r.get(CHECKSUM_FIELD) for k, r in gens.records.items()}
        judge = getattr(self.judge, "name", None)

        def stale_score(r: Mapping[str, Any]) -> bool:  # of another generation, or of another judge's weights
            return (r.get("gen") != shas.get((r["method"], r["config"], r["id"]))
                    or (r["scorer"] == judge and r.get("judge_weights", "") != self.judge_fp))

        scores, scheck = consolidate(self.out, SCORES_FILE, SCORE_KEY, validate=_check_score, stale=stale_score)
        if not hasattr(self, "store_checks"):  # what this run found when it started
            self.store_checks = {"generations": gcheck.as_dict(), "scores": scheck.as_dict()}
            self.n_rejected = gcheck.dropped
            for c in (gcheck, scheck):
                msg = c.summary()
                if msg:
                    _log.warning("compare: %s", msg)
            self._write_manifest(complete=False)
        self.gens, self.scores = gens, scores
        self._point_writes()

    def _reload(self) -> None:
        """Read the consolidated store (ranks other than 0, after rank 0 consolidated it)."""
        self.gens = JsonlCache(self.out / CACHE_FILE, GEN_KEY, repair=False, validate=_check_generation)
        self.scores = JsonlCache(self.out / SCORES_FILE, SCORE_KEY, repair=False, validate=_check_score)
        self._point_writes()

    def _point_writes(self) -> None:
        """One process appends to the store's files; rank ``r`` of several to its own part."""
        if self.ranks.distributed:
            self.gens.write_to = self.out / part_file(CACHE_FILE, self.ranks.rank)
            self.scores.write_to = self.out / part_file(SCORES_FILE, self.ranks.rank)

    def _sync(self) -> None:
        """Collective: every rank's appends merged into the store, and seen by every rank."""
        R = self.ranks
        if not R.distributed:
            return
        R.barrier()
        self._on_main(self._consolidate)
        if not R.is_main:
            self._reload()

    def _missing(self, spec: RunSpec) -> list[int]:
        return [i for i, it in enumerate(self.eval) if (spec.method, spec.config, it.id) not in self.gens]

    def _units(self, spec: RunSpec, steerer: Steerer, missing: list[int]) -> list[tuple[str, list[int]]]:
        """The work of ``spec`` as ``(kind, rows)``: its batches that miss a row (``"generate"``, whole,
        so padding never changes), and with ``reuse_unsteered_rows`` one ``"copy"`` of the rows its
        steerer leaves unchanged."""
        miss = set(missing)
        rows = list(range(len(self.eval)))
        units: list[tuple[str, list[int]]] = []
        if self.reuse_unsteered and spec != self.ref_spec:
            rows = self._steered_rows(steerer, spec)
            steered = set(rows)
            copy = [i for i in missing if i not in steered]
            if copy:
                units.append(("copy", copy))
        units += [("generate", b) for b in self._batches(rows) if miss.intersection(b)]
        return units

    def _items_info(self) -> list[dict[str, Any]]:
        return [{"id": it.id, "behavior": it.behavior, "label": _label(it), "has_image": bool(it.images),
                 "item": self.digests[it.id]} for it in self.eval]

    def _write_manifest(self, *, complete: bool) -> None:
        self.written |= {RUN_FILE, CACHE_FILE, SCORES_FILE, rejected_file(CACHE_FILE), rejected_file(SCORES_FILE),
                         *(part_file(f, r) for f in (CACHE_FILE, SCORES_FILE) for r in range(self.ranks.world_size))}
        self.manifest = write_manifest(self.out, {
            "complete": complete,
            "model": self.model_info, "model_fingerprint": self.model_fp, "specs": [s.as_dict() for s in self.specs],
            "reference": self.ref_spec.as_dict(), "items": self._items_info(),
            "metric_config": self.cfg.as_dict(), "judge": getattr(self.judge, "name", None),
            "fluency": self.fluency, "pad_token_id": self.pad_id, "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size, "batching": self.batching, "max_batch_tokens": self.max_batch_tokens,
            "reuse_unsteered_rows": self.reuse_unsteered, "alphas": self.alphas, "layers": self.layers,
            "methods": list(self.templates), "train_items": len(self.train), "train_items_sha256": self.train_hash,
            "generate_kwargs": json.loads(self.gen_json), "world_size": self.ranks.world_size,
            "store": getattr(self, "store_checks", {}), "steerers": dict(sorted(self.fits.items())),
            "written": sorted(self.written),
        })

    # ---------------------------------------------------------------------------- fitting ---
    def _fit_collectively(self, layer: int, learners: Mapping[str, Steerer]) -> dict[str, Steerer]:
        """Every learner at ``layer``.

        Several ranks: rank 0 decides what must be fitted (the rest is loaded from ``out_dir``);
        every rank then fits those same steerers, the P2S extraction split across the ranks
        (:func:`~steerlib.eval.distributed.sharded_extraction`); rank 0 saves them, and a rank
        whose own fit differs from rank 0's by a single bit loads rank 0's, so every rank steers
        with the same tensors.
        """
        R = self.ranks
        if not R.distributed:
            out, todo = self._split_fits(layer, learners)
            self._fit(layer, todo)
            self._write_manifest(complete=False)  # records what was fitted, for a resumed run to load
            return {**out, **todo}
        box: dict[str, Any] = {}

        def decide() -> None:
            box["out"], box["todo"] = self._split_fits(layer, learners)

        self._on_main(decide)
        names = R.broadcast(sorted(box.get("todo", {})))
        out, todo = (box["out"], box["todo"]) if R.is_main else self._split_fits(layer, learners, fit=set(names))
        if not names:
            return out
        self._fit(layer, todo, extract=sharded_extraction(R))
        if R.is_main:
            self._write_manifest(complete=False)
        digests = R.gather({n: _tensor_digest(todo[n]) for n in names})  # after rank 0 saved
        self.fits = R.broadcast(self.fits)
        for n in names:
            if digests[R.rank][n] != digests[0][n]:
                loaded = self._load_saved(n, todo[n], layer)
                if loaded is None:
                    raise PersistenceError(f"Rank {R.rank} cannot load {n} at layer {layer} from "
                                           f"{self._steerer_dir(n, layer)}, which rank 0 saved; is {self.out} on a "
                                           "file system every rank sees?")
                _log.info("compare: rank %d uses rank 0's %s at layer %d (its own fit differs)", R.rank, n, layer)
                todo[n] = loaded
        return {**out, **todo}

    def _split_fits(self, layer: int, learners: Mapping[str, Steerer], *,
                    fit: set[str] | None = None) -> tuple[dict[str, Steerer], dict[str, Steerer]]:
        """The learners at ``layer`` as (ready: fitted without data or loaded from ``out_dir/steerers``
        when fitted there with the same settings, data and model; to fit). ``fit``: the names rank 0
        fits (the others must load)."""
        out: dict[str, Steerer] = {}
        todo: dict[str, Steerer] = {}
        for name, t in learners.items():
            s = self._at_layer(name, t, layer)
            if not s.needs_fit:
                out[name] = s.fit(self.model, [])
            elif fit is not None and name in fit:
                todo[name] = s
            elif (loaded := self._load_saved(name, s, layer)) is not None:
                out[name] = loaded
            elif fit is not None:
                raise PersistenceError(f"Rank {self.ranks.rank} cannot load {name} at layer {layer} from "
                                       f"{self._steerer_dir(name, layer)}, which rank 0 loaded; is {self.out} on a "
                                       "file system every rank sees?")
            else:
                todo[name] = s
        return out, todo

    def _fit(self, layer: int, todo: Mapping[str, Steerer], *, extract: Callable[..., Any] | None = None) -> None:
        """Fit ``todo`` in place (equal extraction settings share one extraction); rank 0 saves them."""
        if not todo:
            return
        fit_sharing_extraction(self.model, self.train, todo, progress=self.progress and self.ranks.is_main,
                               extract=extract)
        if not (self.save_steerers and self.ranks.is_main):
            return
        for name, s in todo.items():
            self.written.add(f"{STEERERS_DIR}/{name}-L{layer}")
            s.save_pretrained(self._steerer_dir(name, layer), overwrite=True)
            self.fits[f"{name}-L{layer}"] = self._fingerprint(s, "learner")

    def _steerer_dir(self, name: str, layer: int) -> Path:
        return self.out / STEERERS_DIR / f"{name}-L{layer}"

    def _load_saved(self, name: str, want: Steerer, layer: int) -> Steerer | None:
        path = self._steerer_dir(name, layer)
        if not (self.resume or self.ranks.distributed) or not path.is_dir():
            return None
        if self.fits.get(f"{name}-L{layer}") != self._fingerprint(want, "learner"):
            if self.ranks.is_main:
                _log.info("compare: refitting %s at layer %s: %s was fitted with other settings, data or model "
                          "weights (or by an older steerlib)", name, layer, path)
            return None
        try:
            got = Steerer.from_pretrained(path, model=self.model)
        except SteerlibError as e:
            _log.warning("compare: refitting %s at layer %s: the saved steerer in %s is not usable (%s)", name, layer,
                         path, e)
            return None
        same = (got.method == want.method and got.layer == want.layer
                and _fitted_params(got) == _fitted_params(want) and getattr(got, "items_hash_", None) == self.train_hash)
        if not same:
            _log.info("compare: refitting %s at layer %s: %s was fitted with other settings or data", name, layer, path)
            return None
        keep = {k: v for k, v in want.get_params(deep=False).items() if k in ("alpha", "positions", "progress")}
        return got.set_params(**keep)

    # ---------------------------------------------------------------------------- generation
    def _prompt_lengths(self) -> list[int]:
        if self._lengths is None:
            self._lengths = self.model.prompt_lengths([it.prompt for it in self.eval],
                                                      [len(it.images) for it in self.eval])
        return self._lengths

    def _batches(self, rows: list[int]) -> list[list[int]]:
        """``rows`` (indices into the evaluation list) as generation batches."""
        bs = self.batch_size
        if self.batching == "slices":
            return [rows[s:s + bs] for s in range(0, len(rows), bs)]
        lengths = self._prompt_lengths()
        return [[rows[j] for j in b] for b in length_batches([lengths[i] for i in rows], bs, self.max_batch_tokens)]

    def _steered_rows(self, steerer: Steerer, spec: RunSpec) -> list[int]:
        """The rows ``steerer`` changes (asked once per fitted steerer, whatever the alpha)."""
        key = (spec.method, spec.layer, spec.fingerprint)
        if key not in self._rows:
            self._rows[key] = self._check_rows(steerer.steered_rows(self.model, self.eval), steerer, spec)
        return self._rows[key]

    def _check_rows(self, rows: Sequence[int], steerer: Steerer, spec: RunSpec) -> list[int]:
        n = len(self.eval)
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n for i in rows):
            raise DataError(f"{type(steerer).__name__}.steered_rows returned {rows!r} for {n} items ({spec.label}); "
                            f"it must return indices in [0, {n}).")
        return sorted(set(rows))

    def _generate_rows(self, spec: RunSpec, steerer: Steerer, idx: list[int]) -> None:
        """Generate one batch (rows ``idx`` of the evaluation list) and append its records."""
        chunk = [self.eval[i] for i in idx]
        g = self._generate_chunk(spec, steerer, chunk)
        recs = [self._record(spec, it, g.texts[k], strip_trailing_pad(g.new_tokens[k].tolist(), self.pad_id))
                for k, it in enumerate(chunk)]
        self.n_generated += self.gens.append(recs)

    def _record(self, spec: RunSpec, it: ContrastiveItem, text: str, token_ids: list[int]) -> dict[str, Any]:
        return {"method": spec.method, "config": spec.config, "id": it.id, "layer": spec.layer, "alpha": spec.alpha,
                "behavior": it.behavior, "label": _label(it), "prompt": it.prompt, "text": text, "token_ids": token_ids,
                "item": self.digests[it.id]}

    def _copy_unsteered(self, spec: RunSpec, idx: list[int]) -> None:
        ref = self.ref_spec
        recs = []
        for i in idx:
            it = self.eval[i]
            base = self.gens.get((ref.method, ref.config, it.id))
            if base is None:  # pragma: no cover - the reference runs first, whole
                raise SteerlibError(f"The unsteered output of item {it.id!r} is missing; rerun compare.")
            recs.append({**self._record(spec, it, base["text"], list(base["token_ids"])), "copied_from": ref.config})
        self.n_copied += self.gens.append(recs)

    def _generate_chunk(self, spec: RunSpec, steerer: Steerer, chunk: list[ContrastiveItem]) -> Generation:
        kw = dict(self.gen_kwargs)
        sampling = bool(kw.get("do_sample"))
        devices = [self.model.device.index or 0] if self.model.device.type == "cuda" else []
        ctx = torch.random.fork_rng(devices=devices) if sampling else contextlib.nullcontext()
        with ctx:
            if sampling:  # the same seed for the same batch, whenever it is generated
                torch.manual_seed(stable_seed(f"{spec.method}|{spec.config}|{chunk[0].id}"))
            vectors = None
            if steerer.adds_vectors and not steerer.vectors_depend_on_alpha and len(self._alphas_for(spec.method)) > 1:
                # the per-input vectors are the same at every alpha: compute them once per batch
                key = (spec.method, int(steerer.layer), tuple(it.id for it in chunk))
                if key not in self._memo:
                    self._memo[key] = steerer.vectors(self.model, steerer.prepare_prompts(list(chunk)))
                vectors = self._memo[key]
            return steerer.generate_batch(self.model, chunk, alpha=spec.alpha, positions=spec.positions,
                                          max_new_tokens=spec.max_new_tokens, vectors=vectors, **kw)

    # ---------------------------------------------------------------------------- scoring ---
    def _judge(self) -> None:
        judge = self.judge
        assert judge is not None
        want = set(self.cfg.unsafe_behaviors)
        items = [it for it in self.eval if it.behavior in want]
        if not items:
            return
        todo: list[tuple[RunSpec, ContrastiveItem, dict[str, Any]]] = []
        for sp in self.specs:
            for it in items:
                rec = self.gens.get((sp.method, sp.config, it.id))
                if rec is not None and (judge.name, sp.method, sp.config, it.id) not in self.scores:
                    todo.append((sp, it, rec))
        step = max(self.batch_size, 8)
        for s in tqdm(range(0, len(todo), step), desc=f"judge {judge.name}", unit="batch", leave=False,
                      disable=not self.progress or len(todo) <= step):
            part = todo[s:s + step]
            ps = judge.judge([it.prompt for _, it, _ in part], [rec["text"] for _, _, rec in part])
            if len(ps) != len(part):
                raise DataError(f"The judge {judge.name!r} returned {len(ps)} scores for {len(part)} responses; "
                                "it must return one per response.")
            self.scores.append([{"scorer": judge.name, "method": sp.method, "config": sp.config, "id": it.id,
                                 "value": float(p), "gen": rec[CHECKSUM_FIELD], "judge_weights": self.judge_fp}
                                for (sp, it, rec), p in zip(part, ps)])

    def _fluency(self) -> None:
        tok = self.model.tokenizer
        chat = getattr(tok, "chat_template", None) is not None
        if self.batching == "length":
            self._fluency_per_output(chat)
            return
        todo: list[tuple[RunSpec, ContrastiveItem, dict[str, Any]]] = []
        for sp in self.specs:
            for it in self.eval:
                rec = self.gens.get((sp.method, sp.config, it.id))
                if (rec is None or it.images or (PPL_SCORER, sp.method, sp.config, it.id) in self.scores
                        or not tok(rec["text"], add_special_tokens=False)["input_ids"]):
                    continue
                todo.append((sp, it, rec))
        step = self.fluency_batch_size
        for s in tqdm(range(0, len(todo), step), desc="fluency (perplexity)", unit="batch", leave=False,
                      disable=not self.progress or len(todo) <= step):
            part = todo[s:s + step]
            ppl = perplexity(self.model.model, tok, [it.prompt for _, it, _ in part], [r["text"] for _, _, r in part],
                             batch_size=step, chat_template=chat)
            self.scores.append([{"scorer": PPL_SCORER, "method": sp.method, "config": sp.config, "id": it.id,
                                 "value": float(v), "gen": rec[CHECKSUM_FIELD]} for (sp, it, rec), v in zip(part, ppl)])

    def _fluency_per_output(self, chat: bool) -> None:
        """Perplexity once per distinct (item, output) still unscored, in one length-bucketed pass
        (most outputs of a gated steerer equal the unsteered ones)."""
        todo: dict[tuple[int, str], list[RunSpec]] = {}
        for sp in self.specs:
            for i, it in enumerate(self.eval):
                rec = self.gens.get((sp.method, sp.config, it.id))
                if (rec is None or it.images or (PPL_SCORER, sp.method, sp.config, it.id) in self.scores
                        or not rec["text"].strip()):
                    continue
                todo.setdefault((i, rec["text"]), []).append(sp)
        if not todo:
            return
        pairs = sorted(todo)
        ppl = perplexity(self.model.model, self.model.tokenizer, [self.eval[i].prompt for i, _ in pairs],
                         [t for _, t in pairs], batch_size=self.fluency_batch_size,
                         max_batch_tokens=self.max_batch_tokens, chat_template=chat, progress=self.progress)
        gen = {(sp.method, sp.config, it.id): rec[CHECKSUM_FIELD] for (sp, it), rec in self._gen_records()}
        self.scores.append([{"scorer": PPL_SCORER, "method": sp.method, "config": sp.config, "id": self.eval[i].id,
                             "value": float(v), "gen": gen[(sp.method, sp.config, self.eval[i].id)]}
                            for (i, t), v in zip(pairs, ppl, strict=True) for sp in todo[(i, t)]])

    def _gen_records(self) -> Iterator[tuple[tuple[RunSpec, ContrastiveItem], dict[str, Any]]]:
        for sp in self.specs:
            for it in self.eval:
                rec = self.gens.get((sp.method, sp.config, it.id))
                if rec is not None:
                    yield (sp, it), rec


def buildable_methods() -> list[str]:
    """The method names :func:`compare` can build from a name alone."""
    return [m for m, cls in METHODS.items() if cls.builds_from_params]


# =============================================================================================
# Helpers
# =============================================================================================

def _check_positive_int(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{what} must be a positive int, got {value!r}.")


def _check_item_list(items: Sequence[ContrastiveItem], what: str, *, allow_empty: bool) -> list[ContrastiveItem]:
    if isinstance(items, (str, ContrastiveItem)):
        raise DataError(f"{what} must be a list of ContrastiveItem, not a single {type(items).__name__}.")
    out = list(items)
    if not out and not allow_empty:
        raise DataError(f"{what} is empty: pass at least one ContrastiveItem.")
    for i, it in enumerate(out):
        if not isinstance(it, ContrastiveItem):
            raise DataError(f"{what}[{i}] is a {type(it).__name__}, not a ContrastiveItem.")
    return out


def _check_unique_ids(items: Sequence[ContrastiveItem]) -> None:
    seen: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.id in seen:
            raise DataError(f"eval_items[{seen[it.id]}] and eval_items[{i}] share the id {it.id!r}; ids key the "
                            "generation cache, so give every item a unique id (or drop the duplicate).")
        seen[it.id] = i


def _check_alphas(alphas: Sequence[float]) -> list[float]:
    if isinstance(alphas, (int, float)) and not isinstance(alphas, bool):
        alphas = [alphas]
    out = []
    for a in alphas:
        if isinstance(a, bool):
            raise DataError(f"alpha {a!r} is a bool; give numbers, e.g. alphas=[0.5, 1.0].")
        check_finite(a, "alpha")
        out.append(float(a))
    if not out:
        raise DataError("alphas is empty: give at least one steering strength, e.g. alphas=[1.0].")
    if len(set(out)) != len(out):
        raise DataError(f"alphas {out} repeat a value; give each strength once.")
    return out


def _label(it: ContrastiveItem) -> str | None:
    """The POPE yes/no label of an item (its behaviour or ``meta["label"]``), else None."""
    lab = it.meta.get("label") if isinstance(it.meta, dict) else None
    for x in (lab, it.behavior):
        if isinstance(x, str) and x.strip().lower() in ("yes", "no"):
            return x.strip().lower()
    return None


def _clone(template: Steerer, name: str, **overrides: Any) -> Steerer:
    """``template.clone(**overrides)``, with construction problems reported as :class:`DataError`."""
    try:
        return template.clone(**overrides)
    except SteerlibError:
        raise
    except (TypeError, ValueError) as e:
        raise DataError(f"Cannot build {type(template).__name__} for method {name!r} with {overrides}: {e}") from e


def _canon(x: Any) -> Any:
    return json.loads(json.dumps(x, sort_keys=True, default=str))


def _canon_json(x: Any) -> str:
    return json.dumps(x, sort_keys=True, default=str, separators=(",", ":"))


def _fitted_params(s: Steerer) -> dict[str, Any]:
    return {k: v for k, v in _canon(s.get_params(deep=False)).items() if k not in _NOT_FITTED}


def _tensor_digest(s: Steerer) -> str:
    h = hashlib.sha256()
    for name, t in sorted(s.state_tensors().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _run_model_info(model: SteerableModel) -> dict[str, Any]:
    """:func:`~steerlib.steerers.base.model_info`, named by the folder's last part (not where it was
    loaded from), so a run resumes with the same model loaded from another place."""
    info = model_info(model)
    return {**info, "name": Path(str(info["name"]).rstrip("/")).name or info["name"]}


def _check_generation(rec: Mapping[str, Any]) -> str | None:
    """Why a generation record cannot be used (wrong field types), or None."""
    if not isinstance(rec.get("text"), str):
        return "text is not a string"
    ids = rec.get("token_ids")
    if not isinstance(ids, list) or any(isinstance(t, bool) or not isinstance(t, int) for t in ids):
        return "token_ids is not a list of ints"
    if not isinstance(rec.get("item"), str):
        return "no item digest"
    return None


def _check_score(rec: Mapping[str, Any]) -> str | None:
    """Why a score record cannot be used, or None."""
    v = rec.get("value")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "value is not a number"
    if not isinstance(rec.get("gen"), str):
        return "no generation checksum"
    return None


def _written_by(manifest: Mapping[str, Any]) -> list[str]:
    """The files a compare run wrote in its folder, as its manifest lists them (format 1 manifests
    list none: their fixed files and steerer folders)."""
    listed = manifest.get("written")
    if isinstance(listed, list):
        return [str(x) for x in listed]
    methods = [str(m) for m in manifest.get("methods") or []]
    layers = [x for x in manifest.get("layers") or [] if isinstance(x, int)]
    return [CACHE_FILE, SCORES_FILE, RUN_FILE] + [f"{STEERERS_DIR}/{m}-L{x}" for m in methods for x in layers]


def _is_compare_file(rel: str) -> bool:
    """Whether ``rel`` (relative to a compare folder) names a kind of file compare writes there."""
    if rel in {RUN_FILE, CACHE_FILE, SCORES_FILE, rejected_file(CACHE_FILE), rejected_file(SCORES_FILE)}:
        return True
    if any(re.fullmatch(re.escape(part_file(f, 0)).replace("rank0", r"rank\d+"), rel) for f in (CACHE_FILE, SCORES_FILE)):
        return True
    head, _, name = rel.partition("/")
    return head == STEERERS_DIR and re.fullmatch(r"[^/\\]+-L\d+", name) is not None and name not in (".", "..")


def _remove_written(out: Path, rel: str) -> None:
    """Delete one file (or steerer folder) compare wrote in ``out``; names that are not compare's own
    kinds (a hand-edited manifest) are never touched, and a symlink is removed, not followed."""
    if not _is_compare_file(rel):
        _log.warning("compare: not deleting %r listed in the manifest of %s: not a file compare writes", rel, out)
        return
    p = out / rel
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir() and rel.startswith(STEERERS_DIR + "/"):
        shutil.rmtree(p)
