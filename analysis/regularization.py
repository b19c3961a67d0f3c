"""Loss terms for fine-tuning a pruned language model: discrimination-aware L2 (METHOD section 7)
and the distillation term (METHOD section 8).

Discrimination-aware L2 shrinks the weights of units that matter little to the loss more than
those of units that matter a lot:

    s = unit_importances(model, corpus.train, max_batches=8)     # {layer: (H,) in [0, 1]}
    omega = da_l2_penalty(model, s, lam=1e-5)                     # lam * sum_k (1 - s_k)^gamma ||w_k||^2
    omega = da_l2_penalty(model, None, lam=1e-5)                  # plain L2: every s_k = 0

During training, a DiscriminationAwareL2 object refreshes the importances on a schedule (default
once per epoch) and adds the penalty to every batch's loss:

    regularizer = DiscriminationAwareL2(lam=1e-5, calibration_tokens=corpus.train, store_path=run / "importances.json")
    train_language_model(..., extra_loss=regularizer.loss, on_epoch_start=regularizer.on_epoch_start)

`distillation_kl(student_logits, teacher_logits, tau)` is KL(softmax(z_t / tau) || softmax(z_s / tau))
averaged over tokens, written by hand: for a 10,000-word vocabulary it takes about two thirds of
the time of F.kl_div on two log_softmax outputs (fewer passes over the logits, fewer temporaries).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from analysis.errors import InvalidInputError
from analysis.fileio import atomic_write_json
from analysis.lm import GATES_PER_UNIT, RNNLanguageModel

IMPORTANCE_FORMAT = "dynaprune-unit-importances"
DEFAULT_CALIBRATION_BATCHES = 8


# ----------------------------------------------------------------------------- importances


def unit_importances(model: RNNLanguageModel, data: torch.Tensor | Iterable, *, max_batches: int = DEFAULT_CALIBRATION_BATCHES,
                     batch_size: int = 20, bptt: int = 35) -> dict[str, np.ndarray]:
    """First-order Taylor importance of every hidden unit, normalised per layer to [0, 1].

    s_k = mean over calibration batches of |sum_{t,b} dL/dh_{t,b,k} * h_{t,b,k}|, with h the output
    of each recurrent layer (captured by forward hooks) and L the mean next-token cross-entropy;
    each layer is then divided by its largest value (a layer whose units all score 0 stays 0).
    `data` is a 1-D token stream (read in `bptt` windows of `batch_size` columns, the hidden state
    carried across windows, as in training) or an iterable of (inputs (L, B), targets (L*B,)) pairs.
    Dropout is off while measuring; the model's weights, gradients and mode are left unchanged.
    """
    if not isinstance(model, RNNLanguageModel):
        raise InvalidInputError(f"unit_importances needs an RNNLanguageModel, got {type(model).__name__}")
    if isinstance(max_batches, bool) or int(max_batches) < 1:
        raise InvalidInputError(f"max_batches must be a positive integer, got {max_batches!r}")
    device = next(model.parameters()).device
    captured: list[torch.Tensor | None] = [None] * len(model.rnns)

    def capture(index: int):
        def hook(module, inputs, output):
            captured[index] = output[0]
        return hook

    handles = [rnn.register_forward_hook(capture(i)) for i, rnn in enumerate(model.rnns)]
    totals = [torch.zeros(rnn.hidden_size, dtype=torch.float64, device=device) for rnn in model.rnns]
    was_training, batches = model.training, 0
    model.eval()
    try:
        with torch.enable_grad():
            hidden = None
            for inputs, targets in _calibration_batches(data, batch_size, bptt):
                if batches >= max_batches:
                    break
                inputs, targets = inputs.to(device), targets.to(device)
                if hidden is None or _hidden_batch_size(hidden) != inputs.shape[1]:
                    hidden = model.init_hidden(inputs.shape[1])
                logits, hidden = model(inputs, hidden)
                hidden = model.detach_hidden(hidden)
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets)
                if not all(output is not None and output.requires_grad for output in captured):
                    raise InvalidInputError("unit_importances needs a model whose parameters require gradients")
                gradients = torch.autograd.grad(loss, captured)
                for total, output, gradient in zip(totals, captured, gradients):
                    total += (gradient * output.detach()).sum(dim=(0, 1)).abs().double()
                batches += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if batches == 0:
        raise InvalidInputError("no calibration batch to measure unit importances on; the token stream is too short")
    result = {}
    for name, total in zip(model.layer_names, totals):
        mean = (total / batches).cpu().numpy()
        peak = mean.max()
        result[name] = mean / peak if peak > 0 else np.zeros_like(mean)
    return result


def _hidden_batch_size(hidden) -> int:
    """The batch size a model's hidden state was built for."""
    first = hidden[0]
    return int((first[0] if isinstance(first, tuple) else first).shape[1])


def _calibration_batches(data, batch_size: int, bptt: int):
    if isinstance(data, torch.Tensor):
        from analysis.corpora import batchify, get_batch

        source = batchify(data, batch_size)
        for start in range(0, source.size(0) - 1, bptt):
            yield get_batch(source, start, bptt)
        return
    for item in data:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InvalidInputError("calibration batches must be (inputs, targets) pairs")
        yield item


# ----------------------------------------------------------------------------- the penalty


def unit_penalty_coefficients(model: RNNLanguageModel, importances: Mapping[str, Any] | None,
                              gamma: float = 1.0) -> dict[str, torch.Tensor]:
    """(1 - s_k)^gamma of every unit, repeated once per gate block so it lines up with the weight
    rows g*H + k of the layer: {layer: (G*H,) tensor} on the model's device. None: plain L2."""
    if not math.isfinite(gamma) or gamma < 0:
        raise InvalidInputError(f"gamma must be a finite number >= 0, got {gamma!r}")
    gates = GATES_PER_UNIT[model.config.rnn_type]
    parameter = next(model.parameters())
    known = model.layer_names
    if importances is not None:
        unknown = sorted(set(importances) - set(known))
        if unknown:
            raise InvalidInputError(f"importances name unknown layer(s) {unknown}; this model's layers are {known}")
    coefficients = {}
    for name, rnn in zip(known, model.rnns):
        H = rnn.hidden_size
        if importances is None or importances.get(name) is None:
            unit = torch.ones(H, dtype=parameter.dtype, device=parameter.device)
        else:
            scores = np.asarray(importances[name], dtype=np.float64)
            if scores.shape != (H,):
                raise InvalidInputError(f"layer {name}: importances have shape {scores.shape} but the layer has {H} units; "
                                        f"measure them on this model")
            if not np.isfinite(scores).all() or scores.min() < 0 or scores.max() > 1:
                raise InvalidInputError(f"layer {name}: importances must lie in [0, 1]")
            unit = torch.as_tensor((1.0 - scores) ** gamma, dtype=parameter.dtype, device=parameter.device)
        coefficients[name] = unit.repeat(gates)
    return coefficients


def penalty_from_coefficients(model: RNNLanguageModel, coefficients: Mapping[str, torch.Tensor], lam: float) -> torch.Tensor:
    """lam * sum over layers and weight rows of coefficient * ||row||^2 (rows of weight_ih and weight_hh)."""
    total = None
    for name, rnn in zip(model.layer_names, model.rnns):
        row_norms = rnn.weight_ih_l0.pow(2).sum(dim=1) + rnn.weight_hh_l0.pow(2).sum(dim=1)
        term = torch.dot(row_norms, coefficients[name])
        total = term if total is None else total + term
    return total * lam


def da_l2_penalty(model: RNNLanguageModel, importances: Mapping[str, Any] | None, lam: float,
                  gamma: float = 1.0) -> torch.Tensor:
    """Omega = lam * sum_layers sum_k (1 - s_k)^gamma ||w_k||^2, differentiable in the model's weights.

    w_k is unit k's weight vector (METHOD section 2: rows g*H + k of weight_ih and weight_hh; biases
    are not penalised). `importances` maps layer name -> (H,) scores in [0, 1]; None, or a layer
    left out, means s_k = 0 there (plain L2). Computed with one reduction per matrix, no loop over units.
    """
    if not math.isfinite(lam) or lam < 0:
        raise InvalidInputError(f"the penalty strength lambda must be a finite number >= 0, got {lam!r}")
    return penalty_from_coefficients(model, unit_penalty_coefficients(model, importances, gamma), lam)


@dataclass
class DiscriminationAwareL2:
    """The DA-L2 term of a fine-tuning run, with its importance refresh schedule.

    lam: strength (0 turns the term off); gamma: exponent of (1 - s_k); plain: every s_k = 0 (plain
    L2, nothing measured). Importances are measured on `calibration_tokens` (`calibration_batches`
    windows of `batch_size` x `bptt`) at the start of epoch 1 and then every `refresh_every` epochs
    (0: only at the start). With `store_path`, each measurement is saved there and read back
    instead of re-measured, so a run resumed in the middle of an epoch uses exactly the scores the
    interrupted one used.
    """

    lam: float
    gamma: float = 1.0
    plain: bool = False
    calibration_tokens: torch.Tensor | None = field(default=None, repr=False)
    calibration_batches: int = DEFAULT_CALIBRATION_BATCHES
    batch_size: int = 20
    bptt: int = 35
    refresh_every: int = 1
    store_path: Path | None = None

    def __post_init__(self):
        if not math.isfinite(self.lam) or self.lam < 0:
            raise InvalidInputError(f"the DA-L2 strength lambda must be a finite number >= 0, got {self.lam!r}")
        if isinstance(self.refresh_every, bool) or int(self.refresh_every) < 0:
            raise InvalidInputError(f"refresh_every must be >= 0 epochs, got {self.refresh_every!r}")
        if self.active and not self.plain and self.calibration_tokens is None:
            raise InvalidInputError("discrimination-aware L2 needs calibration tokens to measure unit importances")
        self.importances_: dict[str, np.ndarray] | None = None
        self.measured_at_epoch_: int | None = None
        self._coefficients: dict[str, torch.Tensor] | None = None

    @property
    def active(self) -> bool:
        return self.lam > 0

    def refresh_epoch(self, epoch: int) -> int:
        """The epoch whose start gave the importances used during `epoch` (1-based)."""
        if self.refresh_every == 0:
            return 1
        return epoch - (epoch - 1) % self.refresh_every

    def on_epoch_start(self, model: RNNLanguageModel, epoch: int) -> None:
        """Training callback: measure (or reload) the importances when the schedule says so."""
        if not self.active:
            return
        if self.plain:
            self.importances_ = None
            self._coefficients = unit_penalty_coefficients(model, None, self.gamma)
            return
        due = self.refresh_epoch(epoch)
        if self.measured_at_epoch_ == due and self._coefficients is not None:
            return
        scores = self._stored(due, model)
        if scores is None:
            scores = unit_importances(model, self.calibration_tokens, max_batches=self.calibration_batches,
                                      batch_size=self.batch_size, bptt=self.bptt)
            if self.store_path is not None:
                atomic_write_json(self.store_path, {"format": IMPORTANCE_FORMAT, "epoch": due,
                                                    "layers": {name: s.tolist() for name, s in scores.items()}})
        self.importances_, self.measured_at_epoch_ = scores, due
        self._coefficients = unit_penalty_coefficients(model, scores, self.gamma)

    def loss(self, context) -> torch.Tensor | None:
        """Training callback (`extra_loss`): the penalty for the current weights."""
        if not self.active:
            return None
        if self._coefficients is None:
            self.on_epoch_start(context.model, context.epoch)
        return penalty_from_coefficients(context.model, self._coefficients, self.lam)

    def _stored(self, epoch: int, model: RNNLanguageModel) -> dict[str, np.ndarray] | None:
        if self.store_path is None or not Path(self.store_path).is_file():
            return None
        try:
            stored = json.loads(Path(self.store_path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None  # measured again and rewritten
        if not isinstance(stored, dict) or stored.get("format") != IMPORTANCE_FORMAT or stored.get("epoch") != epoch:
            return None
        layers = stored.get("layers")
        sizes = dict(zip(model.layer_names, (rnn.hidden_size for rnn in model.rnns)))
        if not isinstance(layers, dict) or set(layers) != set(sizes):
            return None
        scores = {name: np.asarray(values, dtype=np.float64) for name, values in layers.items()}
        if any(scores[name].shape != (size,) for name, size in sizes.items()):
            return None
        return scores


# ----------------------------------------------------------------------------- distillation


class _SoftTargetKL(torch.autograd.Function):
    """KL(p || q) per token, averaged, with p = softmax(z_t / tau) fixed and q = softmax(z_s / tau).

    Its gradient in z_s is (q - p) / (tau * N). Written by hand so that only p and q are built (in
    place, no log-probability tensors): with lse = logsumexp(z / tau) per row and p summing to 1,
    sum_v p_v log q_v = sum_v p_v z_s,v / tau - lse_s, and the same for the teacher."""

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, tau):
        p, teacher_lse = _softmax_and_logsumexp(teacher_logits, tau)
        q, student_lse = _softmax_and_logsumexp(student_logits, tau)
        flat_p = p.view(-1)
        cross = torch.dot(flat_p, teacher_logits.reshape(-1)) - torch.dot(flat_p, student_logits.reshape(-1))
        n_tokens = student_logits.shape[0]
        kl = (cross / tau - teacher_lse.sum() + student_lse.sum()) / n_tokens
        ctx.save_for_backward(q, p)
        ctx.scale = 1.0 / (tau * n_tokens)
        return kl

    @staticmethod
    def backward(ctx, grad_output):
        q, p = ctx.saved_tensors
        return torch.sub(q, p).mul_(grad_output * ctx.scale), None, None


def _softmax_and_logsumexp(logits: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(logits / tau) over the last axis, built in one new tensor, and each row's logsumexp."""
    probabilities = logits.mul(1.0 / tau)  # a product is cheaper than a division
    row_max = probabilities.amax(dim=-1, keepdim=True)
    probabilities.sub_(row_max).exp_()
    row_sum = probabilities.sum(dim=-1, keepdim=True)
    probabilities.div_(row_sum)
    return probabilities, (row_max + row_sum.log()).squeeze(-1)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over tokens of KL(softmax(teacher / tau) || softmax(student / tau)).

    Both logits are (N, V) (or anything viewable so); the teacher's get no gradient. Equal to
    F.kl_div(log_softmax(student / tau), log_softmax(teacher / tau), log_target=True,
    reduction="batchmean") with the same gradient, in less time. The distillation loss of METHOD
    section 8 is alpha * tau^2 times this.
    """
    if not tau > 0:
        raise InvalidInputError(f"the distillation temperature must be positive, got {tau!r}")
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.detach().reshape(-1, vocab).to(student.dtype)
    return _SoftTargetKL.apply(student, teacher, float(tau))
