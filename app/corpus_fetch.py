"""The offer to fetch Penn Treebank, on the pages that need it (Data, Fine-tune): a button that runs
the verified download (analysis.lm.download.download_ptb) with a progress bar. Nothing is fetched
until the button is pressed; where from is the operator's setting ($DYNAPRUNE_PTB_URL, else the
default mirror), never an address typed into the page."""
from __future__ import annotations

import streamlit as st

from analysis.corpus_availability import fetching_ptb_would_help
from analysis.errors import DynapruneError
from analysis.lm.download import PTB_BYTES, download_ptb
from analysis.utils.limits import one_line
from analysis.utils.progress import ProgressUpdate
from app import common

FETCHED_KEY = "ptb_fetched_into"  # where the last fetch put it, told once after the rerun it triggers
MEGABYTE = 1_000_000


def offer_ptb_fetch(data_source: str | None, key: str) -> None:
    """A "Fetch Penn Treebank" button when a copy in the per-user cache would make `data_source`
    readable; when pressed, the download with a progress bar, then a rerun that finds the corpus."""
    fetched = st.session_state.pop(FETCHED_KEY, None)
    if fetched:
        st.success(f"Penn Treebank fetched and verified in {fetched}.")
    if common.corpus_problem_of(data_source) is None or not fetching_ptb_would_help(data_source):
        return
    size = sum(PTB_BYTES.values()) / MEGABYTE
    if not st.button(f"Fetch Penn Treebank ({size:.0f} MB)", key=key, type="primary",
                     help="Downloads ptb.train.txt, ptb.valid.txt and ptb.test.txt into the per-user cache; each "
                          "file is kept only if it matches its published SHA-256 sum."):
        return
    bar = st.progress(0.0, text="Fetching Penn Treebank...")

    def show(update: ProgressUpdate) -> None:
        bar.progress(update.overall or 0.0, text=f"Fetching {update.detail}: {update.done / MEGABYTE:.1f} of "
                                                 f"{update.total / MEGABYTE:.1f} MB")

    try:
        directory = download_ptb(progress=show)
    except (DynapruneError, OSError) as error:  # offline, a refused or corrupt copy, an unwritable cache
        bar.empty()
        st.error(f"Could not fetch Penn Treebank: {one_line(error)}")
        return
    common.corpus_problem_of.clear()  # cached for 30 s: the corpus is there now
    st.session_state[FETCHED_KEY] = str(directory)
    st.rerun()
