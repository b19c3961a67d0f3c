"""Reference runs: the pruning runs behind docs/results.md, kept with the project without their
weights, so that the dashboard shows the evidence offline and the document can be rewritten from
them on any machine.

A reference run is a folder that reads like any pruning run (analysis.runs.run_kind says
"pipeline"; read_run_metrics and analysis.run_curves.read_run_description work on it):

    <root>/<corpus>/<trial>/pipeline.json    the run's description, paths made relative to the project
    <root>/<corpus>/<trial>/metrics.jsonl    its events: baseline, each cut's zero-shot perplexity,
                                             each epoch, each stage's end, the final model's perplexities
    <root>/<corpus>/<trial>/reference.json   the row it is: name, seed, the command that reproduces it

<corpus> is "ptb" or "synthetic" (benchmarks/results.py), or SOURCE_REPEATS: the PTB full method from
other source models (benchmarks/criteria_study.py).

    export_reference_run("runs/results/ptb/trials/magnitude-50_seed-0", "docs/reference-runs/ptb",
                         row="magnitude-50", seed=0, command="dynaprune prune ...")
    for run in find_reference_runs(corpus="ptb"):
        print(run, read_reference(run)["row"])

<root> is docs/reference-runs in the project, or $DYNAPRUNE_REFERENCE_DIR.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from analysis.dynamics.criteria import DEFAULT_CRITERION, DEFAULT_TRAJECTORY_CRITERION
from analysis.errors import DynapruneError, InvalidInputError
from analysis.runs import METRICS_FILE, PIPELINE_FILE, read_run_metrics, run_kind
from analysis.utils.fileio import atomic_write_json, atomic_write_text, read_json_object

REFERENCE_FILE = "reference.json"
REFERENCE_FORMAT = "dynaprune-reference-run"
REFERENCE_DIR_VARIABLE = "DYNAPRUNE_REFERENCE_DIR"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE_ROOT = PROJECT_ROOT / "docs" / "reference-runs"
_PATH_KEYS = ("source", "source_model")
# the rows a reader looks at first, at 50%: the default criterion, the default dynamics criterion, their
# two baselines and the control
# the full method at 50% from the other source models of docs/criteria.md (benchmarks/criteria_study.py
# --full-method): the seed repeats of the PTB rows, one folder beside the corpora's; each row is
# "<criterion>-50 from <source>"
SOURCE_REPEATS = "ptb-sources"
SOURCE_REPEAT_JOIN = " from "
HEADLINE_ROWS = (f"{DEFAULT_CRITERION}-50", f"{DEFAULT_TRAJECTORY_CRITERION}-50", "magnitude-50", "random-50",
                 "control-0")


def reference_root() -> Path:
    """Where the reference runs are: $DYNAPRUNE_REFERENCE_DIR, else docs/reference-runs of the project."""
    configured = os.environ.get(REFERENCE_DIR_VARIABLE)
    return Path(configured) if configured else DEFAULT_REFERENCE_ROOT


def _project_relative(value: str) -> str:
    """A recorded path as the project names it ("sample_checkpoints/ptb-small"), or its last part when
    it lies elsewhere: a reference run never carries a path of the machine it ran on."""
    path = Path(value)
    if path.is_absolute():
        return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else path.name
    return value


def finished_events(run_dir: str | Path) -> list[dict] | None:
    """The events of a pruning run that has finished (a "final" event), else None."""
    events = read_run_metrics(run_dir)
    return events if any(event.get("event") == "final" for event in events) else None


def export_reference_run(run_dir: str | Path, corpus_dir: str | Path, *, row: str, seed: int,
                         command: str, name: str | None = None) -> Path:
    """Copy a finished pruning run's description and metrics (never its weights) into
    <corpus_dir>/<name>/ (default: the run's folder name), replacing an earlier export of it; returns
    that folder."""
    run_dir = Path(run_dir)
    if run_kind(run_dir) != "pipeline":
        raise InvalidInputError(f"{run_dir} is not a pruning run (no {PIPELINE_FILE})")
    events = finished_events(run_dir)
    if events is None:
        raise InvalidInputError(f"{run_dir} has not finished: nothing to export")
    description = read_json_object(run_dir / PIPELINE_FILE, "the pruning run's description", "")
    for key in _PATH_KEYS:
        if isinstance(description.get(key), str):
            description[key] = _project_relative(description[key])
    if name is not None and (not name or name.startswith(".") or Path(name).name != name):
        raise InvalidInputError(f"an export's folder name must be a plain name; got {name!r}")
    dest = Path(corpus_dir) / (run_dir.name if name is None else name)
    staging = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    atomic_write_json(staging / PIPELINE_FILE, description)
    atomic_write_text(staging / METRICS_FILE, (run_dir / METRICS_FILE).read_text(encoding="utf-8"))
    atomic_write_json(staging / REFERENCE_FILE, {"format": REFERENCE_FORMAT, "format_version": 1, "row": row,
                                                 "seed": seed, "command": command})
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return dest


def read_reference(run: str | Path) -> dict:
    """A reference run's row record: {"row", "seed", "command"} (refused when it is not one)."""
    record = read_json_object(Path(run) / REFERENCE_FILE, "a reference run's record",
                              "export the run again with benchmarks/results.py")
    if record.get("format") != REFERENCE_FORMAT or not isinstance(record.get("row"), str):
        raise InvalidInputError(f"{run}: {REFERENCE_FILE} is not a reference-run record")
    return record


def find_reference_runs(root: str | Path | None = None, corpus: str | None = None) -> list[Path]:
    """The finished reference runs under `root` (default reference_root()), of one corpus folder or
    all, sorted by path; a folder with an unreadable record is left out."""
    root = Path(root) if root is not None else reference_root()
    corpora = [root / corpus] if corpus else sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    runs = []
    for folder in corpora:
        for run in sorted(folder.iterdir()) if folder.is_dir() else []:
            if run.name.startswith(".") or not (run / REFERENCE_FILE).is_file():
                continue
            try:
                read_reference(run)
            except DynapruneError:
                continue
            if finished_events(run) is not None:
                runs.append(run)
    return runs
