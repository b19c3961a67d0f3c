"""The public analysis API end to end: record a real training loop, load it, fit, measure, select."""
import numpy as np
import pytest
import torch

import analysis
from analysis import TrajectoryRecorder, dynamics_distances, fit_layer, fit_lds, load_trajectory, select_units


def record_tiny_training(out_dir, steps=11):
    torch.manual_seed(0)
    model = torch.nn.LSTM(input_size=5, hidden_size=8, num_layers=2)
    head = torch.nn.Linear(8, 1)
    optimiser = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.2)
    recorder = TrajectoryRecorder(model, out_dir, every=2)
    inputs, targets = torch.randn(6, 4, 5), torch.randn(6, 4, 1)  # steps 0, 2, ..., 10 are recorded; 10 is the last
    for step in range(steps):
        optimiser.zero_grad()
        loss = ((head(model(inputs)[0]) - targets) ** 2).mean()
        loss.backward()
        optimiser.step()
        recorder.maybe_record(step, epoch=0, metrics={"loss": loss.item()})
    return model


@pytest.mark.slow  # trains a model
def test_record_fit_measure_select_end_to_end(tmp_path):
    model = record_tiny_training(tmp_path / "run")
    trajectory = load_trajectory(tmp_path / "run")
    assert trajectory.layers == ["l0", "l1"]
    assert len(trajectory) == 6

    # the last snapshot is the model's final recurrent weights, in the METHOD layout
    final = trajectory.final_unit_vectors("l1")
    expected_unit_3 = torch.cat([torch.cat([model.weight_ih_l1[g * 8 + 3], model.weight_hh_l1[g * 8 + 3]])
                                 for g in range(4)]).detach().numpy()
    np.testing.assert_allclose(final[3], expected_unit_3, rtol=1e-6)

    blocked = fit_layer(trajectory, "l1", order=3, block_units=3)
    whole = fit_lds(trajectory.unit_vectors("l1"), order=3)
    np.testing.assert_allclose(blocked.explained_variance, whole.explained_variance, rtol=1e-9)
    np.testing.assert_allclose(dynamics_distances(blocked), dynamics_distances(whole), rtol=1e-7, atol=1e-9)

    distances = {layer: dynamics_distances(fit_layer(trajectory, layer, order=3)) for layer in trajectory.layers}
    norms = {layer: np.linalg.norm(trajectory.final_unit_vectors(layer), axis=1) for layer in trajectory.layers}
    plan = select_units(distances, ratio=0.25, criterion="dynamics", importance=norms)
    assert {layer: len(p) for layer, p in plan.pruned.items()} == {"l0": 2, "l1": 2}
    assert isinstance(plan, analysis.PruningPlan)


@pytest.mark.slow  # more than 2 s
def test_fit_trajectory_fits_and_measures_every_layer_in_one_call(tmp_path):
    record_tiny_training(tmp_path / "run")
    trajectory = load_trajectory(tmp_path / "run")
    heard = []
    dynamics = analysis.fit_trajectory(trajectory, order=3, progress=heard.append)
    assert list(dynamics) == ["l0", "l1"]
    for layer, result in dynamics.items():
        assert isinstance(result, analysis.LayerDynamics)
        separate = fit_layer(trajectory, layer, order=3)
        np.testing.assert_array_equal(result.fit.A, separate.A)
        np.testing.assert_array_equal(result.distances, dynamics_distances(separate))
    # one update per block, naming the layer; the last one of a layer says it is done
    assert [(u.task, u.done, u.total) for u in heard] == [("l0", 8, 8), ("l1", 8, 8)]
    assert all(isinstance(u, analysis.ProgressUpdate) for u in heard)
    only = analysis.fit_trajectory(trajectory, order=3, horizon=4, layers=["l1"])
    assert list(only) == ["l1"]
    np.testing.assert_array_equal(only["l1"].distances, dynamics_distances(dynamics["l1"].fit, horizon=4))
    with pytest.raises(analysis.InvalidInputError, match="no layer"):
        analysis.fit_trajectory(trajectory, layers=["l7"])


@pytest.mark.slow  # trains a model
def test_the_default_importance_comes_from_the_package_and_feeds_select_units(tmp_path):
    record_tiny_training(tmp_path / "run")
    trajectory = load_trajectory(tmp_path / "run")
    importance = analysis.final_norm_importance(trajectory)
    plan = select_units({layer: None for layer in trajectory.layers}, ratio=0.25, criterion="magnitude",
                        importance=importance)
    assert {layer: len(p) for layer, p in plan.pruned.items()} == {"l0": 2, "l1": 2}
    assert {"final_norm_importance", "fit_trajectory", "LayerDynamics", "ProgressUpdate"} <= set(analysis.__all__)
