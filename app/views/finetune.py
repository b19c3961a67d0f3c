"""Fine-tune page: start the iterative prune-and-fine-tune pipeline (`dynaprune prune`) as a
background job, follow its progress live, cancel or resume it. Jobs outlive the browser session:
those started earlier are listed with their true state."""
import math
import re
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from analysis import jobs
from analysis.cli.prune import config_of_job, job_args
from analysis.dynamics.criteria import DEFAULT_CRITERION
from analysis.dynamics.selection import CRITERIA
from analysis.errors import DynapruneError
from analysis.lm.training_config import LR_SCHEDULES, TEACHER_PRECISIONS
from analysis.pruning.config import REGULARIZATIONS, uniform_or_per_layer
from analysis.run_curves import pipeline_curve, reference_lines
from analysis.runs import NO_MODEL_HINT
from app import common, corpus_fetch, participant

POLL_SECONDS = 2.0
REGULARIZATION_LABELS = {"da-l2": "discrimination-aware L2", "l2": "plain L2", "none": "none"}
HORIZON_CHOICES = ["T (snapshots)", "custom", "infinite (Martin)"]
st.title("Fine-tune")
st.write("Prune the model to the target ratio in stages; after each cut the smaller model is fine-tuned with the "
         "bigger one as teacher (distillation) and a discrimination-aware L2 penalty. The work runs as a background "
         "job: you can leave this page, or close the browser, and come back.")

participant_name = participant.ask()  # labels the jobs started here; picks one's own from everyone's
source = common.current_source()
model, model_info = common.model_or_none(source) if source else (None, "no trajectory chosen")


# ------------------------------------------------------------------ the form
def default_folder_name(source_name: str, owner: str | None, stamp: str) -> str:
    """prune-<source>-<owner>-<time>: in a room, two people starting at the same second still get
    folders of their own. The owner's name keeps only the letters and digits a folder name allows."""
    who = re.sub(r"[^A-Za-z0-9]+", "-", owner or "").strip("-").lower()[:20]
    return "-".join(part for part in ("prune", source_name, who, stamp) if part)


st.subheader("New fine-tuning job")
if model is None:
    st.info(model_info if model_info == NO_MODEL_HINT else
            f"The current trajectory cannot be fine-tuned: {model_info}. Choose a sample or a run on the Data page.")
else:
    trajectory = common.trajectory(str(source), common.signature(source))
    previewed = common.previewed_pipeline(trajectory, model.layer_names)
    st.caption(f"Starting from **{common.display_name(source)}** ({model.config.rnn_type}, hidden sizes "
               f"{model.config.hidden_sizes}). Results go to `{common.runs_dir()}`. Ratios and criterion come from "
               f"the Prune page, the LDS order and horizon from the Dynamics page.")
    data_source = model_info.get("data_source")
    corpus_problem = common.corpus_problem_of(data_source)
    if corpus_problem:
        st.warning(f"{corpus_problem} Fine-tuning needs its training split.")
    corpus_fetch.offer_ptb_fetch(data_source, key="ft_fetch_ptb")
    with st.form("finetune_form"):
        left, middle, right = st.columns(3)
        ratio_help = ("0 prunes nothing and fine-tunes the same way: a control, to tell what the fine-tuning alone "
                      "does from what the pruning does.")
        if previewed.per_layer:
            ratio = {layer: left.slider(f"Pruning ratio of {layer}", 0.0, 0.9, previewed.layer_ratio(layer), 0.05,
                                        key=f"ft_ratio_{layer}", help=ratio_help) for layer in model.layer_names}
        else:
            ratio = left.slider("Target pruning ratio", 0.0, 0.9, float(previewed.ratio), 0.05, key="ft_ratio",
                                help=ratio_help)
        names = list(CRITERIA)
        criterion = left.selectbox(
            "Criterion", names, index=names.index(previewed.criterion), key="ft_criterion",
            help=f"{DEFAULT_CRITERION} (dynaprune prune's default): remove the units of smallest Taylor importance in "
                 "eight chunks, measuring the importances again on training batches after each; the dynamics "
                 "criteria read the weights' trajectory. The Prune page previews them all. docs/criteria.md compares "
                 "them all.")
        dry_run = left.checkbox("Dry run (a few batches per stage)", key="ft_dry_run")
        stages = middle.number_input("Stages", 1, 10, previewed.stages, key="ft_stages", help="1: one-shot pruning.")
        epochs = middle.number_input("Epochs per stage", 1, 100, previewed.epochs_per_stage, key="ft_epochs_per_stage")
        regularization = middle.radio("Regularisation", REGULARIZATIONS, format_func=REGULARIZATION_LABELS.get,
                                      key="ft_regularization")
        da_l2 = middle.number_input("L2 strength λ", 0.0, 10.0, previewed.da_l2, format="%.6f", key="ft_da_l2")
        lr_schedule = middle.radio("Learning-rate schedule", LR_SCHEDULES,
                                   index=LR_SCHEDULES.index(previewed.lr_schedule), key="ft_lr_schedule",
                                   horizontal=True,
                                   help="cosine: each stage anneals the rate to 0. step: the rate is held through a "
                                        "stage's first epochs and decayed after each later one.")
        distillation = right.checkbox("Distillation from the previous stage", value=previewed.distillation,
                                      key="ft_distillation")
        distill_alpha = right.slider("Distillation weight α", 0.0, 1.0, previewed.distill_alpha, 0.05,
                                     key="ft_distill_alpha")
        distill_temperature = right.number_input("Temperature τ", 0.1, 20.0, previewed.distill_temperature,
                                                 key="ft_distill_temperature")
        precisions = sorted(TEACHER_PRECISIONS)
        teacher_precision = right.selectbox("Teacher's output layer", precisions,
                                            index=precisions.index(previewed.teacher_precision),
                                            key="ft_teacher_precision",
                                            help="bfloat16 is faster on CPUs with bfloat16 units and changes the "
                                                 "teacher's targets very little.")
        stamp = st.session_state.setdefault("ft_stamp", datetime.now().strftime("%Y%m%d-%H%M%S"))
        default_name = default_folder_name(source.name, participant_name, stamp)
        if st.session_state.get("ft_name_default") != default_name:  # a new name or job: a new default, unless
            if st.session_state.get("ft_name") in (None, st.session_state.get("ft_name_default")):  # one was typed
                st.session_state["ft_name"] = default_name
            st.session_state["ft_name_default"] = default_name
        name = right.text_input("Output folder name", key="ft_name", help="Created inside the runs folder.")
        with st.expander("Advanced"):
            left, middle, right = st.columns(3)
            lds_order = left.number_input("LDS order n", 1, 100, previewed.lds_order, key="ft_lds_order",
                                          help="Capped at T-1 for a trajectory of T snapshots.")
            horizon_now = previewed.horizon
            horizon_choice = left.radio("Distance horizon m", HORIZON_CHOICES, key="ft_horizon",
                                        index=0 if horizon_now is None else 2 if math.isinf(horizon_now) else 1)
            custom_horizon = left.number_input("custom m", 1, 10_000, len(trajectory) if horizon_now is None or
                                               math.isinf(horizon_now) else int(horizon_now), key="ft_horizon_m")
            snapshots = left.number_input("Snapshots per stage", 3, 1000, previewed.snapshots_per_stage,
                                          key="ft_snapshots_per_stage")
            lr = middle.number_input("Learning rate (blank: half the source run's)", 0.0, 100.0, previewed.lr,
                                     format="%.4f", key="ft_lr")
            lr_decay = middle.number_input("Step schedule: decay per epoch (blank: the source run's)", 0.0, 1.0,
                                           previewed.lr_decay, key="ft_lr_decay")
            decay_after = middle.number_input("Step schedule: epochs before decaying", 0, 100,
                                              previewed.decay_after_epoch, key="ft_decay_after_epoch")
            seed = middle.number_input("Seed", 0, 2**31 - 1, previewed.seed, key="ft_seed")
            gamma = right.number_input("DA-L2 exponent γ", 0.0, 10.0, previewed.da_l2_gamma, key="ft_da_l2_gamma")
            refresh = right.number_input("Re-measure importances every (epochs; 0: once per stage)", 0, 100,
                                         previewed.importance_refresh_epochs, key="ft_importance_refresh_epochs")
            calibration = right.number_input("Calibration batches for importances", 1, 1000,
                                             previewed.calibration_batches, key="ft_calibration_batches")
        submitted = st.form_submit_button("Start fine-tuning", type="primary", disabled=bool(corpus_problem))
    if submitted:
        target = common.runs_dir() / name
        horizon = {"custom": int(custom_horizon), "infinite (Martin)": math.inf}.get(horizon_choice)
        config = replace(
            previewed, ratio=uniform_or_per_layer(ratio) if isinstance(ratio, dict) else ratio, criterion=criterion,
            stages=int(stages), epochs_per_stage=int(epochs), regularization=regularization, da_l2=da_l2,
            da_l2_gamma=gamma, importance_refresh_epochs=int(refresh), calibration_batches=int(calibration),
            distillation=distillation, distill_alpha=distill_alpha, distill_temperature=distill_temperature,
            teacher_precision=teacher_precision, lds_order=None if lds_order is None else int(lds_order),
            horizon=horizon, lr=lr or None, lr_decay=lr_decay or None, decay_after_epoch=int(decay_after),
            lr_schedule=lr_schedule, snapshots_per_stage=int(snapshots), seed=int(seed), dry_run=dry_run)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
            st.error("The folder name may hold letters, digits, '.', '_' and '-' only (no slashes), at most 100.")
        elif target.exists():
            st.error(f"{target} already exists; choose another name (or resume its job below).")
        else:
            try:
                args = job_args(source, target, config.check_layers(model.layer_names))
                common.runs_dir().mkdir(parents=True, exist_ok=True)
                job = jobs.submit(args, label=f"{common.display_name(source)} → {name} (ratio {config.ratio_text()})",
                                  owner=participant_name, cwd=common.runs_dir())
            except DynapruneError as error:
                st.error(f"Could not start the job: {error}")
            else:
                # the panel below follows the new job (its selectbox is drawn after this point of the run)
                st.session_state["ft_job"] = st.session_state["ft_job_select"] = job.id
                st.session_state.pop("ft_cancel_pending", None)
                st.session_state.pop("ft_stamp", None)  # the next job gets a fresh default name


# ------------------------------------------------------------------ jobs, refreshed live
def job_title(job) -> str:
    """What a job is called on this page: its output folder's name, else its label, else its command."""
    if job.out_dir:
        return Path(job.out_dir).name
    return job.label or " ".join(job.args[:1]) or job.id


def job_name(job) -> str:
    """A job as the panel names it: its title, and whose it is when it is someone else's."""
    return job_title(job) if job.owner == participant_name or not job.owner else f"{job_title(job)} ({job.owner})"


def job_progress(job, events) -> float:
    """The fraction done: what the job's command last reported (it moves within an epoch), else for a
    job that reported none (an older one) its finished epochs of all it plans."""
    if job.state == jobs.SUCCEEDED:
        return 1.0
    if job.progress is not None:
        return job.progress.fraction
    try:
        config = config_of_job(job.args)
        planned = config.stages * config.epochs_per_stage
    except DynapruneError:  # not a prune job: no epochs to count
        planned = 1
    done = sum(1 for event in events if event.get("event") == "epoch")
    return min(1.0, done / max(1, planned))


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"


def progress_text(job) -> str:
    """The line under the progress bar: where a running job stands and the time it estimates is left."""
    reported = job.progress
    if job.state != jobs.RUNNING or reported is None:
        return f"{job.state}: {job.message}"
    text = f"{job.state}: {reported.task}, batch {reported.done} of {reported.total}"
    if reported.detail:
        text += f" ({reported.detail})"
    if reported.remaining_s is not None:
        text += f", about {duration_text(reported.remaining_s)} left"
    return text


def ask_to_cancel(job_id: str) -> None:
    st.session_state["ft_cancel_pending"] = job_id


def keep_running(job_id: str) -> None:
    st.session_state.pop("ft_cancel_pending", None)


def confirm_cancel(job_id: str) -> None:
    st.session_state.pop("ft_cancel_pending", None)
    try:
        jobs.cancel(job_id)
    except DynapruneError as error:
        st.session_state["ft_cancel_error"] = str(error)


def cancel_controls(job, column) -> None:
    """Cancel, in two steps: the button asks, a second button confirms (callbacks: they act before the rerun)."""
    problem = st.session_state.pop("ft_cancel_error", None)
    if problem:
        column.error(problem)
    if st.session_state.get("ft_cancel_pending") != job.id:
        column.button("Cancel", key=f"cancel_{job.id}", on_click=ask_to_cancel, args=(job.id,))
        return
    column.warning(f"Cancel {job_title(job)}? It stops at once; Resume continues from its last checkpoint.")
    column.button("Yes, cancel it", key=f"cancel_yes_{job.id}", type="primary", on_click=confirm_cancel,
                  args=(job.id,))
    column.button("No, keep it running", key=f"cancel_no_{job.id}", on_click=keep_running, args=(job.id,))


@st.fragment(run_every=POLL_SECONDS)
def jobs_panel():
    st.subheader("Jobs")
    try:
        everything = jobs.list_jobs()
    except DynapruneError as error:
        st.error(f"Cannot read the jobs folder: {error}")
        return
    left, right = st.columns(2)
    # one's own jobs by default: without a name, those started without one (e.g. from the command line)
    show_everyone = left.toggle("Show everyone's jobs", key="ft_show_everyone")
    show_all = right.toggle("Show jobs of every command", key="ft_show_all")
    listed = [job for job in reversed(everything) if (show_all or job.args[:1] == ["prune"])
              and (show_everyone or job.owner == participant_name)]
    if not listed:
        whose = "" if show_everyone else " of yours" if participant_name else " without a name"
        st.caption(f"No jobs{whose} yet (jobs live in {jobs.jobs_dir()}).")
        return
    table = pd.DataFrame([{
        "job": job_title(job), "participant": job.owner or "", "state": job.state,
        "details": job.label or " ".join(job.args),
        "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(job.started_at)) if job.started_at else "",
        "message": job.message,
    } for job in listed])
    st.dataframe(table, hide_index=True, width="stretch")
    by_id = {job.id: job for job in listed}
    if st.session_state.get("ft_job_select") not in by_id:  # e.g. hidden by the toggle: fall back on the newest
        preferred = st.session_state.get("ft_job")
        st.session_state["ft_job_select"] = preferred if preferred in by_id else listed[0].id
    chosen_id = st.selectbox("Job", list(by_id), format_func=lambda id_: job_name(by_id[id_]), key="ft_job_select")
    job = by_id[chosen_id]
    own = job.owner == participant_name
    if job.id == st.session_state.get("ft_job") and job.state in jobs.ACTIVE_STATES:
        st.info(f"Job {job_title(job)} is {job.state}.")  # the banner of a just-started job, gone once it ends
    events = jobs.read_metrics(job.id) if job.state != jobs.CORRUPT else []
    left, middle, right = st.columns([2, 1, 1])
    left.progress(job_progress(job, events), text=progress_text(job))
    if not own and (job.state in jobs.ACTIVE_STATES or job.resumable):
        whose = f"{job.owner}'s job" if job.owner else "a job started without a name"
        middle.caption(f"This is {whose}: it is cancelled or resumed from its owner's session.")
    elif job.state in jobs.ACTIVE_STATES:
        cancel_controls(job, middle)
    if own and job.resumable and middle.button("Resume", key=f"resume_{job.id}"):
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
        stage = curve["stage"].map(lambda s: "unpruned" if pd.isna(s) else str(int(s)))
        figure = px.line(curve, x="position", y="val_ppl", color=stage, markers=True,
                         symbol="kind", height=320, labels={"color": "stage", "position": "epochs of fine-tuning",
                                                            "val_ppl": "validation perplexity"})
        for label, value in reference_lines(events).items():
            figure.add_hline(y=value, line_dash="dash" if label == "baseline" else "dot",
                             annotation_text=label, line_color="grey")
        figure.update_layout(margin={"t": 20, "b": 40})
        st.plotly_chart(figure, key="ft_job_curve")
    with st.expander(f"Log of {job_title(job)} (last lines)"):
        st.caption(f"job id {job.id}")
        st.code(jobs.read_log(job.id, tail=30) or "(empty)", language=None)


jobs_panel()
