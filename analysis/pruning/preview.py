"""What a pruning plan would do, before any fine-tuning: parameter counts and model size before
and after, the perplexity of the pruned model straight after surgery (zero-shot), and a curve of
that perplexity against the pruning ratio for each selection criterion.

Zero-shot perplexity is measured on `max_tokens` tokens of the validation split (default
DEFAULT_MAX_EVAL_TOKENS = 10,000: half the synthetic validation split, an eighth of PTB's), so
that moving a slider answers within a couple of seconds even for a PTB-sized model on one busy
core (docs/benchmarks.md has the timings): the first ones, or with `windows=k` k stretches spread
evenly over the whole split (spread_windows), which estimate the whole split's perplexity far
better than its beginning does. It follows METHOD section 9 otherwise (batch 10, bptt 35, hidden
state carried across windows); pass max_tokens=None for the whole split.

    data = load_validation_tokens(info["data_source"], info.get("vocab"), windows=SPREAD_WINDOWS)
    importance = final_norm_importance(trajectory)
    plan = select_units(distances, ratio=0.5, criterion="dynamics", importance=importance)
    footprint = plan_footprint(model.config, plan)
    ppl = zero_shot_perplexity(model, plan, data.tokens)
    curve = zero_shot_curve(model, distances, importance, data.tokens, ratios=[0, 0.25, 0.5])
    choice = measured_cut(model, {"rnns.0.l0": 0.5, "rnns.1.l0": 0.5}, "taylor-iterative",
                          model_corpus(info["data_source"], info.get("vocab"), "training").train,
                          trajectory_dir=run_dir)   # a criterion that measures importances on training batches
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from analysis.dynamics.criteria import CRITERIA, TRAJECTORY_CRITERIA
from analysis.dynamics.lds import DEFAULT_ORDER
from analysis.dynamics.selection import select_units, units_to_prune
from analysis.errors import InvalidInputError
from analysis.lm.evaluation import EVAL_BATCH_SIZE, EVAL_BPTT, evaluate, perplexity
from analysis.lm.model import GATES_PER_UNIT, ModelConfig, RNNLanguageModel
from analysis.pruning.config import PipelineConfig
from analysis.pruning.stages import UnitChoice, trace_unit_choice
from analysis.pruning.surgery import kept_units, prune_units

DEFAULT_MAX_EVAL_TOKENS = 10_000
DEFAULT_CURVE_RATIOS = (0.0, 0.2, 0.4, 0.6, 0.8)
# One stretch per column that evaluate() cuts the stream into, so that no column straddles two stretches.
SPREAD_WINDOWS = EVAL_BATCH_SIZE
_BYTES_PER_ELEMENT = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def limit_threads(n_threads: int) -> None:
    """Cap the threads that torch and the BLAS libraries use in this process.

    The dashboard evaluates small models while a background job may be training on every core;
    oversubscribed threads then wait on each other and small evaluations slow down many-fold.
    """
    if isinstance(n_threads, bool) or int(n_threads) != n_threads or n_threads < 1:
        raise InvalidInputError(f"n_threads must be a positive integer; got {n_threads!r}")
    torch.set_num_threads(int(n_threads))
    threadpool_limits(limits=int(n_threads))


# ----------------------------------------------------------------------------- size


def count_parameters_for(config: ModelConfig) -> dict[str, int]:
    """Parameter counts of an RNNLanguageModel with this config, without building it:
    {"recurrent": ..., "total": ...}, tied weights counted once (as analysis.pruning.surgery.count_parameters)."""
    gates = GATES_PER_UNIT[config.rnn_type]
    inputs = [int(config.embedding_size)] + [int(h) for h in config.hidden_sizes[:-1]]
    recurrent = sum(gates * h * (d + h) + 2 * gates * h for d, h in zip(inputs, map(int, config.hidden_sizes)))
    V, E, last = int(config.vocab_size), int(config.embedding_size), int(config.hidden_sizes[-1])
    decoder = V + (0 if config.tie_weights else V * last)
    return {"recurrent": int(recurrent), "total": int(V * E + recurrent + decoder)}


@dataclass(frozen=True)
class PlanFootprint:
    """Sizes before and after applying a pruning plan to a model."""

    hidden_before: list[int]
    hidden_after: list[int]
    params_before: dict[str, int]
    params_after: dict[str, int]
    bytes_before: int
    bytes_after: int

    @property
    def units_removed(self) -> int:
        return sum(self.hidden_before) - sum(self.hidden_after)

    @property
    def total_reduction(self) -> float:
        """Fraction of all parameters the plan removes."""
        return 1.0 - self.params_after["total"] / max(1, self.params_before["total"])

    def to_frame(self) -> pd.DataFrame:
        rows = [("hidden units", sum(self.hidden_before), sum(self.hidden_after)),
                ("recurrent parameters", self.params_before["recurrent"], self.params_after["recurrent"]),
                ("all parameters", self.params_before["total"], self.params_after["total"]),
                ("model size (MB)", self.bytes_before / 1e6, self.bytes_after / 1e6)]
        frame = pd.DataFrame(rows, columns=["quantity", "before", "after"])
        frame["change"] = frame["after"] / frame["before"].where(frame["before"] != 0) - 1.0
        return frame


def plan_footprint(config: ModelConfig, plan, dtype: str = "float32") -> PlanFootprint:
    """Hidden sizes, parameter counts and in-memory size of a model before and after `plan`
    (a PruningPlan or {layer: kept indices}); layer names are "rnns.<i>.l0" as in the model."""
    if dtype not in _BYTES_PER_ELEMENT:
        raise InvalidInputError(f"dtype must be one of {sorted(_BYTES_PER_ELEMENT)}; got {dtype!r}")
    kept = kept_units(plan)
    names = [f"rnns.{i}.l0" for i in range(len(config.hidden_sizes))]
    unknown = sorted(set(kept) - set(names))
    if unknown:
        raise InvalidInputError(f"plan names unknown layer(s) {unknown}; the model's layers are {names}")
    before = [int(h) for h in config.hidden_sizes]
    after = [len(kept[name]) if name in kept else h for name, h in zip(names, before)]
    if any(h < 1 for h in after):
        raise InvalidInputError("the plan keeps no unit in some layer; keep at least one unit per layer")
    smaller = ModelConfig.from_dict({**config.to_dict(), "hidden_sizes": after})
    params_before, params_after = count_parameters_for(config), count_parameters_for(smaller)
    width = _BYTES_PER_ELEMENT[dtype]
    return PlanFootprint(before, after, params_before, params_after,
                         params_before["total"] * width, params_after["total"] * width)


# ----------------------------------------------------------------------------- perplexity


@dataclass(frozen=True)
class ValidationTokens:
    """A capped part of a corpus's validation split, ready for `evaluate`: its prefix (windows 1),
    or `windows` equal stretches spread over the split, one after the other."""

    tokens: torch.Tensor
    source: str
    total_tokens: int
    oracle_perplexity: float | None  # of these tokens under the true language (synthetic corpora only)
    windows: int = 1

    @property
    def capped(self) -> bool:
        return self.tokens.numel() < self.total_tokens


def window_starts(total: int, length: int, windows: int) -> list[int]:
    """Where `windows` stretches of `length` tokens start when spread evenly over `total` tokens:
    the first at 0, the last ending at the end, equal gaps between them."""
    if windows == 1:
        return [0]
    return [round(i * (total - length) / (windows - 1)) for i in range(windows)]


def spread_windows(tokens: torch.Tensor, max_tokens: int, windows: int = SPREAD_WINDOWS) -> torch.Tensor:
    """At most `max_tokens` of a 1-D token stream as `windows` contiguous stretches of equal length,
    spread evenly from its beginning to its end and joined in order; the whole stream when it is no
    longer than `max_tokens`.

    With windows = the evaluation batch size (SPREAD_WINDOWS), evaluate() reads each stretch as one
    column of its batch, so no prediction crosses from one stretch into the next::

        tokens  |AAAA......BBBB......CCCC......DDDD|   4 windows of 4 over 34 tokens
        result  |AAAABBBBCCCCDDDD|                     evaluate(batch_size=4): columns A, B, C, D
    """
    if isinstance(windows, bool) or int(windows) != windows or windows < 1:
        raise InvalidInputError(f"windows must be a positive integer; got {windows!r}")
    if isinstance(max_tokens, bool) or int(max_tokens) < 2 * windows:
        raise InvalidInputError(f"max_tokens must be at least 2 per window ({2 * windows}); got {max_tokens!r}")
    total = int(tokens.numel())
    if total <= max_tokens:
        return tokens
    length = int(max_tokens) // int(windows)
    return torch.cat([tokens[start:start + length] for start in window_starts(total, length, int(windows))])


def model_corpus(data_source: str | None, vocab_json=None, split: str = "validation"):
    """The corpus a model was trained on (`data_source` as recorded in its checkpoint, e.g.
    "synthetic:0" or "ptb:<dir>"), checked against the model's vocabulary `vocab_json`; `split` names
    what the caller reads, for the messages. A "ptb:<dir>" that no longer exists falls back on
    $DYNAPRUNE_PTB_DIR. Raises InvalidInputError when the source is unknown, missing or another corpus."""
    from analysis.lm.corpora import PTB_ENV_VAR, load_corpus

    if not data_source:
        raise InvalidInputError(f"the model does not record the corpus it was trained on, and its {split} split is "
                                "needed here (train it with `dynaprune train`, which records it)")
    spec = str(data_source)
    kind, _, argument = spec.partition(":")
    if kind == "ptb" and argument and not os.path.isdir(argument) and os.environ.get(PTB_ENV_VAR):
        spec = "ptb"  # the recorded directory moved; the environment says where PTB lives here
    try:
        corpus = load_corpus(spec)
    except (InvalidInputError, OSError) as error:
        raise InvalidInputError(f"cannot load the {split} split of {data_source!r}: {error}") from error
    corpus.check_vocabulary("the model", None, vocab_json, remedy="the model was trained on another corpus")
    return corpus


def load_validation_tokens(data_source: str | None, vocab_json=None,
                           max_tokens: int | None = DEFAULT_MAX_EVAL_TOKENS,
                           windows: int | None = None) -> ValidationTokens:
    """The validation tokens of the corpus a model was trained on (`data_source` as recorded in its
    checkpoint, e.g. "synthetic:0" or "ptb:<dir>"), capped to the first `max_tokens`, or with
    `windows` to that many stretches spread over the whole split (spread_windows).

    A "ptb:<dir>" that no longer exists falls back on $DYNAPRUNE_PTB_DIR. Raises InvalidInputError
    when the source is unknown or missing, or when its vocabulary differs from `vocab_json` (the
    model's own vocabulary).
    """
    if max_tokens is not None and (isinstance(max_tokens, bool) or int(max_tokens) < 2):
        raise InvalidInputError(f"max_tokens must be at least 2 or None; got {max_tokens!r}")
    corpus = model_corpus(data_source, vocab_json, "validation")
    valid = corpus.valid
    total = int(valid.numel())
    if max_tokens is None or total <= int(max_tokens):
        tokens, spans = valid, [(0, total)]
    elif windows is None:
        tokens, spans = valid[: int(max_tokens)], [(0, int(max_tokens))]
    else:
        tokens = spread_windows(valid, int(max_tokens), windows)
        length = int(max_tokens) // int(windows)
        spans = [(start, start + length) for start in window_starts(total, length, int(windows))]
    oracle = None
    if corpus.language is not None:
        if tokens.numel() == total:
            oracle = corpus.oracle_perplexity("valid")
        else:  # each token given all before it in the split; a stretch's first token is not predicted
            log_probs = corpus.language.token_log_probs(valid.numpy())
            scored = np.concatenate([log_probs[start + 1:end] for start, end in spans])
            oracle = float(math.exp(-scored.mean()))
    return ValidationTokens(tokens=tokens, source=corpus.source, total_tokens=int(valid.numel()),
                            oracle_perplexity=oracle, windows=len(spans))


def model_perplexity(model: RNNLanguageModel, tokens: torch.Tensor) -> float:
    """Perplexity of a model on a token stream (METHOD section 9 settings)."""
    if model.config.vocab_size <= int(tokens.max()):
        raise InvalidInputError(f"tokens go up to id {int(tokens.max())} but the model has a "
                                f"{model.config.vocab_size}-word vocabulary")
    with torch.inference_mode():
        mean_nll, _ = evaluate(model, tokens, batch_size=EVAL_BATCH_SIZE, bptt=EVAL_BPTT)
    return perplexity(mean_nll)


def zero_shot_perplexity(model: RNNLanguageModel, plan, tokens: torch.Tensor) -> float:
    """Perplexity of `model` pruned by `plan` (no fine-tuning) on `tokens`; `model` is unchanged."""
    return model_perplexity(prune_units(model, plan), tokens)


def zero_shot_curve(model: RNNLanguageModel, distances: Mapping[str, np.ndarray | None],
                    importance: Mapping[str, np.ndarray], tokens: torch.Tensor,
                    ratios: Sequence[float] = DEFAULT_CURVE_RATIOS, criteria: Sequence[str] | None = None,
                    seed: int = 0) -> pd.DataFrame:
    """Zero-shot perplexity against a global pruning ratio for each criterion.

    distances and importance are per layer (layer name -> array), as for select_units; `importance`
    is the final weight norms, so only the criteria that read those are offered (TRAJECTORY_CRITERIA,
    the default). Ratio 0 is the unpruned model and is evaluated once. Columns: criterion, ratio,
    perplexity, params_total.
    """
    criteria = list(TRAJECTORY_CRITERIA) if criteria is None else list(criteria)
    unknown = [c for c in criteria if c not in TRAJECTORY_CRITERIA]
    if unknown:
        raise InvalidInputError(f"criteria {unknown} are not offered here; choose from {sorted(TRAJECTORY_CRITERIA)}")
    if not ratios:
        raise InvalidInputError("give at least one ratio")
    baseline = None
    rows = []
    for criterion in criteria:
        for ratio in ratios:
            plan = select_units(dict(distances), ratio=float(ratio), criterion=criterion,
                                importance=dict(importance), seed=seed)
            if all(len(p.pruned) == 0 for p in plan.layers.values()):
                if baseline is None:
                    baseline = model_perplexity(model, tokens)
                value = baseline
            else:
                value = zero_shot_perplexity(model, plan, tokens)
            total = plan_footprint(model.config, plan).params_after["total"]
            rows.append({"criterion": criterion, "ratio": float(ratio), "perplexity": value, "params_total": total})
    return pd.DataFrame(rows, columns=["criterion", "ratio", "perplexity", "params_total"])


def measured_cut(model: RNNLanguageModel, ratios: Mapping[str, float], criterion: str, calibration_tokens, *,
                 trajectory_dir: str | Path | None = None, lds_order: int = DEFAULT_ORDER,
                 horizon: int | float | None = None, seed: int = 0) -> UnitChoice:
    """The units `criterion` removes from `model` at `ratios` ({layer: ratio}; a layer not named keeps
    all its units) in one cut, as `dynaprune prune` chooses them, with how the choice was reached
    (analysis.pruning.stages.UnitChoice). Any criterion works; those that read Taylor importances
    measure them on `calibration_tokens` (the training split), once per measurement chunk, which is
    what makes them slow (docs/benchmarks.md). The dynamics criteria read the trajectory in
    `trajectory_dir`. `model` is not touched: the measurements run on a copy, so a model that other
    threads use may be passed."""
    if criterion not in CRITERIA:
        raise InvalidInputError(f"unknown criterion {criterion!r}; choose one of {sorted(CRITERIA)}")
    sizes = dict(zip(model.layer_names, (rnn.hidden_size for rnn in model.rnns)))
    unknown = sorted(set(ratios) - set(sizes))
    if unknown:
        raise InvalidInputError(f"ratios name unknown layer(s) {unknown}; the model's layers are {sorted(sizes)}")
    target = {layer: size - units_to_prune(size, ratios.get(layer, 0.0)) for layer, size in sizes.items()}
    config = replace(PipelineConfig(), criterion=criterion, lds_order=lds_order, horizon=horizon, seed=seed).validate()
    return trace_unit_choice(copy.deepcopy(model), None if trajectory_dir is None else Path(trajectory_dir),
                             target, config, stage=0, calibration_tokens=calibration_tokens)
