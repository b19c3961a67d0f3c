"""Shared pieces of the dashboard pages: where data lives, which trajectory is chosen, and cached
calls into the analysis library. UI glue only: every computation happens in analysis/.

Locations: embedded samples in sample_checkpoints/ next to the package (or $DYNAPRUNE_SAMPLES_DIR),
runs in ./runs (or $DYNAPRUNE_RUNS_DIR), uploads and jobs under the dynaprune home
($DYNAPRUNE_HOME, see analysis.jobs).
"""
from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import uuid
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import streamlit as st

from analysis.corpus_availability import corpus_problem
from analysis.dynamics.distances import dynamics_distances
from analysis.dynamics.lds import DEFAULT_ORDER, fit_layer
from analysis.dynamics.selection import final_norm_importance, select_units
from analysis.errors import DynapruneError
from analysis.exploration import heatmap_order, mds_embedding
from analysis.lm.model import load_model
from analysis.pruning.config import PipelineConfig, uniform_or_per_layer
from analysis.pruning.preview import SPREAD_WINDOWS, limit_threads, load_validation_tokens, measured_cut, model_corpus
from analysis.run_curves import recorded_validation_perplexity
from analysis.runs import (
    BEST_MODEL_FILE,
    MANIFEST_FILE,
    TRAJECTORY_DIR,
    find_trajectories,
    has_trajectory,
    read_run_metrics,
    resolve_model_path,
)
from analysis.trajectories.archives import extract_checkpoint_archive
from analysis.trajectories.trajectory import load_trajectory
from analysis.uploads import remove_stale_uploads, uploads_root
from analysis.utils.fileio import atomic_write_bytes, safe_file_name

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLE = "synthetic"
SOURCE_KEY = "source"
ORDER_KEY = "lds_order"
HORIZON_KEY = "lds_horizon"
RATIO_KEY = "prune_ratio"
CRITERION_KEY = "prune_criterion"
LAYER_RATIOS_KEY = "prune_layer_ratios"  # {layer: ratio} the Prune page previewed last
SEED = 0
SOURCE_PARAM = "source"  # the URL's query parameter naming the chosen trajectory (source_link_name)
RUNS_LINK_PREFIX = "runs/"  # a link names a run as runs/<its path under the runs folder>, a sample by its name
UPLOAD_SESSION_KEY = "upload_session"  # not a choice: reset_to_sample keeps it, so this session's uploads stay together


# ----------------------------------------------------------------------------- locations


def samples_dir() -> Path:
    return Path(os.environ.get("DYNAPRUNE_SAMPLES_DIR") or PACKAGE_ROOT / "sample_checkpoints").absolute()


def runs_dir() -> Path:
    return Path(os.environ.get("DYNAPRUNE_RUNS_DIR") or "runs").absolute()


def uploads_dir() -> Path:
    """A folder for this browser session's uploads under the dynaprune home."""
    session = st.session_state.setdefault(UPLOAD_SESSION_KEY, uuid.uuid4().hex)
    return uploads_root() / session


def list_samples() -> list[Path]:
    root = samples_dir()
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and has_trajectory(p)]
    # the default sample first, so a fresh start shows it
    return sorted(found, key=lambda p: (p.name != DEFAULT_SAMPLE, p.name))


def list_run_trajectories() -> list[Path]:
    """Every trajectory under the runs folder: training runs, each stage of pipeline outputs, recorded
    trajectories and plain folders of checkpoints (analysis.runs.find_trajectories)."""
    return [path for path, _ in find_trajectories(runs_dir())]


def display_name(path: Path | str) -> str:
    path = Path(path)
    for root, label in ((samples_dir(), "sample"), (runs_dir(), "runs"), (uploads_root(), "upload")):
        if path.is_relative_to(root):
            return f"{label}: {path.relative_to(root)}"
    return str(path)


@st.cache_resource(show_spinner=False)
def configure_threads() -> int:
    """Once per server process: cap compute threads ($DYNAPRUNE_DASHBOARD_THREADS, default half the
    cores, at most 4), so pages stay quick while a fine-tuning job trains on the same machine."""
    raw = os.environ.get("DYNAPRUNE_DASHBOARD_THREADS", "").strip()
    threads = int(raw) if raw.isdigit() and int(raw) > 0 else max(1, min(4, (os.cpu_count() or 2) // 2))
    limit_threads(threads)
    return threads


@st.cache_resource(show_spinner=False)
def clean_old_uploads() -> int:
    """Once per server process: remove upload folders unused for $DYNAPRUNE_UPLOAD_RETENTION_DAYS
    (default 7) that no unfinished job reads from. Returns how many were removed."""
    try:
        return len(remove_stale_uploads())
    except (DynapruneError, OSError) as error:
        warnings.warn(f"old uploads were not cleaned up: {error}", stacklevel=2)
        return 0


def import_archive(name: str, data: bytes, folder: Path, max_unpacked_bytes: int) -> Path:
    """Unpack an uploaded zip of checkpoints into a new folder inside `folder` and check that it
    holds a readable trajectory; return that folder. Nothing is left behind on failure (the zip is
    always removed; a folder that holds no trajectory is removed too). The zip is written into a
    hidden folder of its own, so its name never meets an earlier upload's folder."""
    safe_name = safe_file_name(name, default="upload.zip")
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-upload-", dir=folder))
    try:
        archive = staging / safe_name
        atomic_write_bytes(archive, data)
        extracted = extract_checkpoint_archive(archive, folder, max_total_bytes=max_unpacked_bytes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        trajectory(str(extracted), signature(extracted))
    except BaseException:  # not a trajectory, over the memory budget, interrupted: remove what was unpacked
        shutil.rmtree(extracted, ignore_errors=True)
        raise
    return extracted


# ----------------------------------------------------------------------------- chosen source


def current_source() -> Path | None:
    """The trajectory the pages show: the one chosen on the Data page or opened by a link, else the
    default sample. The URL keeps naming it (?source=...), so the address can be handed out."""
    chosen = st.session_state.get(SOURCE_KEY)
    if chosen and Path(chosen).exists():
        source = Path(chosen)
    else:
        samples = list_samples()
        source = samples[0] if samples else None
        if source is not None:
            st.session_state[SOURCE_KEY] = str(source)
    show_source_in_url(source)
    return source


def set_source(path: Path | str) -> None:
    st.session_state[SOURCE_KEY] = str(path)
    show_source_in_url(Path(path))


def source_link_name(path: Path | str) -> str | None:
    """The trajectory as a link names it: a sample by its folder name, a run as runs/<its path under the
    runs folder>; None for anything else (an upload belongs to its browser session). Never a server path."""
    path = Path(path)
    if path.parent == samples_dir():
        return path.name
    if path.is_relative_to(runs_dir()) and path != runs_dir():
        return RUNS_LINK_PREFIX + path.relative_to(runs_dir()).as_posix()
    return None


def linked_source(name: str) -> Path | None:
    """The sample or run a link's name stands for, looked up among those listed: the name itself never
    becomes a path, so "../../etc" or an absolute path finds nothing and nothing is read."""
    candidates = list_run_trajectories() if name.startswith(RUNS_LINK_PREFIX) else list_samples()
    return next((path for path in candidates if source_link_name(path) == name), None)


def show_source_in_url(source: Path | None) -> None:
    name = source_link_name(source) if source is not None else None
    if name is None:
        st.query_params.pop(SOURCE_PARAM, None)
    elif st.query_params.get(SOURCE_PARAM) != name:
        st.query_params[SOURCE_PARAM] = name


def follow_source_link() -> str | None:
    """Choose the trajectory the URL names (?source=...) when it is not the chosen one already. Returns a
    short notice when it names no sample or run here: the link is then ignored and the URL goes back to
    naming the chosen trajectory."""
    requested = st.query_params.get(SOURCE_PARAM)
    chosen = st.session_state.get(SOURCE_KEY)
    if requested is None or (chosen and requested == source_link_name(chosen)):
        return None
    linked = linked_source(requested)
    if linked is not None:
        set_source(linked)
        return None
    del st.query_params[SOURCE_PARAM]
    shown = re.sub(r"[^\w./:-]", "", requested)[:60]  # echoed as code: no markdown, link or image from a URL
    return f"The link's trajectory `{shown}` is neither an embedded sample nor a run here, so it was ignored."


def reset_to_sample(keep: tuple[str, ...] = ()) -> None:
    """Forget this session's choices (the trajectory, sliders, selections) and the URL's query parameters,
    so that the pages show the default sample again; `keep`: session keys that are no choice (who sits at
    this browser). No file is touched."""
    for key in list(st.session_state.keys()):
        if key != UPLOAD_SESSION_KEY and key not in keep:
            del st.session_state[key]
    st.query_params.clear()


def signature(path: Path | str) -> float:
    """Changes whenever the trajectory or model on disk changes; part of every cache key."""
    path = Path(path)
    stamps = []
    for candidate in (path / MANIFEST_FILE, path / TRAJECTORY_DIR / MANIFEST_FILE, path / BEST_MODEL_FILE, path):
        try:
            stamps.append(candidate.stat().st_mtime)
        except OSError:
            continue
    return max(stamps, default=0.0)


def dynamics_settings(trajectory_) -> tuple[int, int | float | None]:
    """LDS order and horizon chosen on the Dynamics page (defaults: order 4, horizon T), the order
    kept within what this trajectory allows."""
    low, high = valid_order_range(trajectory_)
    order = int(st.session_state.get(ORDER_KEY, DEFAULT_ORDER))
    return min(max(order, low), high), st.session_state.get(HORIZON_KEY)


def horizon_label(horizon) -> str:
    if horizon is None:
        return "T (the number of snapshots)"
    return "infinite (Martin distance)" if math.isinf(horizon) else str(int(horizon))


def require_trajectory():
    """(trajectory, path, signature) of the current source; stops the page with a message if none."""
    source = current_source()
    if source is None:
        st.info(f"No trajectory chosen and no embedded sample found in {samples_dir()}. "
                "Pick one on the Data page.")
        st.stop()
    try:
        return trajectory(str(source), signature(source)), source, signature(source)
    except DynapruneError as error:
        st.error(f"Cannot read {display_name(source)}: {error}")
        st.stop()


def source_caption(source: Path, trajectory_) -> None:
    st.caption(f"Trajectory: **{display_name(source)}** · {len(trajectory_)} snapshots · "
               f"layers {', '.join(trajectory_.layers)}")


# ----------------------------------------------------------------------------- cached library calls


@st.cache_resource(max_entries=8, show_spinner=False)
def trajectory(path: str, sig: float):
    return load_trajectory(path)


@st.cache_resource(max_entries=4, show_spinner=False)
def model(path: str, sig: float):
    """(model, info) of a source that holds a dynaprune model (analysis.runs.resolve_model_path); raises otherwise."""
    return load_model(resolve_model_path(path))


def model_or_none(path: Path | str):
    """(model, info), or (None, reason) for trajectories without a model (e.g. uploaded checkpoints)."""
    try:
        return model(str(path), signature(path))
    except DynapruneError as error:
        return None, str(error)


@st.cache_resource(max_entries=4, show_spinner="Loading the validation split...")
def validation_tokens(path: str, sig: float):
    _, info = model(path, sig)
    return load_validation_tokens(info.get("data_source"), info.get("vocab"), windows=SPREAD_WINDOWS)


def recorded_perplexity(path: Path | str, info: dict) -> float | None:
    """The model's validation perplexity on the whole split as its run recorded it (its metrics,
    else its checkpoint); None when neither records one."""
    recorded = recorded_validation_perplexity(read_run_metrics(path)) if Path(path).is_dir() else None
    if recorded is None and isinstance(info.get("val_ppl"), (int, float)) and math.isfinite(info["val_ppl"]):
        recorded = float(info["val_ppl"])
    return recorded


@st.cache_data(ttl=30, show_spinner=False)
def corpus_problem_of(data_source: str | None) -> str | None:
    """Why the corpus a model was trained on cannot be read here, with how to get it; None when it can.
    Checked again every 30 s, so a download or a new $DYNAPRUNE_PTB_DIR is noticed."""
    return corpus_problem(data_source)


def validation_for(path: Path | str):
    """The capped validation tokens of the source model's corpus, or (None, reason)."""
    try:
        return validation_tokens(str(path), signature(path)), None
    except DynapruneError as error:
        return None, str(error)


@st.cache_resource(max_entries=32, show_spinner="Fitting dynamics and computing distances...")
def layer_dynamics(path: str, sig: float, layer: str, order: int, horizon):
    """(LDSFit, distance matrix, warnings) of one layer. Shared, not copied (a fit of a large layer is
    hundreds of MB, and pages read it on every slider move): its arrays are read-only."""
    traj = trajectory(path, sig)
    fit = fit_layer(traj, layer, order=order)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distances = dynamics_distances(fit, horizon=horizon)
    for array in (*vars(fit).values(), distances):
        if isinstance(array, np.ndarray):
            array.setflags(write=False)
    return fit, distances, [str(w.message) for w in caught]


@st.cache_data(max_entries=16, show_spinner=False)
def tree_order(path: str, sig: float, layer: str, order: int, horizon):
    """Leaf order of the layer's average-linkage tree; pages regroup it by the current clusters."""
    return heatmap_order(layer_dynamics(path, sig, layer, order, horizon)[1])


@st.cache_data(max_entries=16, show_spinner="Placing units by their distances (MDS)...")
def embedding(path: str, sig: float, layer: str, order: int, horizon):
    return mds_embedding(layer_dynamics(path, sig, layer, order, horizon)[1], seed=SEED)


@st.cache_data(max_entries=16, show_spinner=False)
def importance(path: str, sig: float, layer: str):
    return final_norm_importance(trajectory(path, sig), layer)


def all_distances(path: str, sig: float, order: int, horizon) -> dict:
    traj = trajectory(path, sig)
    return {layer: layer_dynamics(path, sig, layer, order, horizon)[1] for layer in traj.layers}


def all_importance(path: str, sig: float) -> dict:
    return {layer: importance(path, sig, layer) for layer in trajectory(path, sig).layers}


@st.cache_data(max_entries=64, show_spinner=False)
def pruning_plan(path: str, sig: float, order: int, horizon, ratios: tuple, criterion: str, seed: int = SEED):
    """The plan for per-layer ratios given as a tuple of (layer, ratio) pairs."""
    return select_units(all_distances(path, sig, order, horizon), ratio=dict(ratios), criterion=criterion,
                        importance=all_importance(path, sig), seed=seed)


@st.cache_resource(max_entries=2, show_spinner="Loading the training split...")
def training_tokens(path: str, sig: float):
    _, info = model(path, sig)
    return model_corpus(info.get("data_source"), info.get("vocab"), "training").train


@st.cache_resource(max_entries=16, show_spinner=False)
def measured_plan(path: str, sig: float, order: int, horizon, ratios: tuple, criterion: str, seed: int = SEED):
    """The cut a criterion makes at per-layer ratios ((layer, ratio) pairs), measured as `dynaprune prune`
    measures it (analysis.pruning.preview.measured_cut): the plan and how it was reached."""
    model_, _ = model(path, sig)
    return measured_cut(model_, dict(ratios), criterion, training_tokens(path, sig), trajectory_dir=path,
                        lds_order=order, horizon=horizon, seed=seed)


def valid_order_range(trajectory_) -> tuple[int, int]:
    """Orders a fit accepts: 1 .. T-1 (and at most 12, beyond which the pictures say no more)."""
    return 1, max(1, min(len(trajectory_) - 1, 12))


# ----------------------------------------------------------------------------- the pipeline command

def previewed_pipeline(trajectory_, layers: list[str]) -> PipelineConfig:
    """The pipeline's defaults with what the Dynamics and Prune pages chose (LDS order and horizon,
    criterion, per-layer ratios), so that a fine-tuning job runs what they previewed."""
    defaults = PipelineConfig()
    order, horizon = dynamics_settings(trajectory_)
    ratios = st.session_state.get(LAYER_RATIOS_KEY)
    if not ratios or set(ratios) != set(layers):  # none previewed, or for another model's layers
        ratios = {layer: st.session_state.get(RATIO_KEY, defaults.ratio) for layer in layers}
    return replace(defaults, ratio=uniform_or_per_layer(ratios), lds_order=order, horizon=horizon,
                   criterion=st.session_state.get(CRITERION_KEY, defaults.criterion))
