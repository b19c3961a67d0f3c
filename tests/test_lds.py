import numpy as np
import pytest

from analysis.dynamics.lds import LDSFit, fit_lds, spectral_radius
from analysis.errors import InvalidInputError
from tests.lds_families import lds_family_trajectories


def rotation(theta):
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def zero_mean_rotating_unit(T, d, rng):
    """A noiseless order-4 LDS whose states sum to zero over exactly whole periods."""
    A = np.zeros((4, 4))
    A[:2, :2] = rotation(2 * np.pi * 1 / T)
    A[2:, 2:] = rotation(2 * np.pi * 3 / T)
    C = rng.normal(size=(d, 4))
    x = rng.normal(size=4)
    ys = []
    for _ in range(T):
        ys.append(C @ x)
        x = A @ x
    return np.array(ys), A


def test_noiseless_lds_is_recovered_exactly():
    rng = np.random.default_rng(1)
    T, d = 24, 20
    y0, A0 = zero_mean_rotating_unit(T, d, rng)
    y1, A1 = zero_mean_rotating_unit(T, d, rng)
    fit = fit_lds(np.stack([y0, y1], axis=1), order=4)
    assert fit.A.shape == (2, 4, 4) and fit.C.shape == (2, d, 4) and fit.mean.shape == (2, d)
    np.testing.assert_allclose(fit.explained_variance, 1.0, atol=1e-10)
    np.testing.assert_allclose(fit.prediction_r2, 1.0, atol=1e-8)
    np.testing.assert_allclose(fit.spectral_radius, 1.0, atol=1e-8)
    true = np.sort_complex(np.linalg.eigvals(A0))
    np.testing.assert_allclose(np.sort_complex(np.linalg.eigvals(fit.A[0])), true, atol=1e-8)
    # C has orthonormal columns
    np.testing.assert_allclose(fit.C[0].T @ fit.C[0], np.eye(4), atol=1e-10)


def test_reconstruction_from_fit_matches_data_within_explained_variance():
    Y, _ = lds_family_trajectories(n_families=2, members=3, T=30, d=25, noise=0.05, seed=3)
    fit = fit_lds(Y, order=4)
    for k in range(Y.shape[1]):
        centred = Y[:, k, :] - fit.mean[k]
        projected = centred @ fit.C[k] @ fit.C[k].T
        explained = (projected**2).sum() / (centred**2).sum()
        assert explained == pytest.approx(fit.explained_variance[k], rel=1e-9)
    assert (fit.explained_variance > 0.9).all()
    assert (fit.prediction_r2 > 0.5).all() and (fit.prediction_r2 <= 1.0).all()


def test_batched_fit_equals_unit_by_unit_fit():
    Y, _ = lds_family_trajectories(n_families=2, members=3, T=15, d=12, seed=4)
    whole = fit_lds(Y, order=3)
    for k in (0, 4):
        single = fit_lds(Y[:, k:k + 1, :], order=3)
        np.testing.assert_allclose(single.explained_variance, whole.explained_variance[k:k + 1])
        np.testing.assert_allclose(single.spectral_radius, whole.spectral_radius[k:k + 1])


def test_unit_that_never_changes_gets_a_finite_fit():
    Y = np.ones((10, 2, 8))
    Y[:, 1, :] += np.random.default_rng(0).normal(size=(10, 8))
    fit = fit_lds(Y, order=3)
    assert np.isfinite(fit.A).all() and np.isfinite(fit.C).all()
    np.testing.assert_allclose(fit.A[0], 0.0)
    np.testing.assert_allclose(fit.C[0].T @ fit.C[0], np.eye(3), atol=1e-12)
    assert fit.explained_variance[0] == 1.0 and fit.prediction_r2[0] == 1.0


def test_from_matrices_orthonormalises_c_and_keeps_the_system():
    rng = np.random.default_rng(5)
    A = rng.normal(size=(3, 4, 4)) * 0.3
    C = rng.normal(size=(3, 10, 4))
    fit = LDSFit.from_matrices(A, C, n_snapshots=12)
    for k in range(3):
        np.testing.assert_allclose(fit.C[k].T @ fit.C[k], np.eye(4), atol=1e-12)
        # same impulse responses C A^t up to the basis change: compare C A^t C^+ (basis free)
        for t in range(3):
            original = C[k] @ np.linalg.matrix_power(A[k], t) @ np.linalg.pinv(C[k])
            converted = fit.C[k] @ np.linalg.matrix_power(fit.A[k], t) @ fit.C[k].T
            np.testing.assert_allclose(converted, original, atol=1e-10)
    np.testing.assert_allclose(fit.spectral_radius, spectral_radius(A), rtol=1e-10)


@pytest.mark.parametrize(
    "array, order, message",
    [
        (np.zeros((2, 3, 5)), 1, "at least 3 snapshots"),
        (np.zeros((5, 3, 6)), 5, "must be smaller than the number of snapshots"),
        (np.zeros((5, 3)), 2, "shape (T, H, d)"),
        (np.full((5, 3, 6), np.nan), 2, "NaN or Inf"),
        (np.zeros((5, 3, 6)), 0, "positive integer"),
        (np.zeros((8, 3, 2)), 3, "exceeds the unit vector size"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(array, order, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit_lds(array, order=order)


def test_rank_deficient_c_is_refused():
    C = np.zeros((1, 6, 2))
    C[0, 0, 0] = 1.0
    with pytest.raises(InvalidInputError, match="rank deficient"):
        LDSFit.from_matrices(np.eye(2)[None], C)
