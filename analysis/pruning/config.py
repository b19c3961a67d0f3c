"""The options of the staged prune-and-fine-tune pipeline (analysis.pruning.pipeline), declared once:
each field carries its command-line help (analysis.utils.options builds `dynaprune prune`'s options).

    config = PipelineConfig(ratio=0.5, stages=3, criterion="dynamics", epochs_per_stage=2).validate()
    config.stage_ratios()          # [r_1, ..., r_S]
    PipelineConfig(ratio={"rnns.0.l0": 0.3, "rnns.1.l0": 0.5}).stage_ratios("rnns.1.l0")
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from analysis.dynamics.criteria import CRITERIA, DEFAULT_CRITERION
from analysis.dynamics.lds import DEFAULT_ORDER
from analysis.dynamics.selection import units_to_prune
from analysis.errors import InvalidInputError
from analysis.lm.training_config import LR_SCHEDULES, TEACHER_PRECISIONS
from analysis.pruning.importance import DEFAULT_CALIBRATION_BATCHES
from analysis.utils.configs import PlainConfig, check_seed
from analysis.utils.options import option

REGULARIZATIONS = ("da-l2", "l2", "none")
# A dry run goes through every step (selection, surgery, fine-tuning, recording, evaluation) in seconds.
DRY_RUN_LIMITS = {"max_batches_per_epoch": 4, "max_eval_batches": 2, "calibration_batches": 2}


def parse_ratio(text: str) -> float | dict[str, float]:
    """"0.5" (every layer) or "rnns.0.l0=0.3,rnns.1.l0=0.5" (per layer)."""
    if "=" not in text:
        return float(text)
    ratios = {}
    for item in text.split(","):
        layer, _, value = item.partition("=")
        if not layer.strip() or not value.strip():
            raise ValueError(f"expected LAYER=RATIO, got {item!r}")
        ratios[layer.strip()] = float(value)
    return ratios


def format_ratio(ratio: float | Mapping[str, float]) -> str:
    if isinstance(ratio, Mapping):
        return ",".join(f"{layer}={float(value)!r}" for layer, value in ratio.items())
    return repr(float(ratio))


def uniform_or_per_layer(ratios: Mapping[str, float]) -> float | dict[str, float]:
    """One ratio when every layer has the same, else the per-layer mapping (as PipelineConfig.ratio)."""
    values = {float(value) for value in ratios.values()}
    return values.pop() if len(values) == 1 else {layer: float(value) for layer, value in ratios.items()}


def parse_horizon(text: str) -> int | float:
    """A number of steps, or "inf" (the Martin distance)."""
    value = float(text)
    return value if math.isinf(value) else int(text)


@dataclass
class PipelineConfig(PlainConfig):
    config_name = "pipeline option"
    renamed_keys = {"kd_alpha": "distill_alpha", "kd_tau": "distill_temperature"}  # pipeline.json before the rename

    ratio: float | dict[str, float] = option(
        0.5, "fraction of each layer's original units to remove in the end: one number for every layer, or "
             "LAYER=R,LAYER=R per layer (a layer not named keeps its units); 0 fine-tunes the unpruned model the "
             "same way, as a control", parse=parse_ratio, format=format_ratio, metavar="R|LAYER=R,...")
    stages: int = option(3, "number of prune-and-fine-tune stages (1: one-shot pruning)")
    criterion: str = option(DEFAULT_CRITERION, "how units are chosen (docs/criteria.md compares them)",
                            choices=sorted(CRITERIA))
    epochs_per_stage: int = option(2, "fine-tuning epochs after each cut")
    regularization: str = option("da-l2", "da-l2: discrimination-aware L2; l2: the same strength for every unit "
                                          "(all s_k = 0); none: no penalty", choices=REGULARIZATIONS)
    # see docs/results.md for the choice of lambda
    da_l2: float = option(1e-5, "strength lambda of the (discrimination-aware) L2 penalty")
    da_l2_gamma: float = option(1.0, "exponent gamma of the per-unit factor (1 - s_k)^gamma of the penalty")
    importance_refresh_epochs: int = option(1, "re-measure unit importances every this many epochs "
                                               "(0: once per stage)")
    calibration_batches: int = option(DEFAULT_CALIBRATION_BATCHES,
                                      "training batches that measure unit importances for DA-L2 and the taylor and "
                                      "dynamics-taylor criteria (the iterative criteria use their own 64)")
    distillation: bool = option(True, "fine-tune on cross-entropy alone (no teacher)")
    distill_alpha: float = option(0.5, "weight of the distillation term", aliases=("--kd-alpha",))
    distill_temperature: float = option(2.0, "distillation temperature", aliases=("--kd-tau",))
    teacher_precision: str = option(
        "float32", "precision of the teacher's output layer: bfloat16 is faster on CPUs with bfloat16 units "
                   "and changes the targets very little (docs/benchmarks.md)", choices=sorted(TEACHER_PRECISIONS))
    lds_order: int = option(DEFAULT_ORDER, "state dimension of each unit's LDS (capped at T - 1 for T snapshots)")
    horizon: int | float | None = option(
        None, "dynamics-distance horizon in steps; inf: the Martin distance; none: the number of snapshots",
        parse=parse_horizon, metavar="M|inf|none")
    lr: float | None = option(None, "fine-tuning learning rate; none: half the source run's initial rate")
    lr_decay: float | None = option(None, "per-epoch rate factor of the step schedule; none: the source run's")
    decay_after_epoch: int = option(1, "the step schedule holds the rate for this many epochs of each stage")
    lr_schedule: str = option("cosine", "cosine: each stage anneals the rate to 0 over its steps; step: the rate "
                                        "is multiplied by lr_decay after each epoch", choices=LR_SCHEDULES)
    snapshots_per_stage: int = option(20, "trajectory snapshots recorded while each stage fine-tunes (at least 3)")
    seed: int = option(0, "random seed")
    dry_run: bool = option(False, "a few batches per stage, to check the setup in seconds")

    def validate(self) -> PipelineConfig:
        ratios = self.ratio.values() if isinstance(self.ratio, Mapping) else [self.ratio]
        if isinstance(self.ratio, Mapping) and not self.ratio:
            raise InvalidInputError("per-layer ratios name no layer; give at least one LAYER=RATIO")
        for ratio in ratios:
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
                raise InvalidInputError(f"a target pruning ratio must be in [0, 1) (0: fine-tune without pruning, "
                                        f"a control), got {self.ratio!r}")
        for name in ("stages", "epochs_per_stage", "calibration_batches", "lds_order"):
            if isinstance(getattr(self, name), bool) or int(getattr(self, name)) < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        check_seed(self.seed)
        if self.snapshots_per_stage < 3:
            raise InvalidInputError(f"snapshots_per_stage must be at least 3 (an LDS fit needs 3), "
                                    f"got {self.snapshots_per_stage}")
        if self.criterion not in CRITERIA:
            raise InvalidInputError(f"unknown criterion {self.criterion!r}; choose one of {sorted(CRITERIA)}")
        if self.regularization not in REGULARIZATIONS:
            raise InvalidInputError(f"regularization must be one of {REGULARIZATIONS}, got {self.regularization!r}")
        if not (math.isfinite(self.da_l2) and self.da_l2 >= 0 and self.da_l2_gamma >= 0):
            raise InvalidInputError(f"the L2 strength and gamma must be >= 0, got {self.da_l2!r}, {self.da_l2_gamma!r}")
        if not 0.0 <= self.distill_alpha <= 1.0 or not self.distill_temperature > 0:
            raise InvalidInputError(f"distill_alpha must be in [0, 1] and distill_temperature positive, got "
                                    f"{self.distill_alpha!r}, {self.distill_temperature!r}")
        if self.importance_refresh_epochs < 0 or self.decay_after_epoch < 0:
            raise InvalidInputError("importance_refresh_epochs and decay_after_epoch must be >= 0")
        if (self.lr is not None and not self.lr > 0) or (self.lr_decay is not None and not self.lr_decay > 0):
            raise InvalidInputError(f"lr and lr_decay must be positive, got {self.lr!r}, {self.lr_decay!r}")
        if self.teacher_precision not in TEACHER_PRECISIONS:
            raise InvalidInputError(f"teacher_precision must be one of {sorted(TEACHER_PRECISIONS)}, "
                                    f"got {self.teacher_precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InvalidInputError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.horizon is not None and (isinstance(self.horizon, bool) or not self.horizon >= 1
                                         or not (math.isinf(self.horizon) or float(self.horizon).is_integer())):
            raise InvalidInputError(f"horizon must be a positive number of steps or inf, got {self.horizon!r}")
        return self

    def check_layers(self, layers: Iterable[str]) -> PipelineConfig:
        """Refuse per-layer ratios for layers the model does not have."""
        layers = list(layers)
        unknown = sorted(set(self.ratio) - set(layers)) if isinstance(self.ratio, Mapping) else []
        if unknown:
            raise InvalidInputError(f"per-layer ratios name layers the model does not have: {', '.join(unknown)}; "
                                    f"its layers are {', '.join(layers)}")
        return self

    @property
    def per_layer(self) -> bool:
        return isinstance(self.ratio, Mapping)

    @property
    def uses_teacher(self) -> bool:
        return self.distillation and self.distill_alpha > 0

    @property
    def uses_penalty(self) -> bool:
        return self.regularization != "none" and self.da_l2 > 0

    def layer_ratio(self, layer: str | None = None) -> float:
        """The target ratio of `layer` (0 for a layer per-layer ratios do not name)."""
        if not self.per_layer:
            return float(self.ratio)
        if layer is None:
            raise InvalidInputError("this configuration has per-layer ratios; name the layer")
        return float(self.ratio.get(layer, 0.0))

    def stage_ratios(self, layer: str | None = None) -> list[float]:
        """r_s = 1 - (1 - r)^(s/S) of the original size after stage s = 1..S (r: `layer`'s ratio)."""
        ratio = self.layer_ratio(layer)
        return [1.0 - (1.0 - ratio) ** (s / self.stages) for s in range(1, self.stages + 1)]

    def kept_units(self, hidden_size: int, layer: str | None = None) -> list[int]:
        """Units a layer of `hidden_size` (original) keeps after each stage: H - round(r_s * H)."""
        return [int(hidden_size) - units_to_prune(int(hidden_size), r) for r in self.stage_ratios(layer)]

    def ratio_text(self) -> str:
        """The ratio for people: "0.5", or "rnns.0.l0 0.3, rnns.1.l0 0.5"."""
        if self.per_layer:
            return ", ".join(f"{layer} {float(value):g}" for layer, value in self.ratio.items())
        return f"{float(self.ratio):g}"
