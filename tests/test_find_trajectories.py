"""analysis.runs.find_trajectories: every folder of a runs directory that reads as a trajectory,
with its kind, and the plain sentence a trajectory without a dynaprune model gets."""
import os

import pytest

from analysis import runs
from analysis.errors import CheckpointError
from analysis.runs import NO_MODEL_HINT, NoModelError, find_trajectories, resolve_model_path, trajectory_kind


def touch(path, text="{}"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_runs_stages_recorded_trajectories_and_checkpoint_folders_are_listed_newest_first(tmp_path):
    touch(tmp_path / "train" / "run.json")
    touch(tmp_path / "train" / "vocab.json")
    touch(tmp_path / "train" / "trajectory" / "manifest.json")
    touch(tmp_path / "prune" / "pipeline.json")
    for stage in (2, 1):
        touch(runs.stage_path(tmp_path / "prune", stage) / "run.json")
        touch(runs.stage_path(tmp_path / "prune", stage) / "trajectory" / "manifest.json")
    touch(tmp_path / "recorded" / "manifest.json")
    touch(tmp_path / "recorded-in-run" / "trajectory" / "manifest.json")
    for step in (100, 200, 300):
        touch(tmp_path / "ckpts" / f"step_{step}.pt", "")
    # not trajectories: too few checkpoints, checkpoints without step numbers, hidden, a training run without one
    for name in ("step_1.pt", "step_2.pt"):
        touch(tmp_path / "two" / name, "")
    for name in ("a.pt", "b.pt", "c.pt"):
        touch(tmp_path / "unnumbered" / name, "")
    touch(tmp_path / ".hidden" / "manifest.json")
    touch(tmp_path / "early" / "run.json")
    for age, name in enumerate(["ckpts", "recorded", "recorded-in-run", "prune", "train"]):
        stamp = 1_000_000 + 1000 * (5 - age)  # ckpts newest
        for path in [tmp_path / name, *(tmp_path / name).rglob("*")]:
            os.utime(path, (stamp, stamp))

    found = [(path.relative_to(tmp_path).as_posix(), kind) for path, kind in find_trajectories(tmp_path)]
    assert found == [("ckpts", "checkpoints"), ("recorded", "recorded"), ("recorded-in-run", "recorded"),
                     ("prune/stage_1", "stage"), ("prune/stage_2", "stage"), ("train", "training")]
    assert {kind for _, kind in found} <= set(runs.TRAJECTORY_KINDS)
    assert trajectory_kind(tmp_path / "prune") is None and trajectory_kind(tmp_path / "two") is None
    assert find_trajectories(tmp_path / "nowhere") == []


def test_a_trajectory_without_a_run_is_told_how_to_get_a_model(tmp_path):
    for step in (1, 2, 3):
        touch(tmp_path / "ckpts" / f"ckpt_{step}.safetensors", "")
    touch(tmp_path / "recorded" / "trajectory" / "manifest.json")
    for folder in ("ckpts", "recorded"):
        with pytest.raises(NoModelError) as caught:
            resolve_model_path(tmp_path / folder)
        assert str(caught.value) == NO_MODEL_HINT
        assert "dynaprune import" in NO_MODEL_HINT
    # a dynaprune run before its first epoch keeps its own hint
    touch(tmp_path / "early" / "run.json")
    touch(tmp_path / "early" / "trajectory" / "manifest.json")
    with pytest.raises(CheckpointError, match="first epoch"):
        resolve_model_path(tmp_path / "early")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a model file nor a run directory"):
        resolve_model_path(tmp_path / "empty")


def test_the_listing_knows_the_checkpoint_names_the_readers_read():
    from analysis.trajectories.checkpoints import CHECKPOINT_SUFFIXES
    from analysis.trajectories.trajectory import MIN_SNAPSHOTS

    assert runs.CHECKPOINT_SUFFIXES == CHECKPOINT_SUFFIXES and runs.MIN_CHECKPOINTS == MIN_SNAPSHOTS
