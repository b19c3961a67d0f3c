"""Trajectories page: how the weights move during training: norms per gate, the path of chosen
units' weight vectors in their principal plane, and a weight matrix at any snapshot."""
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import hex_to_rgb, qualitative

from analysis.exploration import downsample_matrix, gate_names, gate_norms, norm_bands, pca_paths, unit_norm_paths
from app import common
from app.method_steps import help_text

st.title("Trajectories")
trajectory, source, sig = common.require_trajectory()
common.source_caption(source, trajectory)


@st.cache_data(max_entries=16, show_spinner=False)
def cached_norms(path: str, sig: float, layer: str):
    return gate_norms(common.trajectory(path, sig), layer)


@st.cache_data(max_entries=32, show_spinner=False)
def cached_paths(path: str, sig: float, layer: str, units: tuple, dims: int):
    traj = common.trajectory(path, sig)
    return pca_paths(traj.unit_vectors(layer, units=list(units)), n_components=dims).to_frame(traj.steps, units)


@st.cache_data(max_entries=32, show_spinner=False)
def cached_matrix(path: str, sig: float, layer: str, index: int, which: str):
    return downsample_matrix(common.trajectory(path, sig).weight_matrix(layer, index, which))


layer = st.selectbox("Layer", trajectory.layers, key="traj_layer")
info = trajectory.layer_info(layer)
steps = trajectory.steps

st.subheader("Weight-vector norms over training")
st.caption("For each gate block g, the spread of `‖[W_ih[gH+k,:], W_hh[gH+k,:]]‖` over the layer's units k: "
           "the median line and the 10 to 90 percent band.")
norms = cached_norms(str(source), sig, layer)
bands = norm_bands(norms, steps, gate_names(info))
figure = go.Figure()
palette = qualitative.Plotly
for number, gate in enumerate(gate_names(info)):
    rows = bands[bands["gate"] == gate]
    colour = palette[number % len(palette)]
    figure.add_trace(go.Scatter(x=rows["step"], y=rows["q90"], mode="lines", line={"width": 0, "color": colour},
                                showlegend=False, hoverinfo="skip"))
    red, green, blue = hex_to_rgb(colour)
    figure.add_trace(go.Scatter(x=rows["step"], y=rows["q10"], mode="lines", line={"width": 0, "color": colour},
                                fill="tonexty", fillcolor=f"rgba({red}, {green}, {blue}, 0.15)", showlegend=False,
                                hoverinfo="skip"))
    figure.add_trace(go.Scatter(x=rows["step"], y=rows["q50"], mode="lines", name=gate, line={"color": colour}))
figure.update_layout(xaxis_title="training step", yaxis_title="norm per gate", height=380,
                     margin={"t": 20, "b": 40}, legend={"traceorder": "normal"})
st.plotly_chart(figure, key="traj_norms")

st.subheader("Paths of unit weight vectors")
H = info.hidden_size
left, right = st.columns([3, 1])
units = left.multiselect("Units", list(range(H)), default=list(range(min(4, H))), key="traj_units",
                         max_selections=24)
dims = right.radio("Dimensions", [2, 3], horizontal=True, key="traj_dims")
if units:
    frame = cached_paths(str(source), sig, layer, tuple(units), dims)
    path_figure = go.Figure()
    for unit, rows in frame.groupby("unit", sort=False):
        points = {"x": rows["pc1"], "y": rows["pc2"], "mode": "lines+markers", "name": str(unit),
                  "customdata": rows["step"], "hovertemplate": "step %{customdata}"}
        path_figure.add_trace(go.Scatter3d(z=rows["pc3"], **points) if dims == 3 else go.Scatter(**points))
    path_figure.update_layout(height=460, margin={"t": 20, "b": 40}, legend_title_text="unit")
    if dims == 3:
        path_figure.update_scenes(xaxis_title="pc1", yaxis_title="pc2", zaxis_title="pc3")
    else:
        path_figure.update_layout(xaxis_title="pc1", yaxis_title="pc2")
    st.plotly_chart(path_figure, key="traj_pca")
    st.caption("Each unit's weight vector w_k(t) at every snapshot, projected on the principal axes of all the "
               "points shown; markers are snapshots, in training order.")
    whole = unit_norm_paths(norms, steps, units)
    norm_figure = go.Figure([go.Scatter(x=rows["step"], y=rows["norm"], mode="lines", name=str(unit))
                             for unit, rows in whole.groupby("unit", sort=False)])
    norm_figure.update_layout(height=260, margin={"t": 10, "b": 40}, xaxis_title="step", yaxis_title="‖w_k(t)‖",
                              legend_title_text="unit")
    st.plotly_chart(norm_figure, key="traj_unit_norms")
else:
    st.info("Choose at least one unit.")

st.subheader("A weight matrix at one snapshot")
left, right = st.columns([3, 1])
step_options = [int(step) for step in steps]
chosen_step = left.select_slider("Snapshot (training step)", step_options, value=step_options[-1], key="traj_snapshot",
                                 help=f"The training step at which the snapshot was recorded. T: {help_text('T')}")
index = step_options.index(chosen_step)
which = right.radio("Matrix", ["weight_hh", "weight_ih"], key="traj_which")
matrix, row_block, column_block = cached_matrix(str(source), sig, layer, index, which)
heat = go.Figure(go.Heatmap(z=matrix.astype("float32"), colorscale="RdBu", zmid=0.0))  # half the bytes to send
heat.update_layout(height=520, margin={"t": 20, "b": 40}, yaxis={"autorange": "reversed"},
                   xaxis_title="column" + (f" (blocks of {column_block})" if column_block > 1 else ""),
                   yaxis_title="row g*H + k" + (f" (blocks of {row_block})" if row_block > 1 else ""))
st.plotly_chart(heat, key="traj_matrix")
st.caption(f"{which} of {layer} at step {int(steps[index])}: rows are grouped by gate "
           f"({', '.join(gate_names(info))}), {H} rows each.")
