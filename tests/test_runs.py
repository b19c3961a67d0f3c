"""Tests of analysis.runs: the run-directory contract. The literal names here pin the on-disk
format that runs written by earlier versions use; changing one in analysis.runs must fail here."""
import json
import os

import pytest

from analysis import runs
from analysis.errors import CheckpointError
from analysis.lm.model import ModelConfig, RNNLanguageModel, load_model, save_model
from analysis.runs import (
    find_runs,
    has_trajectory,
    list_stages,
    read_run_metrics,
    resolve_model_path,
    run_kind,
    stage_number,
    stage_path,
)


def touch(path, text="{}"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tiny_model_file(path):
    model = RNNLanguageModel(ModelConfig(vocab_size=5, embedding_size=3, hidden_sizes=[4]))
    return save_model(path, model, [f"w{i}" for i in range(5)])


def test_the_names_are_those_runs_on_disk_already_use():
    assert (runs.RUN_FILE, runs.VOCAB_FILE, runs.METRICS_FILE) == ("run.json", "vocab.json", "metrics.jsonl")
    assert (runs.BEST_MODEL_FILE, runs.LAST_CHECKPOINT_FILE, runs.FINAL_MODEL_FILE) == (
        "best.pt", "checkpoint_last.pt", "final.pt")
    assert (runs.TRAJECTORY_DIR, runs.MANIFEST_FILE) == ("trajectory", "manifest.json")
    assert (runs.PIPELINE_FILE, runs.PLAN_FILE, runs.IMPORTANCE_FILE) == ("pipeline.json", "plan.json",
                                                                          "importances.json")
    assert stage_path("out", 3).as_posix() == "out/stage_3"


def test_stages_are_listed_in_numeric_order_and_other_folders_ignored(tmp_path):
    for stage in (10, 2, 1):
        stage_path(tmp_path, stage).mkdir()
    for other in ("stage_x", "stage_", "stages_3", "trajectory"):
        (tmp_path / other).mkdir()
    touch(tmp_path / "stage_4")  # a file, not a stage
    assert [p.name for p in list_stages(tmp_path)] == ["stage_1", "stage_2", "stage_10"]
    assert [stage_number(p) for p in list_stages(tmp_path)] == [1, 2, 10]
    assert stage_number(tmp_path / "stage_x") is None and stage_number("final.pt") is None
    assert list_stages(tmp_path / "missing") == []


def test_run_kinds_and_finding_runs_newest_first(tmp_path):
    pipeline, training, sample, other = (tmp_path / name for name in ("p", "t", "s", "x"))
    touch(pipeline / "pipeline.json", json.dumps({"ratio": 0.5}))
    touch(training / "run.json")
    touch(training / "vocab.json", "[]")
    touch(training / "checkpoint_last.pt", "")
    touch(training / "best.pt", "")
    touch(sample / "run.json")  # a finished run's shareable files only
    touch(sample / "best.pt", "")
    touch(other / "notes.txt", "")
    touch(tmp_path / ".hidden" / "run.json")
    assert [run_kind(p) for p in (pipeline, training, sample, other)] == ["pipeline", "training", "sample", None]
    assert run_kind(tmp_path / "missing") is None
    for age, run in enumerate((pipeline, training, sample)):  # the pipeline newest, the sample oldest
        for file in run.iterdir():
            os.utime(file, (1e9 - age * 100, 1e9 - age * 100))
    assert [p.name for p in find_runs(tmp_path)] == ["p", "t", "s"]
    assert find_runs(tmp_path / "missing") == []


def test_a_run_that_has_not_finished_its_first_epoch_is_a_training_run(tmp_path):
    touch(tmp_path / "run.json")
    assert run_kind(tmp_path) == "training"


def test_reading_metrics_skips_a_torn_last_line(tmp_path):
    assert read_run_metrics(tmp_path) == []
    lines = [json.dumps({"event": "baseline"}), json.dumps({"event": "stage_start", "stage": 1}), '{"event": "ep']
    touch(tmp_path / "metrics.jsonl", "\n".join(lines))
    assert [e["event"] for e in read_run_metrics(tmp_path)] == ["baseline", "stage_start"]


def test_trajectory_detection(tmp_path):
    assert not has_trajectory(tmp_path)
    touch(tmp_path / "run" / "trajectory" / "manifest.json")
    touch(tmp_path / "recorded" / "manifest.json")
    assert has_trajectory(tmp_path / "run") and has_trajectory(tmp_path / "recorded")


def test_model_resolution_prefers_the_best_model_then_the_final_then_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    touch(run / "run.json")
    last = tiny_model_file(run / "checkpoint_last.pt")
    assert resolve_model_path(run) == last
    best = tiny_model_file(run / "best.pt")
    assert resolve_model_path(run) == best
    pipeline = tmp_path / "pipeline"
    touch(pipeline / "pipeline.json")
    final = tiny_model_file(pipeline / "final.pt")
    assert resolve_model_path(pipeline) == final
    assert load_model(pipeline)[1]["path"] == str(final)
    assert resolve_model_path(final) == final  # a file stands for itself


def test_a_missing_model_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(CheckpointError, match="no such model file or run directory"):
        resolve_model_path(tmp_path / "nowhere")
    touch(tmp_path / "run" / "run.json")
    with pytest.raises(CheckpointError, match="neither best.pt nor checkpoint_last.pt.*first epoch"):
        resolve_model_path(tmp_path / "run")
    touch(tmp_path / "prune" / "pipeline.json")
    stage_path(tmp_path / "prune", 1).mkdir()
    with pytest.raises(CheckpointError, match="has not finished.*final.pt"):
        load_model(tmp_path / "prune")


def test_the_contract_depends_on_nothing_but_errors_and_utils():
    """Any module, the dashboard and the job supervisor read runs through analysis.runs, so it must
    not pull in torch or another layer of the library."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(runs.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    internal = {name for name in imported if name.startswith("analysis")}
    assert all(name == "analysis.errors" or name.startswith("analysis.utils") for name in internal), internal
    assert imported - internal <= {"__future__", "pathlib"}, imported
