"""Start page, for newcomers: what dynaprune does, in a few sentences, the pages in the order to
take them, the trajectory loaded now and whether Penn Treebank is on this machine."""
import streamlit as st

from analysis.corpus_availability import GET_PTB
from analysis.errors import DynapruneError
from app import common

PATH = (  # (page, what to do there), in the order a newcomer takes them
    ("views/data.py", "**Data**: choose a trajectory (the embedded sample is loaded already)"),
    ("views/trajectories.py", "**Trajectories**: watch the recurrent weights move over training"),
    ("views/dynamics.py", "**Dynamics**: fit an LDS to each hidden unit and see which units move alike"),
    ("views/prune.py", "**Prune**: pick a ratio, see which units go and what the cut costs"),
    ("views/finetune.py", "**Fine-tune**: fine-tune the smaller model in stages, in the background"),
    ("views/compare.py", "**Compare**: perplexity across stages and runs, and against size"),
    ("views/learn.py", "**The method**: every step with its formula and a live figure, for a workshop"),
)

st.title("dynaprune")
st.write("dynaprune prunes a recurrent network (LSTM, GRU or RNN) by how its weights moved while it trained. "
         "It logs the recurrent weights at snapshots over training, fits a small linear dynamical system (LDS) to "
         "each hidden unit's weights, and measures how alike the units' dynamics are. Units whose dynamics have a "
         "near twin are redundant and are pruned; the smaller model is then fine-tuned in stages, the bigger one "
         "teaching it (distillation) under a discrimination-aware L2 penalty.")

left, right = st.columns([3, 2], gap="large")
with left:
    st.subheader("Where to start")
    for number, (page, what) in enumerate(PATH, start=1):
        st.page_link(page, label=f"{number}. {what}")

with right:
    st.subheader("Loaded now")
    source = common.current_source()
    if source is None:
        st.info(f"No trajectory: no embedded sample in {common.samples_dir()}. Choose one on the Data page.")
    else:
        try:
            trajectory = common.trajectory(str(source), common.signature(source))
        except DynapruneError as error:
            st.error(f"Cannot read {common.display_name(source)}: {error}")
        else:
            st.markdown(f"Trajectory: **{common.display_name(source)}**  \n{len(trajectory)} snapshots of layers "
                        f"{', '.join(trajectory.layers)}")
        if source.name == common.DEFAULT_SAMPLE and source.parent == common.samples_dir():
            st.caption("The embedded sample: a small language model trained on a synthetic language, so "
                       "every page works offline.")
    if common.corpus_problem_of("ptb") is None:
        st.success("Penn Treebank is on this machine: models trained on it can be evaluated and fine-tuned.",
                   icon=":material/check_circle:")
    else:
        st.warning(f"Penn Treebank is not on this machine; models trained on it can be explored and pruned but "
                   f"not evaluated. To get it, {GET_PTB}.", icon=":material/info:")
