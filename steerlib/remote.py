"""Steering a model you do not host: every pass through nnsight's remote execution (NDIF).

``SteerableModel(..., remote=True)`` (or :func:`steerlib.zoo.remote_steerable` for a repo id) runs each pass of
the engine -- ``read`` / ``read_many``, ``forward``, ``generate`` -- as one nnsight request. The
client keeps everything that is not the model: chat templates, tokenisation, image preprocessing,
position masks, the layer plan. What travels to the server is the request nnsight serializes: the
encoded tensors, the intervention (vectors, or L2S's g with its weights), the reductions of a read,
and the steerlib functions the trace body calls, shipped *by value* (steerlib is not installed on
an NDIF server). What comes back is only what the body saves: the reduced reads (``[batch,
d_model]`` per request, not whole hidden-state tensors unless ``per_token`` is asked for), the
generated ids and, when asked for, the logits.

``remote="local"`` is nnsight's offline stand-in for a server, made strict in two ways a real
server is (see :class:`StrictLocalSimulation`): steerlib (and the other packages in
:data:`SERVER_LACKS`) cannot be imported while the request is deserialized, even from an editable
install, and the request runs on the *deserialized* copies of its values, so only what it saves
reaches the caller.

Round trips: one per pass; L2S with ``input_layer > layer`` costs one more (the unsteered read of
g's input; g then runs on the client, on the returned ``[batch, d_model]`` state), L2S with
``input_layer <= layer`` none (g runs on the server inside the steered pass).
"""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any

import nnsight
import torch
from nnsight.intervention.backends.local import LocalSimulationBackend
from torch import Tensor

from .adapters.base import resolve_path
from .errors import InputError, SteerlibError

if TYPE_CHECKING:
    from .encoding import Batch
    from .intervention import Intervention

Read = Callable[[int, Tensor], Any]

__all__ = ["SERVER_LACKS", "PassOps", "RemoteBackend", "RemoteEnvironmentError", "RemoteError",
           "StrictLocalSimulation", "check_remote_environment", "shipping"]

SERVER_LACKS: tuple[str, ...] = ("steerlib", "jaxtyping", "beartype")
"""Packages a steerlib client has and an NDIF server does not (its image has torch, transformers,
accelerate, einops, peft, nnsight and their dependencies): :class:`StrictLocalSimulation` refuses
to import them while a request is deserialized."""

CRITICAL = ("nnsight", "torch", "transformers")
"""Packages whose client and server versions must match (nnsight's own list of critical packages)."""


class RemoteError(SteerlibError, RuntimeError):
    """A remote (NDIF) pass cannot be run as asked."""


class RemoteEnvironmentError(RemoteError):
    """The client's and the server's versions of nnsight / torch / transformers / Python differ."""


# ------------------------------------------------------------------ shipping ----
@contextmanager
def shipping() -> Iterator[None]:
    """Ship steerlib by value with the requests made inside the block (``nnsight.register``).

    cloudpickle's by-value registry is process-wide, so steerlib is unregistered again on the way
    out when this block registered it (nothing else the user pickles is affected)."""
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES, unregister_pickle_by_value

    from nnsight.intervention.serialization import CustomCloudPickler

    package = sys.modules[__name__.split(".")[0]]
    added = package.__name__ not in _PICKLE_BY_VALUE_MODULES
    if added:
        nnsight.register(package)
    by_source = CustomCloudPickler._dynamic_function_reduce
    CustomCloudPickler._dynamic_function_reduce = _reduce_function  # type: ignore[method-assign]
    try:
        yield
    finally:
        CustomCloudPickler._dynamic_function_reduce = by_source  # type: ignore[method-assign]
        if added:
            unregister_pickle_by_value(package)


def _reduce_function(pickler: Any, func: Any) -> Any:
    """nnsight ships a function by its source, recompiled at module level on the server; a method
    using zero-argument ``super()`` then loses its ``__class__`` cell and fails there. Such methods
    (steerlib's class hierarchies) travel as cloudpickle's bytecode instead, which keeps the cell
    (hence the Python major.minor check of :func:`check_remote_environment`)."""
    import cloudpickle

    if "__class__" in func.__code__.co_freevars:
        return cloudpickle.CloudPickler._dynamic_function_reduce(pickler, func)
    return _BY_SOURCE(pickler, func)


def _by_source() -> Any:
    from nnsight.intervention.serialization import CustomCloudPickler

    return CustomCloudPickler._dynamic_function_reduce


_BY_SOURCE = _by_source()


class _Blocker:
    """A ``sys.meta_path`` finder that refuses some top-level packages (an editable install's
    finder would otherwise re-import a hidden package during the simulated deserialize)."""

    def __init__(self, roots: set[str]) -> None:
        self.roots = roots

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] in self.roots:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on the server)", name=name)
        return None


class StrictLocalSimulation(LocalSimulationBackend):
    """nnsight's ``remote="local"`` backend, as strict as a server.

    Like nnsight's: the request is serialized exactly as for NDIF and deserialized with the user's
    non-installed modules hidden. Stricter in two ways a real server is:

    * the packages in :data:`SERVER_LACKS` (and every hidden module that does not live in
      site-packages) cannot be imported during the deserialize, even through an editable
      install's import hook, so a steerlib function that was not shipped by value fails here as
      it would on NDIF;
    * the deserialized request is what runs (its own copies of every value), and only the values
      it saved come back, through ``torch.save`` / ``torch.load`` as a server's response does; a
      side effect on a client object is not seen, as it would not be remotely.
    """

    def __call__(self, tracer: Any) -> None:
        import linecache

        from nnsight.ndif import pull_env
        from nnsight.schema.request import RequestModel
        from nnsight.tracing.tracer import _saves, mark
        from nnsight.tracing.util import push

        pull_env()
        blob = RequestModel.serialize(tracer, compress=False)
        self.payload_bytes = len(blob)
        persistent = self.model._remoteable_persistent_objects()
        filename = tracer.info.frame.f_code.co_filename
        saved_line = linecache.cache.get(filename)
        hidden = self._hide_local_modules()
        blocker = _Blocker(set(SERVER_LACKS) | {name.split(".")[0] for name, mod in hidden["modules"].items()
                                                if not _installed(mod)})
        sys.meta_path.insert(0, blocker)
        try:
            restored = RequestModel.deserialize(blob, persistent, compress=False)
        finally:
            sys.meta_path.remove(blocker)
            self._restore(hidden)
            if saved_line is not None:
                linecache.cache[filename] = saved_line
            else:
                linecache.cache.pop(filename, None)
        restored.execute(restored.info.code)
        saves = _saves()
        result = {k: v for k, v in restored.info.frame.f_locals.items() if id(v) in saves}
        buffer = io.BytesIO()
        torch.save(result, buffer)
        self.result_bytes = buffer.tell()
        buffer.seek(0)
        result = torch.load(buffer, weights_only=False)
        for value in result.values():
            mark(value)
        push(tracer.info.frame, result)


def _installed(module: ModuleType) -> bool:
    path = str(getattr(module, "__file__", "") or "")
    return not path or "site-packages" in path or "dist-packages" in path or "/lib/python" in path


# ------------------------------------------------------------------ versions ----
def check_remote_environment(comparison: Any = None) -> None:
    """Refuse to send when the NDIF server's nnsight, torch, transformers or Python (major.minor)
    differ from this client's: a request is pickled against the client's versions (steerlib's
    dataclasses travel as bytecode) and interventions drift between versions.

    ``comparison`` is an ``nnsight.compare()`` result; by default it is fetched (one HTTP request).
    Raises :class:`RemoteEnvironmentError` naming each mismatch and the fix, or :class:`RemoteError`
    when the server's environment cannot be fetched."""
    if comparison is None:
        try:
            comparison = nnsight.compare()
        except Exception as e:  # network, authentication, a server without /env
            raise RemoteError(f"Could not fetch the NDIF server's environment to compare versions "
                              f"({type(e).__name__}: {e}). Check the network and nnsight.CONFIG.API "
                              "(host, API key), or run with remote='local' to test offline.") from e
    problems = [f"{pkg}: client {v['local']}, server {v['remote']}" for pkg, v in comparison.packages.items()
                if pkg.lower() in CRITICAL and not v["match"]]
    local_py, remote_py = comparison.local_python, comparison.remote_python
    if local_py.split(".")[:2] != remote_py.split(".")[:2]:
        problems.append(f"python: client {local_py}, server {remote_py}")
    if problems:
        pins = " ".join(f"{p}=={v['remote']}" for p, v in comparison.packages.items()
                        if p.lower() in CRITICAL and not v["match"])
        fix = f"pip install {pins}" if pins else "use a Python of the server's major.minor version"
        raise RemoteEnvironmentError(
            "The NDIF server runs other versions than this client, so a steered request could fail there or "
            "steer differently: " + "; ".join(problems) + f". Match the server ({fix}), then retry. Nothing was sent.")


# ------------------------------------------------------------------ server side --
def _source_state(envoys: Sequence[Any], iv: Intervention, batch: Batch) -> Tensor:
    """The predictor's input inside a trace: ``iv.source_layer`` at ``iv.source_position``, float32
    (as the engine's local extra prefill reads it)."""
    assert iv.source_layer is not None
    out = envoys[iv.source_layer].output
    h = out[0] if isinstance(out, tuple) else out
    rows = torch.arange(batch.size, device=h.device)
    return h[rows, batch.index(iv.source_position).to(h.device)].detach().float()


class _Keep:
    """The call a remote pass makes (the model's forward or ``generate``), keeping only what the
    client needs of its output in ``box``: the generated ids, the logits when asked for; never
    the KV cache or hidden states a ``generate`` output may carry."""

    def __init__(self, module: torch.nn.Module, method: str | None, box: dict[str, Any],
                 seed: int | None = None) -> None:
        self.module, self.method, self.box, self.seed = module, method, box, seed

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn = self.module if self.method is None else getattr(self.module, self.method)
        if self.seed is None:
            out = fn(*args, **kwargs)
        else:  # sampling on the server, seeded from the client's generator (its own RNG is left as it was)
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                out = fn(*args, **kwargs)
        if self.method is None:
            self.box["logits"] = out.logits
        else:
            self.box["sequences"] = out.sequences if hasattr(out, "sequences") else out
            logits = getattr(out, "logits", None)
            self.box["logits"] = None if logits is None else tuple(logits)
        return out


# ------------------------------------------------------------------ backend ----
class PassOps:
    """The engine's per-pass functions a remote trace body calls (given by the engine, which this
    module does not import): ``visit(envoys, step, iv, order, batch, read, memo)`` visits one
    forward's layers, ``with_vectors(iv, vectors)`` swaps a predictor for its predicted vectors."""

    def __init__(self, visit: Callable[..., None], with_vectors: Callable[..., Any]) -> None:
        self.visit, self.with_vectors = visit, with_vectors


class RemoteBackend:
    """The engine's backend for ``remote=True`` / ``"local"``: each pass is one nnsight request on
    an nnsight ``TransformersModel`` (a remote identity: its model key names the checkpoint).

    Same protocol as the local nnsight backend (``run`` for a forward or a generation, ``read``
    for a pass that stops after its last visited layer); the trace body is the same
    engine's ``visit`` (:class:`PassOps`), shipped by value with the steerlib code it calls."""

    name = "nnsight"

    def __init__(self, wrapper: Any, layers_path: str, remote: bool | str, ops: PassOps, *,
                 check_versions: bool = True) -> None:
        if not hasattr(wrapper, "to_model_key"):
            raise InputError(f"{type(wrapper).__name__} has no remote identity; wrap the model with nnsight's "
                             "LanguageModel / TransformersModel (see steerlib.zoo.remote_steerable).")
        if remote is True and not getattr(wrapper, "repo_id", None):
            raise InputError("remote=True sends each pass to an NDIF deployment, named by the model's Hub repo id, "
                             "but this model has none (config._name_or_path is empty). Build it with "
                             "steerlib.zoo.remote_steerable('<owner>/<name>') or load it from the Hub; use "
                             "remote='local' to simulate a server with an in-memory model.")
        self.wrapper = wrapper
        self.remote = remote
        self.ops = ops
        self.envoys = resolve_path(wrapper, layers_path)
        self._check_versions = check_versions and remote is True
        self.last: StrictLocalSimulation | None = None  # the last local simulation (payload sizes)
        self.requests = 0

    @classmethod
    def for_model(cls, model: Any, layers_path: str, ops: PassOps) -> RemoteBackend:
        """The backend of a :class:`SteerableModel`: its nnsight wrapper, or one built around its
        in-memory model (the tokenizer's padding side and pad token are left as they were)."""
        wrapper = model._wrapper
        if wrapper is None or not hasattr(wrapper, "to_model_key"):
            from nnsight import TransformersModel

            tok = model.tokenizer
            before = (tok.padding_side, tok.pad_token)
            vlm = model.adapter.is_vlm and model.processor is not tok
            try:
                wrapper = TransformersModel(model.model, tokenizer=tok, processor=model.processor if vlm else None,
                                            task="image-text-to-text" if vlm else "text-generation")
            finally:
                tok.padding_side = before[0]
                if tok.pad_token != before[1]:
                    tok.pad_token = before[1]
            model._wrapper = wrapper
        return cls(wrapper, layers_path, model.remote, ops)

    def _route(self) -> dict[str, Any]:
        """How a request is sent: to NDIF (after the version check, once) or to the local simulation."""
        if self.remote == "local":
            self.last = StrictLocalSimulation(self.wrapper)
            return {"backend": self.last}
        if self._check_versions:
            check_remote_environment()
            self._check_versions = False
        return {"remote": True}

    def read(self, inputs: dict[str, Tensor], iv: Intervention | None, order: Sequence[int], batch: Batch,
             read: Read) -> None:
        """One request: a forward that stops after the last layer in ``order``; the reductions run on
        the server and only their results come back into ``read``."""
        record = _recorder(read)
        if iv is not None and iv.needs_extra_prefill:
            self._prefilled(inputs, inputs, {}, None, {}, iv, order, batch, record, None)
            return
        route, wrapper, envoys, ops = self._route(), self.wrapper, self.envoys, self.ops
        self.requests += 1
        with shipping():
            with wrapper.trace(dict(inputs), **route) as tracer:
                got = nnsight.save(record.data)
                ops.visit(envoys, 0, iv, order, batch, record, {})
                tracer.stop()
        record.absorb(got)

    def run(self, call: Callable[..., Any], kwargs: dict[str, Any], iv: Intervention | None,
            order: Sequence[int], batch: Batch, *, read: Read | None = None, steps: int | None = None,
            prefill: dict[str, Tensor] | None = None) -> Any:
        """One request: the model's forward (``steps=None``; returns an object with ``.logits``) or a
        generation of ``steps`` forwards (returns ``.sequences`` and ``.logits``). With ``prefill``
        (the model inputs of a predictor that reads above a steered layer), the request is one
        nnsight session of two traces: the unsteered prefill, g on the server, the steered pass.

        Sampling (``do_sample=True``) is seeded on the server from this process's generator, so a
        seeded client reproduces its remote samples; they are not those of a local run."""
        record = _recorder(read) if read is not None else None
        data = {k: v for k, v in kwargs.items() if isinstance(v, Tensor)}
        params = {k: v for k, v in kwargs.items() if not isinstance(v, Tensor)}
        box: dict[str, Any] = {}
        seed = int(torch.randint(0, 2**62, ())) if params.get("do_sample") else None
        keep = _Keep(self.wrapper._module, None if steps is None else "generate", box, seed)
        if prefill is not None:
            assert iv is not None
            return self._prefilled(prefill, data, params, keep, box, iv, order, batch, record, steps)
        route, wrapper, envoys, ops = self._route(), self.wrapper, self.envoys, self.ops
        self.requests += 1
        with shipping(), warnings.catch_warnings():
            # an early EOS ends the bounded loop before max_new_tokens; that is expected here
            warnings.filterwarnings("ignore", message=".*was never reached.*")
            with wrapper.trace(data, fn=keep, **params, **route) as tracer:
                res = nnsight.save(box)
                got = nnsight.save(record.data if record is not None else {})
                memo: dict[str, Tensor] = {}
                for step in tracer.iter[:steps or 1]:
                    ops.visit(envoys, step, iv, order, batch, record, memo)
        if record is not None:
            record.absorb(got)
        return SimpleNamespace(**res)


    def _prefilled(self, prefill: dict[str, Tensor], data: dict[str, Tensor], params: dict[str, Any],
                   keep: _Keep | None, box: dict[str, Any], iv: Intervention, order: Sequence[int], batch: Batch,
                   record: Any, steps: int | None) -> Any:
        """One request, two traces in an nnsight session: the prefill reads g's input and stops there,
        g runs on the server, then the steered pass (a read when ``keep`` is None) adds its vectors."""
        route, wrapper, envoys, ops = self._route(), self.wrapper, self.envoys, self.ops
        self.requests += 1
        with shipping(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was never reached.*")
            with wrapper.session(**route):
                with wrapper.trace(dict(prefill)) as first:
                    source = _source_state(envoys, iv, batch)
                    first.stop()
                steered = ops.with_vectors(iv, iv.predictor(source))
                if keep is None:
                    with wrapper.trace(dict(data)) as tracer:
                        got = nnsight.save(record.data)
                        ops.visit(envoys, 0, steered, order, batch, record, {})
                        tracer.stop()
                else:
                    with wrapper.trace(data, fn=keep, **params) as tracer:
                        res = nnsight.save(box)
                        got = nnsight.save(record.data if record is not None else {})
                        memo: dict[str, Tensor] = {}
                        for step in tracer.iter[:steps or 1]:
                            ops.visit(envoys, step, steered, order, batch, record, memo)
        if record is not None:
            record.absorb(got)
        return None if keep is None else SimpleNamespace(**res)


def _recorder(read: Any) -> Any:
    if not (hasattr(read, "data") and hasattr(read, "absorb")):
        raise RemoteError("A remote pass records through the engine's recorder (steerlib.engine._Reads), whose "
                          "results can travel back; a plain callback would run on the server and its effects "
                          "would never reach this process.")
    return read
