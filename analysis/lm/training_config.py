"""Training settings (TrainConfig, with the presets' values) and the schedule they imply: optimiser
steps per epoch and the interval between trajectory snapshots. `analysis.lm.training` runs them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from analysis.errors import InvalidInputError
from analysis.lm.evaluation import EVAL_BATCH_SIZE, EVAL_BPTT
from analysis.lm.model import preset
from analysis.utils.configs import PlainConfig, check_seed
from analysis.utils.options import option

TARGET_SNAPSHOTS = 40
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
LR_SCHEDULES = ("step", "cosine")
TEACHER_PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# what runs stored before these settings existed used: resuming them compares against these
SETTINGS_OF_OLDER_RUNS = {"lr_schedule": "step", "teacher_precision": "float32"}


@dataclass
class TrainConfig(PlainConfig):
    config_name = "training config"

    epochs: int = option(13, "number of epochs")
    optimizer: str = option("sgd", "sgd (the reference setting) or adam", choices=sorted(OPTIMIZERS))
    lr: float = option(1.0, "initial learning rate")
    lr_decay: float = option(0.5, "step schedule: multiply the rate by this each epoch after decay_after_epoch")
    decay_after_epoch: int = option(4, "step schedule: epochs at the initial rate")
    lr_schedule: str = option("step", "step: the per-epoch decay; cosine: the rate falls to 0 over the run's steps",
                              choices=LR_SCHEDULES)
    clip: float = option(5.0, "gradient-norm clipping; 0 disables it")
    bptt: int = option(20, "steps of backpropagation through time")
    batch_size: int = option(20, "training batch size")
    eval_batch_size: int = option(EVAL_BATCH_SIZE, "evaluation batch size")
    eval_bptt: int = option(EVAL_BPTT, "evaluation sequence length")
    seed: int = option(1111, "random seed")
    record_every: int | None = option(None, "steps between trajectory snapshots; none: about 40 snapshots per run; "
                                            "0: no trajectory")
    record_dtype: str = option("float32", "precision of the snapshots", choices=["float32", "float16"])
    log_interval: int = option(200, "batches between progress lines")
    max_batches_per_epoch: int | None = option(None, "cap on the batches of an epoch (dry runs); none: all")
    max_eval_batches: int | None = option(None, "cap on the batches of an evaluation (dry runs); none: all")
    distill_alpha: float = option(0.5, "weight of the distillation term (only with a teacher)")
    distill_temperature: float = option(2.0, "distillation temperature (only with a teacher)")
    # "bfloat16": faster on CPUs with bfloat16 units (RNNLanguageModel.set_inference_precision)
    teacher_precision: str = option("float32", "precision of the teacher's output layer (only with a teacher)",
                                    choices=sorted(TEACHER_PRECISIONS))

    def validate(self) -> TrainConfig:
        for name in ("epochs", "lr", "lr_decay", "bptt", "batch_size", "eval_batch_size", "eval_bptt",
                     "log_interval", "distill_temperature"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"training setting {name} must be positive, got {getattr(self, name)}")
        for name in ("max_batches_per_epoch", "max_eval_batches"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InvalidInputError(
                    f"training setting {name} must be at least 1 or None, got {getattr(self, name)}")
        check_seed(self.seed)
        if self.record_every is not None and self.record_every < 0:
            raise InvalidInputError(f"record_every must be >= 0 (0 disables recording), got {self.record_every}")
        if self.optimizer not in OPTIMIZERS:
            raise InvalidInputError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InvalidInputError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.teacher_precision not in TEACHER_PRECISIONS:
            raise InvalidInputError(f"teacher_precision must be one of {sorted(TEACHER_PRECISIONS)}, "
                                    f"got {self.teacher_precision!r}")
        if self.record_dtype not in ("float32", "float16"):
            raise InvalidInputError(f"record_dtype must be float32 or float16, got {self.record_dtype!r}")
        if self.clip < 0 or self.decay_after_epoch < 0 or not 0.0 <= self.distill_alpha <= 1.0:
            raise InvalidInputError("clip and decay_after_epoch must be >= 0 and distill_alpha in [0, 1]")
        return self

    def lr_at_epoch(self, epoch: int) -> float:
        """Learning rate of 1-based `epoch`: constant, then decayed once per epoch (Zaremba et al.)."""
        return self.lr * self.lr_decay ** max(0, epoch - self.decay_after_epoch)

    def lr_at_step(self, step: int, steps_per_epoch: int) -> float:
        """Learning rate of 0-based optimiser `step` of the run. "step": `lr_at_epoch` of the step's
        epoch. "cosine": lr * (1 + cos(pi * step / total)) / 2 over the run's epochs * steps_per_epoch
        steps, so each run (each pruning stage) ends annealed close to 0 (lr_decay is not used)."""
        steps_per_epoch = max(1, int(steps_per_epoch))
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / (self.epochs * steps_per_epoch))))
        return self.lr_at_epoch(step // steps_per_epoch + 1)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        return cls.from_dict({**preset(name)["training"], **overrides})


def steps_per_epoch(n_train_tokens: int, config: TrainConfig) -> int:
    rows = n_train_tokens // config.batch_size
    steps = max(0, math.ceil((rows - 1) / config.bptt))
    return min(steps, config.max_batches_per_epoch or steps)


def resolve_record_every(config: TrainConfig, n_train_tokens: int) -> int:
    """The snapshot interval in steps; None means about TARGET_SNAPSHOTS snapshots over the run."""
    if config.record_every is not None:
        return int(config.record_every)
    return max(1, math.ceil(config.epochs * steps_per_epoch(n_train_tokens, config) / TARGET_SNAPSHOTS))
