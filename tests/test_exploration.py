"""Tests of analysis.exploration: the numbers behind the dashboard's exploration pages."""

import inspect

import numpy as np
import pytest
import torch

from analysis import exploration
from analysis.dynamics.criteria import cluster_units
from analysis.dynamics.lds import LDSFit, fit_lds
from analysis.dynamics.selection import select_units
from analysis.errors import InvalidInputError
from analysis.exploration import (
    PCAPaths,
    downsample_matrix,
    fit_quality_table,
    gate_names,
    gate_norms,
    group_by_labels,
    heatmap_order,
    mds_embedding,
    nearest_neighbours,
    norm_bands,
    ordered_matrix,
    pca_paths,
    positions_in_order,
    transition_eigenvalues,
    unit_circle,
    unit_norm_paths,
    unit_status,
)
from analysis.lm.model import ModelConfig, RNNLanguageModel
from analysis.trajectories.recorder import TrajectoryRecorder
from analysis.trajectories.trajectory import load_trajectory


@pytest.fixture(scope="module")
def trajectory(tmp_path_factory):
    """A 2-layer LSTM whose weights take a seeded random walk over 6 snapshots."""
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(vocab_size=20, embedding_size=5, hidden_sizes=[7, 6]))
    out = tmp_path_factory.mktemp("trajectory")
    recorder = TrajectoryRecorder(model, out)
    for step in range(6):
        with torch.no_grad():
            for parameter in model.rnns.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        recorder.record(step * 10, epoch=step)
    return load_trajectory(out)


def two_family_distances(seed=0):
    """Eight units in two families, near within a family (0.1-0.2) and far across (3-4)."""
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    D = np.where(labels[:, None] == labels[None, :], rng.uniform(0.1, 0.2, (8, 8)), rng.uniform(3, 4, (8, 8)))
    D = np.triu(D, 1)
    return D + D.T, labels


# ----------------------------------------------------------------------------- trajectories


def test_gate_norms_are_the_norms_of_each_gates_rows(trajectory):
    layer = "rnns.1.l0"
    info = trajectory.layer_info(layer)
    norms = gate_norms(trajectory, layer)
    assert norms.shape == (len(trajectory), 4, info.hidden_size)
    t, g, k = 3, 2, 5
    H = info.hidden_size
    rows = np.concatenate([trajectory.weight_matrix(layer, t, "weight_ih")[g * H + k],
                           trajectory.weight_matrix(layer, t, "weight_hh")[g * H + k]])
    assert norms[t, g, k] == pytest.approx(np.linalg.norm(rows), rel=1e-6)
    whole = np.linalg.norm(trajectory.unit_vectors(layer), axis=2)
    np.testing.assert_allclose(np.sqrt((norms ** 2).sum(axis=1)), whole, rtol=1e-5)


def test_gate_norms_read_in_blocks_agree(trajectory, monkeypatch):
    whole = gate_norms(trajectory, "rnns.0.l0")
    monkeypatch.setattr(exploration, "_READ_BUDGET_BYTES", 1)  # one unit per block
    np.testing.assert_array_equal(gate_norms(trajectory, "rnns.0.l0"), whole)


def test_norm_bands_summarise_units_per_step_and_gate(trajectory):
    info = trajectory.layer_info("rnns.0.l0")
    norms = gate_norms(trajectory, "rnns.0.l0")
    bands = norm_bands(norms, trajectory.steps, gate_names(info))
    assert len(bands) == len(trajectory) * 4
    assert list(bands.columns) == ["step", "gate", "mean", "q10", "q50", "q90"]
    assert (bands["q10"] <= bands["q50"]).all() and (bands["q50"] <= bands["q90"]).all()
    row = bands[(bands["step"] == trajectory.steps[2]) & (bands["gate"] == "forget (f)")].iloc[0]
    assert row["mean"] == pytest.approx(norms[2, 1].mean())
    with pytest.raises(InvalidInputError):
        norm_bands(norms, trajectory.steps, ["one gate"])


def test_unit_norm_paths_give_whole_vector_norms(trajectory):
    norms = gate_norms(trajectory, "rnns.0.l0")
    frame = unit_norm_paths(norms, trajectory.steps, [4, 1])
    assert len(frame) == 2 * len(trajectory)
    expected = np.linalg.norm(trajectory.unit_vectors("rnns.0.l0", units=[1])[5, 0])
    got = frame[(frame["unit"] == 1) & (frame["step"] == trajectory.steps[5])]["norm"].item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_pca_paths_preserve_distances_of_points_in_a_plane():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(50, 2)))[0]  # an orthonormal plane in R^50
    plane_points = rng.normal(size=(5, 3, 2)) * [3.0, 1.0]
    Y = plane_points @ basis.T + rng.normal(size=50)
    paths = pca_paths(Y, n_components=2)
    assert paths.coordinates.shape == (5, 3, 2)
    assert paths.explained_variance_ratio.sum() == pytest.approx(1.0)
    assert paths.explained_variance_ratio[0] >= paths.explained_variance_ratio[1]

    def pairwise(points):
        flat = points.reshape(-1, points.shape[-1])
        return np.linalg.norm(flat[:, None] - flat[None], axis=2)

    np.testing.assert_allclose(pairwise(paths.coordinates), pairwise(Y), atol=1e-8)


def test_pca_paths_are_deterministic_and_pad_missing_axes():
    Y = np.random.default_rng(1).normal(size=(2, 1, 6))  # two points: one axis only
    first, second = pca_paths(Y, 3), pca_paths(Y.copy(), 3)
    np.testing.assert_array_equal(first.coordinates, second.coordinates)
    assert first.coordinates.shape == (2, 1, 3)
    np.testing.assert_allclose(first.coordinates[:, :, 1:], 0.0, atol=1e-12)
    assert first.explained_variance_ratio[0] == pytest.approx(1.0)
    frame = first.to_frame(steps=[0, 10], units=[4])
    assert list(frame.columns) == ["step", "unit", "pc1", "pc2", "pc3"] and frame["unit"].tolist() == [4, 4]


@pytest.mark.parametrize("bad", [np.zeros((3, 4)), np.full((2, 2, 3), np.nan)])
def test_pca_paths_reject_bad_input(bad):
    with pytest.raises(InvalidInputError):
        pca_paths(bad)


def test_pca_paths_reject_other_dimensions():
    with pytest.raises(InvalidInputError):
        pca_paths(np.zeros((3, 2, 4)), n_components=4)


def test_downsample_matrix_averages_blocks():
    M = np.arange(7 * 10, dtype=float).reshape(7, 10)
    small, row_block, column_block = downsample_matrix(M, max_size=4)
    assert (row_block, column_block) == (2, 3) and small.shape == (4, 4)
    assert small[0, 0] == pytest.approx(M[:2, :3].mean())
    assert small[3, 3] == pytest.approx(M[6:, 9:].mean())  # the ragged corner block
    unchanged, r, c = downsample_matrix(M, max_size=100)
    assert (r, c) == (1, 1) and np.array_equal(unchanged, M)
    with pytest.raises(InvalidInputError):
        downsample_matrix(np.zeros(3))


# ----------------------------------------------------------------------------- dynamics


def test_transition_eigenvalues_of_a_rotation():
    angle = 0.3
    rotation = 0.9 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    C = np.zeros((2, 5, 2))
    C[:, 0, 0] = C[:, 1, 1] = 1.0
    fit = LDSFit.from_matrices(np.stack([rotation, np.diag([0.5, -0.2])]), C)
    eigen = transition_eigenvalues(fit)
    assert eigen["unit"].tolist() == [0, 0, 1, 1]
    first = eigen[eigen["unit"] == 0]
    np.testing.assert_allclose(first["modulus"], 0.9)
    np.testing.assert_allclose(sorted(first["imag"]), [-0.9 * np.sin(angle), 0.9 * np.sin(angle)])
    assert sorted(eigen[eigen["unit"] == 1]["real"].round(9)) == [-0.2, 0.5]
    assert transition_eigenvalues(fit, units=[1])["unit"].tolist() == [1, 1]


def test_unit_circle_has_radius_one():
    x, y = unit_circle(50)
    np.testing.assert_allclose(x ** 2 + y ** 2, 1.0)


def test_fit_quality_table_has_one_row_per_unit():
    fit = fit_lds(np.random.default_rng(0).normal(size=(8, 5, 12)), order=3)
    table = fit_quality_table(fit)
    assert len(table) == 5
    np.testing.assert_array_equal(table["spectral_radius"], fit.spectral_radius)


def test_mds_embedding_recovers_planar_distances():
    points = np.random.default_rng(3).normal(size=(12, 2))
    D = np.linalg.norm(points[:, None] - points[None], axis=2)
    embedding = mds_embedding(D, seed=0)
    assert embedding.shape == (12, 2)
    recovered = np.linalg.norm(embedding[:, None] - embedding[None], axis=2)
    np.testing.assert_allclose(recovered, D, atol=1e-3)
    np.testing.assert_array_equal(mds_embedding(D, seed=0), embedding)


def test_mds_embedding_is_scikit_learns_smacof_from_the_classical_start():
    """The numpy SMACOF gives the map scikit-learn's MDS gives (which the dashboard used to import)."""
    manifold = pytest.importorskip("sklearn.manifold")
    if "metric_mds" not in inspect.signature(manifold.MDS).parameters:
        pytest.skip("scikit-learn before 1.8 has no classical-MDS start")
    points = np.random.default_rng(5).normal(size=(30, 6))  # not planar: SMACOF has work to do
    D = np.linalg.norm(points[:, None] - points[None], axis=2)
    reference = manifold.MDS(n_components=2, metric="precomputed", metric_mds=True, init="classical_mds",
                             normalized_stress="auto").fit_transform(D)
    reference *= np.sign(reference[np.abs(reference).argmax(axis=0), [0, 1]])
    np.testing.assert_allclose(mds_embedding(D), reference, atol=1e-9)


def test_mds_embedding_of_identical_units_is_zero():
    assert np.array_equal(mds_embedding(np.zeros((4, 4))), np.zeros((4, 2)))


def test_heatmap_order_makes_families_contiguous():
    D, families = two_family_distances()
    order = heatmap_order(D)
    assert sorted(order.tolist()) == list(range(8))
    sequence = families[order]
    assert (np.diff(sequence) != 0).sum() == 1  # one boundary between the two blocks


def test_heatmap_order_keeps_every_cluster_together():
    D = np.random.default_rng(5).uniform(1, 2, size=(15, 15))
    D = np.triu(D, 1) + np.triu(D, 1).T
    labels = cluster_units(D, 6)
    order = heatmap_order(D, labels)
    sequence = labels[order]
    assert (np.diff(sequence) != 0).sum() == len(np.unique(labels)) - 1
    with pytest.raises(InvalidInputError):
        heatmap_order(D, labels[:3])


def test_nearest_neighbours_exclude_the_unit_and_break_ties_by_index():
    D = np.array([[0, 2, 1, 1, 5], [2, 0, 3, 3, 3], [1, 3, 0, 4, 4], [1, 3, 4, 0, 4], [5, 3, 4, 4, 0]], float)
    near = nearest_neighbours(D, 0, k=3, labels=np.array([9, 8, 7, 6, 5]))
    assert near["unit"].tolist() == [2, 3, 1]
    assert near["distance"].tolist() == [1, 1, 2]
    assert near["cluster"].tolist() == [7, 6, 8]
    assert len(nearest_neighbours(D, 4, k=10)) == 4
    with pytest.raises(InvalidInputError):
        nearest_neighbours(D, 5)


def test_ordered_matrix_positions_and_status():
    D, _ = two_family_distances()
    order = np.array([3, 0, 7, 1, 2, 4, 5, 6])
    M = ordered_matrix(D, order)
    assert M[0, 1] == D[3, 0] and M[2, 2] == 0
    np.testing.assert_array_equal(positions_in_order(order, [7, 3]), [2, 0])
    assert unit_status(4, [1, 3]).tolist() == ["kept", "pruned", "kept", "pruned"]
    with pytest.raises(InvalidInputError):
        unit_status(4, [4])


# ----------------------------------------------------------------------------- runs and results


def test_pca_paths_of_units_that_never_move_are_all_zero():
    paths = pca_paths(np.ones((3, 2, 4)))
    assert isinstance(paths, PCAPaths)
    assert not paths.coordinates.any() and not paths.explained_variance_ratio.any()


def test_group_by_labels_makes_groups_contiguous_in_first_appearance_order():
    order = np.array([4, 0, 3, 1, 2])
    labels = np.array([7, 9, 7, 9, 5])  # per unit
    # sequence of labels along the order: 5(unit 4) 7(0) 9(3) 9(1) 7(2)
    assert group_by_labels(order, labels).tolist() == [4, 0, 2, 3, 1]
    with pytest.raises(InvalidInputError):
        group_by_labels(order, labels[:2])


def test_heatmap_view_block_averages_large_layers_and_moves_marks():
    D = np.random.default_rng(6).uniform(size=(10, 10))
    D = D + D.T
    order = np.arange(10)[::-1]
    view = exploration.heatmap_view(D, order, marked=[9, 0], max_size=5)
    assert view.block == 2 and view.matrix.shape == (5, 5)
    assert view.matrix[0, 0] == pytest.approx(D[8:, 8:].mean())
    assert view.marks.tolist() == [0, 4]  # unit 9 is drawn first, unit 0 last
    full = exploration.heatmap_view(D, order, marked=[9, 0])
    assert full.block == 1 and full.marks.tolist() == [0, 9] and full.matrix[0, 1] == D[9, 8]


def test_unit_redundancy_scores_importance_times_nearest_distance():
    D = np.array([[0.0, 0.1, 1.0], [0.1, 0.0, 2.0], [1.0, 2.0, 0.0]])
    table = exploration.unit_redundancy(D, np.array([2.0, 1.0, 0.5]), pruned=[1])
    assert table["unit"].tolist() == [1, 0, 2]  # scores 0.1, 0.2, 0.5
    assert table["nearest unit"].tolist() == [0, 1, 0]
    assert np.allclose(table["score"], [0.1, 0.2, 0.5])
    assert table["status"].tolist() == ["pruned", "kept", "kept"]
    with pytest.raises(InvalidInputError, match="2 entries"):
        exploration.unit_redundancy(D, np.ones(2))


def test_greedy_removal_table_follows_the_criterion():
    D, _ = two_family_distances()
    importance = np.random.default_rng(3).random(D.shape[0])
    table = exploration.greedy_removal_table(D, importance, 5)
    plan = select_units(D, 5 / D.shape[0], "dynamics-greedy", importance=importance)
    assert sorted(table["unit"]) == plan.pruned[""].tolist()
    assert table["step"].tolist() == [1, 2, 3, 4, 5]
    assert np.allclose(table["score"], table["importance"] * table["distance"])


def test_distance_profile_has_every_pair_and_every_unit():
    D = np.array([[0.0, 0.1, 1.0], [0.1, 0.0, 2.0], [1.0, 2.0, 0.0]])
    profile = exploration.distance_profile(D)
    pairs = profile[profile["which"] == "all pairs"]["distance"]
    nearest = profile[profile["which"] != "all pairs"]["distance"]
    assert sorted(pairs) == [0.1, 1.0, 2.0] and nearest.tolist() == [0.1, 0.1, 1.0]
