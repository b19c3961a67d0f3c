"""A sweep's results as one table: a row per trial, with the command that reproduces it.

    table = sweep_table("runs/sweep-sample")        # from the trial records
    write_table("runs/sweep-sample")                # results.csv and results.md in the sweep folder
    frame = read_sweep_table("runs/sweep-sample")   # or the path of results.csv: a pandas DataFrame
    find_sweeps("runs")                             # the sweep folders directly under a folder
    sweep_tradeoff(frame)                           # perplexity against parameters, one point per trial

Columns: trial, status, source, criterion, ratio, seed, settings (the other options, "name=value; ..."),
params_total, params_recurrent, zero_shot_val_ppl (after each cut, " / " between stages), val_ppl,
test_ppl, wall_s (the trial's own time), host, node_id, pid (of the prune process), command, message.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.utils.fileio import atomic_write_text

CSV_FILE, MARKDOWN_FILE = "results.csv", "results.md"
COLUMNS = ["trial", "status", "source", "criterion", "ratio", "seed", "settings", "params_total", "params_recurrent",
           "zero_shot_val_ppl", "val_ppl", "test_ppl", "wall_s", "host", "node_id", "pid", "command", "message"]
NUMERIC = ["seed", "params_total", "params_recurrent", "val_ppl", "test_ppl", "wall_s", "pid"]


def _value_text(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return f"{value:g}" if isinstance(value, float) else str(value)


def table_row(record: dict) -> dict:
    from analysis.pruning.config import PipelineConfig

    options = {**PipelineConfig().__dict__, **record.get("options", {})}
    summary = record.get("summary") or {}
    final = summary.get("final") or {}
    settings = "; ".join(f"{k}={_value_text(v)}" for k, v in record.get("options", {}).items()
                         if k not in ("criterion", "ratio", "seed"))
    zero_shot = " / ".join(f"{v:.2f}" for v in summary.get("zero_shot", []) if isinstance(v, (int, float)))
    return {"trial": record.get("name"), "status": record.get("status"), "source": record.get("source"),
            "criterion": options.get("criterion"), "ratio": _value_text(options.get("ratio")),
            "seed": options.get("seed"), "settings": settings, "params_total": final.get("params_total"),
            "params_recurrent": final.get("params_recurrent"), "zero_shot_val_ppl": zero_shot,
            "val_ppl": final.get("val_ppl"), "test_ppl": final.get("test_ppl"), "wall_s": record.get("wall_s"),
            "host": record.get("host"), "node_id": record.get("node_id"), "pid": record.get("prune_pid"),
            "command": record.get("command"), "message": record.get("message")}


def sweep_table(sweep_dir: str | Path) -> pd.DataFrame:
    """The table of every trial that has a record (ended, in any state), in trial-name order."""
    from analysis.sweeps.runner import read_records

    rows = [table_row(record) for _, record in sorted(read_records(sweep_dir).items())]
    return _typed(pd.DataFrame(rows, columns=COLUMNS))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _markdown(frame: pd.DataFrame) -> str:
    shown = [c for c in COLUMNS if c not in ("node_id", "pid", "message")]

    def cell(column, value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "—"
        if column in ("val_ppl", "test_ppl"):
            return f"{value:.2f}"
        if column == "wall_s":
            return f"{value:.0f}"
        if column in ("params_total", "params_recurrent", "seed"):
            return str(int(value))
        text = str(value).replace("|", "\\|").replace("\n", " ")
        return f"`{text}`" if column == "command" else text

    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in shown) + " |")
    return "\n".join(lines) + "\n"


def write_table(sweep_dir: str | Path) -> pd.DataFrame:
    """Write results.csv and results.md into the sweep folder; returns the table."""
    sweep_dir = Path(sweep_dir)
    frame = sweep_table(sweep_dir)
    atomic_write_text(sweep_dir / CSV_FILE, frame.to_csv(index=False))
    atomic_write_text(sweep_dir / MARKDOWN_FILE, f"# Sweep {sweep_dir.name}\n\n" + _markdown(frame))
    return frame


def read_sweep_table(path: str | Path) -> pd.DataFrame:
    """A sweep's table from its folder or its results.csv (numbers as numbers, missing as NaN)."""
    path = Path(path)
    if path.is_dir():
        path = path / CSV_FILE
    frame = pd.read_csv(path, dtype={"trial": str, "status": str, "command": str, "ratio": str})
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    return _typed(frame[COLUMNS])


def find_sweeps(root: str | Path) -> list[Path]:
    """Sweep folders (a sweep.json and a results table) directly under `root`, by name."""
    from analysis.sweeps.runner import SWEEP_FILE

    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and (p / SWEEP_FILE).is_file() and (p / CSV_FILE).is_file())


def sweep_tradeoff(frame: pd.DataFrame) -> pd.DataFrame:
    """The trade-off of a sweep's table: a point per succeeded trial with both numbers, columns
    trial, criterion, ratio, seed, parameters, valid ppl, test ppl (the names the Compare page's
    run trade-off uses, so analysis.run_curves.lower_envelope draws its frontier), by parameters."""
    done = frame[(frame["status"] == "succeeded") & frame["params_total"].notna() & frame["test_ppl"].notna()]
    points = done.rename(columns={"params_total": "parameters", "val_ppl": "valid ppl", "test_ppl": "test ppl"})
    points = points.reindex(columns=["trial", "criterion", "ratio", "seed", "parameters", "valid ppl", "test ppl"])
    points["parameters"] = points["parameters"].astype(float)
    return points.sort_values(["parameters", "trial"], kind="stable").reset_index(drop=True)
