"""Fine-tune page: start the iterative prune-and-fine-tune pipeline (`dynaprune prune`) as a
background job, follow its progress live, cancel or resume it. Jobs outlive the browser session:
those started earlier are listed with their true state."""
import re
import time
from datetime import datetime

import pandas as pd
import plotly.express as px
import streamlit as st

from analysis import jobs
from analysis.errors import DynapruneError
from analysis.exploration import pipeline_curve, reference_lines
from analysis.dynamics.selection import CRITERIA
from analysis.lm.training_config import LR_SCHEDULES, TEACHER_PRECISIONS
from app import common

POLL_SECONDS = 2.0
st.title("Fine-tune")
st.write("Prune the model to the target ratio in stages; after each cut the smaller model is fine-tuned with the "
         "bigger one as teacher (distillation) and a discrimination-aware L2 penalty. The work runs as a background "
         "job: you can leave this page, or close the browser, and come back.")

source = common.current_source()
model, model_note = common.model_or_none(source) if source else (None, "no trajectory chosen")
defaults = common.pipeline_defaults()

# ------------------------------------------------------------------ the form
st.subheader("New fine-tuning job")
if model is None:
    st.info(f"The current trajectory cannot be fine-tuned: {model_note}. Choose a sample or a run on the Data page.")
else:
    st.caption(f"Starting from **{common.display_name(source)}** ({model.config.rnn_type}, hidden sizes "
               f"{model.config.hidden_sizes}). Results go to `{common.runs_dir()}`.")
    with st.form("finetune_form"):
        left, middle, right = st.columns(3)
        ratio = left.slider("Target pruning ratio", 0.0, 0.9, float(st.session_state.get(common.RATIO_KEY, 0.5)),
                            0.05, key="ft_ratio",
                            help="0 prunes nothing and fine-tunes the same way: a control, to tell what the "
                                 "fine-tuning alone does from what the pruning does.")
        names = list(CRITERIA)
        criterion = left.selectbox("Criterion", names, index=names.index(st.session_state.get(common.CRITERION_KEY,
                                                                                               "dynamics")),
                                   key="ft_criterion")
        one_shot = left.checkbox("One shot (a single cut, no stages)", key="ft_one_shot")
        dry_run = left.checkbox("Dry run (a few batches per stage)", key="ft_dry_run")
        stages = middle.number_input("Stages", 1, 10, int(defaults["stages"]), key="ft_stages")
        epochs = middle.number_input("Epochs per stage", 1, 100, int(defaults["epochs_per_stage"]), key="ft_epochs")
        regularization = middle.radio("Regularisation", ["discrimination-aware L2", "plain L2", "none"],
                                      key="ft_regularization")
        da_l2 = middle.number_input("L2 strength λ", 0.0, 10.0, float(defaults["da_l2"]), format="%.6f",
                                    key="ft_da_l2")
        schedules = list(LR_SCHEDULES)
        lr_schedule = middle.radio("Learning-rate schedule", schedules, index=schedules.index(defaults["lr_schedule"]),
                                   key="ft_lr_schedule", horizontal=True,
                                   help="cosine: each stage anneals the rate to 0. step: the rate is held through a "
                                        "stage's first epoch and decayed after each later one.")
        distillation = right.checkbox("Distillation from the previous stage", value=True, key="ft_distillation")
        kd_alpha = right.slider("Distillation weight α", 0.0, 1.0, float(defaults["kd_alpha"]), 0.05, key="ft_kd_alpha")
        kd_tau = right.number_input("Temperature τ", 0.1, 20.0, float(defaults["kd_tau"]), key="ft_kd_tau")
        precisions = sorted(TEACHER_PRECISIONS)
        teacher_precision = right.selectbox("Teacher's output layer", precisions,
                                            index=precisions.index(defaults["teacher_precision"]),
                                            key="ft_teacher_precision",
                                            help="bfloat16 is faster on CPUs with bfloat16 units and changes the "
                                                 "teacher's targets very little.")
        stamp = st.session_state.setdefault("ft_stamp", datetime.now().strftime("%Y%m%d-%H%M%S"))
        name = right.text_input("Output folder name", f"prune-{source.name}-{stamp}", key="ft_name",
                                help="Created inside the runs folder.")
        submitted = st.form_submit_button("Start fine-tuning", type="primary")
    if submitted:
        target = common.runs_dir() / name
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
            st.error("The folder name may hold letters, digits, '.', '_' and '-' only (no slashes), at most 100.")
        elif target.exists():
            st.error(f"{target} already exists; choose another name (or resume its job below).")
        else:
            args = ["prune", "--from", str(source), "--out", str(target), "--ratio", f"{ratio:g}",
                    "--stages", str(int(stages)), "--criterion", criterion, "--epochs-per-stage", str(int(epochs)),
                    "--da-l2", f"{da_l2:g}", "--kd-alpha", f"{kd_alpha:g}", "--kd-tau", f"{kd_tau:g}",
                    "--lr-schedule", lr_schedule, "--teacher-precision", teacher_precision, "--no-progress"]
            args += ["--one-shot"] if one_shot else []
            args += ["--dry-run"] if dry_run else []
            args += [] if distillation else ["--no-distillation"]
            args += {"plain L2": ["--plain-l2"], "none": ["--no-regularization"]}.get(regularization, [])
            try:
                common.runs_dir().mkdir(parents=True, exist_ok=True)
                job = jobs.submit(args, label=f"{common.display_name(source)} → {name} (ratio {ratio:g})",
                                  cwd=common.runs_dir())
            except DynapruneError as error:
                st.error(f"Could not start the job: {error}")
            else:
                st.session_state["ft_job"] = job.id
                st.session_state.pop("ft_stamp", None)  # the next job gets a fresh default name
                st.success(f"Job {job.id} is {job.state}.")


# ------------------------------------------------------------------ jobs, refreshed live
def job_progress(job, events) -> float:
    planned = 1 if "--one-shot" in job.args else int(common.argument_of(job.args, "--stages", "1"))
    planned *= int(common.argument_of(job.args, "--epochs-per-stage", "1"))
    done = sum(1 for event in events if event.get("event") == "epoch")
    return 1.0 if job.state == jobs.SUCCEEDED else min(1.0, done / max(1, planned))


@st.fragment(run_every=POLL_SECONDS)
def jobs_panel():
    st.subheader("Jobs")
    try:
        everything = jobs.list_jobs()
    except DynapruneError as error:
        st.error(f"Cannot read the jobs folder: {error}")
        return
    show_all = st.toggle("Show jobs of every command", key="ft_show_all")
    listed = [job for job in reversed(everything) if show_all or job.args[:1] == ["prune"]]
    if not listed:
        st.caption(f"No jobs yet (jobs live in {jobs.jobs_dir()}).")
        return
    table = pd.DataFrame([{
        "job": job.id, "state": job.state, "label": job.label or " ".join(job.args[:1]),
        "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(job.started_at)) if job.started_at else "",
        "message": job.message,
    } for job in listed])
    st.dataframe(table, hide_index=True, width="stretch")
    ids = [job.id for job in listed]
    preferred = st.session_state.get("ft_job")
    chosen_id = st.selectbox("Job", ids, index=ids.index(preferred) if preferred in ids else 0, key="ft_job_select")
    job = next(j for j in listed if j.id == chosen_id)
    events = jobs.read_metrics(job.id) if job.state != jobs.CORRUPT else []
    left, middle, right = st.columns([2, 1, 1])
    left.progress(job_progress(job, events), text=f"{job.state}: {job.message}")
    if job.state in jobs.ACTIVE_STATES and middle.button("Cancel", key=f"cancel_{job.id}"):
        try:
            jobs.cancel(job.id)
        except DynapruneError as error:
            st.error(str(error))
        st.rerun(scope="fragment")
    if job.resumable and middle.button("Resume", key=f"resume_{job.id}"):
        try:
            jobs.resume(job.id)
        except DynapruneError as error:
            st.error(str(error))
        st.rerun(scope="fragment")
    if job.out_dir and job.state == jobs.SUCCEEDED and right.button("Compare", key=f"compare_{job.id}"):
        st.session_state["compare_selection"] = [job.out_dir]
        st.switch_page("views/compare.py")
    curve = pipeline_curve(events)
    if not curve.empty:
        figure = px.line(curve, x="position", y="val_ppl", color=curve["stage"].astype(str), markers=True,
                         symbol="kind", height=320, labels={"color": "stage", "position": "epochs of fine-tuning",
                                                            "val_ppl": "validation perplexity"})
        for label, value in reference_lines(events).items():
            figure.add_hline(y=value, line_dash="dash" if label == "baseline" else "dot",
                             annotation_text=label, line_color="grey")
        figure.update_layout(margin={"t": 20, "b": 40})
        st.plotly_chart(figure, key="ft_job_curve")
    with st.expander("Log (last lines)"):
        st.code(jobs.read_log(job.id, tail=30) or "(empty)", language=None)


jobs_panel()
