"""Fitting several steerers from one shared P2S extraction."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..data.items import ContrastiveItem
from ..engine import SteerableModel
from ..positions import SourcePosition
from .base import Steerer
from .extract import P2SExtraction, P2SFeatures


def fit_sharing_extraction(model: SteerableModel, items: Sequence[ContrastiveItem],
                           steerers: Mapping[str, Steerer], *, progress: bool = True,
                           extract: Callable[..., dict[int, P2SFeatures]] | None = None) -> None:
    """Fit every steerer of ``steerers`` on ``items``, in place.

    Steerers that learn from P2S vectors and report equal :attr:`~steerlib.steerers.Steerer.extraction`
    values share one extraction (all their layers from the same teacher-forced passes); the others
    are fitted on their own. A steerer that also needs g's input states (``input_read()``) gets
    them from the shared passes unless another steerer of the group reads a different layer or
    position at the same target layer.

    ``extract(ex, model, items, layers, input_layers=..., input_position=..., progress=...)`` runs a
    shared extraction in place of ``ex.extract(model, items, layers, ...)`` (same result); for
    example :func:`steerlib.eval.distributed.sharded_extraction`, which splits its batches across
    the ranks of a ``torchrun`` run.
    """
    items = list(items)
    groups: dict[P2SExtraction, list[str]] = {}
    for name, s in steerers.items():
        ex = s.extraction if s.needs_fit else None
        if ex is None:
            s.fit(model, items)
        else:
            groups.setdefault(ex, []).append(name)
    for ex, names in groups.items():
        if len(names) == 1:
            steerers[names[0]].fit(model, items)
            continue
        inputs: dict[int, int] = {}
        position: SourcePosition | None = None
        shared: list[str] = []
        for name in names:
            s = steerers[name]
            read = s.input_read()  # type: ignore[attr-defined]
            if read is not None:
                src, pos = read
                if inputs.get(s.layer, src) != src or (position is not None and pos != position):
                    s.fit(model, items)  # another input state than the group's: its own extraction
                    continue
                inputs[s.layer], position = src, pos
            shared.append(name)
        if not shared:
            continue
        run = extract or (lambda ex, *args, **kw: ex.extract(*args, **kw))
        feats = run(ex, model, items, sorted({steerers[n].layer for n in shared}), input_layers=inputs,
                    input_position=position or "last_prompt", progress=progress)
        for name in shared:
            s = steerers[name]
            f = feats[s.layer]
            s.fit_from_p2s(model, items, f.z, f.h if s.input_read() is not None else None)  # type: ignore[attr-defined]
