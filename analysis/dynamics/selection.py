"""Choosing which hidden units to prune (METHOD section 5).

A criterion is one class with one method, `choose_pruned(n_prune, distances, importance, rng)`,
returning the unit indices to remove; `select_units` applies it per layer and returns a
PruningPlan. Selection never touches a model: structural surgery lives in analysis.pruning.surgery.

    plan = select_units(D, ratio=0.5, criterion="dynamics", importance=final_norms)
    plan.kept, plan.pruned                      # one layer
    plan = select_units({"rnns.0.l0": D0, "rnns.1.l0": D1}, ratio={"rnns.0.l0": 0.3, "rnns.1.l0": 0.5})
    plan.kept_per_layer                         # layer -> kept unit indices
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Mapping, Protocol

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

from analysis.errors import InvalidInputError

SINGLE_LAYER = ""


class SelectionCriterion(Protocol):
    name: str
    needs_distances: bool
    needs_importance: bool

    def choose_pruned(self, n_prune: int, distances: np.ndarray | None, importance: np.ndarray | None,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (pruned unit indices, cluster label per unit or None)."""


class DynamicsRedundancy:
    """Average-linkage clustering on the dynamics distances into H - R clusters; each cluster keeps
    its most important unit. Without importances, the unit closest on average to the rest of its
    cluster (the medoid) is kept."""

    name = "dynamics"
    needs_distances = True
    needs_importance = False

    def choose_pruned(self, n_prune, distances, importance, rng):
        H = distances.shape[0]
        labels = cluster_units(distances, H - n_prune)
        pruned = []
        for cluster in range(H - n_prune):
            members = np.flatnonzero(labels == cluster)
            if importance is not None:
                # highest importance kept; ties go to the lowest index
                keep = members[np.argmax(importance[members])]
            else:
                keep = members[np.argmin(distances[np.ix_(members, members)].mean(axis=1))]
            pruned.extend(int(m) for m in members if m != keep)
        return np.array(sorted(pruned), dtype=np.int64), labels


class MagnitudeCriterion:
    """Prune the R units with the smallest importance (default: final weight-vector norm)."""

    name = "magnitude"
    needs_distances = False
    needs_importance = True

    def choose_pruned(self, n_prune, distances, importance, rng):
        order = np.argsort(importance, kind="stable")
        return np.sort(order[:n_prune]).astype(np.int64), None


class RandomCriterion:
    """Prune R units chosen uniformly at random (seeded)."""

    name = "random"
    needs_distances = False
    needs_importance = False

    def choose_pruned(self, n_prune, distances, importance, rng):
        H = distances.shape[0] if distances is not None else importance.shape[0]
        return np.sort(rng.choice(H, size=n_prune, replace=False)).astype(np.int64), None


CRITERIA: dict[str, SelectionCriterion] = {c.name: c for c in (DynamicsRedundancy(), MagnitudeCriterion(), RandomCriterion())}


@dataclass(frozen=True)
class LayerPlan:
    layer: str
    hidden_size: int
    kept: np.ndarray
    pruned: np.ndarray
    clusters: np.ndarray | None = None

    def to_dict(self) -> dict:
        return {"layer": self.layer, "hidden_size": self.hidden_size, "kept": self.kept.tolist(),
                "pruned": self.pruned.tolist(),
                "clusters": None if self.clusters is None else self.clusters.tolist()}


@dataclass(frozen=True)
class PruningPlan:
    """Which units each layer keeps and prunes. For a single unnamed layer, `.kept` and `.pruned`
    are arrays; for several layers they are dicts keyed by layer name."""

    criterion: str
    layers: dict[str, LayerPlan] = field(default_factory=dict)

    @property
    def kept(self):
        return self._per_layer("kept")

    @property
    def pruned(self):
        return self._per_layer("pruned")

    @property
    def kept_per_layer(self) -> dict[str, np.ndarray]:
        return {name: plan.kept for name, plan in self.layers.items()}

    @property
    def pruned_per_layer(self) -> dict[str, np.ndarray]:
        return {name: plan.pruned for name, plan in self.layers.items()}

    def _per_layer(self, attribute: str):
        if set(self.layers) == {SINGLE_LAYER}:
            return getattr(self.layers[SINGLE_LAYER], attribute)
        return {name: getattr(plan, attribute) for name, plan in self.layers.items()}

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "layers": [p.to_dict() for p in self.layers.values()]}

    @classmethod
    def from_dict(cls, data: Mapping) -> "PruningPlan":
        try:
            layers = {}
            for entry in data["layers"]:
                clusters = entry.get("clusters")
                layers[str(entry["layer"])] = LayerPlan(
                    layer=str(entry["layer"]), hidden_size=int(entry["hidden_size"]),
                    kept=np.asarray(entry["kept"], dtype=np.int64), pruned=np.asarray(entry["pruned"], dtype=np.int64),
                    clusters=None if clusters is None else np.asarray(clusters, dtype=np.int64))
            return cls(criterion=str(data["criterion"]), layers=layers)
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInputError(f"not a pruning plan: {error}") from error


def cluster_units(distances: np.ndarray, n_clusters: int) -> np.ndarray:
    """Average-linkage agglomerative clustering on a precomputed distance matrix.

    Returns a label in [0, n_clusters) per unit; labels are numbered by each cluster's smallest
    unit index, so they are deterministic. Cutting the merge tree directly (rather than by height)
    gives exactly n_clusters even when merge heights tie.
    """
    H = distances.shape[0]
    if not 1 <= n_clusters <= H:
        raise InvalidInputError(f"n_clusters must be between 1 and {H}; got {n_clusters}")
    if H == 1:
        return np.zeros(1, dtype=np.int64)
    merges = linkage(squareform(distances, checks=False), method="average")
    parent = np.arange(2 * H - 1)

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for step in range(H - n_clusters):
        a, b = int(merges[step, 0]), int(merges[step, 1])
        parent[root(a)] = H + step
        parent[root(b)] = H + step
    roots = np.array([root(unit) for unit in range(H)])
    _, first_index = np.unique(roots, return_index=True)
    ordered_roots = roots[np.sort(first_index)]
    relabel = {r: i for i, r in enumerate(ordered_roots)}
    return np.array([relabel[r] for r in roots], dtype=np.int64)


def units_to_prune(hidden_size: int, ratio: float) -> int:
    """R = round(ratio * H), keeping at least one unit."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating)) or not 0.0 <= ratio < 1.0:
        raise InvalidInputError(f"pruning ratio must be in [0, 1); got {ratio!r}")
    return min(int(round(ratio * hidden_size)), hidden_size - 1)


def select_units(distances, ratio, criterion: str = "dynamics", importance=None, seed: int = 0) -> PruningPlan:
    """Choose units to prune per layer (METHOD section 5).

    distances: an (H, H) array for one layer, or {layer: (H, H) array} (an entry may be None for
    criteria that don't use distances). ratio: one float in [0, 1) for every layer, or
    {layer: ratio}. importance: (H,) per layer, or {layer: (H,)}; required by "magnitude",
    used by "dynamics" to pick each cluster's survivor. Deterministic for a given input and seed.
    """
    if criterion not in CRITERIA:
        raise InvalidInputError(f"unknown criterion {criterion!r}; choose one of {sorted(CRITERIA)}")
    chooser = CRITERIA[criterion]
    single = not isinstance(distances, Mapping)
    distance_map = {SINGLE_LAYER: distances} if single else dict(distances)
    importance_map = _per_layer(importance, distance_map, "importance", single)
    ratio_map = _per_layer(ratio, distance_map, "ratio", single, broadcast=True)

    layers = {}
    for name, layer_distances in distance_map.items():
        label = f"layer {name!r}" if name else "the layer"
        matrix = _validated_distances(layer_distances, label) if layer_distances is not None else None
        weights = importance_map.get(name)
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.ndim != 1 or not np.isfinite(weights).all():
                raise InvalidInputError(f"importance for {label} must be a finite 1-D array")
        nothing_to_prune = ratio_map.get(name) == 0 and weights is not None  # H known, no choice to make
        if matrix is None and chooser.needs_distances and not nothing_to_prune:
            raise InvalidInputError(f"criterion {criterion!r} needs the distance matrix of {label}")
        if weights is None and chooser.needs_importance:
            raise InvalidInputError(f"criterion {criterion!r} needs unit importances for {label}")
        H = matrix.shape[0] if matrix is not None else weights.shape[0]
        if weights is not None and weights.shape[0] != H:
            raise InvalidInputError(f"importance for {label} has {weights.shape[0]} entries but the layer has {H} units")
        if name not in ratio_map:
            raise InvalidInputError(f"no pruning ratio given for {label}")
        n_prune = units_to_prune(H, ratio_map[name])
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if n_prune == 0:
            pruned, clusters = np.zeros(0, dtype=np.int64), None
        else:
            pruned, clusters = chooser.choose_pruned(n_prune, matrix, weights, rng)
        kept = np.setdiff1d(np.arange(H), pruned).astype(np.int64)
        layers[name] = LayerPlan(layer=name, hidden_size=H, kept=kept, pruned=pruned, clusters=clusters)
    return PruningPlan(criterion=criterion, layers=layers)


def _per_layer(value, layers: Mapping, what: str, single: bool, broadcast: bool = False) -> dict:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        if single:
            raise InvalidInputError(f"{what} is per layer but distances are a single matrix")
        unknown = set(value) - set(layers)
        if unknown:
            raise InvalidInputError(f"{what} names unknown layer(s) {sorted(unknown)}; layers are {sorted(layers)}")
        return dict(value)
    if single or broadcast:
        return {name: value for name in layers}
    raise InvalidInputError(f"{what} must be given per layer as a dict when there are several layers")


def _validated_distances(distances, label: str) -> np.ndarray:
    D = np.asarray(distances, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1] or D.shape[0] == 0:
        raise InvalidInputError(f"distances for {label} must be a square (H, H) matrix; got shape {D.shape}")
    if not np.isfinite(D).all():
        raise InvalidInputError(f"distances for {label} contain NaN or Inf")
    # exact symmetry (what dynamics_distances returns) is a cheap check; only otherwise compare
    # within a tolerance, which costs ~15x more on a 1500 x 1500 matrix
    symmetric = np.array_equal(D, D.T) or np.abs(D - D.T).max() <= 1e-9 * max(1.0, float(np.abs(D).max()))
    if D.min() < 0 or not symmetric:
        raise InvalidInputError(f"distances for {label} must be symmetric and non-negative")
    return D
