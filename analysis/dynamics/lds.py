"""Linear dynamical systems fitted to each hidden unit's weight trajectory (METHOD section 3).

For unit k, Y_k = [w_k(1) ... w_k(T)] (d x T). After removing the temporal mean, a thin SVD
Y_k - mu_k = U S V^T gives C_k = U[:, :n], states X_k = S[:n] V[:, :n]^T and the transition
A_k = X_k[:, 1:] pinv(X_k[:, :-1]). All units are fitted together: the SVD is taken through the
small T x T Gram matrix of each unit, so the cost is one batched product over the unit vectors.

    fit = fit_lds(trajectory.unit_vectors("rnn.l0"), order=4)
    fit = fit_layer(trajectory, "rnn.l0", order=4)      # reads unit blocks from disk
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from analysis.errors import InvalidInputError
from analysis.utils.progress import ProgressCallback, ProgressUpdate

# METHOD says 4; 8 is what the default criterion chose best with on the tuning model (docs/criteria.md)
DEFAULT_ORDER = 8
# Singular values below this fraction of the largest are treated as zero when building C.
_RANK_TOLERANCE = 1e-10


@dataclass(frozen=True)
class LDSFit:
    """Per-unit LDS parameters for one layer (H units, observation size d, order n).

    A: (H, n, n) transitions; C: (H, d, n) observation matrices with orthonormal columns (to the
    precision of the data: about 1e-6 for float32 snapshots);
    mean: (H, d) temporal means (None when built from given matrices);
    explained_variance, prediction_r2, spectral_radius: (H,) fit diagnostics (the first two are
    NaN when built from given matrices); n_snapshots: T of the trajectory (None if unknown).
    """

    A: np.ndarray
    C: np.ndarray
    mean: np.ndarray | None
    explained_variance: np.ndarray
    prediction_r2: np.ndarray
    spectral_radius: np.ndarray
    n_snapshots: int | None = None

    @property
    def n_units(self) -> int:
        return self.A.shape[0]

    @property
    def order(self) -> int:
        return self.A.shape[1]

    @property
    def observation_size(self) -> int:
        return self.C.shape[1]

    def __len__(self) -> int:
        return self.n_units

    @classmethod
    def from_matrices(cls, A, C, n_snapshots: int | None = None) -> LDSFit:
        """Build a fit from given A (H, n, n) and C (H, d, n).

        C need not be orthonormal: each unit is moved to the equivalent state basis in which it
        is (C = QR, C -> Q, A -> R A R^-1), which changes no distance. C must have full column rank.
        """
        A = np.asarray(A, dtype=np.float64)
        C = np.asarray(C, dtype=np.float64)
        if A.ndim != 3 or A.shape[1] != A.shape[2]:
            raise InvalidInputError(f"A must have shape (H, n, n); got {A.shape}")
        if C.ndim != 3 or C.shape[0] != A.shape[0] or C.shape[2] != A.shape[1]:
            raise InvalidInputError(f"C must have shape (H, d, n) matching A {A.shape}; got {C.shape}")
        if C.shape[1] < C.shape[2]:
            raise InvalidInputError(f"C has fewer rows ({C.shape[1]}) than the state order ({C.shape[2]})")
        _check_finite(A, "A")
        _check_finite(C, "C")
        Q, R = np.linalg.qr(C)
        diag = np.abs(np.diagonal(R, axis1=1, axis2=2))
        scale = np.maximum(diag.max(axis=1, initial=0.0), np.finfo(float).tiny)
        deficient = np.flatnonzero((diag <= 1e-12 * scale[:, None]).any(axis=1))
        if deficient.size:
            raise InvalidInputError(
                f"C of unit(s) {deficient[:10].tolist()} is rank deficient: its columns must be linearly independent"
            )
        A_q = R @ A @ np.linalg.inv(R)
        nan = np.full(A.shape[0], np.nan)
        return cls(A=A_q, C=Q, mean=None, explained_variance=nan, prediction_r2=nan.copy(),
                   spectral_radius=spectral_radius(A_q), n_snapshots=n_snapshots)

    def subset(self, units) -> LDSFit:
        """The fit restricted to some units (indices or a slice), in that order."""
        pick = lambda a: None if a is None else a[units]  # noqa: E731
        return LDSFit(A=self.A[units], C=self.C[units], mean=pick(self.mean),
                      explained_variance=self.explained_variance[units],
                      prediction_r2=self.prediction_r2[units],
                      spectral_radius=self.spectral_radius[units], n_snapshots=self.n_snapshots)

    @staticmethod
    def concatenate(fits: list[LDSFit]) -> LDSFit:
        if not fits:
            raise InvalidInputError("no fits to concatenate")
        cat = lambda name: np.concatenate([getattr(f, name) for f in fits])  # noqa: E731
        means = None if any(f.mean is None for f in fits) else cat("mean")
        return LDSFit(A=cat("A"), C=cat("C"), mean=means, explained_variance=cat("explained_variance"),
                      prediction_r2=cat("prediction_r2"), spectral_radius=cat("spectral_radius"),
                      n_snapshots=fits[0].n_snapshots)


def spectral_radius(A: np.ndarray) -> np.ndarray:
    """Largest eigenvalue modulus of each (n, n) matrix in a (H, n, n) stack."""
    if A.shape[-1] == 0:
        return np.zeros(A.shape[0])
    with threadpool_limits(limits=1):
        return np.abs(np.linalg.eigvals(A)).max(axis=-1)


def fit_lds(unit_vectors, order: int = DEFAULT_ORDER) -> LDSFit:
    """Fit one LDS of the given order to every unit's trajectory (METHOD section 3).

    unit_vectors: array (T, H, d), snapshot t of unit k's weight vector at [t, k].
    Returns an LDSFit with A (H, n, n), C (H, d, n), mean (H, d) and per-unit explained variance,
    one-step prediction R^2 and spectral radius of A. A unit whose weights never change gets
    A = 0, an arbitrary orthonormal C and both diagnostics equal to 1 (nothing is left unexplained).
    """
    return _fit(_validated_unit_vectors(unit_vectors, order), order, overwrite=False)


class _NonFiniteUnitVectors(InvalidInputError):
    """Unit vectors holding NaN or Inf (fit_layer reads them again to name the file)."""


def _fit(Y: np.ndarray, order: int, overwrite: bool) -> LDSFit:
    """fit_lds on validated unit vectors; overwrite=True lets it centre Y in place (a buffer the
    caller owns), which saves allocating and filling a copy of the data."""
    T, H, d = Y.shape
    if H == 0:
        raise InvalidInputError("no units to fit (H = 0)")
    # The d-sized work runs in the data's own precision (float32 for stored snapshots, which is all
    # the precision they carry); everything T x T or smaller runs in float64.
    work_dtype = torch.float64 if Y.dtype == np.float64 else torch.float32
    source = torch.from_numpy(Y)
    data = source.to(work_dtype)  # (T, H, d); no copy when already work_dtype
    mean = data.mean(dim=0)
    if overwrite or data.data_ptr() != source.data_ptr():
        centred = data.sub_(mean)
    else:
        centred = data - mean
    centred = centred.permute(1, 0, 2)  # (H, T, d) view; bmm reads it with strides, no copy
    gram = (centred @ centred.transpose(1, 2)).to(torch.float64)  # (H, T, T)
    # Any NaN or Inf in the data reaches the mean or the Gram matrices: checking them is enough,
    # and saves a pass over the (large) data in the common case.
    if not (torch.isfinite(mean).all() and torch.isfinite(gram).all()):
        _check_finite(Y, "unit vectors", _NonFiniteUnitVectors)
    # Batched small-matrix LAPACK calls oversubscribe the cores when threaded (many times slower).
    with threadpool_limits(limits=1):
        eigvals, eigvecs = torch.linalg.eigh(gram)  # ascending
    s_squared = eigvals.flip(-1).clamp_min(0.0)
    V = eigvecs.flip(-1)[:, :, :order]  # (H, T, n)
    s = s_squared[:, :order].sqrt()  # (H, n)
    total = s_squared.sum(dim=1)

    # C = Yc V / s; columns with s ~ 0 are completed to an orthonormal basis below.
    usable = s > _RANK_TOLERANCE * s[:, :1].clamp_min(torch.finfo(torch.float64).tiny)
    usable &= s > 0
    safe_s = torch.where(usable, s, torch.ones_like(s))
    C = (centred.transpose(1, 2) @ V.to(work_dtype)).to(torch.float64) / safe_s[:, None, :]  # (H, d, n)
    for unit in torch.nonzero(~usable.all(dim=1)).flatten().tolist():
        C[unit] = _complete_orthonormal(C[unit] * usable[unit], usable[unit])

    X = (s * usable)[:, :, None] * V.transpose(1, 2)  # (H, n, T): states
    past, future = X[:, :, :-1], X[:, :, 1:]
    with threadpool_limits(limits=1):
        A = future @ torch.linalg.pinv(past)

    explained = torch.where(total > 0, s_squared[:, :order].sum(dim=1) / total.clamp_min(1e-300),
                            torch.ones_like(total))
    # One-step prediction in weight space: y(t+1) ~ mu + C A x(t). C has orthonormal columns and
    # C^T (y(t+1) - mu) = x(t+1), so the residual follows from the Gram diagonal without d-sized work.
    predicted = A @ past
    energy_next = torch.diagonal(gram, dim1=1, dim2=2)[:, 1:]
    residual = energy_next - 2 * (future * predicted).sum(dim=1) + (predicted * predicted).sum(dim=1)
    residual_total = residual.clamp_min(0).sum(dim=1)
    energy_total = energy_next.sum(dim=1)
    r2 = torch.where(energy_total > 0, 1 - residual_total / energy_total.clamp_min(1e-300),
                     torch.ones_like(energy_total))

    A_np = A.numpy()
    return LDSFit(A=A_np, C=C.numpy(), mean=mean.to(torch.float64).numpy(), explained_variance=explained.numpy(),
                  prediction_r2=r2.numpy(), spectral_radius=spectral_radius(A_np), n_snapshots=T)


def fit_layer(trajectory, layer: str, order: int = DEFAULT_ORDER, block_units: int | None = None,
              progress: ProgressCallback | None = None) -> LDSFit:
    """Fit every unit of one layer of a Trajectory, reading unit blocks from disk.

    Memory stays bounded by one block of unit vectors (T x block x d) at a time; the default block
    keeps that block under about 256 MB in float32. `progress` hears of each block (task: the layer,
    done / total: units fitted).
    One buffer holds every block in turn: rows are copied into it straight from the mapped
    snapshot files and centred in place. NaN or Inf weights raise CheckpointError naming the file.
    """
    info = trajectory.layer_info(layer)
    T, H, d = len(trajectory), info.hidden_size, info.unit_dim
    if block_units is None:
        block_units = max(1, min(H, (256 * 2**20) // max(1, 4 * T * d)))
    _check_order(order, n_snapshots=T, unit_dim=d)  # before reading anything
    buffer = np.empty(T * min(block_units, H) * d, dtype=np.float32)
    fits = []
    for start in range(0, H, block_units):
        stop = min(H, start + block_units)
        block = buffer[: T * (stop - start) * d].reshape(T, stop - start, d)
        trajectory.read_unit_vectors_into(layer, block, units=slice(start, stop), check_finite=False)
        try:
            fits.append(_fit(block, order, overwrite=True))
        except _NonFiniteUnitVectors:
            trajectory.unit_vectors(layer, units=slice(start, stop))  # raises CheckpointError naming the file
            raise
        if progress is not None:
            progress(ProgressUpdate(layer, stop, H))
    return LDSFit.concatenate(fits)


def _validated_unit_vectors(unit_vectors, order: int) -> np.ndarray:
    Y = np.asarray(unit_vectors)
    if Y.ndim != 3:
        raise InvalidInputError(f"unit vectors must have shape (T, H, d); got an array of shape {Y.shape}")
    if not np.issubdtype(Y.dtype, np.number):
        raise InvalidInputError(f"unit vectors must be numeric; got dtype {Y.dtype}")
    _check_order(order, n_snapshots=Y.shape[0], unit_dim=Y.shape[2])
    return Y


def _check_order(order: int, n_snapshots: int, unit_dim: int) -> None:
    if n_snapshots < 3:
        raise InvalidInputError(f"need at least 3 snapshots to fit dynamics; got {n_snapshots}")
    if not isinstance(order, (int, np.integer)) or isinstance(order, bool) or order < 1:
        raise InvalidInputError(f"order must be a positive integer; got {order!r}")
    if order >= n_snapshots:
        raise InvalidInputError(f"order {order} must be smaller than the number of snapshots T = {n_snapshots}; "
                                f"use order <= {n_snapshots - 1} or log more snapshots")
    if order > unit_dim:
        raise InvalidInputError(f"order {order} exceeds the unit vector size d = {unit_dim}")


def _check_finite(array: np.ndarray, what: str, error: type[InvalidInputError] = InvalidInputError) -> None:
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0].tolist()
        raise error(f"{what} contain NaN or Inf (first at index {bad}); check the checkpoint that produced them")


def _complete_orthonormal(C: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """Fill the unusable columns of C (d x n) with unit vectors orthogonal to the rest.

    Deterministic: candidates are the coordinate axes, taken in order, Gram-Schmidt twice.
    """
    d, n = C.shape
    basis = [C[:, j] for j in range(n) if usable[j]]
    out = C.clone()
    axis = 0
    for j in range(n):
        if usable[j]:
            continue
        while axis < d:
            v = torch.zeros(d, dtype=C.dtype)
            v[axis] = 1.0
            axis += 1
            for _ in range(2):
                for b in basis:
                    v = v - (b @ v) * b
            norm = v.norm()
            if norm > 1e-6:
                v = v / norm
                break
        basis.append(v)
        out[:, j] = v
    return out
