import math
import warnings

import numpy as np
import pytest
from scipy.linalg import subspace_angles
from sklearn.metrics import adjusted_rand_score

from analysis.dynamics.criteria import cluster_units
from analysis.dynamics.distances import COS2_FLOOR, dynamics_distances, observability_matrix, reference_distance
from analysis.dynamics.lds import LDSFit, fit_lds
from analysis.errors import InvalidInputError
from tests.lds_families import lds_family_trajectories, random_stable_transition


@pytest.fixture(scope="module")
def family_fit():
    Y, labels = lds_family_trajectories(n_families=5, members=8, T=40, d=30, noise=0.02, seed=0)
    return fit_lds(Y, order=4), labels


def test_lds_families_cluster_back_into_their_families(family_fit):
    fit, labels = family_fit
    D = dynamics_distances(fit)
    found = cluster_units(D, n_clusters=labels.max() + 1)
    assert adjusted_rand_score(labels, found) >= 0.95
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    assert D[same & off_diagonal].max() < D[~same].min()


@pytest.mark.parametrize("horizon", [1, 2, 7, 40])
def test_agrees_with_the_per_pair_subspace_angle_reference(family_fit, horizon):
    fit, _ = family_fit
    D = dynamics_distances(fit, horizon=horizon)
    rng = np.random.default_rng(horizon)
    for i, j in rng.integers(0, fit.n_units, size=(25, 2)):
        assert D[i, j] == pytest.approx(reference_distance(fit, i, j, horizon), rel=1e-6, abs=1e-9)


def test_default_horizon_is_the_number_of_snapshots(family_fit):
    fit, _ = family_fit
    np.testing.assert_array_equal(dynamics_distances(fit), dynamics_distances(fit, horizon=fit.n_snapshots))


def test_symmetric_zero_diagonal_and_independent_of_block_size(family_fit):
    fit, _ = family_fit
    D = dynamics_distances(fit)
    np.testing.assert_array_equal(D, D.T)
    np.testing.assert_array_equal(np.diag(D), 0.0)
    assert (D >= 0).all() and np.isfinite(D).all()
    np.testing.assert_allclose(dynamics_distances(fit, block_units=3), D, rtol=1e-12, atol=1e-12)


def test_invariant_to_a_change_of_state_basis(family_fit):
    fit, _ = family_fit
    rng = np.random.default_rng(7)
    Q = rng.normal(size=(fit.n_units, 4, 4)) + 3 * np.eye(4)
    Q_inv = np.linalg.inv(Q)
    changed = LDSFit.from_matrices(Q @ fit.A @ Q_inv, fit.C @ Q_inv, n_snapshots=fit.n_snapshots)
    np.testing.assert_allclose(dynamics_distances(changed), dynamics_distances(fit), rtol=1e-7, atol=1e-8)


def test_non_orthonormal_c_matches_scipy_on_the_raw_matrices():
    rng = np.random.default_rng(8)
    A = np.stack([random_stable_transition(rng, 4) for _ in range(4)])
    C = rng.normal(size=(4, 9, 4))
    D = dynamics_distances(LDSFit.from_matrices(A, C), horizon=6)
    for i, j in [(0, 1), (2, 3), (1, 3)]:
        cos = np.cos(subspace_angles(observability_matrix(A[i], C[i], 6), observability_matrix(A[j], C[j], 6)))
        assert D[i, j] == pytest.approx(np.sqrt(-np.sum(np.log(cos**2))), rel=1e-8)


def test_infinite_horizon_matches_the_stein_equation_solution():
    rng = np.random.default_rng(9)
    # well-conditioned (normal) transitions, so the Kronecker solve itself is accurate
    A = np.stack([random_stable_transition(rng, 2, radius_range=(0.3, 0.9), orthogonal_basis=True)
                  for _ in range(3)])
    C = np.linalg.qr(rng.normal(size=(3, 6, 2)))[0]
    D = dynamics_distances(LDSFit.from_matrices(A, C), horizon=math.inf)

    def gramian(i, j):  # P = A_i^T P A_j + C_i^T C_j, solved exactly with a Kronecker product
        n = 2
        lhs = np.eye(n * n) - np.kron(A[i].T, A[j].T)
        return np.linalg.solve(lhs, (C[i].T @ C[j]).reshape(-1)).reshape(n, n)

    for i, j in [(0, 1), (0, 2), (1, 2)]:
        P = gramian(i, j)
        expected = (np.log(np.linalg.det(gramian(i, i))) + np.log(np.linalg.det(gramian(j, j)))
                    - 2 * np.log(abs(np.linalg.det(P))))
        assert D[i, j] ** 2 == pytest.approx(expected, rel=1e-8)


def test_unstable_transitions_stay_finite_and_are_stabilised_for_infinite_horizon():
    rng = np.random.default_rng(10)
    A = np.stack([np.eye(4) * 1.5, np.eye(4) * 50.0, rng.normal(size=(4, 4))])
    C = rng.normal(size=(3, 8, 4))
    fit = LDSFit.from_matrices(A, C, n_snapshots=200)
    with pytest.warns(RuntimeWarning, match="rescaled"):
        finite = dynamics_distances(fit)  # 50^199 would overflow float64
    assert np.isfinite(finite).all()
    with pytest.warns(RuntimeWarning, match="spectral radius >= 1"):
        infinite = dynamics_distances(fit, horizon=math.inf)
    assert np.isfinite(infinite).all() and (infinite >= 0).all()
    # the same as scaling each unstable A to the documented radius 0.99 by hand: stable, no warning
    radius = np.abs(np.linalg.eigvals(A)).max(axis=1)
    assert (radius >= 1).sum() >= 2
    by_hand = A * np.where(radius >= 1, 0.99 / radius, 1.0)[:, None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = dynamics_distances(LDSFit.from_matrices(by_hand, C, n_snapshots=200), horizon=math.inf)
    np.testing.assert_allclose(infinite, expected, rtol=1e-7, atol=1e-9)


def test_orthogonal_subspaces_get_the_documented_finite_cap():
    C = np.zeros((2, 4, 1))
    C[0, 0, 0] = 1.0
    C[1, 1, 0] = 1.0
    fit = LDSFit.from_matrices(np.zeros((2, 1, 1)), C, n_snapshots=5)
    D = dynamics_distances(fit)
    assert D[0, 1] == pytest.approx(math.sqrt(-math.log(COS2_FLOOR)))


def test_repeated_eigenvalues_and_defective_a_are_handled():
    jordan = np.array([[0.9, 1.0], [0.0, 0.9]])
    A = np.stack([jordan, 0.9 * np.eye(2), jordan.T])
    C = np.linalg.qr(np.random.default_rng(11).normal(size=(3, 5, 2)))[0]
    fit = LDSFit.from_matrices(A, C)
    D = dynamics_distances(fit, horizon=10)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert D[i, j] == pytest.approx(reference_distance(fit, i, j, 10), rel=1e-8)


def test_bad_arguments_are_refused(family_fit):
    fit, _ = family_fit
    with pytest.raises(InvalidInputError, match="horizon"):
        dynamics_distances(fit, horizon=0)
    with pytest.raises(InvalidInputError, match="LDSFit"):
        dynamics_distances(np.zeros((3, 3)))
    no_length = LDSFit.from_matrices(fit.A[:2], fit.C[:2])
    with pytest.raises(InvalidInputError, match="pass a horizon"):
        dynamics_distances(no_length)
