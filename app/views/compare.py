"""Compare page: validation perplexity across the stages of pruning pipelines and across training
runs on one corpus at a time, with the zero-shot drop at each cut, the unpruned baseline and (for
the synthetic language) the oracle; a results table to download with each run's settings, the
trade-off between size and perplexity, and the pruned models themselves. The reference runs behind
docs/results.md (shipped without weights, analysis.reference_runs) are offered beside one's own, so
the evidence is on screen offline."""
from pathlib import Path

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from analysis.reference_runs import HEADLINE_ROWS, find_reference_runs, read_reference
from analysis.run_curves import (
    TRADEOFF_GROUPS,
    lower_envelope,
    pipeline_curve,
    read_run_description,
    reference_lines,
    results_csv,
    results_for_display,
    results_table,
    tradeoff_points,
    training_curve,
)
from analysis.runs import FINAL_MODEL_FILE, find_runs, read_run_metrics, run_kind
from analysis.sweeps.table import find_sweeps, read_sweep_table, sweep_tradeoff
from app import common

st.title("Compare")

references = {str(p): read_reference(p) for p in find_reference_runs()}
candidates = ([str(p) for p in common.list_samples()] + [str(p) for p in find_runs(common.runs_dir())]
              + list(references))
if not candidates:
    st.info(f"No runs yet in {common.runs_dir()}. Start one on the Fine-tune page.")
    st.stop()
described = {run: read_run_description(run) for run in candidates}
corpus_of = {run: described[run]["corpus"] or "unknown" for run in candidates}


def corpus_label(corpus) -> str:
    return {"ptb": "Penn Treebank", "unknown": "unknown corpus"}.get(corpus, corpus)


def run_label(run: str) -> str:
    if run in references:
        return f"reference: {references[run]['row']}, seed {references[run]['seed']}" + (
            " (dry run)" if described[run]["dry_run"] else "")
    return common.display_name(run) + (" (dry run)" if described[run]["dry_run"] else "")


# Runs on different corpora never share an axis: their perplexities do not compare.
wanted = [c for c in st.session_state.get("compare_selection", []) if c in candidates]
real_pipelines = [c for c in candidates if run_kind(c) == "pipeline" and not described[c]["dry_run"]]
corpora = list(dict.fromkeys(corpus_of.values()))
# first the corpus of an explicit choice, else of the trajectory chosen on the Data page, else of a finished pipeline
current = common.current_source()
preferred = [corpus_of[c] for c in wanted] + [read_run_description(current)["corpus"] if current else None]
preferred += [corpus_of[c] for c in real_pipelines + candidates]
corpus = st.selectbox("Corpus", corpora, index=corpora.index(next(c for c in preferred if c in corpora)),
                      format_func=corpus_label,
                      key="compare_corpus", help="Runs are compared on one corpus at a time.")
on_corpus = [c for c in candidates if corpus_of[c] == corpus]
# an explicit choice (the Fine-tune page's Compare button) is kept; otherwise a dry run is never preselected
# then one's own latest pipeline, else the reference runs' headline rows (the evidence, offline)
own_pipelines = [c for c in real_pipelines if c in on_corpus and c not in references]
headline = [c for c in on_corpus if c in references and references[c]["row"] in HEADLINE_ROWS
            and references[c]["seed"] == 0 and not described[c]["dry_run"]]
default = ([c for c in wanted if c in on_corpus] or own_pipelines[:1] or headline
           or [c for c in on_corpus if not described[c]["dry_run"]][:1])
chosen = st.multiselect("Runs", on_corpus, default=default, format_func=run_label, key=f"compare_runs_{corpus}")
if not chosen:
    st.info("Choose at least one run.")
    st.stop()

figure = go.Figure()
palette = px.colors.qualitative.Plotly
lines = {}
for number, run in enumerate(chosen):
    name, colour = run_label(run), palette[number % len(palette)]
    events = read_run_metrics(run)
    if run_kind(run) == "pipeline":
        curve = pipeline_curve(events)
        trained = curve[curve["kind"] != "zero-shot"]
        figure.add_trace(go.Scatter(x=trained["position"], y=trained["val_ppl"], mode="lines+markers", name=name,
                                    line={"color": colour}, customdata=trained["stage"],
                                    hovertemplate="stage %{customdata}<br>%{y:.2f}"))
        shots = curve[curve["kind"] == "zero-shot"]
        figure.add_trace(go.Scatter(x=shots["position"], y=shots["val_ppl"], mode="markers", name=f"{name}: zero-shot",
                                    marker={"symbol": "x", "size": 11, "color": colour}, customdata=shots["stage"],
                                    hovertemplate="right after pruning, stage %{customdata}<br>%{y:.2f}"))
    else:
        curve = training_curve(events)
        figure.add_trace(go.Scatter(x=curve["epoch"], y=curve["val_ppl"], mode="lines+markers", name=name,
                                    line={"color": colour, "dash": "dash"}))
    for label, value in reference_lines(events).items():
        lines.setdefault(label, value)
for label, value in lines.items():
    figure.add_hline(y=value, line_dash="dash" if label == "baseline" else "dot", line_color="grey",
                     annotation_text=f"{label} {value:.2f}")
figure.update_layout(height=460, margin={"t": 20, "b": 40}, xaxis_title="epochs (of training, or of fine-tuning "
                     "across stages)", yaxis_title="validation perplexity", legend={"orientation": "h", "y": -0.2})
st.plotly_chart(figure, key="compare_curves")
st.caption(f"{corpus_label(corpus)}. Lines: validation perplexity after each epoch. Crosses: right after each "
           "pruning, before fine-tuning. Dashed grey: the unpruned model; dotted: the oracle (the true language's "
           "own perplexity).")

st.subheader("Results")
results = results_table([(run_label(run), run) for run in chosen])
if results.empty:
    st.caption("No results recorded yet.")
else:
    st.dataframe(results_for_display(results), hide_index=True, width="stretch")
    st.caption("valid and test ppl: on the whole split. A pipeline's stage rows give the best validation perplexity "
               "of the stage's fine-tuning; its final row, the model it keeps. The CSV adds each run's settings.")
    st.download_button("Download the table (CSV)", results_csv(results), file_name="dynaprune-results.csv",
                       mime="text/csv", key="compare_csv")

st.subheader("Trade-off: perplexity against size")
shown_runs = [run for run in on_corpus if run in chosen or not described[run]["dry_run"]]
points = tradeoff_points(results_table([(run_label(run), run) for run in shown_runs]))
measure = st.radio("Perplexity", ["valid ppl", "test ppl"], horizontal=True, key="compare_tradeoff_measure",
                   format_func={"valid ppl": "validation", "test ppl": "test"}.get)
known = points[points[measure].notna()]
if known.empty:
    st.caption("No run on this corpus records both its size and this perplexity yet.")
else:
    spread = known["parameters"].max() / max(1.0, known["parameters"].min())
    tradeoff = px.scatter(known, x="parameters", y=measure, color="group", symbol="group", log_x=spread > 20,
                          symbol_map={TRADEOFF_GROUPS["unpruned"]: "star", TRADEOFF_GROUPS["control"]: "diamond"},
                          symbol_sequence=["circle"], hover_data=["run", "stage"], height=440,
                          color_discrete_map={TRADEOFF_GROUPS["unpruned"]: "black", TRADEOFF_GROUPS["control"]: "grey"},
                          labels={"parameters": "parameters remaining", "group": "",
                                  measure: "validation perplexity" if measure == "valid ppl" else "test perplexity"})
    tradeoff.update_traces(marker={"size": 11})
    frontier = lower_envelope(points, measure)
    tradeoff.add_trace(go.Scatter(x=frontier["parameters"], y=frontier[measure], mode="lines", line_shape="hv",
                                  name="frontier", line={"color": "grey", "dash": "dot"}, hoverinfo="skip"))
    tradeoff.update_layout(margin={"t": 20, "b": 40})
    st.plotly_chart(tradeoff, key="compare_tradeoff")
    st.caption(f"Every run and stage on {corpus_label(corpus)} (dry runs only when chosen above), coloured by "
               "criterion. Star: an unpruned model; diamond: a control (ratio 0, fine-tuned the same way); dotted: "
               "the frontier, the lowest perplexity reached with at most that many parameters.")

finished = [run for run in chosen if (Path(run) / FINAL_MODEL_FILE).is_file()]
if finished:
    st.subheader("Pruned models")
    run = st.selectbox("Pipeline", finished, format_func=run_label, key="compare_model_run")
    model_path = Path(run) / FINAL_MODEL_FILE
    st.download_button(f"Download {FINAL_MODEL_FILE} ({model_path.stat().st_size / 1e6:.1f} MB)", model_path.read_bytes,
                       file_name=f"{Path(run).name}-{FINAL_MODEL_FILE}", mime="application/octet-stream",
                       key="compare_model")
    st.caption("A plain PyTorch checkpoint: load it with `analysis.lm.model.load_model` or "
               "`torch.load(path, weights_only=True)`.")

sweeps = find_sweeps(common.runs_dir())
if sweeps:
    st.subheader("Sweeps")
    sweep = st.selectbox("Sweep", sweeps, format_func=common.display_name, key="compare_sweep",
                         help="A folder written by `dynaprune sweep` under the runs folder: its results table.")
    table = read_sweep_table(sweep)
    points = sweep_tradeoff(table)
    if points.empty:
        st.caption("No trial of this sweep has finished yet.")
    else:
        figure = px.scatter(points, x="parameters", y="test ppl", color="criterion", symbol="criterion",
                            hover_data=["trial", "ratio", "seed", "valid ppl"], height=420,
                            labels={"parameters": "parameters remaining", "test ppl": "test perplexity"})
        figure.update_traces(marker={"size": 11})
        frontier = lower_envelope(points, "test ppl")
        figure.add_trace(go.Scatter(x=frontier["parameters"], y=frontier["test ppl"], mode="lines", line_shape="hv",
                                    name="frontier", line={"color": "grey", "dash": "dot"}, hoverinfo="skip"))
        figure.update_layout(margin={"t": 20, "b": 40})
        st.plotly_chart(figure, key="compare_sweep_tradeoff")
    counts = table["status"].value_counts().to_dict()
    st.caption(f"{len(table)} trials ({', '.join(f'{n} {s}' for s, n in counts.items()) or 'none ended yet'}); "
               "each point is a trial's final model: its test perplexity against its parameters, coloured by "
               "criterion; dotted: the frontier. The table has the command that reproduces each trial.")
    shown = table.reindex(columns=["trial", "status", "criterion", "ratio", "seed", "params_total", "val_ppl",
                                   "test_ppl", "command"]).rename(columns={
        "params_total": "parameters", "val_ppl": "valid ppl", "test_ppl": "test ppl"})
    st.dataframe(shown, hide_index=True, width="stretch", column_config={
        "parameters": st.column_config.NumberColumn(format="localized"),
        "valid ppl": st.column_config.NumberColumn(format="%.2f"),
        "test ppl": st.column_config.NumberColumn(format="%.2f")})
