"""Every layer of a trajectory fitted and measured in one call: the LDS fit of each unit (METHOD
section 3) and the dynamics distances between them (section 4).

    dynamics = fit_trajectory(trajectory, order=4)          # {layer: LayerDynamics}
    plan = select_units({layer: d.distances for layer, d in dynamics.items()}, ratio=0.5,
                        importance=final_norm_importance(trajectory))
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from analysis.dynamics.distances import dynamics_distances
from analysis.dynamics.lds import DEFAULT_ORDER, LDSFit, fit_layer
from analysis.errors import InvalidInputError
from analysis.utils.progress import ProgressCallback


@dataclass(frozen=True)
class LayerDynamics:
    """One layer's LDS fit and the (H, H) dynamics distances between its units."""

    fit: LDSFit
    distances: np.ndarray


def fit_trajectory(trajectory, order: int = DEFAULT_ORDER, horizon: float | int | None = None,
                   layers: Iterable[str] | None = None,
                   progress: ProgressCallback | None = None) -> dict[str, LayerDynamics]:
    """fit_layer and dynamics_distances for each of `layers` (default: all) of a Trajectory, in
    the trajectory's layer order. `horizon` as for dynamics_distances (None: T); `progress` is
    called as each layer's unit blocks are fitted (task: the layer name)."""
    names = list(trajectory.layers if layers is None else layers)
    unknown = [name for name in names if name not in trajectory.layers]
    if unknown:
        raise InvalidInputError(f"no layer(s) {unknown} in the trajectory; its layers are {trajectory.layers}")
    result = {}
    for name in names:
        fit = fit_layer(trajectory, name, order=order, progress=progress)
        result[name] = LayerDynamics(fit=fit, distances=dynamics_distances(fit, horizon=horizon))
    return result
