"""Discrimination-aware L2 (METHOD section 7): a penalty that shrinks the weights of units that
matter little to the loss more than those of units that matter a lot.

    s = unit_importances(model, corpus.train, max_batches=8)     # {layer: (H,) in [0, 1]}
    omega = da_l2_penalty(model, s, lam=1e-5)                     # lam * sum_k (1 - s_k)^gamma ||w_k||^2
    omega = da_l2_penalty(model, None, lam=1e-5)                  # plain L2: every s_k = 0

During training, a DiscriminationAwareL2 object refreshes the importances on a schedule (default
once per epoch) and adds the penalty to every batch's loss:

    regularizer = DiscriminationAwareL2(lam=1e-5, calibration_tokens=corpus.train, store_path=run / "importances.json")
    train_language_model(..., extra_loss=regularizer.loss, on_epoch_start=regularizer.on_epoch_start)
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.errors import InvalidInputError
from analysis.lm.model import GATES_PER_UNIT, RNNLanguageModel
from analysis.pruning.importance import DEFAULT_CALIBRATION_BATCHES, unit_importances
from analysis.utils.fileio import atomic_write_json

IMPORTANCE_FORMAT = "dynaprune-unit-importances"


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
                raise InvalidInputError(f"layer {name}: importances have shape {scores.shape} but the layer has {H} "
                                        f"units; measure them on this model")
            if not np.isfinite(scores).all() or scores.min() < 0 or scores.max() > 1:
                raise InvalidInputError(f"layer {name}: importances must lie in [0, 1]")
            unit = torch.as_tensor((1.0 - scores) ** gamma, dtype=parameter.dtype, device=parameter.device)
        coefficients[name] = unit.repeat(gates)
    return coefficients


def penalty_from_coefficients(model: RNNLanguageModel, coefficients: Mapping[str, torch.Tensor],
                              lam: float) -> torch.Tensor:
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
