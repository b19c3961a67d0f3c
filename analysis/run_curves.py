"""The curves and tables of training and pruning runs that the Compare and Fine-tune pages show,
from a run's events (read with analysis.runs.read_run_metrics). Nothing here draws.

    curve = pipeline_curve(read_run_metrics("runs/prune-a"))
    table = pipeline_table(read_run_metrics("runs/prune-a"))
"""
from __future__ import annotations

import math

import pandas as pd


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

