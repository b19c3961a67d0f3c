"""Learn page: the method step by step, for a workshop. Each step has a short explanation, its
formula and a live figure computed from the current trajectory (by default the embedded sample)."""
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
from app import common

st.title("The method, step by step")
st.write("How to prune a recurrent network by the dynamics of its weights (Chatzikonstantinou et al., Neural "
         "Networks 143, 2021). Every figure is computed live from the current trajectory.")
trajectory, source, sig = common.require_trajectory()
common.source_caption(source, trajectory)
order, horizon = common.dynamics_settings(trajectory)
layer = trajectory.layers[0]
info = trajectory.layer_info(layer)
ratio = st.slider("Pruning ratio used in the figures below", 0.1, 0.9, 0.5, 0.1, key="learn_ratio")


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


bands, paths = cached_overview(str(source), sig, layer)
fit, distances, _ = common.layer_dynamics(str(source), sig, layer, order, horizon)
plan = common.pruning_plan(str(source), sig, order, horizon, tuple((name, ratio) for name in trajectory.layers),
                           "dynamics")
layer_plan = plan.layers[layer]

st.header("1. Log the weights while training")
st.write("Training saves a snapshot of the recurrent layers' parameters every few steps. The ordered snapshots "
         "are the trajectory.")
st.latex(r"\theta(s_1),\ \theta(s_2),\ \dots,\ \theta(s_T), \qquad s_1 < \dots < s_T,\ T \ge 3")
figure = px.line(bands, x="step", y="q50", color="gate", labels={"q50": "median norm per gate"})
st.plotly_chart(figure_layout(figure), key="learn_norms")
st.caption(f"Median norm of each gate's weights over the units of {layer}, at each of the {len(trajectory)} "
           "snapshots.")

st.header("2. One signal per hidden unit")
st.write("Hidden unit k owns one row per gate of the input and recurrent weight matrices. Stacked together they "
         "form its weight vector, a signal in time.")
st.latex(r"w_k(t) = \big[\, W_{ih}[gH+k,:],\ W_{hh}[gH+k,:] \,\big]_{g=1..G} \in \mathbb{R}^{G(D+H)}")
paths["unit"] = paths["unit"].astype(str)
figure = px.line(paths, x="pc1", y="pc2", color="unit", markers=True, hover_data=["step"])
st.plotly_chart(figure_layout(figure), key="learn_paths")
st.caption(f"Paths of three units' weight vectors (d = {info.unit_dim}) projected on their two principal axes.")

st.header("3. Fit a linear dynamical system to each unit")
st.write("Each unit's path is summarised by a small state x(t) evolving linearly. The observation matrix C comes "
         "from the SVD of the centred path, the transition A from least squares on the states.")
st.latex(r"w_k(t) \approx \mu_k + C_k\, x_k(t), \qquad x_k(t+1) = A_k\, x_k(t)")
st.latex(r"Y_k - \mu_k \mathbf{1}^\top = U S V^\top,\quad C_k = U_{:, :n},\quad X_k = S_{:n} V_{:, :n}^\top,\quad "
         r"A_k = X_{k,2:T}\, X_{k,1:T-1}^{+}")
eigen = transition_eigenvalues(fit)
circle_x, circle_y = unit_circle()
figure = go.Figure([go.Scatter(x=circle_x, y=circle_y, mode="lines", line={"dash": "dot", "color": "grey"},
                               name="unit circle"),
                    go.Scatter(x=eigen["real"], y=eigen["imag"], mode="markers", marker={"size": 5}, name="eig(A_k)")])
figure.update_layout(yaxis={"scaleanchor": "x"}, xaxis_title="real part", yaxis_title="imaginary part")
st.plotly_chart(figure_layout(figure, 340), key="learn_eigenvalues")
st.caption(f"Eigenvalues of every unit's A (order n = {order}); median explained variance "
           f"{fit_quality_table(fit)['explained_variance'].median():.3f}.")

st.header("4. Measure how alike two units' dynamics are")
st.write("Two units are alike when their observability subspaces are close: the principal angles between them "
         "give a distance that ignores the choice of state coordinates (the Martin distance for an infinite "
         "horizon).")
st.latex(r"P_{ij} = \sum_{\tau < m} (A_i^\top)^\tau C_i^\top C_j A_j^\tau, \qquad "
         r"d(i,j)^2 = -\log\det\!\big(P_{ii}^{-1} P_{ij} P_{jj}^{-1} P_{ji}\big)")
order_units = common.tree_order(str(source), sig, layer, order, horizon)
if layer_plan.clusters is not None:
    order_units = group_by_labels(order_units, layer_plan.clusters)
figure = go.Figure(go.Heatmap(z=heatmap_view(distances, order_units).matrix, colorscale="Viridis"))
figure.update_layout(yaxis={"autorange": "reversed"}, xaxis_title="units, ordered by cluster",
                     yaxis_title="units, ordered by cluster")
st.plotly_chart(figure_layout(figure, 380), key="learn_distances")
st.caption(f"Distances between the units of {layer}, horizon {common.horizon_label(horizon)}, ordered by cluster.")

st.header("5. Cluster, and keep one unit per cluster")
st.write("Removing R = round(rH) units: cluster the units into H - R groups of similar dynamics (average "
         "linkage) and keep the unit with the largest final weights in each; the rest are redundant.")
st.latex(r"R = \operatorname{round}(rH), \qquad \text{keep } \arg\max_{k \in \text{cluster}} \|w_k(T)\|")
embedding = common.embedding(str(source), sig, layer, order, horizon)
status = unit_status(info.hidden_size, layer_plan.pruned)
figure = px.scatter(x=embedding[:, 0], y=embedding[:, 1], color=status, symbol=status,
                    color_discrete_map={"kept": "#1f77b4", "pruned": "#d62728"},
                    symbol_map={"kept": "circle", "pruned": "x"},
                    labels={"x": "MDS 1", "y": "MDS 2", "color": "", "symbol": ""})
st.plotly_chart(figure_layout(figure, 360), key="learn_embedding")
st.caption(f"At r = {ratio:.1f}, {len(layer_plan.pruned)} of {info.hidden_size} units of {layer} go.")
st.write("This clustering rule is the method as first written. dynaprune's default, **dynamics-greedy**, cuts "
         "Penn Treebank models about as well as magnitude pruning and much better than clustering (docs/criteria.md): "
         "it removes one unit at a time, each time the one whose "
         "final weight norm times its dynamics distance to the nearest kept unit is smallest, so weak units with a "
         "near twin go first. The Prune page shows each unit's score.")
st.latex(r"\text{remove } \arg\min_{k \text{ kept}} \; \|w_k(T)\| \cdot \min_{j \text{ kept}, j \ne k} d(k, j)")

st.header("6. Cut the network")
st.write("Pruning builds a genuinely smaller network: the unit's rows leave W_ih, W_hh and the biases, its column "
         "leaves W_hh and the next layer's (or the decoder's) input weights.")
st.latex(r"\#\text{params of a layer} = G H' (D' + H' + 2)")
model, model_note = common.model_or_none(source)
if model is None:
    st.info(f"No model next to this trajectory: {model_note}")
else:
    footprint = plan_footprint(model.config, plan)
    bars = pd.DataFrame({"model": ["before", "after"] * 2,
                         "parameters": [footprint.params_before["recurrent"], footprint.params_after["recurrent"],
                                        footprint.params_before["total"], footprint.params_after["total"]],
                         "part": ["recurrent"] * 2 + ["all"] * 2})
    st.plotly_chart(figure_layout(px.bar(bars, x="part", y="parameters", color="model", barmode="group")),
                    key="learn_sizes")
    st.caption(f"Hidden sizes {footprint.hidden_before} → {footprint.hidden_after}; "
               f"{footprint.total_reduction:.0%} fewer parameters.")

st.header("7. Fine-tune with a discrimination-aware L2 penalty")
st.write("Units whose output barely moves the loss are shrunk harder, so fine-tuning moves the network's "
         "capacity onto the units that matter.")
st.latex(r"s_k = \operatorname{mean}_{\text{batches}} \Big| \sum_{t,b} \frac{\partial L}{\partial h_{t,b,k}}\, "
         r"h_{t,b,k} \Big| \,/\, \max_j s_j, \qquad \Omega = \lambda \sum_{\text{layers}} \sum_k (1 - s_k)^\gamma "
         r"\|w_k\|^2")
validation, problem = common.validation_for(source) if model is not None else (None, model_note)
if validation is None:
    st.info(f"Needs the model and its validation data: {problem}")
else:
    scores = cached_unit_importances(str(source), sig)[layer]
    frame = pd.DataFrame({"importance s_k": scores, "penalty weight (1 - s_k)": 1.0 - scores})
    figure = px.histogram(frame.melt(var_name="quantity"), x="value", color="quantity", barmode="overlay", nbins=30)
    st.plotly_chart(figure_layout(figure), key="learn_importance")
    st.caption(f"Importance of the units of {layer} on a few validation batches, and the weight (γ = 1) of each "
               "unit's L2 penalty.")

st.header("8. Prune in stages, the bigger model teaching the smaller")
st.write("A steep one-shot cut can harm a model beyond repair. Instead the target ratio is reached in S stages; "
         "at each, the previous stage's best model teaches the newly pruned one by distillation.")
st.latex(r"r_s = 1 - (1 - r)^{s/S}, \qquad \mathcal{L} = (1-\alpha)\,\mathrm{CE} + \alpha\,\tau^2\, "
         r"\mathrm{KL}\big(\sigma(z_T/\tau)\,\|\,\sigma(z_S/\tau)\big) + \Omega")
stages = st.slider("Stages S", 1, 6, 3, key="learn_stages")
schedule = PipelineConfig(ratio=ratio, stages=stages).stage_ratios()
hidden = PipelineConfig(ratio=ratio, stages=stages).kept_units(info.hidden_size)
frame = pd.DataFrame({"stage": [str(s) for s in range(1, stages + 1)], "ratio after stage": schedule,
                      f"units left in {layer}": hidden})
figure = px.bar(frame, x="stage", y=f"units left in {layer}", hover_data=["ratio after stage"])
st.plotly_chart(figure_layout(figure).update_xaxes(type="category"), key="learn_schedule")
st.caption(f"Reaching r = {ratio:.1f} in {stages} stages: ratios " + ", ".join(f"{r:.2f}" for r in schedule) + ".")
st.write("Each stage's fine-tuning starts at a high learning rate (half the original training's initial rate) and "
         "anneals it to 0 along a cosine, so every stage ends as settled as the original model did. Extra training "
         "can improve a model by itself: to tell what the pruning costs from what the fine-tuning gains, run a "
         "control, ratio 0 on the Fine-tune page, which prunes nothing and fine-tunes the same way "
         "(docs/results.md compares both on Penn Treebank).")
