"""The numbers behind the dashboard's exploration pages: weight norms over training, PCA paths of
unit weight vectors, a 2-D map of units from their dynamics distances, heatmap orderings, nearest
neighbours, the eigenvalues of each unit's transition matrix, and what the dynamics-greedy
criterion weighs per unit. Nothing here draws; every function returns arrays or data frames.
The curves and tables of runs are in analysis.run_curves.

    norms = gate_norms(trajectory, "rnns.0.l0")            # (T, G, H)
    bands = norm_bands(norms, trajectory.steps, gate_names(trajectory.layer_info("rnns.0.l0")))
    paths = pca_paths(trajectory.unit_vectors("rnns.0.l0", units=[3, 7]), n_components=3)
    xy = mds_embedding(distances, seed=0)                   # (H, 2)
    order = heatmap_order(distances, plan.layers[layer].clusters)
    why = unit_redundancy(distances, final_norm_importance(trajectory, "rnns.0.l0"))
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform

from analysis.dynamics.criteria import greedy_removal_order
from analysis.dynamics.distances import check_distances
from analysis.dynamics.lds import LDSFit
from analysis.errors import InvalidInputError
from analysis.trajectories.layers import GATE_NAMES

# Unit vectors are read this many bytes at a time, so a 1500-unit layer never sits in memory whole.
_READ_BUDGET_BYTES = 64 * 2**20


# ----------------------------------------------------------------------------- trajectories


def gate_names(info) -> list[str]:
    """Display names of a layer's gate blocks, in row order (e.g. LSTM: i, f, g, o)."""
    return list(GATE_NAMES[info.kind])


def gate_norms(trajectory, layer: str) -> np.ndarray:
    """L2 norm of each unit's weights per gate at every snapshot, shape (T, G, H).

    Gate g of unit k is the pair of rows W_ih[g*H + k, :], W_hh[g*H + k, :]; the norms of all G
    gates combine to the norm of the unit's weight vector w_k(t).
    """
    info = trajectory.layer_info(layer)
    T, H, G = len(trajectory), info.hidden_size, info.gates
    block = max(1, min(H, _READ_BUDGET_BYTES // max(1, 4 * T * info.unit_dim)))
    norms = np.empty((T, G, H), dtype=np.float64)
    for start in range(0, H, block):
        stop = min(H, start + block)
        vectors = trajectory.unit_vectors(layer, units=slice(start, stop))  # (T, n, G*(D+H))
        per_gate = vectors.reshape(T, stop - start, G, info.input_size + H).astype(np.float64)
        norms[:, :, start:stop] = np.linalg.norm(per_gate, axis=3).transpose(0, 2, 1)
    return norms


def norm_bands(norms: np.ndarray, steps, gates: list[str], quantiles=(0.1, 0.5, 0.9)) -> pd.DataFrame:
    """Per step and gate, the spread of the units' norms: one row per (step, gate) with columns
    step, gate, mean, and q10 / q50 / q90 (named after the quantiles asked for)."""
    norms = np.asarray(norms, dtype=np.float64)
    steps = np.asarray(steps)
    if norms.ndim != 3 or norms.shape[0] != steps.shape[0] or norms.shape[1] != len(gates):
        raise InvalidInputError(f"norms must have shape (T, G, H) = ({steps.shape[0]}, {len(gates)}, H); "
                                f"got {norms.shape}")
    values = np.quantile(norms, quantiles, axis=2)  # (Q, T, G)
    rows = {"step": np.repeat(steps, len(gates)), "gate": np.tile(gates, steps.shape[0]),
            "mean": norms.mean(axis=2).ravel()}
    for q, value in zip(quantiles, values):
        rows[f"q{round(q * 100):02d}"] = value.ravel()
    return pd.DataFrame(rows)


def unit_norm_paths(norms: np.ndarray, steps, units) -> pd.DataFrame:
    """Long frame (step, unit, norm) of the whole weight-vector norm ||w_k(t)|| of chosen units."""
    norms = np.asarray(norms, dtype=np.float64)
    units = _checked_units(units, norms.shape[2])
    whole = np.sqrt((norms[:, :, units] ** 2).sum(axis=1))  # (T, n)
    return pd.DataFrame({"step": np.repeat(np.asarray(steps), len(units)),
                         "unit": np.tile(units, whole.shape[0]), "norm": whole.ravel()})


@dataclass(frozen=True)
class PCAPaths:
    """Unit weight vectors over time projected on their joint principal axes.

    coordinates: (T, n_units, k); explained_variance_ratio: (k,) share of the total variance of
    all the points that each axis carries.
    """

    coordinates: np.ndarray
    explained_variance_ratio: np.ndarray

    def to_frame(self, steps, units) -> pd.DataFrame:
        """Long frame: step, unit, pc1..pck, one row per (snapshot, unit)."""
        T, n, k = self.coordinates.shape
        frame = pd.DataFrame({"step": np.repeat(np.asarray(steps), n), "unit": np.tile(np.asarray(units), T)})
        for axis in range(k):
            frame[f"pc{axis + 1}"] = self.coordinates[:, :, axis].ravel()
        return frame


def pca_paths(unit_vectors, n_components: int = 2) -> PCAPaths:
    """Project every snapshot of the given units (array (T, n, d)) on the principal axes of all
    T*n points together, so the paths share one frame and can be compared. Axis signs are fixed
    (largest loading positive), so the same input always gives the same picture."""
    Y = np.asarray(unit_vectors, dtype=np.float64)
    if Y.ndim != 3 or Y.shape[0] < 1 or Y.shape[1] < 1:
        raise InvalidInputError(f"unit vectors must have shape (T, n_units, d) with T, n >= 1; got {Y.shape}")
    if n_components not in (2, 3):
        raise InvalidInputError(f"n_components must be 2 or 3; got {n_components!r}")
    if not np.isfinite(Y).all():
        raise InvalidInputError("unit vectors contain NaN or Inf; check the checkpoint that produced them")
    T, n, d = Y.shape
    points = Y.reshape(T * n, d)
    centred = points - points.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(n_components, vt.shape[0])
    axes = vt[:k]
    signs = np.sign(axes[np.arange(k), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    coordinates = np.zeros((T * n, n_components))
    coordinates[:, :k] = centred @ axes.T
    total = float((s ** 2).sum())
    ratio = np.zeros(n_components)
    if total > 0:
        ratio[:k] = s[:k] ** 2 / total
    return PCAPaths(coordinates.reshape(T, n, n_components), ratio)


def downsample_matrix(matrix, max_size: int = 256) -> tuple[np.ndarray, int, int]:
    """Block-average a matrix so neither side exceeds max_size (a readable heatmap of a large
    layer). Returns (small matrix, row block, column block); blocks of 1 mean unchanged."""
    M = np.asarray(matrix, dtype=np.float64)
    if M.ndim != 2 or M.size == 0:
        raise InvalidInputError(f"expected a non-empty 2-D matrix; got shape {M.shape}")
    if max_size < 1:
        raise InvalidInputError(f"max_size must be at least 1; got {max_size}")
    row_block, column_block = math.ceil(M.shape[0] / max_size), math.ceil(M.shape[1] / max_size)
    rows, columns = math.ceil(M.shape[0] / row_block), math.ceil(M.shape[1] / column_block)
    padded = np.full((rows * row_block, columns * column_block), np.nan)
    padded[:M.shape[0], :M.shape[1]] = M
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # blocks are never all-NaN; silence the edge check
        small = np.nanmean(padded.reshape(rows, row_block, columns, column_block), axis=(1, 3))
    return small, row_block, column_block


# ----------------------------------------------------------------------------- dynamics


def fit_quality_table(fit: LDSFit) -> pd.DataFrame:
    """One row per unit: explained variance, one-step prediction R^2, spectral radius of A."""
    return pd.DataFrame({"unit": np.arange(fit.n_units), "explained_variance": fit.explained_variance,
                         "prediction_r2": fit.prediction_r2, "spectral_radius": fit.spectral_radius})


def transition_eigenvalues(fit: LDSFit, units=None) -> pd.DataFrame:
    """Eigenvalues of each unit's A in the complex plane: columns unit, real, imag, modulus."""
    units = np.arange(fit.n_units) if units is None else _checked_units(units, fit.n_units)
    values = np.linalg.eigvals(fit.A[units]) if len(units) else np.zeros((0, fit.order), complex)
    return pd.DataFrame({"unit": np.repeat(units, fit.order), "real": values.real.ravel(),
                         "imag": values.imag.ravel(), "modulus": np.abs(values).ravel()})


def unit_circle(n_points: int = 181) -> tuple[np.ndarray, np.ndarray]:
    """Points of the unit circle, the stability boundary drawn behind the eigenvalues."""
    angle = np.linspace(0.0, 2.0 * np.pi, n_points)
    return np.cos(angle), np.sin(angle)


def mds_embedding(distances, n_components: int = 2, seed: int = 0, max_iter: int = 300,
                  eps: float = 1e-6) -> np.ndarray:
    """Place units in the plane so their Euclidean distances follow the dynamics distances: metric
    MDS on the precomputed matrix by SMACOF from the classical-MDS start, as scikit-learn's
    MDS(metric="precomputed", init="classical_mds") computes it, in numpy (importing scikit-learn
    takes seconds, longer than the whole fit for a layer of a few hundred units). Shape
    (H, n_components). Deterministic; `seed` is kept for callers of the seeded version before it."""
    D = check_distances(distances)
    H = D.shape[0]
    if H <= n_components or not D.any():
        return np.zeros((H, n_components))  # nothing to spread out
    embedding = _classical_mds(D, n_components)
    current = _euclidean_distances(embedding)
    old_stress = None
    for _ in range(max_iter):  # Guttman transforms until the stress stops falling (scikit-learn's test)
        current[current == 0] = 1e-5
        ratio = D / current  # zero on the diagonal, so B = diag(row sums) - ratio need not be built
        embedding = (ratio.sum(axis=1)[:, None] * embedding - ratio @ embedding) / H
        current = _euclidean_distances(embedding)
        stress = ((current - D) ** 2).sum() / 2
        if old_stress is not None and (old_stress - stress) / ((current ** 2).sum() / 2) < eps:
            break
        old_stress = stress
    # the answer is defined up to rotation and reflection; fix the signs for stable pictures
    flips = np.sign(embedding[np.abs(embedding).argmax(axis=0), np.arange(n_components)])
    return embedding * np.where(flips == 0, 1.0, flips)


def _classical_mds(D: np.ndarray, n_components: int) -> np.ndarray:
    """Torgerson's classical MDS: the top eigenvectors of the double-centred squared distances."""
    B = D ** 2
    B -= B.mean(axis=0)
    B -= B.mean(axis=1, keepdims=True)
    B *= -0.5
    values, vectors = np.linalg.eigh(B)
    values, vectors = values[::-1][:n_components], vectors[:, ::-1][:, :n_components]
    vectors = vectors * np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(n_components)])
    return np.sqrt(np.maximum(values, 0.0)) * vectors


def _euclidean_distances(points: np.ndarray) -> np.ndarray:
    squared = (points ** 2).sum(axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2.0 * points @ points.T, 0.0))
    np.fill_diagonal(distances, 0.0)
    return distances


def heatmap_order(distances, labels=None) -> np.ndarray:
    """A unit order that puts similar units next to each other: the leaves of the average-linkage
    tree (the tree the dynamics criterion cuts). With cluster labels, each cluster is also made
    contiguous, clusters in order of first appearance (see group_by_labels)."""
    D = check_distances(distances)
    H = D.shape[0]
    order = leaves_list(linkage(squareform(D, checks=False), method="average")) if H > 1 else np.arange(H)
    order = order.astype(np.int64)
    return order if labels is None else group_by_labels(order, labels)


def group_by_labels(order, labels) -> np.ndarray:
    """Reorder `order` (a permutation of the units) so that units sharing a label are contiguous,
    groups in order of their first appearance, units within a group in their given order. Cheap:
    a page can keep the tree order of heatmap_order and regroup it whenever the labels change."""
    order = np.asarray(order, dtype=np.int64)
    labels = np.asarray(labels)
    if labels.shape != order.shape:
        raise InvalidInputError(f"labels must have one entry per unit ({order.size}); got shape {labels.shape}")
    sequence = labels[order]
    _, first, inverse = np.unique(sequence, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))  # rank of each distinct label by first appearance
    return order[np.argsort(rank[inverse], kind="stable")]


def nearest_neighbours(distances, unit: int, k: int = 5, labels=None) -> pd.DataFrame:
    """The k units closest to `unit` in dynamics distance (itself excluded), nearest first; ties
    go to the lower index. Columns: unit, distance, and cluster when `labels` are given."""
    D = check_distances(distances)
    H = D.shape[0]
    if not 0 <= int(unit) < H:
        raise InvalidInputError(f"unit {unit} is out of range; the layer has {H} units (0..{H - 1})")
    others = np.delete(np.arange(H), int(unit))
    order = others[np.lexsort((others, D[int(unit), others]))][:max(0, int(k))]
    frame = pd.DataFrame({"unit": order, "distance": D[int(unit), order]})
    if labels is not None:
        frame["cluster"] = np.asarray(labels)[order]
    return frame


def distance_profile(distances) -> pd.DataFrame:
    """Two distributions of one layer's dynamics distances: every pair, and each unit's distance to
    its nearest other unit. The first can look uniform while the second still shows which units
    have a near twin, which is what the dynamics-greedy criterion reads. Columns: distance, which."""
    D = check_distances(distances)
    H = D.shape[0]
    if H < 2:
        raise InvalidInputError("a layer needs at least 2 units to have distances")
    nearest = np.where(np.eye(H, dtype=bool), np.inf, D).min(axis=1)
    pairs = D[np.triu_indices(H, 1)]
    return pd.DataFrame({"distance": np.concatenate([pairs, nearest]),
                         "which": ["all pairs"] * pairs.size + ["each unit's nearest unit"] * H})


def unit_redundancy(distances, importance, pruned=()) -> pd.DataFrame:
    """What the dynamics-greedy criterion weighs, per unit of one layer: its importance, its nearest
    unit in dynamics distance, that distance, and their product (the redundancy score: the smaller,
    the sooner the unit goes). Columns: unit, importance, nearest unit, distance, score, status;
    sorted by score, smallest first."""
    D = check_distances(distances).copy()
    weights = np.asarray(importance, dtype=np.float64)
    if weights.shape != (D.shape[0],):
        raise InvalidInputError(f"importance has {weights.size} entries but the layer has {D.shape[0]} units")
    np.fill_diagonal(D, np.inf)
    nearest = np.argmin(D, axis=1)
    distance = D[np.arange(D.shape[0]), nearest]
    frame = pd.DataFrame({"unit": np.arange(D.shape[0]), "importance": weights, "nearest unit": nearest,
                          "distance": distance, "score": weights * distance,
                          "status": unit_status(D.shape[0], pruned)})
    return frame.sort_values(["score", "unit"], kind="stable").reset_index(drop=True)


def greedy_removal_table(distances, importance, n_prune: int) -> pd.DataFrame:
    """The dynamics-greedy criterion's removals in order, with what decided each: the removed unit,
    its importance, its nearest unit still kept at that moment, their distance and the score."""
    D = check_distances(distances)
    if not 0 <= int(n_prune) < D.shape[0]:
        raise InvalidInputError(f"n_prune must be in [0, {D.shape[0]}); got {n_prune}")
    removal = greedy_removal_order(D, np.asarray(importance, dtype=np.float64), int(n_prune))
    return pd.DataFrame({"step": np.arange(1, int(n_prune) + 1), "unit": removal.units,
                         "importance": np.asarray(importance, dtype=np.float64)[removal.units],
                         "nearest kept unit": removal.neighbours, "distance": removal.nearest_distances,
                         "score": removal.scores})


def measured_removal_table(choice, layer: str, weight_norms) -> pd.DataFrame:
    """The removals of a measured cut (analysis.pruning.stages.UnitChoice) in one layer, in the order
    they were made: the chunk that removed each unit, its importance in that chunk's measurement and on
    the uncut model, and its final weight norm (what magnitude reads)."""
    chunk = np.asarray(choice.removed_in_chunk[layer])
    norms = np.asarray(weight_norms, dtype=np.float64)
    if norms.shape != chunk.shape:
        raise InvalidInputError(f"weight_norms has {norms.size} entries; layer {layer} has {chunk.size} units")
    units = np.flatnonzero(chunk)
    units = units[np.lexsort((choice.importance[layer][units], chunk[units]))]
    return pd.DataFrame({"chunk": chunk[units], "unit": units,
                         "importance when removed": choice.importance[layer][units],
                         "importance, uncut model": choice.first_importance[layer][units],
                         "final weight norm": norms[units]})


def unit_status(hidden_size: int, pruned) -> np.ndarray:
    """"kept" or "pruned" for each of a layer's units, for colouring pictures."""
    status = np.full(int(hidden_size), "kept", dtype=object)
    status[_checked_units(pruned, int(hidden_size))] = "pruned"
    return status


def positions_in_order(order, units) -> np.ndarray:
    """Where each of `units` sits in the permutation `order` (to mark units on an ordered heatmap)."""
    order = np.asarray(order, dtype=np.int64)
    position = np.empty(order.size, dtype=np.int64)
    position[order] = np.arange(order.size)
    return position[_checked_units(units, order.size)]


@dataclass(frozen=True)
class HeatmapView:
    """A distance matrix ready to draw: reordered, block-averaged to at most max_size per side,
    with the positions of marked units in the drawn matrix."""

    matrix: np.ndarray
    marks: np.ndarray
    block: int


def heatmap_view(distances, order, marked=(), max_size: int = 300) -> HeatmapView:
    """The distances in `order`, averaged over blocks of units when there are more than max_size
    (a 1500-unit layer stays quick to send and draw), and where each `marked` unit lands."""
    ordered = ordered_matrix(distances, order)
    small, block, _ = downsample_matrix(ordered, max_size=max_size) if ordered.size else (ordered, 1, 1)
    return HeatmapView(small, positions_in_order(order, marked) // block, block)


def ordered_matrix(distances, order) -> np.ndarray:
    """The distance matrix with rows and columns in `order`."""
    D = check_distances(distances)
    order = _checked_units(order, D.shape[0])
    return D[np.ix_(order, order)]


# ----------------------------------------------------------------------------- helpers


def _checked_units(units, n_units: int) -> np.ndarray:
    array = np.asarray(units, dtype=np.int64).reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= n_units):
        raise InvalidInputError(f"unit indices must be in [0, {n_units}); got {array.min()}..{array.max()}")
    return array
