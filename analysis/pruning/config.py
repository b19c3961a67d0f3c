"""The options of the staged prune-and-fine-tune pipeline (analysis.pruning.pipeline), declared once.

    config = PipelineConfig(ratio=0.5, stages=3, criterion="dynamics", epochs_per_stage=2).validate()
    config.stage_ratios()          # [r_1, ..., r_S]
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.dynamics.selection import CRITERIA, units_to_prune
from analysis.errors import InvalidInputError
from analysis.lm.training_config import LR_SCHEDULES, TEACHER_PRECISIONS
from analysis.pruning.regularization import DEFAULT_CALIBRATION_BATCHES
from analysis.utils.configs import PlainConfig

REGULARIZATIONS = ("da-l2", "l2", "none")
# A dry run goes through every step (selection, surgery, fine-tuning, recording, evaluation) in seconds.
DRY_RUN_LIMITS = {"max_batches_per_epoch": 4, "max_eval_batches": 2, "calibration_batches": 2}


@dataclass
class PipelineConfig(PlainConfig):
    config_name = "pipeline option"

    ratio: float = 0.5                  # target fraction of each layer's original units to remove (0: a control)
    stages: int = 3                     # 1 is one-shot pruning
    criterion: str = "dynamics"         # "dynamics", "magnitude" or "random" (analysis.dynamics.selection.CRITERIA)
    epochs_per_stage: int = 2
    regularization: str = "da-l2"       # "da-l2", "l2" (plain: every s_k = 0) or "none"
    da_l2: float = 1e-5                 # lambda of the (DA-)L2 penalty (see docs/results.md for the choice)
    da_l2_gamma: float = 1.0
    importance_refresh_epochs: int = 1  # re-measure importances every this many epochs (0: once per stage)
    calibration_batches: int = DEFAULT_CALIBRATION_BATCHES
    distillation: bool = True
    kd_alpha: float = 0.5
    kd_tau: float = 2.0
    teacher_precision: str = "float32"  # of the teacher's decoder product; "bfloat16": faster where the CPU has it
    lds_order: int = 4                  # capped at T - 1 for a trajectory of T snapshots
    horizon: int | None = None          # dynamics-distance horizon; None: the number of snapshots
    lr: float | None = None             # fine-tuning rate; None: half the source run's initial rate
    lr_decay: float | None = None       # None: the source run's
    decay_after_epoch: int = 1
    lr_schedule: str = "cosine"         # "cosine": each stage anneals lr to 0; "step": lr_decay per epoch
    snapshots_per_stage: int = 20
    seed: int = 0
    dry_run: bool = False

    def validate(self) -> "PipelineConfig":
        if isinstance(self.ratio, bool) or not 0.0 <= float(self.ratio) < 1.0:
            raise InvalidInputError(f"the target pruning ratio must be in [0, 1) (0: fine-tune without pruning, "
                                    f"a control), got {self.ratio!r}")
        for name in ("stages", "epochs_per_stage", "calibration_batches", "lds_order"):
            if isinstance(getattr(self, name), bool) or int(getattr(self, name)) < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.snapshots_per_stage < 3:
            raise InvalidInputError(f"snapshots_per_stage must be at least 3 (an LDS fit needs 3), got {self.snapshots_per_stage}")
        if self.criterion not in CRITERIA:
            raise InvalidInputError(f"unknown criterion {self.criterion!r}; choose one of {sorted(CRITERIA)}")
        if self.regularization not in REGULARIZATIONS:
            raise InvalidInputError(f"regularization must be one of {REGULARIZATIONS}, got {self.regularization!r}")
        if not (math.isfinite(self.da_l2) and self.da_l2 >= 0 and self.da_l2_gamma >= 0):
            raise InvalidInputError(f"the L2 strength and gamma must be >= 0, got {self.da_l2!r}, {self.da_l2_gamma!r}")
        if not 0.0 <= self.kd_alpha <= 1.0 or not self.kd_tau > 0:
            raise InvalidInputError(f"kd_alpha must be in [0, 1] and kd_tau positive, got {self.kd_alpha!r}, {self.kd_tau!r}")
        if self.importance_refresh_epochs < 0 or self.decay_after_epoch < 0:
            raise InvalidInputError("importance_refresh_epochs and decay_after_epoch must be >= 0")
        if (self.lr is not None and not self.lr > 0) or (self.lr_decay is not None and not self.lr_decay > 0):
            raise InvalidInputError(f"lr and lr_decay must be positive, got {self.lr!r}, {self.lr_decay!r}")
        if self.teacher_precision not in TEACHER_PRECISIONS:
            raise InvalidInputError(f"teacher_precision must be one of {sorted(TEACHER_PRECISIONS)}, "
                                    f"got {self.teacher_precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InvalidInputError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.horizon is not None and int(self.horizon) < 1:
            raise InvalidInputError(f"horizon must be a positive number of steps, got {self.horizon!r}")
        return self

    @property
    def uses_teacher(self) -> bool:
        return self.distillation and self.kd_alpha > 0

    @property
    def uses_penalty(self) -> bool:
        return self.regularization != "none" and self.da_l2 > 0

    def stage_ratios(self) -> list[float]:
        """r_s = 1 - (1 - r)^(s/S) of the original size after stage s = 1..S."""
        return [1.0 - (1.0 - float(self.ratio)) ** (s / self.stages) for s in range(1, self.stages + 1)]

    def kept_units(self, hidden_size: int) -> list[int]:
        """Units a layer of `hidden_size` (original) keeps after each stage: H - round(r_s * H)."""
        return [int(hidden_size) - units_to_prune(int(hidden_size), r) for r in self.stage_ratios()]
