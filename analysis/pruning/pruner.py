"""Iterative, teacher-guided pruning of a model of your own, driven from your own training loop
(METHOD sections 5, 7 and 8, in the spirit of Torch-Pruning's pruners).

    pruner = RNNPruner(model, (example_batch,), "runs/mine/pruning", ratio=0.5, stages=3,
                       importance_loss=lambda m: loss_fn(m(x_cal), y_cal))
    for step, (x, y) in enumerate(batches):             # stage 0: train (or fine-tune) the original
        ...; pruner.record(step)
    for stage in range(pruner.stages):
        student = pruner.step()                         # smaller copy, units chosen from the trajectory
        optimizer = torch.optim.Adam(student.parameters())
        for step, (x, y) in enumerate(batches):
            logits = student(x)
            loss = pruner.distillation_loss(logits, pruner.teacher_logits(x), y)
            loss = pruner.regularize(student, loss)      # + DA-L2 penalty
            ...; pruner.record(step)                    # the student's trajectory feeds the next stage

Units per stage: ratio r_s = 1 - (1 - r)^{s/S} of each prunable module's original hidden size,
chosen per layer direction from the trajectory recorded since the previous step() (LDS fits and
dynamics distances; importance: final weight norms). Modules that cannot be pruned (graph.UnitGraph.blocked,
e.g. feeding a tied decoder) are left whole with a warning.

Unit importance for DA-L2 here is the first-order Taylor estimate on the unit's weights,
|sum over its rows of weight * dL/dweight| (the loss change if its weights were zeroed), normalised
per layer to [0, 1]: a model of your own need not expose each layer's output, which the
activation form of analysis.pruning.importance needs.
"""
from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from analysis.dynamics.criteria import CRITERIA, DEFAULT_TRAJECTORY_CRITERION, TRAJECTORY_CRITERIA
from analysis.dynamics.lds import DEFAULT_ORDER
from analysis.dynamics.selection import final_norm_importance, select_units, units_to_prune
from analysis.dynamics.trajectory_fit import fit_trajectory
from analysis.errors import InvalidInputError
from analysis.pruning.distillation import distillation_loss
from analysis.pruning.generic_surgery import GATES, prune_model
from analysis.pruning.graph import trace_unit_graph
from analysis.trajectories.recorder import TrajectoryRecorder
from analysis.trajectories.trajectory import load_trajectory


def stage_ratio(ratio: float, stage: int, stages: int) -> float:
    """r_s = 1 - (1 - r)^{s/S}: each stage removes the same fraction of what is left (METHOD section 8)."""
    return 1.0 - (1.0 - ratio) ** (stage / stages)


class RNNPruner:
    """Prunes `model`'s recurrent modules to `ratio` in `stages` steps, each student guided by the previous model.

    Parameters
    ----------
    model : any traceable nn.Module with nn.LSTM / nn.GRU / nn.RNN modules (proj_size is not recorded).
    example_inputs : forward's positional arguments, for tracing and checking each student.
    directory : where the trajectory of each stage is recorded (stage_0, stage_1, ...).
    ratio, stages : the final fraction of units removed, and in how many steps.
    criterion : a unit-selection criterion of analysis.dynamics.criteria.
    trajectory : an existing trajectory (path) of the original model's training to use for stage 1
        instead of recording one with `record`.
    record_every : record every this many steps.
    lam, gamma : DA-L2 strength and exponent; lam = 0 turns the penalty off.
    importance_loss : model -> loss on calibration data, for DA-L2 importances (None: plain L2).
    refresh_every : penalty calls between importance refreshes (0: measured once per stage).
    alpha, tau : distillation weight and temperature.
    """

    def __init__(self, model: nn.Module, example_inputs, directory, ratio: float = 0.5, stages: int = 3,
                 criterion: str = DEFAULT_TRAJECTORY_CRITERION, trajectory=None, record_every: int = 1,
                 lam: float = 1e-4, gamma: float = 1.0, importance_loss: Callable | None = None,
                 refresh_every: int = 100, alpha: float = 0.5, tau: float = 2.0, seed: int = 0):
        if not 0.0 <= ratio < 1.0:
            raise InvalidInputError(f"ratio must be in [0, 1), got {ratio!r}")
        if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
            raise InvalidInputError(f"stages must be a positive integer, got {stages!r}")
        if criterion not in TRAJECTORY_CRITERIA:
            raise InvalidInputError(f"criterion {criterion!r} is not offered here; choose one of "
                                    f"{sorted(TRAJECTORY_CRITERIA)} (the Taylor criteria measure importances on "
                                    f"training batches: `dynaprune prune` runs them)")
        if not math.isfinite(lam) or lam < 0:
            raise InvalidInputError(f"lam must be a finite number >= 0, got {lam!r}")
        self.example_inputs = example_inputs
        self.directory = Path(directory)
        self.ratio, self.stages, self.criterion, self.seed = ratio, stages, criterion, seed
        self.record_every, self.lam, self.gamma = record_every, lam, gamma
        self.importance_loss, self.refresh_every = importance_loss, refresh_every
        self.alpha, self.tau = alpha, tau
        graph = trace_unit_graph(model, example_inputs)
        self.original_sizes_ = {name: rnn.module.hidden_size for name, rnn in graph.recurrent.items()}
        self.prunable_ = {}
        for name, rnn in graph.recurrent.items():
            blocked = [layer for layer in rnn.all_layers if layer in graph.blocked]
            if blocked:
                warnings.warn(f"module `{name}` is left whole: cannot prune layer {blocked[0]!r}: "
                              f"{graph.blocked[blocked[0]]}", stacklevel=2)
            else:
                self.prunable_[name] = rnn.all_layers
        if not self.prunable_:
            raise InvalidInputError(f"no recurrent module of {type(model).__name__} can be pruned: "
                                    + "; ".join(f"{layer}: {why}" for layer, why in graph.blocked.items()))
        self.model, self.teacher, self.stage_ = model, None, 0
        self._given_trajectory = trajectory
        self._recorder = None if trajectory is not None else self._new_recorder(model)
        self._coefficients, self._penalty_calls = None, 0

    # ---- trajectory -------------------------------------------------------------------------
    def _new_recorder(self, model: nn.Module) -> TrajectoryRecorder:
        stage_dir = self.directory / f"stage_{self.stage_}"
        if stage_dir.exists():
            shutil.rmtree(stage_dir)  # a fresh run of this stage; an old trajectory would be continued otherwise
        return TrajectoryRecorder(model, stage_dir, every=self.record_every)

    def record(self, step: int, epoch: int | None = None, metrics=None) -> bool:
        """Record the current model's recurrent weights at `step` (every `record_every` steps)."""
        if self._recorder is None:
            raise InvalidInputError("this stage's units come from the given trajectory; call step() first")
        return self._recorder.maybe_record(step, epoch=epoch, metrics=metrics)

    # ---- stages -----------------------------------------------------------------------------
    def step(self) -> nn.Module:
        """The next stage's student: the current model pruned to this stage's ratio. The current
        model becomes the teacher (used without gradient), and recording switches to the student."""
        if self.stage_ >= self.stages:
            raise InvalidInputError(f"all {self.stages} stages are done")
        if self._recorder is not None and len(self._recorder.steps) < 3:
            raise InvalidInputError(f"step() needs at least 3 recorded snapshots since the last step(), got "
                                    f"{len(self._recorder.steps)}; call record() more often")
        trajectory = load_trajectory(self._given_trajectory if self._recorder is None else self._recorder.out_dir)
        plan = self._choose_units(trajectory, self.stage_ + 1)
        student = prune_model(self.model, plan, self.example_inputs)
        self.teacher = self.model
        self.stage_ += 1
        self.model = student.train()
        self._recorder = self._new_recorder(student)
        self._coefficients, self._penalty_calls = None, 0
        return student

    def _choose_units(self, trajectory, stage: int) -> dict[str, np.ndarray]:
        layers, ratios = [], {}
        for name, layer_names in self.prunable_.items():
            current = self.model.get_submodule(name).hidden_size
            target = self.original_sizes_[name] - units_to_prune(self.original_sizes_[name],
                                                                   stage_ratio(self.ratio, stage, self.stages))
            for layer in layer_names:
                if layer not in trajectory.layers or trajectory.layer_info(layer).hidden_size != current:
                    raise InvalidInputError(f"the trajectory in {trajectory.path} does not match the model being "
                                            f"pruned (layer {layer} has {current} units)")
                layers.append(layer)
                ratios[layer] = max(current - target, 0) / current
        needs_distances = CRITERIA[self.criterion].needs_distances
        if needs_distances:
            order = min(DEFAULT_ORDER, len(trajectory) - 1)
            distances = {layer: fit.distances for layer, fit in
                         fit_trajectory(trajectory, order=order, layers=layers).items()}
        else:
            distances = dict.fromkeys(layers)
        importance = {layer: final_norm_importance(trajectory, layer) for layer in layers}
        plan = select_units(distances, ratio=ratios, criterion=self.criterion, importance=importance,
                            seed=self.seed + stage)
        return plan.kept

    # ---- losses -----------------------------------------------------------------------------
    def teacher_logits(self, *inputs):
        """The teacher's output on `inputs` (no gradient); its first element if it returns a tuple."""
        if self.teacher is None:
            raise InvalidInputError("there is no teacher before the first step()")
        was_training = self.teacher.training
        self.teacher.eval()  # no dropout in the targets; its mode is put back for whoever else uses it
        try:
            with torch.no_grad():
                output = self.teacher(*inputs)
        finally:
            self.teacher.train(was_training)
        return output[0] if isinstance(output, tuple) else output

    def distillation_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                          targets: torch.Tensor) -> torch.Tensor:
        """(1 - alpha) CE(student, targets) + alpha tau^2 KL(teacher || student) (METHOD section 8)."""
        return distillation_loss(student_logits, teacher_logits, targets, self.alpha, self.tau).loss

    def regularize(self, student: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """`loss` plus the DA-L2 penalty of `student`."""
        return loss + self.penalty(student) if self.lam > 0 else loss

    def penalty(self, student: nn.Module) -> torch.Tensor:
        """lam * sum over layers and units of (1 - s_k)^gamma ||w_k||^2 (METHOD section 7), w_k the
        unit's rows of weight_ih and weight_hh; importances refreshed every `refresh_every` calls."""
        due = self._coefficients is None or (self.refresh_every and self._penalty_calls % self.refresh_every == 0)
        if due:
            self._coefficients = self._measure_coefficients(student)
        self._penalty_calls += 1
        total = None
        for module_name, suffix, coefficients in self._coefficients:
            rnn = student.get_submodule(module_name)
            norms = getattr(rnn, f"weight_ih{suffix}").pow(2).sum(1) + getattr(rnn, f"weight_hh{suffix}").pow(2).sum(1)
            term = torch.dot(norms, coefficients)
            total = term if total is None else total + term
        return total * self.lam

    def _measure_coefficients(self, student: nn.Module) -> list[tuple[str, str, torch.Tensor]]:
        parameters = {}
        for name, module in student.named_modules():
            if isinstance(module, tuple(GATES)):
                for index in range(module.num_layers):
                    for suffix in (f"_l{index}", f"_l{index}_reverse")[: 2 if module.bidirectional else 1]:
                        parameters[(name, suffix)] = module
        scores = self._taylor_scores(student, parameters) if self.importance_loss is not None else {}
        result = []
        for (name, suffix), module in parameters.items():
            H, weight = module.hidden_size, getattr(module, f"weight_hh{suffix}")
            unit = torch.ones(H, dtype=weight.dtype, device=weight.device)
            if (name, suffix) in scores:
                unit = (1.0 - scores[(name, suffix)]).clamp(min=0).pow(self.gamma).to(weight.dtype)
            result.append((name, suffix, unit.repeat(GATES[type(module)]).detach()))
        return result

    def _taylor_scores(self, student: nn.Module, parameters: dict) -> dict:
        """|sum over unit k's rows of w * dL/dw| per layer direction, divided by the layer's maximum."""
        tensors = {key: [getattr(module, f"{kind}{key[1]}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                         if getattr(module, f"{kind}{key[1]}", None) is not None]
                   for key, module in parameters.items()}
        flat = [tensor for group in tensors.values() for tensor in group]
        was_training = student.training
        student.eval()
        try:
            with torch.enable_grad():
                gradients = torch.autograd.grad(self.importance_loss(student), flat, allow_unused=True)
        finally:
            student.train(was_training)
        by_tensor = dict(zip(map(id, flat), gradients))
        scores = {}
        for key, group in tensors.items():
            module = parameters[key]
            total = torch.zeros(module.hidden_size, dtype=torch.float64, device=group[0].device)
            for tensor in group:
                gradient = by_tensor[id(tensor)]
                if gradient is None:
                    continue
                product = (tensor.detach() * gradient).reshape(tensor.shape[0], -1).sum(1).double()
                total += product.reshape(GATES[type(module)], module.hidden_size).sum(0)
            total = total.abs()
            peak = total.max()
            scores[key] = total / peak if peak > 0 else torch.zeros_like(total)
        return scores
