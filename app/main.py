"""The dynaprune dashboard: explore how an RNN's weights move during training, see which units
share dynamics, prune by a slider, fine-tune in the background and compare the results.

    streamlit run app/main.py

This file only routes to the pages in app/views/.
"""
import sys
from pathlib import Path

# `streamlit run app/main.py` puts app/ on the path, not the project root that holds the packages.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from analysis.errors import DynapruneError  # noqa: E402
from app import participant  # noqa: E402
from app.common import (  # noqa: E402
    clean_old_uploads,
    configure_threads,
    current_source,
    display_name,
    follow_source_link,
    reset_to_sample,
)

st.set_page_config(page_title="dynaprune", page_icon="✂️", layout="wide")

START = st.Page("views/start.py", title="Start here", icon=":material/home:", default=True)
PAGES = {
    "": [START],
    "Explore": [
        st.Page("views/data.py", title="Data", icon=":material/folder_open:"),
        st.Page("views/trajectories.py", title="Trajectories", icon=":material/timeline:"),
        st.Page("views/dynamics.py", title="Dynamics", icon=":material/hub:"),
    ],
    "Pruning": [
        st.Page("views/prune.py", title="Prune", icon=":material/content_cut:"),
        st.Page("views/finetune.py", title="Fine-tune", icon=":material/model_training:"),
        st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    ],
    "Learn": [
        st.Page("views/learn.py", title="The method", icon=":material/school:"),
    ],
}

configure_threads()
clean_old_uploads()
page = st.navigation(PAGES)
sidebar_note = st.sidebar.empty()  # filled after the page ran, so it names a trajectory chosen in this very run
if st.sidebar.button("Reset to the sample", icon=":material/restart_alt:", key="reset_to_sample",
                     help="Forget this session's choices (trajectory, sliders, selections) and go back to the "
                          "embedded sample. No file is deleted."):
    reset_to_sample(keep=(participant.SESSION_KEY,))  # the participant's name stays: it labels their jobs
    # A fresh page: the widgets of the page left behind then forget their values in the browser too.
    st.switch_page(START)
participant.keep_in_address()  # the sidebar drops ?name=; a reload on any page keeps the participant's name
link_notice = follow_source_link()  # a handed-out link (?source=...) opens its trajectory before the page reads it
if link_notice:
    st.warning(link_notice, icon=":material/link_off:")
try:
    page.run()
except DynapruneError as error:
    # Bad input found deep in the library (a corrupt snapshot, a diverged run): say what and where.
    st.error(f"Cannot continue: {error}")
finally:
    source = current_source()
    sidebar_note.caption(f"Trajectory: {display_name(source)}" if source else "No trajectory chosen")
