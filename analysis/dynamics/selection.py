"""Choosing which hidden units to prune (METHOD section 5).

A criterion is one class with one method, `choose_pruned(n_prune, distances, importance, rng)`,
returning the unit indices to remove; `select_units` applies it per layer and returns a
PruningPlan. Selection never touches a model: structural surgery lives in analysis.pruning.surgery.

    plan = select_units({"rnns.0.l0": D0, "rnns.1.l0": D1}, ratio={"rnns.0.l0": 0.3, "rnns.1.l0": 0.5},
                        importance=final_norm_importance(trajectory))
    plan.kept, plan.pruned                      # layer -> unit indices
    plan = select_units(D, ratio=0.5, criterion="magnitude", importance=final_norm_importance(trajectory, layer))
    plan.pruned[""]                             # one unnamed layer: its name is ""
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from analysis.dynamics.criteria import CRITERIA, DEFAULT_TRAJECTORY_CRITERION
from analysis.dynamics.distances import check_distances
from analysis.errors import InvalidInputError

SINGLE_LAYER = ""


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
    """Which units each layer keeps and prunes. `.kept` and `.pruned` map layer name -> sorted unit
    indices, also for one unnamed layer (a single matrix given to select_units), whose name is ""."""

    criterion: str
    layers: dict[str, LayerPlan] = field(default_factory=dict)

    @property
    def kept(self) -> dict[str, np.ndarray]:
        return {name: plan.kept for name, plan in self.layers.items()}

    @property
    def pruned(self) -> dict[str, np.ndarray]:
        return {name: plan.pruned for name, plan in self.layers.items()}

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "layers": [p.to_dict() for p in self.layers.values()]}

    @classmethod
    def from_dict(cls, data: Mapping) -> PruningPlan:
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


def units_to_prune(hidden_size: int, ratio: float) -> int:
    """R = round(ratio * H), keeping at least one unit."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating)) or not 0.0 <= ratio < 1.0:
        raise InvalidInputError(f"pruning ratio must be in [0, 1); got {ratio!r}")
    return min(int(round(ratio * hidden_size)), hidden_size - 1)


def final_norm_importance(source, layer: str | None = None):
    """The default importance of a unit (METHOD section 5): the L2 norm of its final weight vector.

    source: a Trajectory (its last snapshot) or an RNNLanguageModel (its current weights). With a
    layer name, that layer's (H,) float64 array; without, {layer: (H,) array} for every layer,
    ready for `select_units(..., importance=...)`.
    """
    if hasattr(source, "final_unit_vectors"):
        names = source.layers
    elif hasattr(source, "rnns") and hasattr(source, "layer_names"):
        names = source.layer_names
    else:
        raise InvalidInputError(f"final_norm_importance needs a Trajectory or an RNNLanguageModel; "
                                f"got {type(source).__name__}")
    if layer is None:
        return {name: final_norm_importance(source, name) for name in names}
    if layer not in names:
        raise InvalidInputError(f"no layer {layer!r}; the layers are {list(names)}")
    if hasattr(source, "final_unit_vectors"):
        final = source.final_unit_vectors(layer, dtype=np.float64)
    else:
        rnn = source.rnns[names.index(layer)]
        H = rnn.hidden_size
        rows = np.concatenate([rnn.weight_ih_l0.detach().cpu().double().numpy(),
                               rnn.weight_hh_l0.detach().cpu().double().numpy()], axis=1)  # (G*H, D+H)
        final = rows.reshape(-1, H, rows.shape[1]).transpose(1, 0, 2).reshape(H, -1)  # w_k, METHOD section 2
    return np.linalg.norm(final, axis=1)


def select_units(distances, ratio, criterion: str = DEFAULT_TRAJECTORY_CRITERION, importance=None,
                seed: int = 0) -> PruningPlan:
    """Choose units to prune per layer (METHOD section 5).

    distances: an (H, H) array for one layer (named "" in the plan), or {layer: (H, H) array} (an
    entry may be None for criteria that don't use distances). ratio: one float in [0, 1) for every
    layer, or {layer: ratio}. importance: (H,) per layer, or {layer: (H,)}, e.g. from
    `final_norm_importance`; required by "magnitude" and "dynamics-greedy", used by "dynamics" to pick each cluster's
    survivor. Deterministic for a given input and seed.
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
        matrix = _checked_layer_distances(layer_distances, label) if layer_distances is not None else None
        weights = importance_map.get(name)
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.ndim != 1 or not np.isfinite(weights).all():
                raise InvalidInputError(f"importance for {label} must be a finite 1-D array")
        nothing_to_prune = ratio_map.get(name) == 0 and weights is not None  # H known, no choice to make
        if matrix is None and chooser.needs_distances and not nothing_to_prune:
            raise InvalidInputError(f"criterion {criterion!r} needs the distance matrix of {label}")
        if weights is None and chooser.needs_importance:
            raise InvalidInputError(
                f"criterion {criterion!r} needs unit importances for {label}: pass "
                f"importance=final_norm_importance(trajectory, layer) (the norms of the final weight vectors), "
                f"or importance=final_norm_importance(trajectory) with distances given per layer")
        H = matrix.shape[0] if matrix is not None else weights.shape[0]
        if weights is not None and weights.shape[0] != H:
            raise InvalidInputError(
                f"importance for {label} has {weights.shape[0]} entries but the layer has {H} units")
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


def _checked_layer_distances(distances, label: str) -> np.ndarray:
    D = check_distances(distances, f"distances for {label}")
    if D.shape[0] == 0:
        raise InvalidInputError(f"distances for {label} must be a square (H, H) matrix; got shape {D.shape}")
    return D
