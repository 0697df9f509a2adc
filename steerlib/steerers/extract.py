"""P2S extraction: per-input steering vectors from two teacher-forced runs.

For an item with prompt ``T`` and completions ``T+`` / ``T-``, the P2S vector at layer ``L`` is
``h_L(T || T+) - h_L(T || T-)`` reduced over positions:

* ``end_of_turn``: the last token of the closed assistant turn (the paper's safety recipe; the old
  spelling ``last`` is accepted with a DeprecationWarning);
* ``completion_mean``: the mean over the forced completion tokens;
* ``sampled_mean``: the mean over the forced completion plus ``continuation_tokens`` sampled
  after it with a fixed seed (the paper's POPE recipe).

The same pass also yields L2S's input: the state at the last prompt token (with or without the
generation prompt) at another layer, which by causality equals a run of the bare prompt.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..batching import length_batches
from ..data.items import ContrastiveItem, check_items
from ..engine import Batch, SteerableModel
from ..errors import DataError
from ..intervention import check_layers
from ..persistence import write_text_atomic
from ..positions import P2S_REDUCTIONS, P2SReduction, SourcePosition
from ..progress import tqdm

REDUCTIONS: tuple[P2SReduction, ...] = P2S_REDUCTIONS
#: Old P2S reduction spellings, still accepted with a DeprecationWarning.
DEPRECATED_P2S_REDUCTIONS = {"last": "end_of_turn"}


@dataclass
class P2SFeatures:
    """Targets ``z`` (``[n, d]``) at ``layer`` and, when asked, inputs ``h`` at ``input_layer``."""

    z: Float[Tensor, "n d_model"]
    h: Float[Tensor, "n d_model"] | None
    layer: int
    input_layer: int | None


def check_reduction(reduction: str) -> P2SReduction:
    """The P2S reduction's current name (an old spelling warns), or :class:`DataError`."""
    if reduction in DEPRECATED_P2S_REDUCTIONS:
        new = DEPRECATED_P2S_REDUCTIONS[reduction]
        warnings.warn(f"The P2S reduction {reduction!r} is now called {new!r}; the old name will be removed.",
                      DeprecationWarning, stacklevel=3)
        return new  # type: ignore[return-value]
    if reduction not in REDUCTIONS:
        raise DataError(f"Unknown P2S reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}.")
    return reduction  # type: ignore[return-value]


@dataclass(frozen=True)
class P2SExtraction:
    """How a P2S-based steerer extracts its vectors, as one frozen value.

    Steerers whose values are equal can share one extraction:
    :func:`~steerlib.steerers.sharing.fit_sharing_extraction` runs the teacher-forced passes once
    for all of them.
    """

    reduction: P2SReduction = "completion_mean"
    continuation_tokens: int = 100
    seed: int = 0
    batch_size: int = 8

    def extract(self, model: SteerableModel, items: Sequence[ContrastiveItem], layers: Sequence[int], *,
                input_layers: dict[int, int] | None = None, input_position: SourcePosition = "last_prompt",
                progress: bool = True) -> dict[int, P2SFeatures]:
        """:func:`extract_p2s_layers` with these settings."""
        return extract_p2s_layers(model, items, layers, input_layers=input_layers, reduction=self.reduction,
                                  input_position=input_position, batch_size=self.batch_size,
                                  continuation_tokens=self.continuation_tokens, seed=self.seed, progress=progress)


def extract_p2s(
    model: SteerableModel,
    items: Sequence[ContrastiveItem],
    layer: int,
    *,
    reduction: str = "completion_mean",
    input_layer: int | None = None,
    input_position: str = "last_prompt",
    batch_size: int = 8,
    continuation_tokens: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> P2SFeatures:
    """P2S vectors for ``items`` (and optionally L2S inputs at ``input_layer``), in the items' order."""
    inputs = {layer: input_layer} if input_layer is not None else {}
    return extract_p2s_layers(model, items, [layer], input_layers=inputs, reduction=reduction,
                              input_position=input_position, batch_size=batch_size,
                              continuation_tokens=continuation_tokens, seed=seed, progress=progress)[layer]


def extract_p2s_layers(
    model: SteerableModel,
    items: Sequence[ContrastiveItem],
    layers: Sequence[int],
    *,
    input_layers: dict[int, int] | None = None,
    reduction: str = "completion_mean",
    input_position: str = "last_prompt",
    batch_size: int = 8,
    continuation_tokens: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> dict[int, P2SFeatures]:
    """P2S vectors at several layers from the same teacher-forced passes.

    ``input_layers`` maps a target layer to the layer whose state (at ``input_position``) is
    returned as that target's L2S input; layers absent from it get ``h = None``.
    """
    items = check_items(items, need_completions=True, what="P2S item list")
    reduction = check_reduction(reduction)
    layers = sorted(set(check_layers(list(layers), model.num_layers)))
    input_layers = dict(input_layers or {})
    lengths = model.prompt_lengths([it.prompt for it in items], [len(it.images) for it in items])
    z = {layer: torch.empty(len(items), model.hidden_size) for layer in layers}
    h = {layer: torch.empty(len(items), model.hidden_size) for layer in input_layers}
    bar = tqdm(total=len(items), desc=f"P2S layers {layers}", unit="item", disable=not progress, leave=False)
    for idx in length_batches(lengths, batch_size):  # similar lengths together: less padding
        chunk = [items[i] for i in idx]
        zb, hb = _p2s_batch(model, chunk, layers, reduction, sorted(set(input_layers.values())), input_position,
                            continuation_tokens, seed)
        for layer in layers:
            z[layer][idx] = zb[layer]
        for layer, src in input_layers.items():
            h[layer][idx] = hb[src]
        bar.update(len(idx))
    bar.close()
    return {layer: P2SFeatures(z=z[layer], h=h.get(layer), layer=layer, input_layer=input_layers.get(layer))
            for layer in layers}


def _p2s_batch(model: SteerableModel, chunk: list[ContrastiveItem], layers: list[int], reduction: str,
               input_layers: list[int], input_position: str, continuation_tokens: int,
               seed: int) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    n = len(chunk)
    prompts = [it.prompt for it in chunk] * 2
    images = [list(it.images) for it in chunk] * 2
    completions = [it.positive for it in chunk] + [it.negative for it in chunk]
    close = reduction == "end_of_turn"
    if reduction == "sampled_mean":
        batch = model.encode(prompts, images if any(images) else None, completions=completions, close_turn=close)
        zs, hs = {}, {}
        pos = batch.index(input_position)[:n]
        for k, layer in enumerate(layers):
            means, states = _sampled_means(model, batch, layer, continuation_tokens, seed,
                                           input_layers if k == 0 else [])
            zs[layer] = means[:n] - means[n:]
            for src in input_layers if k == 0 else []:
                hs[src] = states[src][0][torch.arange(n), pos]
        return zs, hs
    # Rows whose two completions are identical (e.g. a benign "no change" class) have z = 0 exactly:
    # run only their positive sequence.
    differ = [i for i, it in enumerate(chunk) if it.negative != it.positive]
    keep = list(range(n)) + [n + i for i in differ]
    batch = model.encode([prompts[i] for i in keep], [images[i] for i in keep] if any(images) else None,
                         completions=[completions[i] for i in keep], close_turn=close)
    target = "last_token" if close else "completion_mean"
    reads = [(layer, target) for layer in layers] + [(src, input_position) for src in input_layers]
    got = model.read_many(batch, reads)
    zs = {}
    for layer in layers:
        pos = got[(layer, target)][:n]
        neg = pos.clone()
        neg[differ] = got[(layer, target)][n:]
        zs[layer] = pos - neg
    return zs, {src: got[(src, input_position)][:n] for src in input_layers}


def _sampled_means(model: SteerableModel, batch: Batch, layer: int, n_tokens: int, seed: int,
                   input_layers: Sequence[int]) -> tuple[Tensor, dict[int, list[Tensor]]]:
    """Mean state over the forced completion plus a seeded sampled continuation, per row."""
    collect = sorted({layer, *input_layers})
    cuda = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        gen = model.generate(batch, max_new_tokens=n_tokens, collect=collect, do_sample=True, decode=False)
    assert gen.states is not None
    steps = gen.states[layer]
    prefill = steps[0]
    mask = batch.completion_mask().to(prefill.dtype)[..., None]
    total = (prefill * mask).sum(1)
    count = mask.sum(1).squeeze(-1)
    eos = model.tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    new = gen.new_tokens
    alive = torch.ones(batch.size, dtype=torch.bool)
    for t, st in enumerate(steps[1:], start=1):
        fed = new[:, t - 1]  # token fed at step t was generated at step t-1
        if eos_ids:
            alive &= ~torch.isin(fed, torch.tensor(sorted(eos_ids)))
        w = alive.to(st.dtype)
        total += st[:, -1] * w[:, None]
        count += w
    return total / count.clamp(min=1)[:, None], gen.states


def equalize_norms(z: Float[Tensor, "n d_model"], behaviors: Sequence[str], reference: str) -> Float[Tensor, "n d_model"]:
    """Rescale each behaviour group so its mean norm equals the ``reference`` group's.

    The paper rescales its expert-deferral blocks to the harmful block's mean norm before
    training g. Groups whose vectors are all zero (e.g. a benign "no change" class) stay zero.
    """
    if len(behaviors) != z.shape[0]:
        raise DataError(f"{len(behaviors)} behaviour labels for {z.shape[0]} vectors.")
    labels = list(behaviors)
    if reference not in labels:
        raise DataError(f"Norm reference behaviour {reference!r} is not among the labels {sorted(set(labels))}; "
                        "pass equalize_norms_to= one of these labels, or None.")
    norms = z.norm(dim=-1)
    ref = norms[[i for i, b in enumerate(labels) if b == reference]].mean()
    out = z.clone()
    for b in set(labels) - {reference}:
        idx = [i for i, x in enumerate(labels) if x == b]
        m = norms[idx].mean()
        if m > 0:
            out[idx] = z[idx] * (ref / m)
    return out


def extract_p2s_to_disk(
    model: SteerableModel,
    items: Sequence[ContrastiveItem],
    layer: int,
    out_dir: str | Path,
    *,
    shard_size: int = 256,
    progress: bool = True,
    **kwargs: Any,
) -> Path:
    """Stream P2S features to ``out_dir`` in safetensors shards (memory stays flat in the item count).

    Each shard holds ``z`` (and ``h`` with ``input_layer=``) for ``shard_size`` consecutive items
    plus their ids; a shard already on disk with the same ids is kept, so an interrupted run
    resumes. ``kwargs`` go to :func:`extract_p2s`. Read the result with :func:`load_p2s`.
    """
    from safetensors.torch import save_file

    items = check_items(items, need_completions=True, what="P2S item list")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, start in enumerate(tqdm(range(0, len(items), shard_size), desc="P2S shards", unit="shard",
                                   disable=not progress, leave=False)):
        chunk = items[start:start + shard_size]
        name = f"p2s-{k:05d}.safetensors"
        ids_name = f"p2s-{k:05d}.json"
        ids = [it.id for it in chunk]
        if (out / name).is_file() and (out / ids_name).is_file() and json.loads((out / ids_name).read_text()) == ids:
            shards.append(name)
            continue
        feats = extract_p2s(model, chunk, layer, progress=False, **kwargs)
        tensors = {"z": feats.z.contiguous()}
        if feats.h is not None:
            tensors["h"] = feats.h.contiguous()
        tmp = out / f".{name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, out / name)
        write_text_atomic(out / ids_name, json.dumps(ids))
        shards.append(name)
    write_text_atomic(out / "index.json", json.dumps({"layer": layer, "n_items": len(items), "shards": shards,
                                                      "input_layer": kwargs.get("input_layer")}, indent=2))
    return out


def load_p2s(out_dir: str | Path) -> P2SFeatures:
    """Read the shards written by :func:`extract_p2s_to_disk` back into one :class:`P2SFeatures`."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    index_p = out / "index.json"
    if not index_p.is_file():
        raise DataError(f"No P2S shards in {out}: index.json is missing (the extraction did not finish).")
    index = json.loads(index_p.read_text())
    parts = [load_file(str(out / s)) for s in index["shards"]]
    z = torch.cat([p["z"] for p in parts])
    h = torch.cat([p["h"] for p in parts]) if parts and "h" in parts[0] else None
    return P2SFeatures(z=z, h=h, layer=index["layer"], input_layer=index.get("input_layer"))
