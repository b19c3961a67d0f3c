"""The unit-selection variants that benchmarks/criteria_study.py compares.

A variant names a distance between units (the dynamics distance of LDS fits over a window of the
trajectory, or a control that uses no dynamics), an importance per unit (final weight norm, or
first-order Taylor importance from a few training batches) and a rule that turns them into the
units to prune (today's average-linkage clusters, a greedy redundancy rule, or a plain ranking).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from analysis.dynamics.criteria import CRITERIA, greedy_removal_order
from analysis.dynamics.distances import dynamics_distances
from analysis.dynamics.lds import fit_lds
from analysis.dynamics.selection import units_to_prune


@dataclass(frozen=True)
class Variant:
    rule: str                  # "clusters", "greedy", "rank", "random"
    distance: str = "dynamics"  # "dynamics", "final-cosine" (no dynamics), "trajectory-cosine" (no LDS)
    window: str = "all"        # "all" or "late": snapshots from half the training steps on
    order: int = 4
    horizon: int | None = None
    importance: str = "norm"   # "norm" (final weight-vector norm), "taylor", or "blend" (their geometric mean)
    beta: float = 1.0          # greedy: weight of redundancy against importance
    batches: int = 16          # Taylor importance: calibration batches
    steps: int = 1             # remove the units in this many chunks, measuring the Taylor importance
                               # again on the model cut so far before each chunk (1: one measurement)


VARIANTS: dict[str, Variant] = {
    "magnitude": Variant("rank", distance="none"),
    "random": Variant("random", distance="none"),
    "taylor": Variant("rank", distance="none", importance="taylor"),
    "dynamics-clusters": Variant("clusters"),
    "dynamics-clusters-late": Variant("clusters", window="late"),
    "dynamics-clusters-order8": Variant("clusters", order=8),
    "greedy-dynamics": Variant("greedy"),
    "greedy-dynamics-b0.5": Variant("greedy", beta=0.5),
    "greedy-dynamics-b2": Variant("greedy", beta=2.0),
    "greedy-dynamics-late": Variant("greedy", window="late"),
    "greedy-dynamics-late-b2": Variant("greedy", window="late", beta=2.0),
    "greedy-dynamics-order2": Variant("greedy", order=2),
    "greedy-dynamics-order8": Variant("greedy", order=8),
    "greedy-dynamics-order8-b0.5": Variant("greedy", order=8, beta=0.5),
    "greedy-dynamics-order8-b2": Variant("greedy", order=8, beta=2.0),
    "greedy-dynamics-order8-late": Variant("greedy", order=8, window="late"),
    "greedy-dynamics-order12": Variant("greedy", order=12),
    "greedy-dynamics-taylor": Variant("greedy", importance="taylor"),
    "greedy-dynamics-taylor-order8": Variant("greedy", order=8, importance="taylor"),
    "greedy-dynamics-taylor-b0.5": Variant("greedy", importance="taylor", beta=0.5),
    # second round (chosen on ptb-small): the Taylor importance measured again before each of 8 chunks,
    # on more batches, or blended with the final norm; "taylor-iterative" and "dynamics-taylor-iterative"
    # are the library's criteria of those names (tests/test_pipeline.py checks that they agree)
    "taylor-b64": Variant("rank", distance="none", importance="taylor", batches=64),
    "taylor-iter": Variant("rank", distance="none", importance="taylor", steps=8),
    "taylor-iterative": Variant("rank", distance="none", importance="taylor", batches=64, steps=8),
    "blend": Variant("rank", distance="none", importance="blend"),
    "greedy-dynamics-blend-order8": Variant("greedy", order=8, importance="blend"),
    "greedy-dynamics-taylor-iter-order8": Variant("greedy", order=8, importance="taylor", steps=8),
    "dynamics-taylor-iterative": Variant("greedy", order=8, importance="taylor", batches=64, steps=8),
    "dynamics-taylor-iterative-b0.5": Variant("greedy", order=8, importance="taylor", batches=64, steps=8, beta=0.5),
    "dynamics-taylor-iterative-b2": Variant("greedy", order=8, importance="taylor", batches=64, steps=8, beta=2.0),
    "trajectory-cosine-taylor-iterative": Variant("greedy", distance="trajectory-cosine", importance="taylor",
                                                  batches=64, steps=8),
    "final-cosine-taylor-iterative": Variant("greedy", distance="final-cosine", importance="taylor", batches=64,
                                             steps=8),
    "greedy-final-cosine": Variant("greedy", distance="final-cosine"),
    "greedy-trajectory-cosine": Variant("greedy", distance="trajectory-cosine"),
}


@dataclass
class SourceUnits:
    """One source model and its trajectory, with each layer's unit vectors, distances and
    importances computed once and kept."""
    model: torch.nn.Module
    trajectory: object
    calibration_tokens: torch.Tensor
    _cache: dict = field(default_factory=dict)

    def _cached(self, key, compute):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def unit_vectors(self, layer: str) -> np.ndarray:
        return self._cached(("Y", layer), lambda: self.trajectory.unit_vectors(layer))

    def window(self, name: str) -> np.ndarray:
        steps = np.asarray(self.trajectory.steps, dtype=np.float64)
        if name == "all":
            return np.arange(len(steps))
        if name == "late":
            return np.flatnonzero(steps >= steps[-1] / 2)
        raise ValueError(f"unknown window {name!r}")

    def distances(self, layer: str, variant: Variant) -> np.ndarray:
        key = ("D", layer, variant.distance, variant.window, variant.order, variant.horizon)
        return self._cached(key, lambda: self._distances(layer, variant))

    def _distances(self, layer: str, variant: Variant) -> np.ndarray:
        Y = self.unit_vectors(layer)[self.window(variant.window)]
        if variant.distance == "dynamics":
            order = min(variant.order, Y.shape[0] - 1)
            return dynamics_distances(fit_lds(Y, order=order), horizon=variant.horizon)
        if variant.distance == "final-cosine":
            return _cosine_distances(Y[-1])
        if variant.distance == "trajectory-cosine":
            centred = Y - Y.mean(axis=0, keepdims=True)                 # (T, H, d)
            return _cosine_distances(np.transpose(centred, (1, 0, 2)).reshape(Y.shape[1], -1))
        raise ValueError(f"unknown distance {variant.distance!r}")

    def importance(self, layer: str, kind: str, batches: int = 16) -> np.ndarray:
        if kind == "norm":
            return self._cached(("norm", layer), lambda: np.linalg.norm(self.unit_vectors(layer)[-1], axis=1))
        if kind == "taylor":
            return self._cached(("taylor", batches), lambda: self.taylor(self.model, batches))[layer]
        if kind == "blend":  # geometric mean of the two, each scaled to a largest value of 1
            norm = self.importance(layer, "norm")
            return np.sqrt(norm / norm.max() * self.importance(layer, "taylor", batches))
        raise ValueError(f"unknown importance {kind!r}")

    def taylor(self, model: torch.nn.Module, batches: int) -> dict[str, np.ndarray]:
        from analysis.pruning.importance import unit_importances

        return unit_importances(model, self.calibration_tokens, max_batches=batches)


def choose_kept_units(units: SourceUnits, variant: Variant, ratio: float, seed: int = 0) -> dict[str, np.ndarray]:
    if variant.steps > 1:
        return _choose_iteratively(units, variant, ratio)
    kept = {}
    for layer, rnn in zip(units.model.layer_names, units.model.rnns):
        H = rnn.hidden_size
        n_prune = units_to_prune(H, ratio)
        importance = None if variant.rule == "random" else units.importance(layer, variant.importance, variant.batches)
        if variant.rule == "random":
            rng = np.random.default_rng([seed, zlib.crc32(layer.encode())])
            pruned = rng.choice(H, size=n_prune, replace=False)
        elif variant.rule == "rank":
            pruned = np.argsort(importance, kind="stable")[:n_prune]
        elif variant.rule == "clusters":  # the library's clustering rule, each cluster keeping its strongest unit
            pruned = CRITERIA["dynamics"].choose_pruned(n_prune, units.distances(layer, variant), importance, None)[0]
        elif variant.rule == "greedy":
            pruned = greedy_redundancy(units.distances(layer, variant), importance, n_prune, variant.beta)
        else:
            raise ValueError(f"unknown rule {variant.rule!r}")
        kept[layer] = np.setdiff1d(np.arange(H), pruned)
    return kept


def _choose_iteratively(units: SourceUnits, variant: Variant, ratio: float) -> dict[str, np.ndarray]:
    """Remove the units in `variant.steps` equal chunks; before each chunk, cut the model to the units
    kept so far and measure their Taylor importance on it (the rule then runs on the kept units'
    distances and those importances)."""
    from analysis.pruning.surgery import prune_units

    if variant.importance != "taylor" or variant.rule not in ("rank", "greedy"):
        raise ValueError("iterative choice needs the Taylor importance and the rank or greedy rule")
    kept = {layer: np.arange(rnn.hidden_size) for layer, rnn in zip(units.model.layer_names, units.model.rnns)}
    totals = {layer: units_to_prune(len(indices), ratio) for layer, indices in kept.items()}
    for step in range(1, variant.steps + 1):
        model = units.model if step == 1 else prune_units(units.model, kept)
        importance = units.taylor(model, variant.batches)
        for layer in kept:
            removed_so_far = units.model.rnns[units.model.layer_names.index(layer)].hidden_size - len(kept[layer])
            n_now = round(totals[layer] * step / variant.steps) - removed_so_far
            if n_now <= 0:
                continue
            if variant.rule == "rank":
                local = np.argsort(importance[layer], kind="stable")[:n_now]
            else:
                sub = units.distances(layer, variant)[np.ix_(kept[layer], kept[layer])]
                local = greedy_redundancy(sub, importance[layer], n_now, variant.beta)
            kept[layer] = np.delete(kept[layer], local)
    return kept


def greedy_redundancy(distances: np.ndarray, importance: np.ndarray, n_prune: int, beta: float) -> np.ndarray:
    """The dynamics-greedy rule with a weight beta on redundancy: each time, the kept unit with the
    smallest importance x (distance to its nearest kept unit)^beta goes. That order is the library
    rule's on importance^(1/beta) (a monotone transform of each score); beta = 1 is the rule itself."""
    return np.sort(greedy_removal_order(distances, importance ** (1.0 / beta), n_prune).units)


def _cosine_distances(vectors: np.ndarray) -> np.ndarray:
    X = np.asarray(vectors, dtype=np.float64)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    D = np.clip(1.0 - X @ X.T, 0.0, 2.0)
    D = (D + D.T) / 2
    np.fill_diagonal(D, 0.0)
    return D
