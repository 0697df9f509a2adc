"""The processes of a data-parallel run, as ``torchrun`` starts them (``torch.distributed``).

:func:`ranks` says which process this is: under ``torchrun --nproc-per-node N`` (or
``accelerate launch``), which set ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR``,
it joins (or starts) the default process group — NCCL when the model is on a CUDA device, gloo
otherwise — and coordinates over gloo (a gloo group beside an NCCL default one), since what the
ranks exchange are small Python objects. A plain ``python`` process is rank 0 of 1 and nothing
is initialised. Nothing here is a cluster of its own: the ranks are torch's.

:func:`shard` is the deterministic split of a work list used by
:func:`~steerlib.eval.compare.compare`: rank ``r`` takes items ``r, r + N, r + 2N, ...``.
:func:`sharded_extraction` splits a P2S extraction's batches the same way and gathers the
per-item vectors on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch

from ..errors import InputError

__all__ = ["DISTRIBUTED", "Ranks", "env_world_size", "is_main_process", "local_device", "ranks", "shard",
           "sharded_extraction"]

T = TypeVar("T")

#: ``"auto"``: use ``torch.distributed`` when it is initialised or ``torchrun``'s variables are set;
#: ``"off"``: run as one process whatever the environment says.
DISTRIBUTED = ("auto", "off")
Distributed = Literal["auto", "off"]


def env_world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it (1 when unset)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise InputError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; launch with torchrun "
                         "--nproc-per-node N, which sets it.") from None


def is_main_process() -> bool:
    """Whether this is rank 0 (of a ``torch.distributed`` run, or the only process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0") or 0) == 0


def local_device() -> str | None:
    """``"cuda:<LOCAL_RANK>"`` under ``torchrun`` on a machine with GPUs (one device per rank), else None."""
    if env_world_size() > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


@dataclass(frozen=True)
class Ranks:
    """This process's place in a run: ``rank`` of ``world_size``; ``group`` is the gloo group the
    ranks coordinate over (None for one process, or the default group when it is gloo)."""

    rank: int = 0
    world_size: int = 1
    group: Any = None
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (nothing for one process)."""
        if self.distributed:
            torch.distributed.barrier(group=self.group)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def raise_if_any(self, error: BaseException | None) -> None:
        """Collective: raise ``error`` here, or on every rank the first rank's error message when
        another rank failed (so no rank waits forever at the next barrier)."""
        errors = self.gather(None if error is None else (type(error).__name__, str(error)))
        if error is not None:
            raise error
        for r, e in enumerate(errors):
            if e is not None:
                from ..errors import SteerlibError

                raise SteerlibError(f"rank {r} stopped: {e[0]}: {e[1]}")


def ranks(mode: Distributed = "auto", device: torch.device | None = None) -> Ranks:
    """The :class:`Ranks` of this process.

    With ``mode="auto"``, an initialised default process group is used as it is; otherwise, when
    ``WORLD_SIZE`` > 1 (``torchrun``), the default group is initialised from the environment
    (``backend="nccl"`` when ``device`` is a CUDA device, else ``"gloo"``; NCCL ranks also set
    their CUDA device). ``mode="off"`` is one process.
    """
    if mode not in DISTRIBUTED:
        raise InputError(f"distributed must be one of {DISTRIBUTED}, got {mode!r}.")
    dist = torch.distributed
    if mode == "off" or not dist.is_available():
        return Ranks()
    if not dist.is_initialized():
        if env_world_size() < 2:
            return Ranks()
        cuda = device is not None and torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    world = dist.get_world_size()
    if world < 2:
        return Ranks()
    backend = str(dist.get_backend())
    group = None if backend == "gloo" else dist.new_group(backend="gloo")
    return Ranks(rank=dist.get_rank(), world_size=world, group=group, backend=backend)


def shard(work: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s share of ``work``: every ``world_size``-th element from the ``rank``-th."""
    return list(work[rank::world_size])


def sharded_extraction(r: Ranks) -> Callable[..., dict[int, Any]]:
    """An ``extract`` for :func:`~steerlib.steerers.fit_sharing_extraction` that splits the
    teacher-forced batches across the ranks and gathers the per-item vectors on every rank.

    The batches are those one process makes (:func:`~steerlib.batching.length_batches` of the
    prompt lengths, ``ex.batch_size`` rows each), each run whole by one rank, so every item's
    vectors are computed with the same padding as in a one-process run (and ``sampled_mean`` is
    seeded per batch), hence equal to it. A collective: every rank must call it with the same items.
    """
    from ..batching import length_batches
    from ..steerers.extract import P2SFeatures

    def run(ex: Any, model: Any, items: Sequence[Any], layers: Sequence[int], *,
            input_layers: dict[int, int] | None = None, input_position: str = "last_prompt",
            progress: bool = True) -> dict[int, Any]:
        items = list(items)
        lengths = model.prompt_lengths([it.prompt for it in items], [len(it.images) for it in items])
        mine = shard(length_batches(lengths, ex.batch_size), r.rank, r.world_size)
        got = []
        for idx in mine:  # one batch a call: its rows in the order one process batches them
            f = ex.extract(model, [items[i] for i in idx], layers, input_layers=input_layers,
                           input_position=input_position, progress=False)
            got.append((idx, {layer: (f[layer].z, f[layer].h) for layer in f}))
        layer_list = sorted(set(layers))
        z = {layer: torch.zeros(len(items), model.hidden_size) for layer in layer_list}
        h = {layer: torch.zeros(len(items), model.hidden_size) for layer in (input_layers or {})}
        for part in r.gather(got):
            for idx, feats in part:
                for layer, (zb, hb) in feats.items():
                    z[layer][idx] = zb
                    if hb is not None and layer in h:
                        h[layer][idx] = hb
        return {layer: P2SFeatures(z=z[layer], h=h.get(layer), layer=layer,
                                   input_layer=(input_layers or {}).get(layer)) for layer in layer_list}

    return run
