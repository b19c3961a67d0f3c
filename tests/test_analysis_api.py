"""The public analysis API end to end: record a real training loop, load it, fit, measure, select."""
import numpy as np
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
