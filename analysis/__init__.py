"""dynaprune's library: trajectories of recurrent weights, LDS fits, dynamics distances, unit selection,
structured pruning and fine-tuning. Never imports Streamlit; the dashboard in app/ calls into it.

    from analysis import load_trajectory, fit_layer, dynamics_distances, select_units
    trajectory = load_trajectory("sample_checkpoints/synthetic")
    fit = fit_layer(trajectory, trajectory.layers[0])
    plan = select_units(dynamics_distances(fit), ratio=0.5)
"""
from analysis.distances import dynamics_distances
from analysis.errors import (CheckpointError, DynapruneError, InvalidInputError, NoRecurrentLayerError,
                             UnsafeCheckpointError)
from analysis.lds import LDSFit, fit_layer, fit_lds
from analysis.recorder import TrajectoryRecorder
from analysis.selection import CRITERIA, PruningPlan, select_units
from analysis.trajectory import Trajectory, load_trajectory

__all__ = [
    "CRITERIA", "CheckpointError", "DynapruneError", "InvalidInputError", "LDSFit", "NoRecurrentLayerError",
    "PruningPlan", "Trajectory", "TrajectoryRecorder", "UnsafeCheckpointError", "dynamics_distances", "fit_layer",
    "fit_lds", "load_trajectory", "select_units",
]
