"""Data page: choose the trajectory every other page shows: an embedded sample, a run from the
runs folder, or an uploaded zip of checkpoints."""
import pandas as pd
import streamlit as st

from analysis.errors import DynapruneError
from analysis.runs import BEST_MODEL_FILE, MANIFEST_FILE
from app import common, corpus_fetch

# Compressed upload and unpacked size limits; larger trajectories are better read from a run folder.
MAX_UPLOAD_BYTES = 200 * 1024**2
MAX_UNPACKED_BYTES = 1024**3

st.title("Data")
st.write("Choose the training trajectory to explore. A trajectory is a series of snapshots of a "
         "recurrent network's weights logged during training; the other pages read it from here.")

samples = common.list_samples()
runs = common.list_run_trajectories()
origin = st.radio("Source", ["Embedded sample", "A run in the runs folder", "Upload a zip of checkpoints"],
                  horizontal=True, key="data_origin")

if origin == "Embedded sample":
    if not samples:
        st.warning(f"No embedded samples found in {common.samples_dir()}.")
    else:
        current = common.current_source()
        index = next((i for i, p in enumerate(samples) if current and p == current), 0)
        chosen = st.selectbox("Sample", samples, index=index, format_func=lambda p: p.name, key="data_sample")
        if st.button("Use this sample", type="primary", key="use_sample") or current is None:
            common.set_source(chosen)
elif origin == "A run in the runs folder":
    st.caption(f"Runs folder: `{common.runs_dir()}` (set DYNAPRUNE_RUNS_DIR to change it)")
    if not runs:
        st.info("No runs with a trajectory yet. Train one with `dynaprune train --out runs/<name>`, put a folder of "
                "checkpoints named by step there, or fine-tune a pruned model on the Fine-tune page.")
    else:
        chosen = st.selectbox("Run", runs, format_func=common.display_name, key="data_run")
        if st.button("Use this run", type="primary", key="use_run"):
            common.set_source(chosen)
else:
    st.caption(f"A zip of a run folder, a recorded trajectory ({MANIFEST_FILE} + snapshots/) or a folder of "
               "checkpoints named by step (ckpt_100.pt, ...). Only .pt, .pth, .safetensors and .json files are "
               f"accepted, at most {MAX_UPLOAD_BYTES // 1024**2} MB, unpacking to at most "
               f"{MAX_UNPACKED_BYTES // 1024**3} GB. Checkpoints are read as plain tensors; nothing in them is run.")
    upload = st.file_uploader("Checkpoints (.zip)", type=["zip"], key="data_upload")
    if upload is not None and st.session_state.get("data_upload_done") != upload.file_id:
        if upload.size > MAX_UPLOAD_BYTES:
            st.error(f"{upload.name} is {upload.size / 1024**2:.0f} MB; the limit is "
                     f"{MAX_UPLOAD_BYTES // 1024**2} MB. Put larger trajectories in the runs folder instead.")
        else:
            try:
                extracted = common.import_archive(upload.name, upload.getvalue(), common.uploads_dir(),
                                                  MAX_UNPACKED_BYTES)
            except (DynapruneError, OSError) as error:  # OSError: the uploads folder is unwritable or full
                st.error(f"Cannot use {upload.name}: {error}")
            else:
                common.set_source(extracted)
                st.session_state["data_upload_done"] = upload.file_id
                loaded = common.trajectory(str(extracted), common.signature(extracted))
                st.success(f"Loaded {len(loaded)} snapshots of layers {', '.join(loaded.layers)} from {upload.name}.")

source = common.current_source()
st.divider()
if source is None:
    st.info("No trajectory chosen yet.")
    st.stop()
trajectory, source, sig = common.require_trajectory()
st.subheader(f"Current trajectory: {common.display_name(source)}")
columns = st.columns(3)
columns[0].metric("Snapshots", len(trajectory))
columns[1].metric("Steps", f"{int(trajectory.steps[0])} to {int(trajectory.steps[-1])}")
columns[2].metric("Recurrent layers", len(trajectory.layers))
layers = pd.DataFrame([{
    "layer": info.name, "kind": info.kind, "gates": info.gates, "input size D": info.input_size,
    "hidden units H": info.hidden_size, "unit vector size d": info.unit_dim,
} for info in map(trajectory.layer_info, trajectory.layers)])
st.dataframe(layers, hide_index=True, width="stretch")

model, info = common.model_or_none(source)
if model is None:
    st.info(f"This trajectory has no dynaprune model file next to it ({BEST_MODEL_FILE}), so the Prune page shows the "
            "selection only, without perplexity, and it cannot be fine-tuned.")
else:
    config = model.config
    problem = common.corpus_problem_of(info.get("data_source"))
    if problem:
        st.warning(f"{problem} Until then the Prune page shows no zero-shot perplexity and this model cannot be "
                   "fine-tuned.")
    corpus_fetch.offer_ptb_fetch(info.get("data_source"), key="data_fetch_ptb")
    st.caption(f"Model: {config.rnn_type}, embedding {config.embedding_size}, hidden sizes {config.hidden_sizes}, "
               f"vocabulary {config.vocab_size}, trained on `{info.get('data_source')}`.")
