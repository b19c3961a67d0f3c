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
averaged over tokens; `distillation_loss(student_logits, teacher_logits, targets, alpha, tau)` is the
whole fine-tuning loss (1 - alpha) CE + alpha tau^2 KL. Both are written by hand and work through
the logits a few rows at a time, so every pass over a chunk runs in cache and no (tokens x
vocabulary) temporary is allocated besides the gradient.
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
from analysis.utils.fileio import atomic_write_json
from analysis.lm.model import GATES_PER_UNIT, RNNLanguageModel

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
        from analysis.lm.corpora import batchify, get_batch

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


# Rows per chunk of the fused loss: a chunk's few (rows x vocabulary) buffers stay in the CPU's
# cache (16 x 10,000 floats = 640 KB each) while every pass over them runs.
LOSS_CHUNK_ROWS = 16


class _ChunkedDistillationLoss(torch.autograd.Function):
    """w_ce * CE(z_s, y) + w_kl * KL(softmax(z_t / tau) || softmax(z_s / tau)), both averaged over
    the N rows, computed chunk by chunk with its gradient in z_s:

        dL/dz_s = (w_ce * (softmax(z_s) - onehot(y)) + (w_kl / tau) * (q - p)) / N

    Per row, with m the row maximum and unnormalised e_t = exp((z_t - m_t) / tau) (sum S_t),
    e_s = exp((z_s - m_s) / tau) (sum S_s) and e_1 = exp(z_s - m_s) (sum S_1; e_s squared when
    tau = 2, e_s itself when tau = 1):
        CE = m_s + log S_1 - z_s[y]
        KL = e_t . (z_t - z_s) / (tau S_t) - (m_t / tau + log S_t) + (m_s / tau + log S_s)
    The gradient is written straight into one (N, V) tensor, the only one that outlives the
    forward pass; the rest works on a few reused chunk buffers, about 16 passes over the logits
    in all (every pass costs the same whether or not the data are in cache, so passes are what
    is counted). Returns (loss, CE, KL); only the loss carries a gradient.
    """

    @staticmethod
    def forward(ctx, student, teacher, targets, w_ce, w_kl, tau):
        n_rows, vocab = student.shape
        inverse_tau = 1.0 / tau
        gradient = torch.empty_like(student)
        rows = min(LOSS_CHUNK_ROWS, n_rows)
        teacher_buffer, student_buffer, scratch_buffer = (student.new_empty(rows, vocab) for _ in range(3))
        ce_total = torch.zeros((), dtype=torch.float64, device=student.device)
        kl_total = torch.zeros((), dtype=torch.float64, device=student.device)
        for begin in range(0, n_rows, rows):
            end = min(begin + rows, n_rows)
            z_s, z_t, grad = student[begin:end], teacher[begin:end], gradient[begin:end]
            e_t, e_s = teacher_buffer[: end - begin], student_buffer[: end - begin]
            teacher_max = z_t.amax(dim=1, keepdim=True)
            torch.add(teacher_max.mul(-inverse_tau), z_t, alpha=inverse_tau, out=e_t).exp_()
            teacher_sum = e_t.sum(dim=1, keepdim=True)
            student_max = z_s.amax(dim=1, keepdim=True)
            torch.add(student_max.mul(-inverse_tau), z_s, alpha=inverse_tau, out=e_s).exp_()
            student_sum = e_s.sum(dim=1, keepdim=True)
            scratch = scratch_buffer[: end - begin]
            weighted = torch.sub(z_t, z_s, out=scratch).mul_(e_t).sum(dim=1, keepdim=True) / teacher_sum
            kl = (weighted.sum() * inverse_tau - (teacher_max.sum() * inverse_tau + teacher_sum.log().sum())
                  + (student_max.sum() * inverse_tau + student_sum.log().sum()))
            kl_total += kl.double()
            kl_scale = w_kl * inverse_tau / n_rows
            if targets is not None:  # the cross-entropy is reported even when its weight is 0
                if tau == 1.0:
                    e_1, sum_1 = e_s, student_sum
                else:
                    e_1 = torch.mul(e_s, e_s, out=grad) if tau == 2.0 else torch.sub(z_s, student_max, out=grad).exp_()
                    sum_1 = e_1.sum(dim=1, keepdim=True)
                chunk_targets = targets[begin:end].unsqueeze(1)
                ce_total += (student_max.sum() + sum_1.log().sum() - z_s.gather(1, chunk_targets).sum()).double()
                torch.mul(e_1, (w_ce / n_rows) / sum_1, out=grad)
                grad.addcmul_(e_s, kl_scale / student_sum)
                grad.scatter_add_(1, chunk_targets, grad.new_full(chunk_targets.shape, -w_ce / n_rows))
            else:
                torch.mul(e_s, kl_scale / student_sum, out=grad)
            grad.addcmul_(e_t, -kl_scale / teacher_sum)
        ce_mean, kl_mean = (ce_total / n_rows).to(student.dtype), (kl_total / n_rows).to(student.dtype)
        ctx.save_for_backward(gradient)
        ctx.mark_non_differentiable(ce_mean, kl_mean)
        return w_ce * ce_mean + w_kl * kl_mean, ce_mean, kl_mean

    @staticmethod
    def backward(ctx, grad_loss, grad_ce, grad_kl):
        (gradient,) = ctx.saved_tensors
        if grad_loss.device.type == "cpu" and grad_loss.item() == 1.0:
            return gradient, None, None, None, None, None  # loss.backward(): no copy of the logits' size
        return gradient * grad_loss, None, None, None, None, None


@dataclass(frozen=True)
class DistillationLoss:
    """The fine-tuning loss of METHOD section 8 and its two parts (the parts carry no gradient)."""

    loss: torch.Tensor
    cross_entropy: torch.Tensor
    kl: torch.Tensor


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float):
    if not tau > 0 or not math.isfinite(tau):
        raise InvalidInputError(f"the distillation temperature must be a positive number, got {tau!r}")
    if student_logits.numel() != teacher_logits.numel() or student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise InvalidInputError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                                f"{tuple(teacher_logits.shape)} do not match")
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.detach().reshape(-1, vocab).to(student.dtype)
    return student.contiguous(), teacher.contiguous()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      alpha: float, tau: float) -> DistillationLoss:
    """(1 - alpha) CE(student, targets) + alpha tau^2 KL(softmax(teacher / tau) || softmax(student / tau)).

    Logits are (N, V) (or viewable so), targets (N,) class indices; means over the N tokens. Equal
    to F.cross_entropy plus alpha tau^2 times `distillation_kl`, with the same gradient, in one pass
    over the logits chunk by chunk: on a ptb-small batch (700 x 10,000) about a third of the time
    of the two separate terms (benchmarks/bench_finetune_step.py prints both).
    """
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"the distillation weight alpha must lie in [0, 1], got {alpha!r}")
    student, teacher = _check_logits(student_logits, teacher_logits, tau)
    targets = targets.reshape(-1)
    if targets.shape[0] != student.shape[0]:
        raise InvalidInputError(f"{targets.shape[0]} targets for {student.shape[0]} rows of logits")
    loss, cross_entropy, kl = _ChunkedDistillationLoss.apply(student, teacher, targets, 1.0 - alpha,
                                                             alpha * tau * tau, float(tau))
    return DistillationLoss(loss, cross_entropy, kl)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over tokens of KL(softmax(teacher / tau) || softmax(student / tau)).

    Both logits are (N, V) (or anything viewable so); the teacher's get no gradient. Equal to
    F.kl_div(log_softmax(student / tau), log_softmax(teacher / tau), log_target=True,
    reduction="batchmean") with the same gradient, in less time. The distillation loss of METHOD
    section 8 is alpha * tau^2 times this.
    """
    student, teacher = _check_logits(student_logits, teacher_logits, tau)
    loss, _, _ = _ChunkedDistillationLoss.apply(student, teacher, None, 0.0, 1.0, float(tau))
    return loss
