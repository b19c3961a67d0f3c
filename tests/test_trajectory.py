"""load_trajectory on directories of ordinary checkpoints: layer discovery, ordering, the METHOD
unit-vector layout, and a clear error for every kind of bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from analysis.dynamics.lds import fit_layer
from analysis.errors import CheckpointError, InvalidInputError, NoRecurrentLayerError, UnsafeCheckpointError
from analysis.trajectories.snapshot_rows import all_finite
from analysis.trajectories.trajectory import load_trajectory

STEPS = (100, 5, 10)  # written in this order; lexicographic order ("10" < "100" < "5") would be wrong


class TwoLSTMs(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(11, 4)
        self.rnns = nn.ModuleList([nn.LSTM(4, 6), nn.LSTM(6, 3)])
        self.decoder = nn.Linear(3, 11)


MODELS = {
    # name: (factory, {layer name: (kind, gates, D, H, weight-key prefix, key suffix)})
    "lstm": (lambda: nn.LSTM(3, 5), {"l0": ("LSTM", 4, 3, 5, "", "_l0")}),
    "gru": (lambda: nn.GRU(4, 3), {"l0": ("GRU", 3, 4, 3, "", "_l0")}),
    "rnn": (lambda: nn.RNN(2, 4, bias=False), {"l0": ("RNN", 1, 2, 4, "", "_l0")}),
    "bilstm": (
        lambda: nn.LSTM(3, 4, num_layers=2, bidirectional=True),
        {
            "l0": ("LSTM", 4, 3, 4, "", "_l0"),
            "l0_reverse": ("LSTM", 4, 3, 4, "", "_l0_reverse"),
            "l1": ("LSTM", 4, 8, 4, "", "_l1"),
            "l1_reverse": ("LSTM", 4, 8, 4, "", "_l1_reverse"),
        },
    ),
    "modulelist": (
        TwoLSTMs,
        {"rnns.0.l0": ("LSTM", 4, 4, 6, "rnns.0.", "_l0"), "rnns.1.l0": ("LSTM", 4, 6, 3, "rnns.1.", "_l0")},
    ),
}


def write_checkpoints(directory, model, steps=STEPS, fmt="pt", wrap=None):
    """Save a perturbed copy of model's state dict per step; return {step: state dict}."""
    directory.mkdir(parents=True, exist_ok=True)
    states = {}
    for step in steps:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.1)
        state = {key: value.detach().clone() for key, value in model.state_dict().items()}
        states[step] = state
        if fmt == "safetensors":
            save_file(state, str(directory / f"ckpt_{step}.safetensors"))
        else:
            torch.save(state if wrap is None else {wrap: state, "epoch": 1}, directory / f"ckpt_{step}.{fmt}")
    return states


def expected_unit_vector(state, prefix, suffix, unit, gates, hidden):
    w_ih, w_hh = state[f"{prefix}weight_ih{suffix}"], state[f"{prefix}weight_hh{suffix}"]
    return torch.cat([torch.cat([w_ih[g * hidden + unit], w_hh[g * hidden + unit]]) for g in range(gates)])


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_checkpoint_directory_layers_and_unit_vectors(tmp_path, model_name, fmt):
    torch.manual_seed(0)
    factory, expected_layers = MODELS[model_name]
    states = write_checkpoints(tmp_path, factory(), fmt=fmt)

    trajectory = load_trajectory(tmp_path)

    assert trajectory.steps.tolist() == sorted(STEPS)
    assert trajectory.steps.dtype == np.int64
    assert len(trajectory) == 3
    assert trajectory.layers == list(expected_layers)
    for name, (kind, gates, inputs, hidden, prefix, suffix) in expected_layers.items():
        info = trajectory.layer_info(name)
        assert (info.kind, info.gates, info.input_size, info.hidden_size) == (kind, gates, inputs, hidden)
        assert info.unit_dim == gates * (inputs + hidden)
        vectors = trajectory.unit_vectors(name)
        assert vectors.shape == (3, hidden, info.unit_dim)
        assert vectors.dtype == np.float32
        for t, step in enumerate(sorted(STEPS)):
            for unit in (0, hidden - 1):
                expected = expected_unit_vector(states[step], prefix, suffix, unit, gates, hidden)
                np.testing.assert_array_equal(vectors[t, unit], expected.numpy())
        np.testing.assert_array_equal(
            trajectory.weight_matrix(name, 1, "weight_hh"),
            states[sorted(STEPS)[1]][f"{prefix}weight_hh{suffix}"].numpy(),
        )
        np.testing.assert_array_equal(trajectory.final_unit_vectors(name), vectors[-1])


@pytest.mark.parametrize("wrap", ["state_dict", "model", "model_state"])
def test_nested_checkpoints_load(tmp_path, wrap):
    torch.manual_seed(1)
    states = write_checkpoints(tmp_path, nn.GRU(3, 2), wrap=wrap)
    trajectory = load_trajectory(tmp_path)
    assert trajectory.layers == ["l0"]
    np.testing.assert_array_equal(
        trajectory.unit_vectors("l0")[0, 1], expected_unit_vector(states[5], "", "_l0", 1, 3, 2).numpy()
    )


def test_numeric_step_order_and_block_reads_on_pt_directory(tmp_path):
    torch.manual_seed(2)
    states = write_checkpoints(tmp_path, nn.LSTM(2, 7), steps=(10, 2, 1))
    trajectory = load_trajectory(tmp_path)
    assert trajectory.steps.tolist() == [1, 2, 10]
    full = trajectory.unit_vectors("l0")
    np.testing.assert_array_equal(full[2, 3], expected_unit_vector(states[10], "", "_l0", 3, 4, 7).numpy())
    np.testing.assert_array_equal(trajectory.unit_vectors("l0", slice(2, 5)), full[:, 2:5])
    np.testing.assert_array_equal(trajectory.unit_vectors("l0", [6, 0, 3, 3]), full[:, [6, 0, 3, 3]])
    with pytest.raises(InvalidInputError, match="l0"):
        trajectory.unit_vectors("l0", [7])
    with pytest.raises(InvalidInputError, match="no recurrent layer 'l9'"):
        trajectory.unit_vectors("l9")


def test_run_directory_with_trajectory_subdir_and_non_checkpoint_files_ignored(tmp_path):
    torch.manual_seed(3)
    write_checkpoints(tmp_path / "ckpts", nn.RNN(2, 3))
    (tmp_path / "ckpts" / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "ckpts" / ".tmp-abc.pt").write_bytes(b"half written")
    assert load_trajectory(tmp_path / "ckpts").steps.tolist() == [5, 10, 100]


# ------------------------------------------------------------------------------ bad input


def test_fewer_than_three_snapshots(tmp_path):
    write_checkpoints(tmp_path, nn.LSTM(2, 2), steps=(1, 2))
    with pytest.raises(CheckpointError, match="need at least 3 snapshots.*found 2"):
        load_trajectory(tmp_path)


def test_disagreeing_shapes_name_file_layer_and_both_shapes(tmp_path):
    write_checkpoints(tmp_path, nn.LSTM(3, 4), steps=(1, 2))
    torch.save(nn.LSTM(3, 5).state_dict(), tmp_path / "ckpt_3.pt")
    with pytest.raises(CheckpointError) as caught:
        load_trajectory(tmp_path)
    message = str(caught.value)
    assert "ckpt_3.pt" in message and "'l0'" in message
    assert "(20, 3)" in message and "(16, 3)" in message


def test_disagreeing_layer_sets(tmp_path):
    write_checkpoints(tmp_path, nn.LSTM(3, 4), steps=(1, 2))
    torch.save(nn.LSTM(3, 4, num_layers=2).state_dict(), tmp_path / "ckpt_3.pt")
    with pytest.raises(CheckpointError, match=r"ckpt_3\.pt.*'l1'"):
        load_trajectory(tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_name_file_layer_and_step(tmp_path, bad):
    model = nn.LSTM(2, 3)
    write_checkpoints(tmp_path, model, steps=(1, 2))
    state = model.state_dict()
    state["weight_hh_l0"][5, 1] = bad
    save_file(state, str(tmp_path / "ckpt_7.safetensors"))
    trajectory = load_trajectory(tmp_path)
    with pytest.raises(CheckpointError, match=r"ckpt_7\.safetensors.*'l0'.*step 7"):
        trajectory.unit_vectors("l0")
    # Unit 5 % 3 == 2 holds the bad value; other units read fine.
    assert np.isfinite(trajectory.unit_vectors("l0", [0, 1])).all()
    with pytest.raises(CheckpointError, match="step 7"):
        trajectory.weight_matrix("l0", 2)


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    write_checkpoints(tmp_path, nn.GRU(2, 2), steps=(2, 3))
    (tmp_path / "x_1.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match=r"x_1\.pt.*not a PyTorch checkpoint") as caught:
        load_trajectory(tmp_path)
    assert not isinstance(caught.value, UnsafeCheckpointError)


def test_truncated_safetensors(tmp_path):
    write_checkpoints(tmp_path, nn.LSTM(4, 4), steps=(1, 2, 3), fmt="safetensors")
    victim = tmp_path / "ckpt_2.safetensors"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"ckpt_2\.safetensors.*truncated"):
        load_trajectory(tmp_path)


def test_truncated_pt(tmp_path):
    write_checkpoints(tmp_path, nn.LSTM(4, 4), steps=(1, 2, 3))
    victim = tmp_path / "ckpt_3.pt"
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"ckpt_3\.pt"):
        load_trajectory(tmp_path)


def test_empty_and_missing_directories(tmp_path):
    with pytest.raises(CheckpointError, match="empty directory"):
        load_trajectory(tmp_path)
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(CheckpointError, match="readme.md"):
        load_trajectory(tmp_path)
    with pytest.raises(CheckpointError, match="nowhere.*no such directory"):
        load_trajectory(tmp_path / "nowhere")


def test_no_recurrent_layer(tmp_path):
    for step in (1, 2, 3):
        torch.save(nn.Linear(3, 2).state_dict(), tmp_path / f"m_{step}.pt")
    with pytest.raises(NoRecurrentLayerError, match=r"m_1\.pt.*weight"):
        load_trajectory(tmp_path)


def test_file_name_without_step_number(tmp_path):
    write_checkpoints(tmp_path, nn.RNN(2, 2), steps=(1, 2, 3))
    torch.save(nn.RNN(2, 2).state_dict(), tmp_path / "final.pt")
    with pytest.raises(CheckpointError, match=r"final\.pt.*no step number"):
        load_trajectory(tmp_path)


def test_duplicate_step_numbers(tmp_path):
    write_checkpoints(tmp_path, nn.RNN(2, 2), steps=(1, 5, 9))
    torch.save(nn.RNN(2, 2).state_dict(), tmp_path / "model_05.pt")
    with pytest.raises(CheckpointError, match=r"both have step 5") as caught:
        load_trajectory(tmp_path)
    assert "model_05.pt" in str(caught.value) and "ckpt_5.pt" in str(caught.value)


def test_unsafe_checkpoint_in_directory_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran.txt"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    write_checkpoints(tmp_path / "run", nn.LSTM(2, 2), steps=(1, 2))
    state = nn.LSTM(2, 2).state_dict()
    state["payload"] = Payload()
    torch.save(state, tmp_path / "run" / "ckpt_3.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"ckpt_3\.pt.*nothing in it was run"):
        load_trajectory(tmp_path / "run")
    assert not marker.exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_safetensors_snapshots_of_every_float_type_read_as_float32(tmp_path, dtype):
    model = nn.GRU(3, 4)
    states = write_checkpoints(tmp_path / "f32", model, steps=(1, 2, 3))
    (tmp_path / "low").mkdir()
    for step, state in states.items():
        save_file({key: value.to(dtype) for key, value in state.items()},
                  str(tmp_path / "low" / f"ckpt_{step}.safetensors"))
    vectors = load_trajectory(tmp_path / "low").unit_vectors("l0", units=[3, 0])
    for t, step in enumerate(sorted(states)):
        for row, unit in enumerate((3, 0)):
            expected = expected_unit_vector({k: v.to(dtype).float() for k, v in states[step].items()}, "", "_l0",
                                            unit, 3, 4)
            np.testing.assert_array_equal(vectors[t, row], expected.numpy())


def test_a_snapshot_truncated_after_loading_is_reported_not_read_past_its_end(tmp_path):
    write_checkpoints(tmp_path, nn.LSTM(4, 4), steps=(1, 2, 3), fmt="safetensors")
    trajectory = load_trajectory(tmp_path)
    victim = tmp_path / "ckpt_3.safetensors"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"ckpt_3\.safetensors.*truncated or changed"):
        trajectory.unit_vectors("l0")


def test_fit_layer_names_the_snapshot_that_holds_nan(tmp_path):
    model = nn.LSTM(2, 6)
    write_checkpoints(tmp_path, model, steps=(1, 2, 3, 4), fmt="safetensors")
    state = model.state_dict()
    state["weight_ih_l0"][6 + 4, 0] = float("nan")  # gate 1 of unit 4
    save_file(state, str(tmp_path / "ckpt_9.safetensors"))
    trajectory = load_trajectory(tmp_path)
    with pytest.raises(CheckpointError, match=r"ckpt_9\.safetensors.*step 9"):
        fit_layer(trajectory, "l0", order=2, block_units=2)


def test_all_finite_is_exact_even_where_the_sum_overflows():
    huge = np.full(10, 3e38, dtype=np.float32)
    assert all_finite(huge)  # the float32 sum overflows; every element is still finite
    huge[7] = np.inf
    assert not all_finite(huge)
    assert not all_finite(np.array([1.0, np.nan, -np.inf]))
    assert all_finite(np.zeros((0, 3)))
