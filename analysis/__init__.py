"""dynaprune's library: trajectories of recurrent weights, LDS fits, dynamics distances, unit selection,
structured pruning and fine-tuning. Never imports Streamlit; the dashboard in app/ calls into it.

    from analysis import load_trajectory, fit_trajectory, final_norm_importance, select_units
    trajectory = load_trajectory("sample_checkpoints/synthetic")
    dynamics = fit_trajectory(trajectory)          # {layer: LayerDynamics(fit, distances)}
    plan = select_units({layer: d.distances for layer, d in dynamics.items()}, ratio=0.5,
                        importance=final_norm_importance(trajectory))
    plan.pruned                                    # {layer: unit indices}

Names are imported on first use, so `import analysis` (and the job supervisor) stays light.
"""
import importlib

_PUBLIC = {
    "dynamics_distances": "analysis.dynamics.distances",
    "CheckpointError": "analysis.errors",
    "DynapruneError": "analysis.errors",
    "InvalidInputError": "analysis.errors",
    "NoRecurrentLayerError": "analysis.errors",
    "UnsafeCheckpointError": "analysis.errors",
    "LDSFit": "analysis.dynamics.lds",
    "fit_layer": "analysis.dynamics.lds",
    "fit_lds": "analysis.dynamics.lds",
    "TrajectoryRecorder": "analysis.trajectories.recorder",
    "PipelineConfig": "analysis.pruning.config",
    "run_pruning_pipeline": "analysis.pruning.pipeline",
    "CRITERIA": "analysis.dynamics.selection",
    "PruningPlan": "analysis.dynamics.selection",
    "select_units": "analysis.dynamics.selection",
    "final_norm_importance": "analysis.dynamics.selection",
    "LayerDynamics": "analysis.dynamics.trajectory_fit",
    "fit_trajectory": "analysis.dynamics.trajectory_fit",
    "ProgressUpdate": "analysis.utils.progress",
    "TerminalProgress": "analysis.utils.progress",
    "prune_units": "analysis.pruning.surgery",
    "prune_model": "analysis.pruning.generic_surgery",
    "RNNPruner": "analysis.pruning.pruner",
    "import_language_model": "analysis.lm.importing",
    "Trajectory": "analysis.trajectories.trajectory",
    "load_trajectory": "analysis.trajectories.trajectory",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
