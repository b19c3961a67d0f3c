import numpy as np
import pytest
import torch

from analysis.dynamics.criteria import cluster_units
from analysis.dynamics.selection import CRITERIA, PruningPlan, final_norm_importance, select_units
from analysis.errors import InvalidInputError
from analysis.lm.model import ModelConfig, RNNLanguageModel
from analysis.trajectories.recorder import TrajectoryRecorder
from analysis.trajectories.trajectory import load_trajectory


def duplicated_family_distances(n_families=5, members=4, seed=0):
    """Units in the same family are near each other (0.01-0.1); different families are far (5-6)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_families), members)
    rng.shuffle(labels)
    H = labels.size
    D = np.where(labels[:, None] == labels[None, :], rng.uniform(0.01, 0.1, (H, H)), rng.uniform(5, 6, (H, H)))
    D = np.triu(D, 1)
    return D + D.T, labels


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.74])
def test_prunes_round_ratio_times_h_units(criterion, ratio):
    D, _ = duplicated_family_distances()
    importance = np.random.default_rng(1).uniform(size=D.shape[0])
    plan = select_units(D, ratio, criterion=criterion, importance=importance)
    H = D.shape[0]
    assert len(plan.pruned[""]) == round(ratio * H)
    assert sorted(np.concatenate([plan.kept[""], plan.pruned[""]]).tolist()) == list(range(H))


def test_dynamics_keeps_the_most_important_unit_of_each_redundant_family():
    D, labels = duplicated_family_distances()
    importance = np.random.default_rng(2).uniform(size=D.shape[0])
    n_families = labels.max() + 1
    plan = select_units(D, ratio=1 - n_families / D.shape[0], criterion="dynamics", importance=importance)
    expected = sorted(int(np.flatnonzero(labels == f)[np.argmax(importance[labels == f])]) for f in range(n_families))
    assert plan.kept[""].tolist() == expected


def test_dynamics_without_importance_keeps_one_unit_per_family():
    D, labels = duplicated_family_distances()
    plan = select_units(D, ratio=0.75, criterion="dynamics")
    assert sorted(labels[plan.kept[""]].tolist()) == list(range(labels.max() + 1))


def test_magnitude_prunes_the_smallest_norms():
    importance = np.array([5.0, 1.0, 3.0, 0.5, 4.0, 2.0])
    plan = select_units(np.zeros((6, 6)), 0.5, criterion="magnitude", importance=importance)
    assert plan.pruned[""].tolist() == [1, 3, 5]


def test_random_is_seeded_and_deterministic():
    D = np.zeros((40, 40))
    a = select_units(D, 0.5, criterion="random", seed=3)
    b = select_units(D, 0.5, criterion="random", seed=3)
    c = select_units(D, 0.5, criterion="random", seed=4)
    assert a.pruned[""].tolist() == b.pruned[""].tolist()
    assert a.pruned[""].tolist() != c.pruned[""].tolist()


def test_per_layer_distances_and_ratios():
    D0, _ = duplicated_family_distances(seed=0)
    D1, _ = duplicated_family_distances(n_families=3, members=2, seed=1)
    plan = select_units({"rnns.0.l0": D0, "rnns.1.l0": D1}, ratio={"rnns.0.l0": 0.5, "rnns.1.l0": 0.5},
                       criterion="dynamics")
    assert set(plan.kept) == {"rnns.0.l0", "rnns.1.l0"}
    assert len(plan.pruned["rnns.0.l0"]) == 10 and len(plan.pruned["rnns.1.l0"]) == 3
    assert plan.layers["rnns.1.l0"].kept.tolist() == plan.kept["rnns.1.l0"].tolist()
    restored = PruningPlan.from_dict(plan.to_dict())
    for name in plan.layers:
        assert restored.kept[name].tolist() == plan.kept[name].tolist()


def test_cluster_cut_gives_exactly_the_requested_number_of_clusters_even_with_ties():
    D = np.ones((9, 9)) - np.eye(9)
    for k in range(1, 10):
        labels = cluster_units(D, k)
        assert len(np.unique(labels)) == k
        assert labels[0] == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ratio=1.0, criterion="dynamics"), r"\[0, 1\)"),
        (dict(ratio=-0.1, criterion="dynamics"), r"\[0, 1\)"),
        (dict(ratio=0.5, criterion="nope"), "unknown criterion"),
        (dict(ratio=0.5, criterion="magnitude"), "needs unit importances"),
        (dict(ratio=0.5, importance=np.ones(3)), "has 3 entries"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        select_units(np.zeros((6, 6)), **kwargs)


def test_asymmetric_or_nonfinite_distances_are_refused():
    D = np.zeros((4, 4))
    D[0, 1] = 1.0
    with pytest.raises(InvalidInputError, match="symmetric"):
        select_units(D, 0.5, criterion="dynamics")
    D[1, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        select_units(D, 0.5, criterion="dynamics")


def test_a_zero_ratio_needs_no_distances_and_prunes_nothing():
    plan = select_units({"a": None}, 0.0, criterion="dynamics", importance={"a": np.ones(5)})
    assert plan.layers["a"].kept.tolist() == [0, 1, 2, 3, 4] and plan.layers["a"].pruned.size == 0
    with pytest.raises(InvalidInputError, match="needs the distance matrix"):
        select_units({"a": None}, 0.2, criterion="dynamics", importance={"a": np.ones(5)})


@pytest.fixture
def recorded(tmp_path):
    """A two-layer GRU model and a three-snapshot trajectory whose last snapshot is its current weights."""
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(vocab_size=11, embedding_size=5, hidden_sizes=[6, 4], rnn_type="GRU"))
    recorder = TrajectoryRecorder(model, tmp_path / "trajectory")
    for step in range(3):
        with torch.no_grad():
            model.rnns[0].weight_hh_l0.mul_(1.1)
        recorder.record(step)
    return model, load_trajectory(tmp_path / "trajectory")


def test_final_norm_importance_is_the_norm_of_the_final_weight_vector(recorded):
    model, trajectory = recorded
    expected = np.linalg.norm(trajectory.final_unit_vectors("rnns.0.l0"), axis=1)
    np.testing.assert_allclose(final_norm_importance(trajectory, "rnns.0.l0"), expected, rtol=1e-6)
    # a model's current weights give the same numbers as a trajectory that ends with them
    from_model = final_norm_importance(model)
    from_trajectory = final_norm_importance(trajectory)
    assert list(from_model) == list(from_trajectory) == ["rnns.0.l0", "rnns.1.l0"]
    for layer in from_model:
        assert from_model[layer].shape == (model.rnns[int(layer[5])].hidden_size,)
        np.testing.assert_allclose(from_model[layer], from_trajectory[layer], rtol=1e-6)
    with pytest.raises(InvalidInputError, match="no layer 'decoder'"):
        final_norm_importance(model, "decoder")
    with pytest.raises(InvalidInputError, match="Trajectory or an RNNLanguageModel"):
        final_norm_importance(np.zeros(3))


def test_magnitude_selection_from_a_trajectory_prunes_the_smallest_final_norms(recorded):
    _, trajectory = recorded
    importance = final_norm_importance(trajectory)
    plan = select_units({layer: None for layer in trajectory.layers}, ratio=0.5, criterion="magnitude",
                        importance=importance)
    for layer, norms in importance.items():
        assert plan.pruned[layer].tolist() == sorted(np.argsort(norms)[: len(norms) // 2].tolist())
    single = select_units(np.zeros((6, 6)), ratio=0.5, criterion="magnitude",
                          importance=final_norm_importance(trajectory, "rnns.0.l0"))
    assert single.pruned[""].tolist() == plan.pruned["rnns.0.l0"].tolist()


def test_magnitude_without_importances_says_which_function_gives_them():
    with pytest.raises(InvalidInputError, match=r"needs unit importances.*final_norm_importance\(trajectory, layer\)"):
        select_units(np.zeros((6, 6)), ratio=0.5, criterion="magnitude")


def test_kept_and_pruned_are_per_layer_mappings_for_one_layer_as_for_many():
    D, _ = duplicated_family_distances()
    one = select_units(D, 0.5, criterion="dynamics")
    assert isinstance(one.kept, dict) and isinstance(one.pruned, dict)
    assert list(one.kept) == list(one.pruned) == [""]
    many = select_units({"a": D, "b": D}, 0.5, criterion="dynamics")
    assert list(many.kept) == list(many.pruned) == ["a", "b"]
    assert many.kept["a"].tolist() == one.kept[""].tolist() == one.layers[""].kept.tolist()


def test_the_live_preview_offers_only_the_criteria_that_read_the_trajectory():
    from analysis.dynamics.criteria import FINAL_NORM, TRAJECTORY_CRITERIA
    from analysis.pruning.pruner import RNNPruner

    assert {"taylor", "dynamics-taylor"} <= set(CRITERIA) and not {"taylor", "dynamics-taylor"} & set(
        TRAJECTORY_CRITERIA)
    assert all(CRITERIA[name].importance_source == FINAL_NORM for name in TRAJECTORY_CRITERIA)
    with pytest.raises(InvalidInputError, match="dynaprune prune"):
        RNNPruner(torch.nn.LSTM(4, 6), torch.zeros(3, 1, 4), "unused", ratio=0.5, criterion="taylor")
