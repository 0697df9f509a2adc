"""L2S (learn-to-steer): a small network g predicts each input's P2S vector from its own
hidden state, so input-dependent steering works at test time without completions.

g = Linear(D -> K, bias) -> Tanh -> Linear(K -> D, no bias), as in the official code. The
decoder starts from a truncated SVD of the centred targets (or dictionary learning); the loss
per sample is MSE + l1 * L1 - w * cos(pred, target), optionally class-balanced; Adam; the best
validation checkpoint is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from typing_extensions import Unpack

from ..batching import length_batches
from ..data.items import ContrastiveItem, check_items
from ..engine import Batch, SteerableModel
from ..errors import DataError, MissingDependencyError, NonFiniteError, PersistenceError, ShapeMismatchError
from ..intervention import Intervention, check_layers, check_scaled_finite
from .base import Inputs, as_items
from ..positions import SOURCE_POSITIONS, SourcePosition, Where
from ..progress import tqdm
from .p2s import P2SBased, P2SParams
from .params import check_bool, check_int, check_real

Init = Literal["svd", "dict", "random"]
InputPosition = Literal["last_prompt", "last_prompt_no_gen", "prompt_mean"]
"""Where g reads its input: a :data:`~steerlib.positions.SourcePosition` (one token, read inside the
generation pass), or ``"prompt_mean"``: the mean of the input layer's states over the prompt's real
tokens (chat template included), read by one extra prompt pass before generation."""
INPUT_POSITIONS: tuple[str, ...] = (*SOURCE_POSITIONS, "prompt_mean")
INITS: tuple[str, ...] = ("svd", "dict", "random")
GATE_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Gate values (fractions of the mean non-zero target norm) that ``gate="cv"`` chooses from."""

SELECTIVE: dict[str, Any] = {"hidden": 64, "lr": 1e-3, "class_balance": True, "l1_weight": 20.0, "gate": "cv",
                             "gate_cost": 3.0}
"""The selective recipe (:meth:`L2S.selective`): for training sets where some behaviours have the
target "leave unchanged" (zero P2S vectors, e.g. benign prompts). Class balance and a strong L1
term drive g's output on those inputs towards 0, and the cross-validated gate zeroes what is left,
so they run exactly unsteered. The gate is chosen with ``gate_cost=3``: steering an input that
needs no steering (a possible false refusal) counts three times as much as leaving a steering
input unsteered. These are the settings ``steerlib demo`` measures; the paper's defaults
(``L2S()``: no class balance, L1 weight 1, no gate) change benign answers too.

Two choices outside these hyperparameters decide whether the gate reads the *intent* of a prompt
rather than its topic words (``docs/selectivity.md``, chosen by leave-one-kind-out cross-validation
on :mod:`steerlib.data.hard_safety`'s training kinds): read g's input at the steered layer
(``input_layer=None``, the default; the last prompt token), and train on contrastive pairs of
benign prompts that sound harmful (zero target) and harmful prompts with the same words (refusal
target), e.g. ``demo_items()["train"] + hard_safety_items("train")``."""


class SteeringNet(nn.Module):
    """g: Linear(D -> K, bias) -> Tanh -> Linear(K -> D, no bias)."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(d_model, hidden)
        self.decoder = nn.Linear(hidden, d_model, bias=False)

    def forward(self, h: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_model"]:
        return self.decoder(torch.tanh(self.encoder(h)))


def init_decoder(net: SteeringNet, z: Float[Tensor, "n d_model"], how: str, seed: int) -> None:
    """Set the decoder's columns to K directions of the targets (SVD of centred targets or a dictionary)."""
    k = net.decoder.weight.shape[1]
    if how == "random":
        return
    if how == "svd":
        zc = z - z.mean(0, keepdim=True)
        _, _, vh = torch.linalg.svd(zc, full_matrices=False)
        comps = vh[:k]  # [<=k, D]
    elif how == "dict":
        try:
            from sklearn.decomposition import DictionaryLearning
        except ImportError as e:
            raise MissingDependencyError("init='dict' needs scikit-learn: pip install scikit-learn") from e
        dl = DictionaryLearning(n_components=k, positive_code=True, fit_algorithm="cd",
                                transform_algorithm="lasso_cd", max_iter=200, random_state=seed)
        dl.fit(z.double().numpy())
        comps = torch.as_tensor(dl.components_, dtype=torch.float32)
    else:
        raise DataError(f"Unknown decoder init {how!r}; use one of {', '.join(INITS)}.")
    with torch.no_grad():
        net.decoder.weight[:, : comps.shape[0]] = comps.T.to(net.decoder.weight.dtype)


def l2s_loss(pred: Tensor, target: Tensor, l1: float, cos_weight: float) -> Tensor:
    """Per-sample loss: mean-over-dims MSE + l1 * mean-over-dims L1 - cos_weight * cosine."""
    diff = pred - target
    cos = nn.functional.cosine_similarity(pred, target, dim=-1, eps=1e-8)
    return diff.pow(2).mean(-1) + l1 * diff.abs().mean(-1) - cos_weight * cos


class L2S(P2SBased):
    """Learn-to-steer: ``g(h_{L'}(x))`` approximates the P2S vector ``z_{L*}(x)``.

    Args:
        layer: L*, where vectors are added.
        input_layer: L', where g reads its input (default: ``layer``).
        input_position: ``"last_prompt"`` (the last prompt token, generation prompt included; the
            paper's POPE setting), ``"last_prompt_no_gen"`` (before the generation prompt; the
            paper's safety setting) or ``"prompt_mean"`` (the mean over the prompt's real tokens; one
            extra prompt pass per generation batch). See :data:`InputPosition`.
        hidden: K, g's width.
        init: decoder initialisation, ``"svd"``, ``"dict"`` or ``"random"``.
        epochs: Adam epochs.
        lr: Adam learning rate.
        train_batch_size: Adam batch size.
        l1_weight: weight of the L1 term of the loss.
        cos_weight: weight of the cosine term of the loss.
        cos_warmup_epochs: ramp ``cos_weight`` up linearly over this many epochs (the paper's POPE schedule).
        val_cos_weight: cosine weight of the validation loss.
        class_balance: average the loss per behaviour label, then over labels.
        val_fraction: share of the items held out for validation.
        keep_best: keep the checkpoint with the best validation loss.
        scheduler: ``"none"`` or ``"cosine"``.
        warmup_epochs: linear warm-up of the cosine schedule.
        gate: a dead zone for inputs that need no steering: a prediction whose norm is below
            ``gate`` x the mean norm of the non-zero training targets is set to zero, so those
            inputs run exactly unsteered. 0 (the default, as in the paper) turns it off; 0.5 is
            the midpoint between a zero target ("leave unchanged") and a typical steering target.
            ``"cv"`` picks it from :data:`GATE_GRID` by ``gate_folds``-fold cross-validation on the
            training items (folds stratified by behaviour): the value with the lowest error
            ``(gate_cost * a + b) / (gate_cost + 1)``, where ``a`` is the share of zero-target items
            left steered and ``b`` the share of non-zero-target items gated off (``gate_cost=1``: the
            balanced error). The chosen value is ``gate_`` and the per-value errors ``gate_cv_``; it
            needs items of both kinds.
        gate_folds: folds of ``gate="cv"`` (each trains one more g).
        gate_cost: how many times worse ``gate="cv"`` counts steering an input that needs no
            steering (a possible false refusal) than leaving a steering input unsteered; above 1 the
            chosen gate is higher and steers fewer inputs of both kinds.

    The other arguments (``alpha``, ``positions``, ``reduction``, ``batch_size`` for extraction,
    ...) are those of every P2S-based steerer.

    With ``input_layer <= layer`` g runs inside the same generate pass; otherwise one extra
    prefill reads ``h_{L'}`` first.
    """

    method = "l2s"
    _tensors = ("encoder_weight_", "encoder_bias_", "decoder_weight_")

    def __init__(self, layer: int = 0, *, input_layer: int | None = None,
                 input_position: InputPosition = "last_prompt", hidden: int = 100, init: Init = "svd",
                 epochs: int = 100, lr: float = 1e-4, train_batch_size: int = 64, l1_weight: float = 1.0,
                 cos_weight: float = 0.1, cos_warmup_epochs: int = 0, val_cos_weight: float = 0.05,
                 class_balance: bool = False, val_fraction: float = 0.1, keep_best: bool = True,
                 scheduler: Literal["none", "cosine"] = "none", warmup_epochs: int = 0,
                 gate: float | Literal["cv"] = 0.0, gate_folds: int = 5, gate_cost: float = 1.0,
                 **shared: Unpack[P2SParams]) -> None:
        super().__init__(layer, **shared)
        self.input_layer = input_layer
        self.input_position = input_position
        self.hidden = hidden
        self.init = init
        self.epochs = epochs
        self.lr = lr
        self.train_batch_size = train_batch_size
        self.l1_weight = l1_weight
        self.cos_weight = cos_weight
        self.cos_warmup_epochs = cos_warmup_epochs
        self.val_cos_weight = val_cos_weight
        self.class_balance = class_balance
        self.val_fraction = val_fraction
        self.keep_best = keep_best
        self.scheduler = scheduler
        self.warmup_epochs = warmup_epochs
        self.gate = gate
        self.gate_folds = gate_folds
        self.gate_cost = gate_cost

    @classmethod
    def selective(cls, layer: int = 0, **overrides: Any) -> "L2S":
        """L2S with the selective recipe (:data:`SELECTIVE`): steer the behaviours that have a target,
        leave the zero-target ones ("benign -> unchanged") exactly unsteered.

        ``L2S.selective(15)`` is ``L2S(15, hidden=64, lr=1e-3, class_balance=True, l1_weight=20.0,
        gate="cv", gate_cost=3.0)``; any argument of :class:`L2S` overrides the recipe's. Fitting needs items of a
        zero-target behaviour and of at least one other (the gate is cross-validated between them).

        Example:
            >>> L2S.selective(15, input_layer=12).gate
            'cv'
        """
        return cls(layer, **{**SELECTIVE, **overrides})

    @property
    def source_layer(self) -> int:
        return self.layer if self.input_layer is None else self.input_layer

    # ------------------------------------------------------------------ fitting -----
    def _check_params(self, model: SteerableModel) -> None:
        super()._check_params(model)
        check_layers(self.source_layer, model.num_layers)

    def _check_settings(self) -> None:
        super()._check_settings()
        self._check_own()

    def expected_tensors(self, hidden_size: int, num_layers: int | None) -> dict[str, tuple[int | None, ...] | None]:
        k = self.hidden
        return {"encoder_weight_": (k, hidden_size), "encoder_bias_": (k,), "decoder_weight_": (hidden_size, k)}

    def _check_own(self) -> None:
        """The checks of g's own hyperparameters (no model needed)."""
        check_int(self, "hidden", minimum=1)
        check_int(self, "epochs", minimum=1)
        check_real(self, "lr", minimum=0.0, open_min=True)
        check_int(self, "train_batch_size", minimum=1)
        check_real(self, "l1_weight", minimum=0.0)
        check_real(self, "cos_weight", minimum=0.0)
        check_int(self, "cos_warmup_epochs", minimum=0)
        check_real(self, "val_cos_weight", minimum=0.0)
        check_bool(self, "class_balance")
        check_real(self, "val_fraction", minimum=0.0, maximum=1.0, open_max=True)
        check_bool(self, "keep_best")
        check_int(self, "warmup_epochs", minimum=0)
        if self.input_position not in INPUT_POSITIONS:
            raise DataError(f"input_position must be one of {INPUT_POSITIONS}, got {self.input_position!r}.")
        if self.init not in INITS:
            raise DataError(f"init must be one of {INITS}, got {self.init!r}.")
        if self.scheduler not in ("none", "cosine"):
            raise DataError(f"scheduler must be 'none' or 'cosine', got {self.scheduler!r}.")
        gate = self.gate
        if gate != "cv" and not (isinstance(gate, (int, float)) and not isinstance(gate, bool) and 0.0 <= gate < 1.0):
            raise DataError(f"gate must be in [0, 1) (a fraction of the mean target norm) or 'cv', got {gate!r}.")
        if isinstance(self.gate_folds, bool) or not (isinstance(self.gate_folds, int) and self.gate_folds >= 2):
            raise DataError(f"gate_folds must be an integer >= 2, got {self.gate_folds!r}.")
        check_real(self, "gate_cost", minimum=0.0, open_min=True)

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        self._check_classes([it.behavior for it in check_items(items, need_completions=True)])
        super()._fit(model, items)

    def _check_classes(self, behaviors: Sequence[str]) -> None:
        """class_balance=True averages the loss per behaviour label: it needs two labels or more."""
        if self.class_balance and len(set(behaviors)) < 2:
            raise DataError(
                f"class_balance=True needs at least 2 behaviour labels, but the training set has only "
                f"{sorted(set(behaviors))}; add items of the other class(es) or pass class_balance=False."
            )

    def input_read(self) -> tuple[int, SourcePosition] | None:
        return self.source_layer, self.input_position  # type: ignore[return-value]  # read_many also takes prompt_mean

    def _learn(self, items: list[ContrastiveItem], z: Tensor, h: Tensor | None) -> None:
        if h is None or h.shape != z.shape:
            raise ShapeMismatchError("L2S needs the input states h (at input_layer) with the same shape as z.")
        self._train(h, z, [it.behavior for it in items])

    def fit_features(self, h: Float[Tensor, "n d_model"], z: Float[Tensor, "n d_model"],
                     behaviors: Sequence[str] | None = None, *, model_info: dict[str, Any] | None = None) -> "L2S":
        """Train g directly on inputs ``h`` and targets ``z`` (e.g. cached P2S features)."""
        if h.shape != z.shape or h.dim() != 2:
            raise ShapeMismatchError(f"h {tuple(h.shape)} and z {tuple(z.shape)} must both be [n, d_model].")
        self._check_own()
        self._train(h.float(), z.float(), list(behaviors) if behaviors is not None else ["default"] * len(h))
        self.model_info_ = model_info or {"hidden_size": h.shape[1]}
        self.n_items_ = len(h)
        self.items_hash_ = ""
        return self

    def _train(self, h: Tensor, z: Tensor, behaviors: list[str]) -> None:
        n = h.shape[0]
        if n < 2:
            raise DataError(f"L2S needs at least 2 training items, got {n}; add training items.")
        if len(behaviors) != n:
            raise ShapeMismatchError(f"{len(behaviors)} behaviour labels for {n} training vectors; give one per vector.")
        self._check_classes(behaviors)
        labels = sorted(set(behaviors))
        y = torch.tensor([labels.index(b) for b in behaviors])
        start = time.perf_counter()
        net, history = self._train_net(h, z, y, progress=self.progress)
        self.net_ = net
        self.history_ = history
        self.train_seconds_ = time.perf_counter() - start
        if self.gate == "cv":
            self.gate_cv_ = self._cross_validate_gate(h, z, y)
            self.gate_ = min(self.gate_cv_, key=lambda r: (round(r["error"], 9), r["gate"]))["gate"]
        else:
            self.gate_cv_ = []
            self.gate_ = float(self.gate)
        self.gate_norm_ = self.gate_ * _mean_target_norm(z)

    def _train_net(self, h: Tensor, z: Tensor, y: Tensor, *, progress: bool) -> tuple[SteeringNet, list[dict[str, float]]]:
        """Train one g on ``h -> z`` (``y``: behaviour index per row), seeded; returns it in eval mode."""
        n, d = h.shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            perm = torch.randperm(n)
            n_val = int(round(self.val_fraction * n)) if self.val_fraction > 0 else 0
            n_val = min(n_val, n - 1)
            val_idx, tr_idx = perm[:n_val], perm[n_val:]
            net = SteeringNet(d, self.hidden)
            init_decoder(net, z[tr_idx], self.init, self.seed)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)
            steps_per_epoch = math.ceil(len(tr_idx) / self.train_batch_size)
            sched = _scheduler(opt, self.scheduler, self.warmup_epochs * steps_per_epoch, self.epochs * steps_per_epoch)
            best = (math.inf, None)
            history: list[dict[str, float]] = []
            for epoch in tqdm(range(self.epochs), desc="train g", unit="epoch", disable=not progress, leave=False):
                w = self.cos_weight * (min(1.0, epoch / self.cos_warmup_epochs) if self.cos_warmup_epochs else 1.0)
                order = tr_idx[torch.randperm(len(tr_idx))]
                net.train()
                total = 0.0
                for s in range(0, len(order), self.train_batch_size):
                    b = order[s:s + self.train_batch_size]
                    per = l2s_loss(net(h[b]), z[b], self.l1_weight, w)
                    loss = _balanced(per, y[b]) if self.class_balance else per.mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    total += loss.item() * len(b)
                rec = {"epoch": epoch, "train_loss": total / len(order)}
                if n_val:
                    net.eval()
                    with torch.no_grad():
                        pv = net(h[val_idx])
                        per = l2s_loss(pv, z[val_idx], self.l1_weight, self.val_cos_weight)
                        vl = float(_balanced(per, y[val_idx]) if self.class_balance else per.mean())
                        cos = float(nn.functional.cosine_similarity(pv, z[val_idx], dim=-1).mean())
                    rec.update(val_loss=vl, val_cos=cos)
                    if self.keep_best and vl < best[0]:
                        best = (vl, {k: v.clone() for k, v in net.state_dict().items()})
                history.append(rec)
            if self.keep_best and best[1] is not None:
                net.load_state_dict(best[1])
        return net.eval().requires_grad_(False), history

    def _cross_validate_gate(self, h: Tensor, z: Tensor, y: Tensor) -> list[dict[str, float]]:
        """Per value of :data:`GATE_GRID`: the share of held-out zero-target items g would still steer,
        the share of non-zero-target items the gate would switch off, their mean (balanced error) and
        their ``gate_cost``-weighted mean (``error``, what the gate is chosen by)."""
        zero = z.norm(dim=-1) == 0
        if bool(zero.all()) or not bool(zero.any()):
            raise DataError("gate='cv' needs training items with zero targets (e.g. a 'leave unchanged' class whose "
                            "two completions are identical) and items with non-zero targets; pass a number instead.")
        k = self.gate_folds
        fold = stratified_folds(y, k, self.seed)
        grid = torch.tensor(GATE_GRID)
        steered_zero = torch.zeros(len(grid))
        gated_nonzero = torch.zeros(len(grid))
        for f in tqdm(range(k), desc="gate cross-validation", unit="fold", disable=not self.progress, leave=False):
            held = fold == f
            if not bool(held.any()) or bool(held.all()):
                continue
            net, _ = self._train_net(h[~held], z[~held], y[~held], progress=False)
            with torch.no_grad():
                pred_norm = net(h[held]).norm(dim=-1)
            on = pred_norm[None, :] >= grid[:, None] * _mean_target_norm(z[~held])  # [gates, held]
            steered_zero += (on & zero[held]).sum(dim=1)
            gated_nonzero += (~on & ~zero[held]).sum(dim=1)
        steered_zero /= int(zero.sum())
        gated_nonzero /= int((~zero).sum())
        c = float(self.gate_cost)
        return [{"gate": float(g), "zero_target_steered": float(a), "nonzero_target_gated": float(b),
                 "balanced_error": float(a + b) / 2, "error": (c * float(a) + float(b)) / (c + 1)}
                for g, a, b in zip(GATE_GRID, steered_zero, gated_nonzero, strict=True)]

    # ------------------------------------------------------------------ applying ----
    def predict(self, h: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_model"]:
        """g(h), computed in float32 and returned in h's dtype and device; with a gate, rows whose
        prediction is shorter than the gate norm are exactly zero."""
        self.check_fitted()
        net = self.net_
        w = net.encoder.weight
        if w.device != h.device:
            net = self.net_ = net.to(h.device)
        with torch.no_grad():
            out = net(h.float())
            gate_norm = self.gate_norm_
            if gate_norm > 0:
                out = out * (out.norm(dim=-1, keepdim=True) >= gate_norm)
            out = out.to(h.dtype)
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteError(
                f"L2S's g predicted a vector with NaN or infinite values (in {h.dtype}) for "
                f"{int((~torch.isfinite(out)).any(-1).sum())} of {out.shape[0]} inputs; its weights or these inputs' "
                "hidden states are broken. Fit the steerer again (or check the model's dtype).")
        return out

    def _checked_predictor(self, alpha: float) -> "CheckedPredictor":
        """g for the engine: :meth:`predict`, then ``alpha`` times each prediction's norm must be
        finite in the hidden states' dtype (what the model adds it in)."""
        return CheckedPredictor(self, alpha)

    def inputs(self, model: SteerableModel, items: Inputs, batch_size: int = 32) -> Float[Tensor, "batch d_model"]:
        """The states g reads (``input_layer`` at ``input_position``), from prompt-only passes that stop
        at that layer, in batches of similar length; float32 on the CPU, in the items' order."""
        self.check_model(model)
        items = as_items(items)
        lengths = model.prompt_lengths([it.prompt for it in items], [len(it.images) for it in items])
        h = torch.empty(len(items), model.hidden_size)
        for idx in length_batches(lengths, batch_size):
            chunk = [items[i] for i in idx]
            images = [list(it.images) for it in chunk]
            batch = model.encode([it.prompt for it in chunk], images if any(images) else None)
            h[idx] = model.read(batch, [self.source_layer], reduce=self.input_position)[self.source_layer].float().cpu()
        return h

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        return self.predict(self.inputs(model, items))

    def steered_rows(self, model: SteerableModel, items: Inputs) -> list[int]:
        """With a gate, the inputs whose g(h) passes it (one prompt pass up to g's input layer);
        without one, every input."""
        self.check_fitted()
        if self.gate_norm_ <= 0:
            return list(range(len(as_items(items))))
        v = self.vectors(model, items)
        return [i for i in range(v.shape[0]) if bool(v[i].any())]

    def intervention(self, model: SteerableModel, items: list[ContrastiveItem], batch: Batch | None = None, *,
                     alpha: float | None = None, positions: Where | None = None,
                     vectors: Float[Tensor, "batch d_model"] | None = None) -> Intervention | None:
        """g inside the generation pass (``vectors`` is refused: L2S predicts in the same pass).

        With ``input_position="prompt_mean"`` g's input is the mean over the prompt, which a pass can
        only know once it has read the whole prompt: the vectors come from one unsteered prompt pass
        of ``batch`` (encoded from ``items`` when not given) that stops at the input layer."""
        if vectors is not None:
            raise DataError("L2S predicts its vectors inside the generation pass; do not pass vectors= "
                            "(vectors_depend_on_alpha is True for L2S, so a runner never reuses them).")
        a, pos = self._resolve(alpha, positions)
        if self.input_position == "prompt_mean":
            self.check_fitted()
            if batch is None:
                images = [list(it.images) for it in items]
                batch = model.encode([it.prompt for it in items], images if any(images) else None)
            h = model.read(batch, [self.source_layer], reduce="prompt_mean")[self.source_layer]
            return Intervention.build(self.layer, self.predict(h.to(model.device)), alpha=a, positions=pos)
        return Intervention.build(self.layer, predictor=self._checked_predictor(a), source_layer=self.source_layer,
                                  source_position=self.input_position, alpha=a, positions=pos)

    # ------------------------------------------------------------------ persistence -
    def extra_state(self) -> dict[str, Any]:
        return {"history": self.history_, "train_seconds": self.train_seconds_, "gate": self.gate_,
                "gate_cv": self.gate_cv_, "gate_norm": self.gate_norm_}

    # g's weights live once, in ``net_``; these views are what is saved.
    @property
    def encoder_weight_(self) -> Float[Tensor, "hidden d_model"]:
        return self.net_.encoder.weight.detach().cpu()

    @property
    def encoder_bias_(self) -> Float[Tensor, " hidden"]:
        return self.net_.encoder.bias.detach().cpu()

    @property
    def decoder_weight_(self) -> Float[Tensor, "d_model hidden"]:
        return self.net_.decoder.weight.detach().cpu()

    def load_extra_state(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        d, k = tensors["decoder_weight_"].shape
        net = SteeringNet(d, k)
        net.load_state_dict({"encoder.weight": tensors["encoder_weight_"], "encoder.bias": tensors["encoder_bias_"],
                             "decoder.weight": tensors["decoder_weight_"]})
        self.net_ = net.eval().requires_grad_(False)
        self.gate_norm_ = float(state.get("gate_norm", 0.0))
        self.gate_ = float(state.get("gate", self.gate if self.gate != "cv" else 0.0))
        for name in ("gate_norm_", "gate_"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0 or (name == "gate_" and v >= 1):
                raise PersistenceError(f"The saved {name.rstrip('_')} is {v!r}; it must be a finite number >= 0"
                                       + (" and < 1" if name == "gate_" else "") + " (a corrupt folder: an infinite "
                                       "gate never steers). Save the steerer again.")
        self.gate_cv_ = list(state.get("gate_cv", []))
        self.history_ = state.get("history", [])
        self.train_seconds_ = state.get("train_seconds")


def _mean_target_norm(z: Float[Tensor, "n d_model"]) -> float:
    """Mean norm of the non-zero targets (0 when all are zero): the unit of the gate."""
    norms = z.norm(dim=-1)
    return float(norms[norms > 0].mean()) if bool((norms > 0).any()) else 0.0


def stratified_folds(labels: Int[Tensor, " n"], k: int, seed: int) -> Int[Tensor, " n"]:
    """Fold index (0..k-1) per item: each label's items shuffled (seeded) and dealt round-robin."""
    gen = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        fold[idx[torch.randperm(len(idx), generator=gen)]] = torch.arange(len(idx)) % k
    return fold


def _balanced(per: Tensor, y: Tensor) -> Tensor:
    """Mean over classes of the mean loss within each class present in the batch."""
    return torch.stack([per[y == c].mean() for c in y.unique()]).mean()


def _scheduler(opt: torch.optim.Optimizer, kind: str, warmup: int, total: int) -> Any:
    if kind == "none":
        return None

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        p = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


class CheckedPredictor:
    """An L2S's g as the engine calls it: the prediction, refused when ``alpha`` times its norm is not
    finite in the hidden states' dtype. A plain object (not a closure), so that it travels by value
    in a remote request like the bound method it wraps."""

    def __init__(self, steerer: L2S, alpha: float) -> None:
        self.steerer, self.alpha = steerer, alpha

    def __call__(self, h: Tensor) -> Tensor:
        out = self.steerer.predict(h)
        check_scaled_finite(out, self.alpha, h.dtype, "L2S's predicted vector")
        return out
