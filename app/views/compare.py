"""Compare page: validation perplexity across the stages of pruning pipelines and across training
runs, with the zero-shot drop at each cut, the unpruned baseline and (for the synthetic language)
the oracle; a results table to download, and the pruned models themselves."""
from pathlib import Path

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from analysis.run_curves import pipeline_curve, pipeline_table, reference_lines, training_curve
from analysis.runs import FINAL_MODEL_FILE, find_runs, read_run_metrics, run_kind
from app import common

st.title("Compare")

candidates = [str(p) for p in common.list_samples()] + [str(p) for p in find_runs(common.runs_dir())]
if not candidates:
    st.info(f"No runs yet in {common.runs_dir()}. Start one on the Fine-tune page.")
    st.stop()
pipelines = [c for c in candidates if run_kind(c) == "pipeline"]
wanted = [c for c in st.session_state.get("compare_selection", []) if c in candidates]
default = wanted or pipelines[:1] or candidates[:1]
chosen = st.multiselect("Runs", candidates, default=default, format_func=common.display_name, key="compare_runs")
if not chosen:
    st.info("Choose at least one run.")
    st.stop()

figure = go.Figure()
palette = px.colors.qualitative.Plotly
tables, lines = [], {}
for number, run in enumerate(chosen):
    name, colour = common.display_name(run), palette[number % len(palette)]
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
        table = pipeline_table(events)
        table.insert(0, "run", name)
        tables.append(table)
    else:
        curve = training_curve(events)
        figure.add_trace(go.Scatter(x=curve["epoch"], y=curve["val_ppl"], mode="lines+markers", name=name,
                                    line={"color": colour, "dash": "dash"}))
        if not curve.empty:
            tables.append(pd.DataFrame([{"run": name, "stage": "training", "val_ppl": curve["val_ppl"].min()}]))
    for label, value in reference_lines(events).items():
        lines.setdefault(label, value)
for label, value in lines.items():
    figure.add_hline(y=value, line_dash="dash" if label == "baseline" else "dot", line_color="grey",
                     annotation_text=f"{label} {value:.2f}")
figure.update_layout(height=460, margin={"t": 20, "b": 40}, xaxis_title="epochs (of training, or of fine-tuning "
                     "across stages)", yaxis_title="validation perplexity", legend={"orientation": "h", "y": -0.2})
st.plotly_chart(figure, key="compare_curves")
st.caption("Lines: validation perplexity after each epoch. Crosses: right after each pruning, before fine-tuning. "
           "Dashed grey: the unpruned model; dotted: the oracle (the true language's own perplexity).")

st.subheader("Results")
results = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
if results.empty:
    st.caption("No results recorded yet.")
else:
    decimals = {column: st.column_config.NumberColumn(format="%.2f")
                for column in ("ratio", "zero_shot_val_ppl", "val_ppl", "test_ppl", "wall_s")}
    integers = {column: st.column_config.NumberColumn(format="localized")
                for column in ("params_recurrent", "params_total")}
    st.dataframe(results, hide_index=True, width="stretch", column_config={**decimals, **integers})
    st.download_button("Download the table (CSV)", results.to_csv(index=False), file_name="dynaprune-results.csv",
                       mime="text/csv", key="compare_csv")

finished = [run for run in chosen if (Path(run) / FINAL_MODEL_FILE).is_file()]
if finished:
    st.subheader("Pruned models")
    run = st.selectbox("Pipeline", finished, format_func=common.display_name, key="compare_model_run")
    model_path = Path(run) / FINAL_MODEL_FILE
    st.download_button(f"Download {FINAL_MODEL_FILE} ({model_path.stat().st_size / 1e6:.1f} MB)", model_path.read_bytes,
                       file_name=f"{Path(run).name}-{FINAL_MODEL_FILE}", mime="application/octet-stream",
                       key="compare_model")
    st.caption("A plain PyTorch checkpoint: load it with `analysis.lm.model.load_model` or "
               "`torch.load(path, weights_only=True)`.")
