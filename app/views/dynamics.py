"""Dynamics page: one linear dynamical system per unit, how well it fits, the distances between
units' dynamics, and the clusters of units that move alike."""
import math

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative

from analysis.dynamics.criteria import cluster_units
from analysis.exploration import (
    distance_profile,
    fit_quality_table,
    group_by_labels,
    heatmap_view,
    nearest_neighbours,
    pca_paths,
    transition_eigenvalues,
    unit_circle,
)
from app import common
from app.method_steps import help_text

st.title("Dynamics")
trajectory, source, sig = common.require_trajectory()
common.source_caption(source, trajectory)


@st.cache_data(max_entries=32, show_spinner=False)
def cached_clusters(path: str, sig: float, layer: str, order: int, horizon, n_clusters: int):
    return cluster_units(common.layer_dynamics(path, sig, layer, order, horizon)[1], n_clusters)


@st.cache_data(max_entries=32, show_spinner=False)
def cached_paths(path: str, sig: float, layer: str, units: tuple):
    traj = common.trajectory(path, sig)
    return pca_paths(traj.unit_vectors(layer, units=list(units))).to_frame(traj.steps, units)


def cluster_traces(embedding, labels) -> list[go.Scatter]:
    """The MDS map coloured by cluster: one trace per cluster (a legend) when there are at most 20,
    else one trace with a colour per point (a trace per cluster would make the figure slow to draw)."""
    palette = np.array(qualitative.Plotly, dtype=object)
    units = np.array([f"unit {k}" for k in range(len(labels))], dtype=object)
    clusters = list(dict.fromkeys(labels.tolist()))  # in order of first appearance
    hover = "%{hovertext}<br>cluster %{customdata}<extra></extra>"
    if len(clusters) > 20:
        rank = {cluster: i for i, cluster in enumerate(clusters)}
        colours = palette[np.array([rank[label] for label in labels.tolist()]) % len(palette)]
        return [go.Scatter(x=embedding[:, 0], y=embedding[:, 1], mode="markers", marker={"color": colours},
                           hovertext=units, customdata=labels, hovertemplate=hover)]
    return [go.Scatter(x=embedding[labels == cluster, 0], y=embedding[labels == cluster, 1], mode="markers",
                       name=str(cluster), marker={"color": palette[i % len(palette)]},
                       hovertext=units[labels == cluster], customdata=labels[labels == cluster], hovertemplate=hover)
            for i, cluster in enumerate(clusters)]


# ------------------------------------------------------------------ controls
low, high = common.valid_order_range(trajectory)
order_now, horizon_now = common.dynamics_settings(trajectory)
left, middle, right = st.columns(3)
layer = left.selectbox("Layer", trajectory.layers, key="dyn_layer")
order = middle.slider("LDS order n", low, high, order_now, key="dyn_order",
                      help=help_text("order"))
choices = ["T (snapshots)", "custom", "infinite (Martin)"]
current_choice = 0 if horizon_now is None else 2 if math.isinf(horizon_now) else 1
horizon_choice = right.radio("Distance horizon m", choices, index=current_choice, horizontal=True, key="dyn_horizon",
                             help=f"{help_text('horizon')}\n\nT: {help_text('T')}\n\n{help_text('martin')}")
horizon = None
if horizon_choice == "custom":
    default = int(horizon_now) if horizon_now is not None and not math.isinf(horizon_now) else len(trajectory)
    horizon = int(right.number_input("m", 1, 10_000, default, key="dyn_horizon_m", help=help_text("horizon")))
elif horizon_choice.startswith("infinite"):
    horizon = math.inf
st.session_state[common.ORDER_KEY], st.session_state[common.HORIZON_KEY] = order, horizon

fit, distances, notes = common.layer_dynamics(str(source), sig, layer, order, horizon)
for note in notes:
    st.caption(f"Note: {note}.")
H = fit.n_units
if H < 2:
    st.info(f"{layer} has a single unit: there are no distances to show.")
    st.stop()

# ------------------------------------------------------------------ fit quality
st.subheader("Fit quality per unit")
quality = fit_quality_table(fit)
columns = st.columns(3)
columns[0].metric("Median explained variance", f"{quality['explained_variance'].median():.3f}",
                  help=help_text("explained_variance"))
columns[1].metric("Median one-step R²", f"{quality['prediction_r2'].median():.3f}", help=help_text("one_step_r2"))
columns[2].metric("Units with ρ(A) ≥ 1", int((quality["spectral_radius"] >= 1).sum()),
                  help=help_text("spectral_radius"))
left, right = st.columns(2)
quality_figure = go.Figure([go.Histogram(x=quality[measure], name=measure, nbinsx=30, opacity=0.6)
                            for measure in ("explained_variance", "prediction_r2")])
quality_figure.update_layout(barmode="overlay", height=320, margin={"t": 20, "b": 40}, xaxis_title="value",
                             yaxis_title="count", legend_title_text="measure")
left.plotly_chart(quality_figure, key="dyn_quality")
eigen = transition_eigenvalues(fit)
circle_x, circle_y = unit_circle()
eig_figure = go.Figure([go.Scatter(x=circle_x, y=circle_y, mode="lines", name="unit circle",
                                   line={"color": "grey", "dash": "dot"}),
                        go.Scatter(x=eigen["real"], y=eigen["imag"], mode="markers", name="eigenvalues of A",
                                   marker={"size": 5, "opacity": 0.6}, customdata=eigen["unit"],
                                   hovertemplate="unit %{customdata}<br>%{x:.3f} %{y:+.3f}i")])
eig_figure.update_layout(height=320, margin={"t": 20, "b": 40}, xaxis_title="real", yaxis_title="imaginary",
                         yaxis={"scaleanchor": "x"})
right.plotly_chart(eig_figure, key="dyn_eigenvalues")
with st.expander("Per-unit table"):
    st.dataframe(quality, hide_index=True, width="stretch")

# ------------------------------------------------------------------ distances and clusters
st.subheader("Distances between units' dynamics")
n_clusters = st.slider("Clusters (average linkage on the distances)", 1, H, max(1, H // 2), key="dyn_clusters",
                       help=help_text("average_linkage"))
labels = cached_clusters(str(source), sig, layer, order, horizon, n_clusters)
order_units = group_by_labels(common.tree_order(str(source), sig, layer, order, horizon), labels)
view = heatmap_view(distances, order_units)
left, right = st.columns(2)
ticks = order_units.astype(str) if view.block == 1 else None
heat = go.Figure(go.Heatmap(z=view.matrix.astype(np.float32), x=ticks, y=ticks, colorscale="Viridis",
                            colorbar={"title": "d"}))
heat.update_layout(height=480, margin={"t": 20, "b": 40}, yaxis={"autorange": "reversed", "type": "category"},
                   xaxis_title="unit, ordered by cluster", yaxis_title="unit, ordered by cluster",
                   xaxis={"type": "category", "showticklabels": H <= 64})
left.plotly_chart(heat, key="dyn_heatmap")
left.caption("Units ordered so that each cluster is one block on the diagonal"
             + (f"; blocks of {view.block} units averaged." if view.block > 1 else "."))
embedding = common.embedding(str(source), sig, layer, order, horizon)
scatter = go.Figure(cluster_traces(embedding, labels))
scatter.update_layout(height=480, margin={"t": 20, "b": 40}, showlegend=n_clusters <= 20, xaxis_title="MDS 1",
                      yaxis_title="MDS 2", legend_title_text="cluster")
right.plotly_chart(scatter, key="dyn_embedding")
right.caption("Units placed so that their plane distances follow the dynamics distances (MDS).", help=help_text("mds"))

profile = distance_profile(distances)
histogram = go.Figure([go.Histogram(x=rows["distance"], name=which, histnorm="probability", nbinsx=60, opacity=0.6)
                       for which, rows in profile.groupby("which", sort=False)])
histogram.update_layout(barmode="overlay", height=300, margin={"t": 20, "b": 40}, xaxis_title="dynamics distance d",
                        yaxis_title="share")
st.plotly_chart(histogram, key="dyn_distance_profile")
st.caption("Where the heatmap looks uniform, the nearest-unit distances still spread out: units with a near twin "
           "in dynamics sit on the left. The default criterion (dynamics-greedy) removes weak units with a near "
           "twin first; the Prune page shows each unit's score.")

# ------------------------------------------------------------------ one unit
st.subheader("A unit and its nearest neighbours")
left, right = st.columns([1, 2])
unit = left.selectbox("Unit", list(range(H)), key="dyn_unit")
k = left.slider("Neighbours", 1, min(10, max(1, H - 1)), min(4, max(1, H - 1)), key="dyn_neighbours")
neighbours = nearest_neighbours(distances, unit, k, labels=labels)
left.dataframe(neighbours, hide_index=True, width="stretch")
chosen = (unit, *neighbours["unit"].tolist())
paths = cached_paths(str(source), sig, layer, tuple(int(u) for u in chosen))
path_figure = go.Figure([go.Scatter(x=rows["pc1"], y=rows["pc2"], mode="lines+markers", name=str(path_unit),
                                     customdata=rows["step"], hovertemplate="step %{customdata}<br>%{x:.3f}, %{y:.3f}")
                          for path_unit, rows in paths.groupby("unit", sort=False)])
path_figure.update_layout(height=380, margin={"t": 20, "b": 40}, xaxis_title="pc1", yaxis_title="pc2",
                          legend_title_text="unit")
right.plotly_chart(path_figure, key="dyn_unit_paths")
right.caption(f"Weight-vector paths of unit {unit} and its {k} nearest neighbours in dynamics distance.")
