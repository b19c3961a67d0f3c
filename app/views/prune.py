"""Prune page: choose a ratio and a criterion, see which units go, how much smaller the model gets
and how its perplexity changes before any fine-tuning.

Everything below the title is one fragment: moving a slider reruns only it, from cached distances,
plans and perplexities. Only the open tab of "Which units go" is computed and drawn (a browser
redraws every figure whose data changed, and each costs about a tenth of a second there). Figures
are built from graph objects (plotly.express takes ten times as long for the same picture), and the
zero-shot perplexity, the slowest part, is computed last so that the browser draws the rest
meanwhile.
"""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from analysis.dynamics.criteria import CRITERIA, DEFAULT_CRITERION, DEFAULT_TRAJECTORY_CRITERION, TAYLOR
from analysis.errors import DynapruneError
from analysis.exploration import (
    greedy_removal_table,
    group_by_labels,
    heatmap_view,
    measured_removal_table,
    unit_redundancy,
    unit_status,
)
from analysis.pruning.config import PipelineConfig
from analysis.pruning.preview import (
    DEFAULT_CURVE_RATIOS,
    model_perplexity,
    plan_footprint,
    zero_shot_curve,
    zero_shot_perplexity,
)
from analysis.runs import NO_MODEL_HINT
from app import common

COLOURS = {"kept": "#1f77b4", "pruned": "#d62728"}
SYMBOLS = {"kept": "circle", "pruned": "x"}

st.title("Prune")
trajectory, source, sig = common.require_trajectory()
common.source_caption(source, trajectory)
order, horizon = common.dynamics_settings(trajectory)
st.caption(f"Dynamics: LDS order {order}, horizon {common.horizon_label(horizon)} (change them on the Dynamics page).")


@st.cache_data(max_entries=8, show_spinner="Perplexity of the unpruned model...")
def cached_baseline(path: str, sig: float):
    model, _ = common.model(path, sig)
    return model_perplexity(model, common.validation_tokens(path, sig).tokens)


@st.cache_data(max_entries=64, show_spinner="Zero-shot perplexity...")
def cached_zero_shot(path: str, sig: float, pruned: tuple, _plan):
    """Keyed by the units the plan removes, so plans that remove the same units (another criterion,
    a ratio that rounds to the same count) share one evaluation."""
    if all(not units for _, units in pruned):
        return cached_baseline(path, sig)
    model, _ = common.model(path, sig)
    return zero_shot_perplexity(model, _plan, common.validation_tokens(path, sig).tokens)


@st.cache_data(max_entries=8, show_spinner="Zero-shot perplexity at each ratio, for each criterion...")
def cached_curve(path: str, sig: float, order: int, horizon):
    model, _ = common.model(path, sig)
    return zero_shot_curve(model, common.all_distances(path, sig, order, horizon), common.all_importance(path, sig),
                           common.validation_tokens(path, sig).tokens, ratios=DEFAULT_CURVE_RATIOS, seed=common.SEED)


@st.cache_data(max_entries=64, show_spinner=False)
def cached_removals(path: str, sig: float, layer: str, order: int, horizon, n_pruned: int):
    return greedy_removal_table(common.layer_dynamics(path, sig, layer, order, horizon)[1],
                                common.importance(path, sig, layer), n_pruned)


def status_scatter(x, y, status, hover, customdata=None, hovertemplate=None, height=460) -> go.Figure:
    """Kept units as blue circles, pruned ones as red crosses, one trace each (the legend)."""
    traces = []
    for name in ("kept", "pruned"):
        chosen = status == name
        traces.append(go.Scatter(
            x=x[chosen], y=y[chosen], mode="markers", name=name, hovertext=hover[chosen],
            customdata=None if customdata is None else customdata[chosen], hovertemplate=hovertemplate,
            marker={"color": COLOURS[name], "symbol": SYMBOLS[name]}))
    return go.Figure(traces, layout={"height": height, "margin": {"t": 20, "b": 40}, "legend": {"title": {"text": ""}}})


def show_which_units(layer: str, layer_plan) -> None:
    distances = common.layer_dynamics(str(source), sig, layer, order, horizon)[1]
    status = unit_status(layer_plan.hidden_size, layer_plan.pruned)
    units = np.array([f"unit {k}" for k in range(len(status))], dtype=object)
    embedding = common.embedding(str(source), sig, layer, order, horizon)
    left, right = st.columns(2)
    scatter = status_scatter(embedding[:, 0], embedding[:, 1], status, units)
    scatter.update_layout(xaxis_title="MDS 1", yaxis_title="MDS 2")
    left.plotly_chart(scatter, key="prune_embedding")
    left.caption("Units placed by their dynamics distances (MDS); crosses are pruned.")
    order_units = common.tree_order(str(source), sig, layer, order, horizon)
    if layer_plan.clusters is not None:
        order_units = group_by_labels(order_units, layer_plan.clusters)
    view = heatmap_view(distances, order_units, marked=layer_plan.pruned)
    # no colour bar: drawing it is a quarter of the figure's cost in the browser, on every slider move
    heat = go.Figure(go.Heatmap(z=view.matrix.astype(np.float32), colorscale="Viridis", showscale=False,
                                hovertemplate="d = %{z:.3f}<extra></extra>"))
    heat.add_trace(go.Scatter(x=view.marks, y=view.marks, mode="markers", name="pruned",
                              marker={"symbol": "x", "color": COLOURS["pruned"], "size": 7},
                              customdata=layer_plan.pruned, hovertemplate="pruned unit %{customdata}"))
    blocks = f" (blocks of {view.block})" if view.block > 1 else ""
    heat.update_layout(height=460, margin={"t": 20, "b": 40}, yaxis={"autorange": "reversed"}, showlegend=False,
                       xaxis_title="units, ordered by cluster" + blocks, yaxis_title="")
    right.plotly_chart(heat, key="prune_heatmap")
    right.caption("Distance matrix ordered by cluster (dark: alike), pruned units marked on the diagonal; "
                  "hover for a distance.")


def show_why_measured(layer: str, layer_plan, criterion: str, choice) -> None:
    """Why a criterion that measures Taylor importances removes what it removes."""
    if choice.importance_source != TAYLOR:
        st.info("Nothing is removed at this ratio, so no importance was measured.")
        return
    norms = common.importance(str(source), sig, layer)
    status = unit_status(layer_plan.hidden_size, layer_plan.pruned)
    units = np.array([f"unit {k}" for k in range(len(status))], dtype=object)
    chunks = CRITERIA[criterion].measurement_chunks
    left, right = st.columns(2)
    why = status_scatter(norms, choice.first_importance[layer], status, units, height=420,
                         customdata=np.column_stack([choice.removed_in_chunk[layer], choice.importance[layer]]),
                         hovertemplate="%{hovertext}<br>final weight norm %{x:.3f}<br>"
                                       "Taylor importance, uncut model %{y:.3f}<br>"
                                       "removed in chunk %{customdata[0]:.0f} (0: kept)<br>"
                                       "importance then %{customdata[1]:.3f}")
    why.update_layout(xaxis_title="final weight norm (what magnitude reads)",
                      yaxis_title="Taylor importance on the uncut model")
    left.plotly_chart(why, key="prune_why_measured")
    again = (f" {criterion} measures again after each of its {chunks} chunks, on the model cut so far, so a unit "
             "that looked weak is kept once the units that covered for it are gone, and the reverse."
             if chunks > 1 else "")
    if CRITERIA[criterion].needs_distances:
        again += (f" {criterion} weighs each importance by the unit's dynamics distance to its nearest kept unit, "
                  "as dynamics-greedy does, so a weak unit with no near twin may stay.")
    left.caption("Each unit by how much the loss depends on it (Taylor importance: |gradient x activation| on "
                 "training batches) against the size of its weights. magnitude removes from the left; the Taylor "
                 "criteria remove from the bottom: large weights need not matter to the loss." + again)
    if len(layer_plan.pruned):
        right.markdown("**The removals in order**")
        right.dataframe(measured_removal_table(choice, layer, norms), hide_index=True, height=360, width="stretch",
                        column_config={name: st.column_config.NumberColumn(format="%.3f") for name in (
                            "importance when removed", "importance, uncut model", "final weight norm")})
        right.caption("Importances are scaled per measurement so that the layer's strongest unit scores 1.")


def show_why(layer: str, layer_plan, criterion: str) -> None:
    distances = common.layer_dynamics(str(source), sig, layer, order, horizon)[1]
    redundancy = unit_redundancy(distances, common.importance(str(source), sig, layer), layer_plan.pruned)
    left, right = st.columns(2)
    why = status_scatter(redundancy["importance"].to_numpy(), redundancy["distance"].to_numpy(),
                         redundancy["status"].to_numpy(), ("unit " + redundancy["unit"].astype(str)).to_numpy(),
                         customdata=redundancy[["nearest unit", "score"]].to_numpy(), height=420,
                         hovertemplate="%{hovertext}<br>importance %{x:.3f}<br>distance %{y:.3f}<br>"
                                       "nearest unit %{customdata[0]:.0f}<br>score %{customdata[1]:.4f}")
    why.update_layout(xaxis_title="importance (final weight norm)", yaxis_title="dynamics distance to the nearest unit")
    left.plotly_chart(why, key="prune_why")
    left.caption("Each unit by what the default criterion weighs: how strong it is, and how close another unit's "
                 "dynamics are to its own. dynamics-greedy removes from the lower left: weak units with a near twin.")
    n_pruned = len(layer_plan.pruned)
    if criterion == "dynamics-greedy" and n_pruned:
        right.markdown("**The removals in order**")
        right.dataframe(cached_removals(str(source), sig, layer, order, horizon, n_pruned),
                        hide_index=True, height=360, width="stretch",
                        column_config={"distance": st.column_config.NumberColumn(format="%.3f"),
                                       "importance": st.column_config.NumberColumn(format="%.3f"),
                                       "score": st.column_config.NumberColumn(format="%.4f")})
        right.caption("Each step removes the kept unit with the smallest score = importance x distance to its "
                      "nearest kept unit; once a unit's twin is gone its score rises, so pairs are not both removed.")
    else:
        right.markdown("**Lowest redundancy scores**")
        right.dataframe(redundancy.head(20), hide_index=True, height=360, width="stretch")
        right.caption("score = importance x distance to the nearest unit, before any removal.")


def measured_choice(ratio_items: tuple, criterion: str):
    """The cut of a criterion that measures importances on training batches, once asked for (a button,
    as it takes a while); None until then, or when the model or its training data is not at hand."""
    model, info = common.model_or_none(source)
    problem = (info if model is None else common.corpus_problem_of(info.get("data_source")))
    if problem:
        st.info(f"{criterion} measures unit importances on the model's training batches, so it needs the model "
                f"and its corpus: {problem}")
        return None
    key = (str(source), sig, order, horizon, ratio_items, criterion)
    asked = st.session_state.setdefault("prune_measured", set())
    if key not in asked and any(ratio > 0 for _, ratio in ratio_items):  # nothing to remove: nothing to measure
        spec = CRITERIA[criterion]
        batches = spec.calibration_batches or PipelineConfig().calibration_batches
        times = f" in each of {spec.measurement_chunks} chunks" if spec.measurement_chunks > 1 else ""
        st.info(f"{criterion} measures each unit's importance on {batches} training batches{times}, as "
                "`dynaprune prune` does, so it is not redone on every slider move: taylor-iterative takes seconds "
                "on the synthetic sample and a minute and a half on the ptb-small one (docs/benchmarks.md).")
        if not st.button(f"Measure and cut with {criterion}", key="prune_measure_button", type="primary"):
            return None
        asked.add(key)
    try:
        with st.spinner(f"Measuring unit importances and cutting with {criterion}..."):
            return common.measured_plan(*key)
    except DynapruneError as error:
        asked.discard(key)
        st.error(f"Could not cut with {criterion}: {error}")
        return None


@st.fragment
def preview() -> None:
    # -------------------------------------------------------------- controls
    left, right = st.columns([2, 1])
    per_layer = bool(st.session_state.get("prune_per_layer"))  # the toggle below; its sliders then decide
    ratio = left.slider("Pruning ratio (fraction of hidden units removed)", 0.0, 0.9,
                        float(st.session_state.get(common.RATIO_KEY, 0.5)), 0.05, key="prune_ratio_slider",
                        disabled=per_layer,
                        help="Per-layer ratios are on: the sliders below decide." if per_layer else None)
    names = list(CRITERIA)
    chosen = st.session_state.get(common.CRITERION_KEY, DEFAULT_TRAJECTORY_CRITERION)
    criterion = right.selectbox("Criterion", names, index=names.index(chosen), key="prune_criterion_select",
                                help="dynamics-greedy (the preview's default): remove, one at a time, the unit "
                                     "whose final weight norm times its dynamics distance to the nearest kept unit is "
                                     "smallest; dynamics: cluster units with similar dynamics, keep the strongest of "
                                     "each cluster (the method as first written); magnitude: remove the smallest final "
                                     "weight vectors; random: a seeded draw. The criteria named taylor measure how "
                                     f"much the loss depends on each unit on training batches ({DEFAULT_CRITERION}, "
                                     "the pipeline's default, cuts best); they are previewed on request, as they take "
                                     "a while. docs/criteria.md compares them.")
    st.session_state[common.RATIO_KEY], st.session_state[common.CRITERION_KEY] = ratio, criterion
    ratios = {layer: ratio for layer in trajectory.layers}
    if st.toggle("Per-layer ratios", key="prune_per_layer"):
        columns = st.columns(len(trajectory.layers))
        for column, layer in zip(columns, trajectory.layers):
            ratios[layer] = column.slider(layer, 0.0, 0.9, ratio, 0.05, key=f"prune_ratio_{layer}")
    ratio_items = tuple(sorted(ratios.items()))
    st.session_state[common.LAYER_RATIOS_KEY] = dict(ratios)  # what a Fine-tune job will use

    choice = None
    if CRITERIA[criterion].importance_source == TAYLOR:
        choice = measured_choice(ratio_items, criterion)
        if choice is None:
            return
        plan = choice.plan
    else:
        plan = common.pruning_plan(str(source), sig, order, horizon, ratio_items, criterion)
    columns = st.columns(len(plan.layers) + 1)
    for column, (layer, layer_plan) in zip(columns, plan.layers.items()):
        column.metric(f"{layer}: units pruned", f"{len(layer_plan.pruned)} of {layer_plan.hidden_size}")
    total_pruned = sum(len(p.pruned) for p in plan.layers.values())
    columns[-1].metric("Units pruned in all", total_pruned)
    st.session_state["prune_plan"] = plan.to_dict()

    # -------------------------------------------------------------- model size (perplexity comes last)
    model, info = common.model_or_none(source)
    st.subheader("Size and zero-shot perplexity")
    perplexity_box = None
    if model is None:
        st.info(info if info == NO_MODEL_HINT else
                f"No model next to this trajectory, so no sizes or perplexity: {info}")
    else:
        footprint = plan_footprint(model.config, plan)
        left, perplexity_box = st.columns([3, 2])

        def number(value):
            return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"

        left.dataframe(footprint.to_frame().style.format({"before": number, "after": number, "change": "{:+.1%}"}),
                       hide_index=True, width="stretch")

    # -------------------------------------------------------------- which units, and why
    st.subheader("Which units go")
    layer = st.selectbox("Layer", trajectory.layers, key="prune_layer")
    # Lazy tabs: only the open one is computed and drawn, so a slider move redraws two figures, not three.
    which_tab, why_tab = st.tabs(["Where they are", "Why they go"], key="prune_view", on_change="rerun")
    if which_tab.open:
        with which_tab:
            show_which_units(layer, plan.layers[layer])
    if why_tab.open:
        with why_tab:
            if choice is None:
                show_why(layer, plan.layers[layer], criterion)
            else:
                show_why_measured(layer, plan.layers[layer], criterion, choice)

    # -------------------------------------------------------------- curve
    st.subheader("Zero-shot perplexity against the ratio")
    validation, problem = common.validation_for(source) if model is not None else (None, None)
    if validation is None:
        st.info("Needs a model and its validation data.")
    else:
        if st.button("Compute the curve for every criterion", key="prune_curve_button"):
            st.session_state["prune_curve_for"] = (str(source), sig, order, horizon)
        if st.session_state.get("prune_curve_for") == (str(source), sig, order, horizon):
            curve = cached_curve(str(source), sig, order, horizon)
            figure = go.Figure([go.Scatter(x=rows["ratio"], y=rows["perplexity"], mode="lines+markers", name=name)
                                for name, rows in curve.groupby("criterion", sort=False)])
            figure.add_vline(x=ratio, line_dash="dot", line_color="grey")
            figure.update_layout(height=380, margin={"t": 20, "b": 40}, xaxis_title="ratio",
                                 yaxis_title="zero-shot validation perplexity", legend_title_text="criterion")
            st.plotly_chart(figure, key="prune_curve")
        else:
            st.caption(f"Prunes and evaluates the model at ratios {', '.join(map(str, DEFAULT_CURVE_RATIOS))} "
                       "with each criterion.")

    # -------------------------------------------------------------- perplexity, into its place above
    if perplexity_box is None:
        return
    with perplexity_box:
        full = common.recorded_perplexity(source, info)
        if full is not None:
            st.metric("Unpruned validation perplexity (full split)", f"{full:.2f}",
                      help="As recorded when the model was trained, on the whole validation split: the same "
                           "number the Compare page shows.")
        if validation is None:
            st.warning(f"Perplexity unavailable: {problem}")
            return
        baseline = cached_baseline(str(source), sig)
        pruned = tuple((name, tuple(int(unit) for unit in p.pruned)) for name, p in plan.layers.items())
        pruned_ppl = cached_zero_shot(str(source), sig, pruned, plan)
        tokens = validation.tokens.numel()
        where = ("the whole validation split" if not validation.capped else
                 f"{tokens:,} of the {validation.total_tokens:,} validation tokens of {validation.source}, "
                 f"{validation.windows} stretches spread over the whole split (for speed)")
        st.metric("Zero-shot validation perplexity", f"{pruned_ppl:.2f}", f"{pruned_ppl - baseline:+.2f}",
                  delta_color="inverse", help=f"Perplexity of the pruned model before any fine-tuning, on {where}; "
                                              "the change is against the unpruned model on the same tokens.")
        st.caption((f"Unpruned on the same tokens as the zero-shot figure: {baseline:.2f}" if validation.capped
                    else f"Unpruned: {baseline:.2f}")
                   + (f" · oracle: {validation.oracle_perplexity:.2f}" if validation.oracle_perplexity else "")
                   + f" · on {where}.")


preview()
