"""The unit-selection criteria (METHOD section 5), each behind one interface: an object with
`choose_pruned(n_prune, distances, importance, rng) -> (pruned unit indices, cluster labels or None)`.
`analysis.dynamics.selection.select_units` validates the inputs and applies a criterion per layer.

    CRITERIA["dynamics-greedy"].choose_pruned(50, D, final_norms, rng)

Each criterion says which importance it reads (`importance_source`): FINAL_NORM, the norm of each
unit's final weight vector (from the trajectory alone), or TAYLOR, the first-order Taylor importance
of METHOD section 7 measured on a few training batches (analysis.pruning.importance), which needs the
model and its corpus: the pruning pipeline measures it; a caller of select_units passes it.
A Taylor criterion with `measurement_chunks` > 1 removes its units in that many equal chunks and
measures the importances again, on `calibration_batches` batches, on the model cut so far before
each chunk (the pipeline does this: analysis.pruning.stages.choose_units); `select_units` applies
one chunk's choice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

from analysis.errors import InvalidInputError

# the pipeline's default (dynaprune prune), set by the second round of docs/criteria.md
DEFAULT_CRITERION = "taylor-iterative"
# the default where only a trajectory is at hand (select_units, the Prune page's live preview, RNNPruner)
DEFAULT_TRAJECTORY_CRITERION = "dynamics-greedy"
FINAL_NORM, TAYLOR = "final-norm", "taylor"  # the importances a criterion can read


class SelectionCriterion(Protocol):
    name: str
    needs_distances: bool
    needs_importance: bool
    importance_source: str
    measurement_chunks: int            # > 1: Taylor importances measured again before each chunk
    calibration_batches: int | None    # batches per measurement; None: the pipeline's setting

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
    importance_source = FINAL_NORM
    measurement_chunks, calibration_batches = 1, None
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


class GreedyDynamicsRedundancy:
    """Remove units one at a time: each time the kept unit whose importance times its dynamics
    distance to the nearest other kept unit is smallest. A weak unit goes first, and sooner when
    another kept unit moved the same way during training; once a unit's nearest neighbour is gone,
    its own score rises, so the two units of a redundant pair are not both removed. Where all
    distances are equal this is magnitude pruning. Chosen in docs/criteria.md: of the variants
    tried on the ptb-small sample, the only one that cut better than magnitude at 30%, 50% and 70%;
    on held-out models it is within a few percent of magnitude, and far better than clustering.
    """

    name = "dynamics-greedy"
    needs_distances = True
    needs_importance = True
    importance_source = FINAL_NORM
    measurement_chunks, calibration_batches = 1, None
    def choose_pruned(self, n_prune, distances, importance, rng):
        removal = greedy_removal_order(distances, importance, n_prune)
        return np.sort(removal.units).astype(np.int64), None


@dataclass(frozen=True)
class GreedyRemoval:
    """The greedy rule's choices in order: units[i] was removed at step i, when its nearest kept
    neighbour was neighbours[i], at dynamics distance nearest_distances[i], and its score
    (importance x that distance) was scores[i], the smallest of the units still kept."""
    units: np.ndarray
    neighbours: np.ndarray
    nearest_distances: np.ndarray
    scores: np.ndarray


def greedy_removal_order(distances: np.ndarray, importance: np.ndarray, n_prune: int) -> GreedyRemoval:
    """Run the dynamics-greedy rule for `n_prune` removals (inputs already validated)."""
    D = np.array(distances, dtype=np.float64)
    weights = np.asarray(importance, dtype=np.float64)
    H = D.shape[0]
    np.fill_diagonal(D, np.inf)
    kept = np.ones(H, dtype=bool)
    neighbour = np.argmin(D, axis=1)
    nearest = D[np.arange(H), neighbour]
    steps = {name: np.empty(n_prune, dtype=dtype) for name, dtype in
             (("units", np.int64), ("neighbours", np.int64), ("nearest_distances", float), ("scores", float))}
    for step in range(n_prune):
        score = np.where(kept, weights * nearest, np.inf)
        unit = int(np.argmin(score))  # ties: the lowest index
        for name, value in (("units", unit), ("neighbours", neighbour[unit]),
                            ("nearest_distances", nearest[unit]), ("scores", score[unit])):
            steps[name][step] = value
        kept[unit] = False
        D[:, unit] = np.inf
        # only the units whose nearest neighbour just went need a new one
        orphaned = np.flatnonzero(kept & (neighbour == unit))
        if orphaned.size:
            neighbour[orphaned] = np.argmin(D[orphaned], axis=1)
            nearest[orphaned] = D[orphaned, neighbour[orphaned]]
    return GreedyRemoval(**steps)


class MagnitudeCriterion:
    """Prune the R units with the smallest importance (default: final weight-vector norm)."""

    name = "magnitude"
    needs_distances = False
    needs_importance = True
    importance_source = FINAL_NORM
    measurement_chunks, calibration_batches = 1, None

    def choose_pruned(self, n_prune, distances, importance, rng):
        order = np.argsort(importance, kind="stable")
        return np.sort(order[:n_prune]).astype(np.int64), None


class RandomCriterion:
    """Prune R units chosen uniformly at random (seeded)."""

    name = "random"
    needs_distances = False
    needs_importance = False
    importance_source = FINAL_NORM  # not read
    measurement_chunks, calibration_batches = 1, None

    def choose_pruned(self, n_prune, distances, importance, rng):
        H = distances.shape[0] if distances is not None else importance.shape[0]
        return np.sort(rng.choice(H, size=n_prune, replace=False)).astype(np.int64), None


class GreedyDynamicsTaylor(GreedyDynamicsRedundancy):
    """The greedy dynamics rule with the Taylor importance of each unit (measured on training batches
    by the pruning pipeline) in place of its final weight norm (docs/criteria.md)."""

    name = "dynamics-taylor"
    importance_source = TAYLOR


class TaylorCriterion(MagnitudeCriterion):
    """Prune the R units with the smallest Taylor importance (no dynamics; a reference point)."""

    name = "taylor"
    importance_source = TAYLOR


# chosen in docs/criteria.md (second round): eight chunks, 64 batches per measurement
ITERATIVE_CHUNKS, ITERATIVE_CALIBRATION_BATCHES = 8, 64


class IterativeTaylorCriterion(TaylorCriterion):
    """Prune by Taylor importance in eight chunks, measuring the importances again on the model cut
    so far before each chunk: a unit that mattered only alongside units already removed is seen
    for what it is now. No dynamics; in docs/criteria.md it cut far better than magnitude."""

    name = "taylor-iterative"
    measurement_chunks, calibration_batches = ITERATIVE_CHUNKS, ITERATIVE_CALIBRATION_BATCHES


class GreedyDynamicsTaylorIterative(GreedyDynamicsTaylor):
    """The greedy dynamics rule with Taylor importances measured again before each of eight chunks
    (dynamics-taylor, iterated like taylor-iterative)."""

    name = "dynamics-taylor-iterative"
    measurement_chunks, calibration_batches = ITERATIVE_CHUNKS, ITERATIVE_CALIBRATION_BATCHES


CRITERIA: dict[str, SelectionCriterion] = {
    c.name: c for c in (GreedyDynamicsRedundancy(), DynamicsRedundancy(), MagnitudeCriterion(), RandomCriterion(),
                        GreedyDynamicsTaylor(), TaylorCriterion(), IterativeTaylorCriterion(),
                        GreedyDynamicsTaylorIterative())}
# what the dashboard's live preview can apply: the criteria that read the trajectory alone
TRAJECTORY_CRITERIA = [name for name, criterion in CRITERIA.items() if criterion.importance_source == FINAL_NORM]


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
