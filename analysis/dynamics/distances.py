"""Pairwise dynamics distances between fitted unit LDSs (METHOD section 4).

d(i, j)^2 = -log det(P_ii^-1 P_ij P_jj^-1 P_ji), with the cross observability Gramian over a
horizon m, P_ij = sum_{tau < m} (A_i^T)^tau C_i^T C_j A_j^tau: minus the sum of the log squared
cosines of the principal angles between the two units' observability subspaces. m = infinity
with stable A is the Martin distance.

How it is computed: every C_i^T C_j comes from one matrix product of the stacked C's, taken in
row blocks over the upper triangle so memory stays bounded. The horizon sum is then evaluated for
all pairs of a block at once by binary doubling, S_2r = S_r + (A_i^r)^T S_r A_j^r and
S_r+1 = C_i^T C_j + A_i^T S_r A_j, which needs about 2 log2(m) batched n x n products per pair and
no diagonalisation, so defective or repeated-eigenvalue A are handled exactly.

    D = dynamics_distances(fit)                  # horizon m = T (the number of snapshots)
    D = dynamics_distances(fit, horizon=math.inf)  # Martin distance, unstable A stabilised
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from analysis.dynamics.lds import LDSFit
from analysis.errors import InvalidInputError

# Each principal angle contributes at most -log(COS2_FLOOR) to d^2, so orthogonal subspaces get a
# large finite distance instead of infinity.
COS2_FLOOR = 1e-16
# Infinite horizon: a unit whose A has spectral radius >= 1 has its A scaled to this radius.
STABILISED_RADIUS = 0.99
# Finite horizon: A is scaled down only if its powers would reach this size (float64 overflow guard).
_MAX_POWER_GROWTH = 1e60
# Infinite horizon: terms are summed until the slowest unit's powers decay below this.
_INFINITE_TAIL = 1e-18
_MAX_DOUBLINGS = 40


def dynamics_distances(fit: LDSFit, horizon: float | int | None = None, device=None, *,
                       block_units: int | None = None, memory_budget_bytes: int = 256 * 2**20) -> np.ndarray:
    """All-pairs dynamics distance d(i, j) (not squared) for the units of one LDSFit.

    horizon: None uses the fit's number of snapshots T; an integer m >= 1 sums tau < m; math.inf
    gives the Martin distance, with any unit whose A has spectral radius >= 1 rescaled to radius
    STABILISED_RADIUS first (a warning says how many). With a finite horizon, A is only rescaled
    when A^m would overflow float64 (spectral radius^m > 1e60), also with a warning.
    device: torch device for the computation (default CPU). Returns an (H, H) float64 array:
    symmetric, zero on the diagonal, finite, and invariant to a change of each unit's state basis.
    """
    if not isinstance(fit, LDSFit):
        raise InvalidInputError(f"dynamics_distances needs an LDSFit (from fit_lds); got {type(fit).__name__}")
    steps = _resolve_horizon(horizon, fit)
    device = torch.device(device) if device is not None else torch.device("cpu")
    N, d, n = fit.C.shape
    if N == 0:
        return np.zeros((0, 0))

    A = torch.as_tensor(fit.A, dtype=torch.float64, device=device)
    A, rescaled = _bounded_transitions(A, torch.as_tensor(fit.spectral_radius, dtype=torch.float64, device=device),
                                       steps)
    if rescaled:
        what = "has spectral radius >= 1" if math.isinf(steps) else f"would overflow over horizon {steps}"
        warnings.warn(f"{rescaled} unit(s) whose A {what} were rescaled before computing distances",
                      RuntimeWarning, stacklevel=2)
    if math.isinf(steps):
        steps = _steps_for_infinite_horizon(A)

    powers = _transition_powers(A, steps)
    C = torch.as_tensor(fit.C, dtype=torch.float64, device=device)
    self_cross = C.transpose(1, 2) @ C  # the identity up to rounding; computed so rounding cancels
    transposed_powers = [p.transpose(1, 2) for p in powers]
    self_gramian = _horizon_gramians(self_cross, A.transpose(1, 2), A, transposed_powers, powers, steps)
    self_logdet = _logabsdet(self_gramian)

    stacked_C = C.transpose(1, 2).reshape(N * n, d)
    del C
    if block_units is None:
        # about ten n x n float64 temporaries per pair
        block_units = max(1, memory_budget_bytes // max(1, N * n * n * 8 * 10))
    cap = n * -math.log(COS2_FLOOR)
    squared = torch.zeros((N, N), dtype=torch.float64, device=device)
    for start in range(0, N, block_units):
        stop = min(N, start + block_units)
        rows = stacked_C[start * n:stop * n]
        cross = (rows @ stacked_C[start * n:].T).reshape(stop - start, n, N - start, n).transpose(1, 2)
        gramian = _horizon_gramians(cross, A[start:stop].transpose(1, 2), A[start:],
                                    [p[start:stop] for p in transposed_powers], [p[start:] for p in powers], steps)
        logabsdet = _logabsdet(gramian)
        block = self_logdet[start:stop, None] + self_logdet[None, start:] - 2 * logabsdet
        squared[start:stop, start:] = torch.nan_to_num(block, nan=cap, posinf=cap).clamp(0.0, cap)
    squared = torch.triu(squared, diagonal=1)
    squared = squared + squared.T
    return squared.sqrt().cpu().numpy()


def check_distances(distances, what: str = "distances") -> np.ndarray:
    """`distances` as a float64 array, once it is known to be what dynamics_distances returns: a
    square (H, H) matrix, finite, symmetric and non-negative; InvalidInputError naming `what` if not."""
    D = np.asarray(distances, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise InvalidInputError(f"{what} must be a square (H, H) matrix; got shape {D.shape}")
    if not np.isfinite(D).all():
        raise InvalidInputError(f"{what} contain NaN or Inf")
    if D.size:
        # exact symmetry (what dynamics_distances returns) is a cheap check; only otherwise compare
        # within a tolerance, which costs far more on a large matrix
        symmetric = np.array_equal(D, D.T) or np.abs(D - D.T).max() <= 1e-9 * max(1.0, float(np.abs(D).max()))
        if D.min() < 0 or not symmetric:
            raise InvalidInputError(f"{what} must be symmetric and non-negative")
    return D


def reference_distance(fit: LDSFit, i: int, j: int, horizon: int) -> float:
    """d(i, j) from the principal angles of the stacked observability matrices (scipy), one pair.

    The straightforward definition, used to check dynamics_distances. Finite horizon only.
    """
    from scipy.linalg import subspace_angles

    cosines = np.cos(subspace_angles(observability_matrix(fit.A[i], fit.C[i], horizon),
                                     observability_matrix(fit.A[j], fit.C[j], horizon)))
    squared = -np.sum(np.log(np.maximum(cosines**2, COS2_FLOOR)))
    return float(np.sqrt(max(squared, 0.0)))


def observability_matrix(A: np.ndarray, C: np.ndarray, horizon: int) -> np.ndarray:
    """O = [C; CA; ...; CA^(m-1)], shape (m*d, n)."""
    blocks, current = [], C
    for _ in range(horizon):
        blocks.append(current)
        current = current @ A
    return np.concatenate(blocks, axis=0)


def _resolve_horizon(horizon, fit: LDSFit) -> float | int:
    if horizon is None:
        if fit.n_snapshots is None:
            raise InvalidInputError("this fit was built from matrices and has no snapshot count: pass a horizon")
        return int(fit.n_snapshots)
    if isinstance(horizon, float) and math.isinf(horizon) and horizon > 0:
        return math.inf
    if isinstance(horizon, bool) or not float(horizon).is_integer() or horizon < 1:
        raise InvalidInputError(f"horizon must be a positive integer, None (= T) or math.inf; got {horizon!r}")
    return int(horizon)


def _bounded_transitions(A: torch.Tensor, radius: torch.Tensor, steps) -> tuple[torch.Tensor, int]:
    if math.isinf(steps):
        limit = torch.full_like(radius, STABILISED_RADIUS)
        too_big = radius >= 1.0
    else:
        limit = torch.full_like(radius, _MAX_POWER_GROWTH ** (1.0 / max(1, steps - 1)))
        too_big = radius > limit
    scale = torch.where(too_big, limit / radius.clamp_min(1e-300), torch.ones_like(radius))
    return A * scale[:, None, None], int(too_big.sum())


def _steps_for_infinite_horizon(A: torch.Tensor) -> int:
    with threadpool_limits(limits=1):
        radius = float(torch.linalg.eigvals(A).abs().max()) if A.numel() else 0.0
    if radius <= 0.0:
        return 1
    needed = math.log(_INFINITE_TAIL) / math.log(radius)
    return 2 ** min(_MAX_DOUBLINGS, max(0, math.ceil(math.log2(max(needed, 1.0)))))


def _logabsdet(matrices: torch.Tensor) -> torch.Tensor:
    # Batched small-matrix LAPACK calls oversubscribe the cores when threaded.
    with threadpool_limits(limits=1):
        return torch.linalg.slogdet(matrices)[1]


def _transition_powers(A: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """A^r for the r met while doubling towards `steps` (see _horizon_gramians)."""
    powers, current, r = [], A, 1
    for bit in bin(steps)[3:]:
        current = current @ current
        r *= 2
        if bit == "1":
            current = current @ A
            r += 1
        powers.append(current)
    return powers


def _horizon_gramians(cross: torch.Tensor, left_A: torch.Tensor, right_A: torch.Tensor,
                      left_powers: list[torch.Tensor], right_powers: list[torch.Tensor], steps: int) -> torch.Tensor:
    """sum_{tau < steps} (A_i^T)^tau cross_ij A_j^tau.

    cross is (I, J, n, n) for a block of pairs, or (I, n, n) for the pairs (i, i). left_A holds
    the A_i^T (I, n, n), right_A the A_j (J or I, n, n); left_powers and right_powers hold the
    matching (A^r)^T and A^r from _transition_powers.
    """
    # einsum turns each product into two large batched GEMMs instead of I*J tiny ones
    subscripts = "ica,ijab,jbe->ijce" if cross.ndim == 4 else "ica,iab,ibe->ice"
    total = cross  # the r = 1 term; each bit doubles r, and a set bit adds one more term
    left_r, right_r = left_A, right_A
    for k, bit in enumerate(bin(steps)[3:]):
        total = total + torch.einsum(subscripts, left_r, total, right_r)
        if bit == "1":
            total = cross + torch.einsum(subscripts, left_A, total, right_A)
        left_r, right_r = left_powers[k], right_powers[k]
    return total
