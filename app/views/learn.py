"""Learn page: the method step by step, for a workshop. One step at a time, chosen with the step
selector or Previous / Next; the step is in the URL (?step=distance), so a teacher can link to it.
Each step has a short explanation, its formula, a live figure computed from the current trajectory
(by default the embedded sample), the terms it defines (app/method_steps.py, where other pages take
their help texts from) and links to the pages where it can be tried."""
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from analysis.exploration import (
    fit_quality_table,
    gate_names,
    gate_norms,
    group_by_labels,
    heatmap_view,
    norm_bands,
    pca_paths,
    transition_eigenvalues,
    unit_circle,
    unit_status,
)
from analysis.pruning.config import PipelineConfig
from analysis.pruning.importance import unit_importances
from analysis.pruning.preview import plan_footprint
from analysis.reference_runs import HEADLINE_ROWS, find_reference_runs, read_reference
from analysis.run_curves import pipeline_curve
from analysis.runs import read_run_metrics
from app import common
from app.method_steps import STEP_NUMBER, STEP_PARAM, STEPS, step_of, terms_of

STEP_KEY = "learn_step"
SLUGS = [step.slug for step in STEPS]

st.title("The method, step by step")
st.write("How to prune a recurrent network by the dynamics of its weights (Chatzikonstantinou et al., Neural "
         "Networks 143, 2021). Every figure is computed live from the current trajectory.")
trajectory, source, sig = common.require_trajectory()
common.source_caption(source, trajectory)
order, horizon = common.dynamics_settings(trajectory)
layer = trajectory.layers[0]
info = trajectory.layer_info(layer)


@st.cache_data(max_entries=4, show_spinner=False)
def cached_overview(path: str, sig: float, layer: str):
    traj = common.trajectory(path, sig)
    units = list(range(min(3, traj.layer_info(layer).hidden_size)))
    bands = norm_bands(gate_norms(traj, layer), traj.steps, gate_names(traj.layer_info(layer)))
    return bands, pca_paths(traj.unit_vectors(layer, units=units)).to_frame(traj.steps, units)


@st.cache_data(max_entries=4, show_spinner="Measuring each unit's effect on the loss...")
def cached_unit_importances(path: str, sig: float):
    model, _ = common.model(path, sig)
    return unit_importances(model, common.validation_tokens(path, sig).tokens)


def figure_layout(figure, height=300):
    return figure.update_layout(height=height, margin={"t": 20, "b": 40})


def ratio_slider(place) -> float:
    """The pruning ratio of the steps that cut; it keeps its value from step to step."""
    return place.slider("Pruning ratio r", 0.1, 0.9, 0.5, 0.1, key="learn_ratio",
                     persist_state="session", help="The share of each layer's hidden units to remove.")


def dynamics_plan(ratio: float):
    """The clustering rule's plan (criterion "dynamics") at `ratio` on every layer."""
    return common.pruning_plan(str(source), sig, order, horizon,
                               tuple((name, ratio) for name in trajectory.layers), "dynamics")


# ----------------------------------------------------------------------------- the steps
# Each step writes its formulas across the page, then its explanation into `text` and its live figure
# into `shown`, side by side, so that a step fills one screen.


def log_the_weights(formulas, text, shown):
    text.write("Training saves a snapshot of the recurrent layers' parameters every few steps. The ordered "
               "snapshots are the trajectory.")
    formulas.latex(r"\theta(s_1),\ \theta(s_2),\ \dots,\ \theta(s_T), \qquad s_1 < \dots < s_T,\ T \ge 3")
    bands, _ = cached_overview(str(source), sig, layer)
    figure = px.line(bands, x="step", y="q50", color="gate", labels={"q50": "median norm per gate"})
    shown.plotly_chart(figure_layout(figure), key="learn_norms")
    shown.caption(f"Median norm of each gate's weights over the units of {layer}, at each of the {len(trajectory)} "
                  "snapshots.")


def one_signal_per_unit(formulas, text, shown):
    text.write("Hidden unit k owns one row per gate of the input and recurrent weight matrices. Stacked together "
               "they form its weight vector, a signal in time.")
    formulas.latex(r"w_k(t) = \big[\, W_{ih}[gH+k,:],\ W_{hh}[gH+k,:] \,\big]_{g=1..G} \in \mathbb{R}^{G(D+H)}")
    _, paths = cached_overview(str(source), sig, layer)
    paths = paths.assign(unit=paths["unit"].astype(str))
    figure = px.line(paths, x="pc1", y="pc2", color="unit", markers=True, hover_data=["step"])
    shown.plotly_chart(figure_layout(figure), key="learn_paths")
    shown.caption(f"Paths of three units' weight vectors (d = {info.unit_dim}) projected on their two principal "
                  "axes.")


def fit_an_lds(formulas, text, shown):
    text.write("Each unit's path is summarised by a small state x(t) evolving linearly. The observation matrix C "
               "comes from the SVD of the centred path, the transition A from least squares on the states.")
    formulas.latex(r"w_k(t) \approx \mu_k + C_k\, x_k(t), \qquad x_k(t+1) = A_k\, x_k(t)")
    formulas.latex(r"Y_k - \mu_k \mathbf{1}^\top = U S V^\top,\quad C_k = U_{:, :n},\quad X_k = S_{:n} V_{:, :n}^\top,"
                   r"\quad A_k = X_{k,2:T}\, X_{k,1:T-1}^{+}")
    fit, _, _ = common.layer_dynamics(str(source), sig, layer, order, horizon)
    eigen = transition_eigenvalues(fit)
    circle_x, circle_y = unit_circle()
    figure = go.Figure([go.Scatter(x=circle_x, y=circle_y, mode="lines", line={"dash": "dot", "color": "grey"},
                                   name="unit circle"),
                        go.Scatter(x=eigen["real"], y=eigen["imag"], mode="markers", marker={"size": 5},
                                   name="eig(A_k)")])
    figure.update_layout(yaxis={"scaleanchor": "x"}, xaxis_title="real part", yaxis_title="imaginary part")
    shown.plotly_chart(figure_layout(figure, 340), key="learn_eigenvalues")
    shown.caption(f"Eigenvalues of every unit's A (order n = {order}); median explained variance "
                  f"{fit_quality_table(fit)['explained_variance'].median():.3f}.")


def measure_distances(formulas, text, shown):
    text.write("Two units are alike when their observability subspaces are close: the principal angles between "
               "them give a distance that ignores the choice of state coordinates (the Martin distance for an "
               "infinite horizon).")
    formulas.latex(r"P_{ij} = \sum_{\tau < m} (A_i^\top)^\tau C_i^\top C_j A_j^\tau, \qquad "
                   r"d(i,j)^2 = -\log\det\!\big(P_{ii}^{-1} P_{ij} P_{jj}^{-1} P_{ji}\big)")
    ratio = ratio_slider(shown)
    _, distances, _ = common.layer_dynamics(str(source), sig, layer, order, horizon)
    order_units = common.tree_order(str(source), sig, layer, order, horizon)
    clusters = dynamics_plan(ratio).layers[layer].clusters
    if clusters is not None:
        order_units = group_by_labels(order_units, clusters)
    figure = go.Figure(go.Heatmap(z=heatmap_view(distances, order_units).matrix, colorscale="Viridis"))
    figure.update_layout(yaxis={"autorange": "reversed"}, xaxis_title="units, ordered by cluster",
                         yaxis_title="units, ordered by cluster")
    shown.plotly_chart(figure_layout(figure, 380), key="learn_distances")
    shown.caption(f"Distances between the units of {layer}, horizon {common.horizon_label(horizon)}, ordered by "
                  "cluster.")


def cluster_and_keep(formulas, text, shown):
    text.write("Removing R = round(rH) units: cluster the units into H - R groups of similar dynamics (average "
               "linkage) and keep the unit with the largest final weights in each; the rest are redundant.")
    formulas.latex(r"R = \operatorname{round}(rH), \qquad \text{keep } \arg\max_{k \in \text{cluster}} \|w_k(T)\|")
    text.write("This clustering rule is the method as first written. The default dynamics criterion, "
               "**dynamics-greedy**, cuts Penn Treebank models about as well as magnitude pruning and much better "
               "than clustering (docs/criteria.md): it removes one unit at a time, each time the one whose "
               "final weight norm times its dynamics distance to the nearest kept unit is smallest, so weak units "
               "with a near twin go first. The Prune page shows each unit's score. What cut best in the "
               "measurements reads no dynamics: **taylor-iterative**, the pipeline's default, measures how much the "
               "loss depends on each unit again after each eighth of the cut (the Fine-tune page runs it).")
    formulas.latex(r"\text{remove } \arg\min_{k \text{ kept}} \; \|w_k(T)\| \cdot "
                   r"\min_{j \text{ kept}, j \ne k} d(k, j)")
    ratio = ratio_slider(shown)
    layer_plan = dynamics_plan(ratio).layers[layer]
    embedding = common.embedding(str(source), sig, layer, order, horizon)
    status = unit_status(info.hidden_size, layer_plan.pruned)
    figure = px.scatter(x=embedding[:, 0], y=embedding[:, 1], color=status, symbol=status,
                        color_discrete_map={"kept": "#1f77b4", "pruned": "#d62728"},
                        symbol_map={"kept": "circle", "pruned": "x"},
                        labels={"x": "MDS 1", "y": "MDS 2", "color": "", "symbol": ""})
    shown.plotly_chart(figure_layout(figure, 360), key="learn_embedding")
    shown.caption(f"At r = {ratio:.1f}, {len(layer_plan.pruned)} of {info.hidden_size} units of {layer} go.")


def cut_the_network(formulas, text, shown):
    text.write("Pruning builds a genuinely smaller network: the unit's rows leave W_ih, W_hh and the biases, its "
               "column leaves W_hh and the next layer's (or the decoder's) input weights.")
    formulas.latex(r"\#\text{params of a layer} = G H' (D' + H' + 2)")
    ratio = ratio_slider(shown)
    model, model_note = common.model_or_none(source)
    if model is None:
        shown.info(f"No model next to this trajectory: {model_note}")
        return
    footprint = plan_footprint(model.config, dynamics_plan(ratio))
    bars = pd.DataFrame({"model": ["before", "after"] * 2,
                         "parameters": [footprint.params_before["recurrent"], footprint.params_after["recurrent"],
                                        footprint.params_before["total"], footprint.params_after["total"]],
                         "part": ["recurrent"] * 2 + ["all"] * 2})
    shown.plotly_chart(figure_layout(px.bar(bars, x="part", y="parameters", color="model", barmode="group")),
                       key="learn_sizes")
    shown.caption(f"Hidden sizes {footprint.hidden_before} → {footprint.hidden_after}; "
                  f"{footprint.total_reduction:.0%} fewer parameters.")


def fine_tune_with_da_l2(formulas, text, shown):
    text.write("Units whose output barely moves the loss are shrunk harder, so fine-tuning moves the network's "
               "capacity onto the units that matter.")
    formulas.latex(r"s_k = \operatorname{mean}_{\text{batches}} \Big| \sum_{t,b} "
                   r"\frac{\partial L}{\partial h_{t,b,k}}\, h_{t,b,k} \Big| \,/\, \max_j s_j, \qquad "
                   r"\Omega = \lambda \sum_{\text{layers}} \sum_k (1 - s_k)^\gamma \|w_k\|^2")
    model, model_note = common.model_or_none(source)
    validation, problem = common.validation_for(source) if model is not None else (None, model_note)
    if validation is None:
        shown.info(f"Needs the model and its validation data: {problem}")
        return
    scores = cached_unit_importances(str(source), sig)[layer]
    frame = pd.DataFrame({"importance s_k": scores, "penalty weight (1 - s_k)": 1.0 - scores})
    figure = px.histogram(frame.melt(var_name="quantity"), x="value", color="quantity", barmode="overlay", nbins=30)
    shown.plotly_chart(figure_layout(figure), key="learn_importance")
    shown.caption(f"Importance of the units of {layer} on a few validation batches, and the weight (γ = 1) of each "
                  "unit's L2 penalty.")


def prune_in_stages(formulas, text, shown):
    text.write("A steep one-shot cut can harm a model beyond repair. Instead the target ratio is reached in S "
               "stages; at each, the previous stage's best model teaches the newly pruned one by distillation.")
    formulas.latex(r"r_s = 1 - (1 - r)^{s/S}, \qquad \mathcal{L} = (1-\alpha)\,\mathrm{CE} + \alpha\,\tau^2\, "
                   r"\mathrm{KL}\big(\sigma(z_T/\tau)\,\|\,\sigma(z_S/\tau)\big) + \Omega")
    text.write("Each stage's fine-tuning starts at a high learning rate (half the original training's initial "
               "rate) and anneals it to 0 along a cosine, so every stage ends as settled as the original model did. "
               "Extra training can improve a model by itself: to tell what the pruning costs from what the "
               "fine-tuning gains, run a control, ratio 0 on the Fine-tune page, which prunes nothing and fine-tunes "
               "the same way (docs/results.md compares both on Penn Treebank).")
    left, right = shown.columns(2)
    ratio = ratio_slider(left)
    stages = right.slider("Stages S", 1, 6, 3, key="learn_stages", help="How many prune-and-fine-tune rounds "
                                                                         "reach the target ratio.")
    schedule = PipelineConfig(ratio=ratio, stages=stages).stage_ratios()
    hidden = PipelineConfig(ratio=ratio, stages=stages).kept_units(info.hidden_size)
    frame = pd.DataFrame({"stage": [str(s) for s in range(1, stages + 1)], "ratio after stage": schedule,
                          f"units left in {layer}": hidden})
    figure = px.bar(frame, x="stage", y=f"units left in {layer}", hover_data=["ratio after stage"])
    shown.plotly_chart(figure_layout(figure).update_xaxes(type="category"), key="learn_schedule")
    shown.caption(f"Reaching r = {ratio:.1f} in {stages} stages: ratios " + ", ".join(f"{r:.2f}" for r in schedule)
                  + ".")
    reference_stages(shown)


def reference_stages(shown):
    """What the stages did in the reference runs behind docs/results.md (shipped with the project)."""
    corpus = next((c for c in ("ptb", "synthetic") if find_reference_runs(corpus=c)), None)
    if corpus is None:
        return
    figure = go.Figure()
    for run in find_reference_runs(corpus=corpus):
        row = read_reference(run)
        if row["row"] not in HEADLINE_ROWS or row["seed"] != 0:
            continue
        curve = pipeline_curve(read_run_metrics(run))
        figure.add_trace(go.Scatter(x=curve["position"], y=curve["val_ppl"], mode="lines+markers", name=row["row"],
                                    hovertemplate="stage %{customdata}<br>%{y:.2f}", customdata=curve["stage"]))
    figure.update_layout(xaxis_title="epochs of fine-tuning, across stages", yaxis_title="validation perplexity",
                         legend={"orientation": "h", "y": -0.3})
    shown.plotly_chart(figure_layout(figure, height=340), key="learn_reference_stages")
    name = "Penn Treebank (ptb-small)" if corpus == "ptb" else "the synthetic language"
    shown.caption(f"The reference runs on {name} (docs/results.md): each cut raises the validation perplexity, "
                  "each stage's fine-tuning brings it back down; the control (ratio 0) is fine-tuned the same way "
                  "without cutting. Compare has every run.")


SHOW = {"log": log_the_weights, "signal": one_signal_per_unit, "lds": fit_an_lds, "distance": measure_distances,
        "cluster": cluster_and_keep, "cut": cut_the_network, "da-l2": fine_tune_with_da_l2,
        "stages": prune_in_stages}
assert list(SHOW) == SLUGS, "every step of app/method_steps.py is shown here, in its order"


# ----------------------------------------------------------------------------- step navigation


def go_to(slug: str) -> None:
    st.session_state[STEP_KEY] = slug
    st.query_params[STEP_PARAM] = slug


def step_chosen() -> None:
    st.query_params[STEP_PARAM] = st.session_state[STEP_KEY]


requested = st.query_params.get(STEP_PARAM)
if requested in STEP_NUMBER:
    st.session_state[STEP_KEY] = requested  # a handed-out link, or this page's own URL, names the step
elif requested is not None:
    st.warning("The link names no step of the method, so it was ignored.", icon=":material/link_off:")

slug = st.radio("Step", SLUGS, format_func=lambda s: step_of(s).label, horizontal=True, key=STEP_KEY,
                on_change=step_chosen, persist_state="session", label_visibility="collapsed")
number = STEP_NUMBER[slug]
if st.query_params.get(STEP_PARAM) != slug:
    st.query_params[STEP_PARAM] = slug  # the address always names the step shown, ready to hand out
step = step_of(slug)
title, back, forward = st.columns([5, 1.4, 1.1], vertical_alignment="center")
title.subheader(f"{number}. {step.title}")
back.button("Previous", icon=":material/arrow_back:", key="learn_previous", disabled=number == 1,
            on_click=go_to, args=(SLUGS[max(number - 2, 0)],), width="stretch")
forward.button("Next", icon=":material/arrow_forward:", key="learn_next", disabled=number == len(SLUGS),
               on_click=go_to, args=(SLUGS[min(number, len(SLUGS) - 1)],), width="stretch")

formulas = st.container()
text, shown = st.columns(2, gap="large")
SHOW[slug](formulas, text, shown)
with text:
    terms = terms_of(slug)
    if terms:
        st.markdown("**Terms**\n\n" + "\n".join(f"- **{term.name}**: {term.meaning}" for term in terms))
    st.markdown("**Try it**")
    for page, what in step.try_on:
        st.page_link(page, label=what, icon=":material/play_arrow:")
