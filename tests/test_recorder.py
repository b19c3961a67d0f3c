"""TrajectoryRecorder -> load_trajectory: round trips, block reads, crash safety and resume."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

import analysis.trajectories.recorder as recorder_module
from analysis.errors import CheckpointError, InvalidInputError, NoRecurrentLayerError
from analysis.trajectories.archives import extract_checkpoint_archive
from analysis.trajectories.recorder import TrajectoryRecorder
from analysis.trajectories.trajectory import load_trajectory


class LanguageModel(nn.Module):
    def __init__(self, hidden=6):
        super().__init__()
        self.embedding = nn.Embedding(13, 5)
        self.rnn = nn.LSTM(5, hidden, num_layers=2)
        self.decoder = nn.Linear(hidden, 13)


def train_step(model):
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)


def expected_vectors(model, layer_suffix, hidden, gates=4):
    """(H, d) unit vectors of the live model, built row by row from METHOD.md section 2."""
    w_ih = getattr(model.rnn, f"weight_ih{layer_suffix}").detach()
    w_hh = getattr(model.rnn, f"weight_hh{layer_suffix}").detach()
    return torch.stack([
        torch.cat([torch.cat([w_ih[g * hidden + k], w_hh[g * hidden + k]]) for g in range(gates)])
        for k in range(hidden)
    ]).numpy()


def record_run(model, out_dir, steps, dtype="float32", every=1):
    recorder = TrajectoryRecorder(model, out_dir, every=every, dtype=dtype)
    expected = {}
    for step in steps:
        train_step(model)
        if recorder.maybe_record(step, epoch=step // 10, metrics={"loss": 1.0 / (step + 1)}):
            expected[step] = {"l0": expected_vectors(model, "_l0", 6), "l1": expected_vectors(model, "_l1", 6)}
    return recorder, expected


@pytest.mark.parametrize("dtype, tolerance", [("float32", 0.0), ("float16", 2e-3)])
def test_round_trip(tmp_path, dtype, tolerance):
    torch.manual_seed(0)
    model = LanguageModel()
    _, expected = record_run(model, tmp_path / "traj", range(0, 25), dtype=dtype, every=4)

    trajectory = load_trajectory(tmp_path / "traj")

    assert trajectory.steps.tolist() == [0, 4, 8, 12, 16, 20, 24]
    assert trajectory.epochs == [0, 0, 0, 1, 1, 2, 2]
    assert trajectory.metrics[1] == {"loss": pytest.approx(1 / 5)}
    assert trajectory.layers == ["rnn.l0", "rnn.l1"]
    for name in ("l0", "l1"):
        vectors = trajectory.unit_vectors(f"rnn.{name}")
        for t, step in enumerate(trajectory.steps):
            np.testing.assert_allclose(vectors[t], expected[int(step)][name], rtol=0, atol=tolerance)
    # Snapshots hold only the recurrent parameters, under their state-dict names, in the chosen dtype.
    with safe_open(str(trajectory.files[0]), framework="pt") as handle:
        assert sorted(handle.keys()) == sorted(k for k in model.state_dict() if k.startswith("rnn."))
        assert handle.get_tensor("rnn.weight_hh_l0").dtype == getattr(torch, dtype)


def test_block_reads_equal_slices_of_the_full_array(tmp_path):
    torch.manual_seed(1)
    model = LanguageModel(hidden=40)
    recorder = TrajectoryRecorder(model, tmp_path)
    for step in range(4):
        train_step(model)
        recorder.record(step)
    trajectory = load_trajectory(tmp_path)
    full = trajectory.unit_vectors("rnn.l1")
    assert full.shape == (4, 40, 4 * (40 + 40))
    for block in (slice(0, 16), slice(16, 32), slice(32, 40), slice(5, 35, 3), slice(39, 10, -7), slice(20, 20)):
        np.testing.assert_array_equal(trajectory.unit_vectors("rnn.l1", block), full[:, block])
    scattered = list(range(0, 40, 2)) + [3, 3, 1]  # more runs than are read one by one
    for units in ([7, 2, 39, 8], np.array([0, 39]), scattered, []):
        np.testing.assert_array_equal(trajectory.unit_vectors("rnn.l1", units), full[:, units])
    assert trajectory.unit_vectors("rnn.l1", [1, 2], dtype=np.float64).dtype == np.float64


def test_crash_between_snapshot_and_manifest_keeps_what_was_recorded(tmp_path, monkeypatch):
    torch.manual_seed(2)
    model = LanguageModel()
    recorder, expected = record_run(model, tmp_path, range(3))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(recorder_module, "atomic_write_json", crash)
    train_step(model)
    with pytest.raises(OSError, match="disk full"):
        recorder.record(3)
    assert (tmp_path / "snapshots" / "step_000000003.safetensors").exists()  # orphan
    (tmp_path / "snapshots" / ".tmp-half.safetensors").write_bytes(b"torn")

    trajectory = load_trajectory(tmp_path)
    assert trajectory.steps.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(trajectory.unit_vectors("rnn.l0")[-1], expected[2]["l0"])


def test_crash_while_writing_snapshot_leaves_no_partial_file(tmp_path, monkeypatch):
    torch.manual_seed(3)
    model = LanguageModel()
    recorder, _ = record_run(model, tmp_path, range(3))

    def torn_write(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(recorder_module, "save_file", torn_write)
    with pytest.raises(KeyboardInterrupt):
        recorder.record(3)
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [
        f"step_{step:09d}.safetensors" for step in range(3)
    ]
    assert load_trajectory(tmp_path).steps.tolist() == [0, 1, 2]


def test_resume_continues_and_rewinds(tmp_path):
    torch.manual_seed(4)
    model = LanguageModel()
    record_run(model, tmp_path, range(0, 60, 10))  # steps 0..50

    # A resumed run restarts from its step-30 checkpoint: step 30 and later are re-recorded.
    resumed = TrajectoryRecorder(model, tmp_path)
    assert resumed.steps == [0, 10, 20, 30, 40, 50]
    train_step(model)
    resumed.record(30, epoch=9)
    new_30 = expected_vectors(model, "_l0", 6)
    train_step(model)
    resumed.record(35)

    trajectory = load_trajectory(tmp_path)
    assert trajectory.steps.tolist() == [0, 10, 20, 30, 35]
    assert trajectory.epochs[3] == 9
    np.testing.assert_array_equal(trajectory.unit_vectors("rnn.l0")[3], new_30)
    remaining = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert remaining == [f"step_{s:09d}.safetensors" for s in (0, 10, 20, 30, 35)]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [entry["step"] for entry in manifest["entries"]] == [0, 10, 20, 30, 35]


def test_reopening_with_another_model_or_dtype_is_refused(tmp_path):
    record_run(LanguageModel(), tmp_path, range(3))
    with pytest.raises(CheckpointError, match="different model"):
        TrajectoryRecorder(LanguageModel(hidden=7), tmp_path)
    with pytest.raises(CheckpointError, match="float32, not float16"):
        TrajectoryRecorder(LanguageModel(), tmp_path, dtype="float16")


def test_recorder_run_directory_layout_loads_from_parent(tmp_path):
    record_run(LanguageModel(), tmp_path / "runs" / "small" / "trajectory", range(3))
    assert load_trajectory(tmp_path / "runs" / "small").steps.tolist() == [0, 1, 2]


def test_manifest_pointing_outside_its_directory_is_refused(tmp_path):
    record_run(LanguageModel(), tmp_path / "traj", range(3))
    manifest_path = tmp_path / "traj" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["entries"][0]["file"] = "../../elsewhere.safetensors"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="outside"):
        load_trajectory(tmp_path / "traj")


def test_bad_recorder_arguments(tmp_path):
    with pytest.raises(NoRecurrentLayerError, match="Sequential"):
        TrajectoryRecorder(nn.Sequential(nn.Linear(2, 2)), tmp_path)
    with pytest.raises(InvalidInputError, match="every"):
        TrajectoryRecorder(LanguageModel(), tmp_path, every=0)
    with pytest.raises(InvalidInputError, match="dtype"):
        TrajectoryRecorder(LanguageModel(), tmp_path, dtype="int8")
    recorder = TrajectoryRecorder(LanguageModel(), tmp_path)
    with pytest.raises(InvalidInputError, match="step"):
        recorder.record(-1)
    assert not (tmp_path / "manifest.json").exists()


def test_zipped_recorder_directory_extracts_and_loads(tmp_path):
    torch.manual_seed(5)
    _, expected = record_run(LanguageModel(), tmp_path / "traj", range(3))
    archive = shutil.make_archive(str(tmp_path / "upload"), "zip", root_dir=tmp_path, base_dir="traj")
    extracted = extract_checkpoint_archive(archive, tmp_path / "uploads")
    trajectory = load_trajectory(extracted)
    assert trajectory.steps.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(trajectory.unit_vectors("rnn.l1")[2], expected[2]["l1"])
