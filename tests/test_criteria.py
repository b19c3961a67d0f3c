"""The dynamics-greedy criterion: importance x distance to the nearest kept unit, removed one at a time."""
import numpy as np
import pytest

from analysis.dynamics.criteria import greedy_removal_order
from analysis.dynamics.selection import select_units


def brute_force_greedy(D, importance, n_prune):
    """The rule as written: recompute every kept unit's nearest kept neighbour before each removal."""
    kept = list(range(len(importance)))
    removed = []
    for _ in range(n_prune):
        scores = []
        for unit in kept:
            others = [j for j in kept if j != unit]
            scores.append(importance[unit] * min(D[unit, j] for j in others))
        unit = kept[int(np.argmin(scores))]
        removed.append(unit)
        kept.remove(unit)
    return removed


def random_distances(rng, n, dim=3):
    points = rng.normal(size=(n, dim))
    return np.linalg.norm(points[:, None] - points[None], axis=-1)


@pytest.mark.parametrize("seed", range(5))
def test_incremental_nearest_neighbours_match_the_rule_recomputed_from_scratch(seed):
    rng = np.random.default_rng(seed)
    D, importance = random_distances(rng, 30), rng.random(30)
    removal = greedy_removal_order(D, importance, 20)
    assert removal.units.tolist() == brute_force_greedy(D, importance, 20)
    # each recorded step names the neighbour and score the rule saw then
    for unit, neighbour, distance, score in zip(removal.units, removal.neighbours, removal.nearest_distances,
                                                removal.scores):
        assert D[unit, neighbour] == pytest.approx(distance)
        assert score == pytest.approx(importance[unit] * distance)


def test_with_all_distances_equal_it_is_magnitude_pruning():
    rng = np.random.default_rng(1)
    importance = rng.random(40)
    D = np.ones((40, 40)) - np.eye(40)
    greedy = select_units(D, 0.6, "dynamics-greedy", importance=importance).pruned[""]
    magnitude = select_units(D, 0.6, "magnitude", importance=importance).pruned[""]
    np.testing.assert_array_equal(greedy, magnitude)


def test_a_redundant_pair_loses_one_unit_not_both_and_a_weak_isolated_unit_can_stay():
    # units 0 and 1 moved alike (distance 0.1); unit 2 is weaker than both but unlike any other
    D = np.array([[0.0, 0.1, 1.0, 1.0],
                  [0.1, 0.0, 1.0, 1.0],
                  [1.0, 1.0, 0.0, 1.0],
                  [1.0, 1.0, 1.0, 0.0]])
    importance = np.array([0.5, 0.6, 0.3, 1.0])
    assert select_units(D, 0.25, "magnitude", importance=importance).pruned[""].tolist() == [2]
    assert select_units(D, 0.25, "dynamics-greedy", importance=importance).pruned[""].tolist() == [0]
    # a second removal: unit 1 has lost its twin, so the isolated weak unit goes before it
    assert select_units(D, 0.5, "dynamics-greedy", importance=importance).pruned[""].tolist() == [0, 2]


def test_without_importances_the_error_says_how_to_get_them():
    D = np.ones((4, 4)) - np.eye(4)
    with pytest.raises(ValueError, match="final_norm_importance"):
        select_units(D, 0.5, "dynamics-greedy")
