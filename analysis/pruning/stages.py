"""One stage of the pruning pipeline, decided before it trains: which units the student keeps
(from the teacher's trajectory, or its weights when there is none) and the fine-tuning settings.

    plan = choose_units(teacher, trajectory_dir, {"rnns.0.l0": 100, "rnns.1.l0": 100}, config, stage=1)
    train_config = stage_train_config(source.train_config, config, stage=1, n_train_tokens=corpus.train.numel())
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from analysis.dynamics.criteria import CRITERIA, FINAL_NORM, TAYLOR
from analysis.dynamics.selection import LayerPlan, PruningPlan, final_norm_importance, select_units
from analysis.errors import DynapruneError, InvalidInputError
from analysis.lm.model import RNNLanguageModel
from analysis.lm.training_config import TrainConfig, steps_per_epoch
from analysis.pruning.config import DRY_RUN_LIMITS, PipelineConfig
from analysis.pruning.importance import unit_importances
from analysis.pruning.surgery import prune_units
from analysis.runs import TRAJECTORY_DIR


def stage_train_config(source_config: dict, config: PipelineConfig, stage: int, n_train_tokens: int) -> TrainConfig:
    """Fine-tuning settings of one stage: the source run's, with this pipeline's epochs, rate, seed,
    distillation and snapshot interval."""
    known = {f.name for f in fields(TrainConfig)}
    base = TrainConfig.from_dict({k: v for k, v in source_config.items() if k in known})
    settings = base.to_dict()
    settings.update(epochs=config.epochs_per_stage, lr=config.lr if config.lr is not None else base.lr * 0.5,
                    lr_decay=config.lr_decay if config.lr_decay is not None else base.lr_decay,
                    decay_after_epoch=config.decay_after_epoch, lr_schedule=config.lr_schedule,
                    seed=config.seed + stage,
                    distill_alpha=config.distill_alpha, distill_temperature=config.distill_temperature,
                    teacher_precision=config.teacher_precision, record_every=1)
    if config.dry_run:
        settings.update(max_batches_per_epoch=DRY_RUN_LIMITS["max_batches_per_epoch"],
                        max_eval_batches=DRY_RUN_LIMITS["max_eval_batches"], log_interval=2)
    train_config = TrainConfig.from_dict(settings)
    total_steps = train_config.epochs * steps_per_epoch(n_train_tokens, train_config)
    train_config.record_every = max(1, math.ceil(total_steps / (config.snapshots_per_stage - 1)))
    return train_config.validate()


@dataclass(frozen=True)
class UnitChoice:
    """A stage's plan and how it was reached, per layer (arrays over the teacher's units):
    `removed_in_chunk` is 0 for a kept unit and k for a unit removed in measurement chunk k;
    `importance` is what each unit scored in the last measurement that saw it (for a removed unit, the
    one that removed it), `first_importance` what it scored on the uncut teacher; `importance_source`
    says which importance was read (FINAL_NORM, or TAYLOR when it was measured on training batches)."""

    plan: PruningPlan
    importance_source: str
    importance: dict[str, np.ndarray]
    first_importance: dict[str, np.ndarray]
    removed_in_chunk: dict[str, np.ndarray]


def choose_units(teacher: RNNLanguageModel, trajectory_dir: Path | None, kept_target: dict[str, int],
                 config: PipelineConfig, stage: int, calibration_tokens=None) -> PruningPlan:
    """Which of the teacher's units the stage-`stage` student keeps (`kept_target` units per layer).
    A criterion that reads Taylor importances measures them on `calibration_tokens` (the training split);
    one with several measurement chunks removes its units chunk by chunk, measuring them again on the
    teacher cut so far before each chunk. trace_unit_choice tells how the choice was reached."""
    return trace_unit_choice(teacher, trajectory_dir, kept_target, config, stage, calibration_tokens).plan


def trace_unit_choice(teacher: RNNLanguageModel, trajectory_dir: Path | None, kept_target: dict[str, int],
                      config: PipelineConfig, stage: int, calibration_tokens=None) -> UnitChoice:
    """choose_units, with the importances each unit had when it was chosen and the chunk that removed it."""
    from analysis.trajectories.trajectory import load_trajectory

    criterion = CRITERIA[config.criterion]
    sizes = dict(zip(teacher.layer_names, (rnn.hidden_size for rnn in teacher.rnns)))
    trajectory = None
    if trajectory_dir is not None:
        trajectory = load_trajectory(trajectory_dir)
        for layer, size in sizes.items():
            if layer not in trajectory.layers or trajectory.layer_info(layer).hidden_size != size:
                raise InvalidInputError(f"{trajectory_dir}: the trajectory does not belong to the model being pruned "
                                        f"(layer {layer} has {size} units in the model); give the run it came from")
    elif criterion.needs_distances:
        raise InvalidInputError(f"the {config.criterion} criterion needs the trajectory the model's weights followed "
                                f"in training; start from a run or sample directory with a {TRAJECTORY_DIR}/ folder")
    # nothing to remove (the control): no importances to measure
    taylor = criterion.importance_source == TAYLOR and any(kept_target[name] < sizes[name] for name in kept_target)
    if taylor and calibration_tokens is None:
        raise InvalidInputError(f"the {config.criterion} criterion measures unit importances on training batches; "
                                f"give the calibration tokens")
    batches = (DRY_RUN_LIMITS["calibration_batches"] if config.dry_run
               else criterion.calibration_batches or config.calibration_batches)
    distances = {}
    for layer in kept_target:
        distances[layer] = None
        if criterion.needs_distances and kept_target[layer] < sizes[layer]:
            from analysis.dynamics.distances import dynamics_distances
            from analysis.dynamics.lds import fit_layer

            fit = fit_layer(trajectory, layer, order=min(config.lds_order, len(trajectory) - 1))
            distances[layer] = dynamics_distances(fit, horizon=config.horizon)
    chunks = criterion.measurement_chunks if taylor else 1
    kept = {layer: np.arange(sizes[layer]) for layer in kept_target}
    last_importance = {layer: np.zeros(sizes[layer]) for layer in kept_target}
    first_importance = {}
    removed_in_chunk = {layer: np.zeros(sizes[layer], dtype=np.int64) for layer in kept_target}
    for chunk in range(1, chunks + 1):
        model = teacher if chunk == 1 else prune_units(teacher, kept)
        measured = unit_importances(model, calibration_tokens, max_batches=batches) if taylor else None
        sub_distances, importance, ratio = {}, {}, {}
        for layer, indices in kept.items():
            removed = sizes[layer] - len(indices)
            n_now = round((sizes[layer] - kept_target[layer]) * chunk / chunks) - removed
            ratio[layer] = n_now / len(indices)
            # no trajectory: the model's own unit weight vectors are the final ones
            importance[layer] = (measured[layer] if taylor
                                 else final_norm_importance(trajectory if trajectory is not None else teacher, layer))
            full = distances[layer]
            sub_distances[layer] = None if full is None else full[np.ix_(indices, indices)]
        plan = select_units(sub_distances, ratio, criterion=config.criterion, importance=importance,
                            seed=config.seed + stage)
        for layer, indices in kept.items():
            last_importance[layer][indices] = importance[layer]
            first_importance.setdefault(layer, last_importance[layer].copy())
            removed_in_chunk[layer][indices[plan.layers[layer].pruned]] = chunk
        if chunks == 1:
            break
        kept = {layer: indices[plan.layers[layer].kept] for layer, indices in kept.items()}
    if chunks > 1:
        plan = PruningPlan(criterion=config.criterion, layers={
            layer: LayerPlan(layer=layer, hidden_size=sizes[layer], kept=indices,
                             pruned=np.setdiff1d(np.arange(sizes[layer]), indices))
            for layer, indices in kept.items()})
    for layer, target in kept_target.items():
        if len(plan.layers[layer].kept) != target:
            raise DynapruneError(
                f"layer {layer}: the plan keeps {len(plan.layers[layer].kept)} units, expected {target}")
    return UnitChoice(plan=plan, importance_source=TAYLOR if taylor else FINAL_NORM, importance=last_importance,
                      first_importance=first_importance, removed_in_chunk=removed_in_chunk)
