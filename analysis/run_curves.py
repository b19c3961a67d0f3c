"""The curves and tables of training and pruning runs that the Compare and Fine-tune pages show,
from a run's events (read with analysis.runs.read_run_metrics) and its description (run.json or
pipeline.json, read with read_run_description). Nothing here draws.

    curve = pipeline_curve(read_run_metrics("runs/prune-a"))
    table = pipeline_table(read_run_metrics("runs/prune-a"))
    results = results_table([("prune-a", "runs/prune-a"), ("sample", "sample_checkpoints/synthetic")])
    frame, frontier = tradeoff_points(results), lower_envelope(tradeoff_points(results), "valid ppl")
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import DynapruneError
from analysis.runs import PIPELINE_FILE, RUN_FILE, read_run_metrics, run_kind
from analysis.utils.fileio import read_json_object

# The results table's columns, for people (the Compare page shows them, the CSV export keeps them).
RESULT_COLUMNS = ["run", "stage", "ratio", "hidden sizes", "recurrent parameters", "parameters",
                  "zero-shot valid ppl", "valid ppl", "test ppl", "wall time (s)"]
# The settings of the run each row comes from, added to the CSV export.
SETTING_COLUMNS = ["corpus", "criterion", "target ratio", "stages", "epochs per stage", "LDS order", "seed", "dry run"]
_INTEGER_COLUMNS = ["recurrent parameters", "parameters", "stages", "epochs per stage", "LDS order", "seed"]
TRADEOFF_GROUPS = {"unpruned": "unpruned model", "control": "control (ratio 0)"}
_DECIMALS = {"ratio": 3, "zero-shot valid ppl": 2, "valid ppl": 2, "test ppl": 2, "wall time (s)": 1}


def training_curve(events: list[dict]) -> pd.DataFrame:
    """Validation perplexity per epoch of a training run: columns epoch, val_ppl."""
    rows = [(int(e["epoch"]), float(e["val_ppl"])) for e in events
            if e.get("event") == "epoch" and _is_number(e.get("val_ppl")) and _is_number(e.get("epoch"))]
    return pd.DataFrame(rows, columns=["epoch", "val_ppl"])


def pipeline_curve(events: list[dict]) -> pd.DataFrame:
    """Validation perplexity along a pruning pipeline, one row per point: columns position
    (epochs of fine-tuning done so far), stage, epoch, val_ppl and kind: "baseline" (the model
    before pruning, position 0), "zero-shot" (right after each pruning) or "epoch"."""
    rows, done = [], 0
    for event in events:
        kind = event.get("event")
        if kind == "baseline" and _is_number(event.get("val_ppl")):
            rows.append((0, None, None, float(event["val_ppl"]), "baseline"))
        elif kind == "stage_start" and _is_number(event.get("zero_shot_val_ppl")):
            rows.append((done, event.get("stage"), 0, float(event["zero_shot_val_ppl"]), "zero-shot"))
        elif kind == "epoch" and _is_number(event.get("val_ppl")):
            done += 1
            rows.append((done, event.get("stage"), event.get("epoch"), float(event["val_ppl"]), "epoch"))
    return pd.DataFrame(rows, columns=["position", "stage", "epoch", "val_ppl", "kind"])


def reference_lines(events: list[dict]) -> dict[str, float]:
    """Baseline and oracle validation perplexity found in a run's events (absent ones left out)."""
    lines = {}
    for event in events:
        if event.get("event") in ("baseline", "final") and _is_number(event.get("oracle_ppl")):
            lines["oracle"] = float(event["oracle_ppl"])
        if event.get("event") == "baseline" and _is_number(event.get("val_ppl")):
            lines["baseline"] = float(event["val_ppl"])
        if event.get("event") == "epoch" and _is_number(event.get("oracle_ppl")):
            lines.setdefault("oracle", float(event["oracle_ppl"]))
    return lines


def pipeline_table(events: list[dict]) -> pd.DataFrame:
    """One row per stage (and a final row): ratio, hidden sizes, parameters, zero-shot and best
    validation perplexity, wall time, and for the final row the test perplexity."""
    stages: dict = {}
    rows = []
    for event in events:
        kind, stage = event.get("event"), event.get("stage")
        if kind == "baseline":
            rows.append({"stage": "baseline", "val_ppl": event.get("val_ppl"), "test_ppl": event.get("test_ppl"),
                         "params_recurrent": event.get("params_recurrent"), "params_total": event.get("params_total")})
        elif kind == "stage_start":
            stages[stage] = {"stage": stage, "ratio": event.get("ratio"),
                             "hidden_sizes": _sizes_text(event.get("hidden_sizes")),
                             "params_recurrent": event.get("params_recurrent"),
                             "params_total": event.get("params_total"),
                             "zero_shot_val_ppl": event.get("zero_shot_val_ppl")}
            rows.append(stages[stage])
        elif kind == "stage_end" and stage in stages:
            stages[stage].update(val_ppl=event.get("best_val_ppl"), wall_s=event.get("wall_s"))
        elif kind == "final":
            rows.append({"stage": "final", "val_ppl": event.get("val_ppl"), "test_ppl": event.get("test_ppl"),
                         "params_recurrent": event.get("params_recurrent"), "params_total": event.get("params_total")})
    columns = ["stage", "ratio", "hidden_sizes", "params_recurrent", "params_total", "zero_shot_val_ppl",
               "val_ppl", "test_ppl", "wall_s"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["stage"] = frame["stage"].astype(str)
    for column in columns[3:]:  # missing entries become NaN, so the columns stay numeric
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sizes_text(sizes) -> str | None:
    return None if sizes is None else " x ".join(str(s) for s in sizes) if isinstance(sizes, list) else str(sizes)



# ----------------------------------------------------------------------------- one number per quantity


def recorded_validation_perplexity(events: list[dict]) -> float | None:
    """The validation perplexity a run recorded for the model it keeps, on the whole validation split:
    a training run's best (its best.pt), a pipeline's final model's, else the best epoch so far; None
    when nothing is recorded yet. The Prune page's "unpruned" figure and the Compare table both use it."""
    for event in reversed(events):
        if event.get("event") == "final":
            for key in ("best_val_ppl", "val_ppl"):
                if _is_number(event.get(key)):
                    return float(event[key])
    epochs = [float(e["val_ppl"]) for e in events if e.get("event") == "epoch" and _is_number(e.get("val_ppl"))]
    return min(epochs) if epochs else None


# ----------------------------------------------------------------------------- runs side by side


def read_run_description(run_dir: str | Path) -> dict:
    """What a run says about itself: {"kind", "corpus", "dry_run", "settings", "model_config"}.

    corpus names the data so that runs on the same corpus can share an axis ("ptb" wherever PTB
    lives; "synthetic:<seed>..." as recorded; None when unknown). settings holds SETTING_COLUMNS but
    corpus (None for what a training run does not have). A missing or unreadable description gives
    None for each."""
    kind = run_kind(run_dir)
    name = PIPELINE_FILE if kind == "pipeline" else RUN_FILE
    try:
        stored = read_json_object(Path(run_dir) / name, "the run description", "") if kind else {}
    except DynapruneError:
        stored = {}
    config = (stored.get("config") or {}) if kind == "pipeline" else {}
    train = stored.get("train_config") or {}
    ratio = config.get("ratio")
    settings = {
        "criterion": config.get("criterion"),
        "target ratio": ", ".join(f"{k} {float(v):g}" for k, v in ratio.items()) if isinstance(ratio, dict)
        else ratio,
        "stages": config.get("stages"), "epochs per stage": config.get("epochs_per_stage"),
        "LDS order": config.get("lds_order"), "seed": config.get("seed", train.get("seed")),
        "dry run": bool(config.get("dry_run")),
    }
    return {"kind": kind, "corpus": corpus_key(stored.get("data_source")), "dry_run": settings["dry run"],
            "settings": settings, "model_config": stored.get("model_config")}


def corpus_key(data_source: str | None) -> str | None:
    """Which corpus a recorded data source is, for grouping: "ptb" for Penn Treebank wherever it lives."""
    if not data_source:
        return None
    kind, _, _ = str(data_source).partition(":")
    return "ptb" if kind == "ptb" else str(data_source)


def is_control(settings: dict) -> bool:
    """A pipeline run with ratio 0: fine-tuned like the others without pruning anything."""
    ratio = settings.get("target ratio")
    return isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and ratio == 0


def run_results(name: str, run_dir: str | Path) -> pd.DataFrame:
    """One run's rows of the results table (RESULT_COLUMNS + SETTING_COLUMNS): a pipeline's stages
    (pipeline_table), or one "trained" row for a training run or sample, its parameters counted from
    its recorded model configuration."""
    description = read_run_description(run_dir)
    events = read_run_metrics(run_dir)
    if description["kind"] == "pipeline":
        table = pipeline_table(events).rename(columns={
            "hidden_sizes": "hidden sizes", "params_recurrent": "recurrent parameters", "params_total": "parameters",
            "zero_shot_val_ppl": "zero-shot valid ppl", "val_ppl": "valid ppl", "test_ppl": "test ppl",
            "wall_s": "wall time (s)"})
    else:
        final = next((e for e in reversed(events) if e.get("event") == "final"), {})
        row = {"stage": "trained", "valid ppl": recorded_validation_perplexity(events),
               "test ppl": final.get("test_ppl")}
        row.update(_model_size(description["model_config"]))
        table = pd.DataFrame([row]) if row["valid ppl"] is not None else pd.DataFrame()
    table.insert(0, "run", name)
    for column, value in {"corpus": description["corpus"], **description["settings"]}.items():
        table[column] = value
    return table.reindex(columns=RESULT_COLUMNS + SETTING_COLUMNS)


def results_table(runs: list[tuple[str, str | Path]]) -> pd.DataFrame:
    """The results of several runs, given as (name, run directory) pairs, with typed columns:
    integer counts (nullable Int64), float perplexities, ratio and wall time, text elsewhere."""
    frames = [frame for frame in (run_results(name, path) for name, path in runs) if not frame.empty]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RESULT_COLUMNS + SETTING_COLUMNS)
    for column in _INTEGER_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").round().astype("Int64")
    for column in _DECIMALS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["dry run"] = frame["dry run"].astype("boolean")
    return frame


def results_for_display(results: pd.DataFrame) -> pd.DataFrame:
    """The results table as text for reading: rounded numbers, thousands separators for counts,
    blanks (never "None" or "nan") where a run recorded nothing."""
    shown = results.reindex(columns=RESULT_COLUMNS).copy()
    for column in shown.columns:
        if column in _DECIMALS:
            shown[column] = shown[column].map(lambda v, d=_DECIMALS[column]: "" if pd.isna(v) else f"{v:,.{d}f}")
        elif column in _INTEGER_COLUMNS:
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{int(v):,}")
        else:
            shown[column] = shown[column].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                              else str(v))
    return shown


def results_csv(results: pd.DataFrame) -> str:
    """The results table with each run's settings as CSV: floats rounded (perplexities to 2 places,
    ratios to 3, wall times to 1), integer counts, blanks for what is missing."""
    exported = results.copy()
    for column, decimals in _DECIMALS.items():
        exported[column] = exported[column].round(decimals)
    return exported.to_csv(index=False)


# ----------------------------------------------------------------------------- the trade-off


def tradeoff_points(results: pd.DataFrame) -> pd.DataFrame:
    """Perplexity against remaining parameters, one point per row of a results table that has both:
    columns run, stage, parameters, valid ppl, test ppl, criterion, role ("unpruned": a trained
    model or a pipeline's baseline; "control": a ratio-0 pipeline's stages; "pruned") and group (the
    criterion of a pruned point, else TRADEOFF_GROUPS[role]: what a legend names it by)."""
    points = results[results["parameters"].notna()].copy()
    unpruned = points["stage"].isin(["baseline", "trained"]).to_numpy(dtype=bool)
    control = points["target ratio"].map(lambda ratio: is_control({"target ratio": ratio})).to_numpy(dtype=bool)
    points["role"] = np.where(unpruned, "unpruned", np.where(control, "control", "pruned"))
    points["group"] = points["criterion"].where(points["role"] == "pruned", points["role"].map(TRADEOFF_GROUPS))
    # a baseline is the same model in every pipeline that starts from it: keep each unpruned model once
    columns = ["run", "stage", "parameters", "valid ppl", "test ppl", "criterion", "role", "group"]
    points = points.reindex(columns=columns)
    first = points[points["role"] == "unpruned"].drop_duplicates(subset=["parameters", "valid ppl"])
    points = pd.concat([first, points[points["role"] != "unpruned"]]).sort_values("parameters", kind="stable")
    points["parameters"] = points["parameters"].astype(float)
    return points.reset_index(drop=True)


def lower_envelope(points: pd.DataFrame, y: str) -> pd.DataFrame:
    """The frontier of the trade-off: the points no other point beats on both counts (as few or
    fewer parameters and as low or lower `y`), in order of parameters; rows without `y` are left out."""
    known = points[points[y].notna()].sort_values(["parameters", y], kind="stable")
    best, keep = math.inf, []
    for index, value in known[y].items():
        if value < best:
            keep.append(index)
            best = value
    return known.loc[keep].sort_values("parameters").reset_index(drop=True)


def _model_size(model_config: dict | None) -> dict:
    if not model_config:
        return {}
    from analysis.lm.model import ModelConfig
    from analysis.pruning.preview import count_parameters_for

    try:
        config = ModelConfig.from_dict(model_config)
    except (DynapruneError, TypeError, ValueError):
        return {}
    counts = count_parameters_for(config)
    return {"hidden sizes": _sizes_text(list(config.hidden_sizes)), "recurrent parameters": counts["recurrent"],
            "parameters": counts["total"]}
