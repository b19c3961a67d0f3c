"""The dashboard, driven by Streamlit's AppTest: every page renders on the synthetic sample, its
widgets exist and respond (the ratio slider changes the pruned units and the figures), the
fine-tune form creates a background job, and uploaded archives are checked before use.

Uses the embedded sample in sample_checkpoints/synthetic when present, otherwise builds a tiny
one (a few seconds of training on a small synthetic corpus).
"""
from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from analysis import jobs
from analysis.cli.prune import config_of_job
from analysis.errors import InvalidInputError
from analysis.lm.model import ModelConfig, RNNLanguageModel, save_model
from analysis.pruning.config import PipelineConfig
from analysis.runs import NO_MODEL_HINT
from analysis.trajectories.recorder import TrajectoryRecorder
from tests.conftest import EMBEDDED_SAMPLES, REPO_ROOT

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

MAIN = str(REPO_ROOT / "app" / "main.py")
PAGES = ["views/start.py", "views/data.py", "views/trajectories.py", "views/dynamics.py", "views/prune.py",
         "views/finetune.py", "views/compare.py", "views/learn.py"]
TIMEOUT_S = 60


def open_page(page: str) -> AppTest:
    app = AppTest.from_file(MAIN, default_timeout=TIMEOUT_S)
    app.run()
    if page != PAGES[0]:
        app.switch_page(page).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def chart(app: AppTest, key: str) -> dict:
    found = [c for c in app.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]
    assert found, f"no chart {key!r}"
    return json.loads(found[0].proto.spec)


def values(array) -> list:
    """A figure's data array as a list; plotly sends numeric arrays base64-encoded."""
    if isinstance(array, dict) and "bdata" in array:
        decoded = np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"]))
        return decoded.reshape(array["shape"]).tolist() if "shape" in array else decoded.tolist()
    return list(array)


def metric(app: AppTest, label: str) -> str:
    return next(m.value for m in app.metric if m.label == label)


WIDGETS = {
    "views/start.py": [],
    "views/data.py": ["data_origin", "data_sample"],
    "views/trajectories.py": ["traj_layer", "traj_units", "traj_dims", "traj_snapshot", "traj_which"],
    "views/dynamics.py": ["dyn_layer", "dyn_order", "dyn_horizon", "dyn_clusters", "dyn_unit", "dyn_neighbours"],
    "views/prune.py": ["prune_ratio_slider", "prune_criterion_select", "prune_per_layer", "prune_layer"],
    # one widget per pipeline option, keyed ft_<option>, so none is out of the form's reach
    "views/finetune.py": [f"ft_{field.name}" for field in dataclasses.fields(PipelineConfig)] + ["ft_name"],
    "views/compare.py": [],
    "views/learn.py": ["learn_step", "learn_previous", "learn_next"],  # one step at a time: tests/test_app_workshop.py
}
CHARTS = {
    "views/start.py": [],
    "views/data.py": [],
    "views/trajectories.py": ["traj_norms", "traj_pca", "traj_matrix"],
    "views/dynamics.py": ["dyn_quality", "dyn_eigenvalues", "dyn_heatmap", "dyn_embedding", "dyn_unit_paths"],
    "views/prune.py": ["prune_embedding", "prune_heatmap"],
    "views/finetune.py": [],
    "views/compare.py": ["compare_curves", "compare_tradeoff"],
    "views/learn.py": ["learn_norms"],  # the first step's; every step's: tests/test_app_workshop.py
}


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p == "views/dynamics.py" else p
                                  for p in PAGES])  # the dynamics page fits every unit: more than 2 s
def test_every_page_renders_with_its_widgets(env, page):
    app = open_page(page)
    assert not app.error, [e.value for e in app.error]
    for key in WIDGETS[page]:
        assert app.get_by_key(key) is not None, key
    for key in CHARTS[page]:
        assert chart(app, key)["data"], key


def test_data_page_describes_the_default_sample(env, samples):
    app = open_page("views/data.py")
    assert int(metric(app, "Snapshots")) >= 3
    layers = app.dataframe[0].value
    assert list(layers["layer"]) == ["rnns.0.l0", "rnns.1.l0"]
    assert any("synthetic" in caption.value for caption in [*app.caption, *app.sidebar.caption])


def test_moving_the_ratio_slider_changes_the_pruned_units_and_figures(env):
    app = open_page("views/prune.py")
    before = int(metric(app, "Units pruned in all"))
    crosses_before = values(chart(app, "prune_heatmap")["data"][1]["x"])
    embedding_before = chart(app, "prune_embedding")["data"]
    perplexity_before = metric(app, "Zero-shot validation perplexity")

    app.slider(key="prune_ratio_slider").set_value(0.2).run()
    assert not app.exception
    after = int(metric(app, "Units pruned in all"))
    assert after < before
    crosses_after = values(chart(app, "prune_heatmap")["data"][1]["x"])
    first_layer = metric(app, "rnns.0.l0: units pruned")  # the layer the figures show
    assert len(crosses_after) == int(first_layer.split(" of ")[0]) < len(crosses_before)
    assert chart(app, "prune_embedding")["data"] != embedding_before
    assert metric(app, "Zero-shot validation perplexity") != perplexity_before


@pytest.mark.slow  # measures importances on training batches
def test_a_taylor_criterion_is_measured_on_request_and_shows_why_units_go(env):
    app = open_page("views/prune.py")
    magnitude_pruned = int(metric(app, "Units pruned in all"))
    app.selectbox(key="prune_criterion_select").set_value("taylor").run()
    assert not app.exception, [e.value for e in app.exception]
    assert not [m for m in app.metric if m.label == "Units pruned in all"]  # nothing measured before asked
    assert any("training batches" in message.value for message in app.info)
    app.button(key="prune_measure_button").click().run()
    assert not app.exception and not app.error, [e.value for e in [*app.exception, *app.error]]
    assert int(metric(app, "Units pruned in all")) == magnitude_pruned  # the same ratio, another choice
    crosses = values(chart(app, "prune_heatmap")["data"][1]["x"])
    assert len(crosses) == int(metric(app, "rnns.0.l0: units pruned").split(" of ")[0])

    app.session_state["prune_view"] = "Why they go"
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    why = chart(app, "prune_why_measured")
    assert {trace["name"] for trace in why["data"]} == {"kept", "pruned"}
    removals = app.dataframe[-1].value
    assert len(removals) == len(crosses) and (removals["chunk"] == 1).all()  # one-shot taylor: one chunk

    app.slider(key="prune_ratio_slider").set_value(0.2).run()  # a new ratio: measured again only when asked
    assert not [m for m in app.metric if m.label == "Units pruned in all"]
    assert app.button(key="prune_measure_button")


@pytest.mark.slow  # more than 2 s
def test_the_ratio_curve_is_computed_on_request(env):
    app = open_page("views/prune.py")
    app.button(key="prune_curve_button").click().run()
    assert not app.exception
    curve = chart(app, "prune_curve")
    assert {trace["name"] for trace in curve["data"]} == {"dynamics-greedy", "dynamics", "magnitude", "random"}


@pytest.mark.slow  # more than 2 s
def test_dynamics_controls_change_the_fit_and_neighbours(env):
    app = open_page("views/dynamics.py")
    variance_before = metric(app, "Median explained variance")
    app.slider(key="dyn_order").set_value(1).run()
    assert not app.exception
    assert metric(app, "Median explained variance") != variance_before
    app.selectbox(key="dyn_unit").set_value(3).run()
    neighbours = app.dataframe[-1].value
    assert 3 not in set(neighbours["unit"]) and neighbours["distance"].is_monotonic_increasing
    app.radio(key="dyn_horizon").set_value("infinite (Martin)").run()
    assert not app.exception


@pytest.mark.slow  # starts a background job
def test_submitting_the_fine_tune_form_creates_a_job(env, samples):
    app = open_page("views/finetune.py")
    app.text_input(key="ft_name").set_value("from-the-test")
    app.number_input(key="ft_epochs_per_stage").set_value(1)
    app.checkbox(key="ft_dry_run").check()
    app.radio(key="ft_regularization").set_value("l2")
    app.radio(key="ft_lr_schedule").set_value("step")
    app.selectbox(key="ft_teacher_precision").set_value("bfloat16")
    submit = next(b for b in app.button if "Start" in b.label)
    submit.click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    created = jobs.list_jobs()
    try:
        assert len(created) == 1
        job = created[0]
        assert job.args[0] == "prune" and job.out_dir == str(env / "runs" / "from-the-test")
        config = config_of_job(job.args)
        assert config.epochs_per_stage == 1 and config.dry_run and config.regularization == "l2"
        assert config.lr_schedule == "step" and config.teacher_precision == "bfloat16" and config.stages == 3
        assert job.args[job.args.index("--from") + 1] == str(samples / "synthetic")
        assert any(message.value == "Job from-the-test is queued." or message.value == "Job from-the-test is running."
                   for message in app.info)
        assert "from-the-test" in set(app.dataframe[0].value["job"])  # jobs go by their folder's name
        assert app.selectbox(key="ft_job_select").value == job.id
    finally:
        stop_jobs()


@pytest.mark.slow  # starts background jobs
def test_the_jobs_panel_follows_the_job_just_started(env):
    app = open_page("views/finetune.py")
    started = []
    try:
        for name in ("first-run", "second-run"):
            app.text_input(key="ft_name").set_value(name)
            app.checkbox(key="ft_dry_run").check()
            next(b for b in app.button if "Start" in b.label).click().run()
            assert not app.exception and not app.error, [e.value for e in app.error]
            (job,) = [j for j in jobs.list_jobs() if j.out_dir and j.out_dir.endswith(name)]
            started.append(job)
            assert app.selectbox(key="ft_job_select").value == job.id  # the panel shows the new job at once
            assert app.selectbox(key="ft_job_select").format_func(job.id) == name  # by its name, not its id
            assert any(f"Job {name} is" in message.value for message in app.info)
            assert any(name in expander.label for expander in app.expander)  # the log is the new job's
        first, second = started
        assert app.get_by_key(f"cancel_{second.id}") is not None
        with pytest.raises(KeyError):
            app.get_by_key(f"cancel_{first.id}")
        # Cancel asks first; nothing is cancelled until it is confirmed
        app.button(key=f"cancel_{second.id}").click().run()
        assert not jobs.get_job(second.id).cancel_requested and not jobs.get_job(second.id).finished
        assert any("Cancel second-run?" in message.value for message in app.warning)
        app.button(key=f"cancel_no_{second.id}").click().run()
        assert not jobs.get_job(second.id).finished
        app.button(key=f"cancel_{second.id}").click().run()
        app.button(key=f"cancel_yes_{second.id}").click().run()
        assert jobs.wait(second.id, timeout_s=60).state == jobs.CANCELLED
        app.run()
        assert not any("Job second-run is" in message.value for message in app.info)  # the banner is gone
    finally:
        stop_jobs()


def stop_jobs() -> None:
    for job in jobs.list_jobs():
        if not job.finished:
            jobs.cancel(job.id, kill_timeout_s=5)
            jobs.wait(job.id, timeout_s=30)


@pytest.mark.slow  # starts a background job
def test_a_fine_tune_job_runs_what_the_dynamics_and_prune_pages_previewed(env):
    app = open_page("views/dynamics.py")
    app.slider(key="dyn_order").set_value(2).run()
    app.radio(key="dyn_horizon").set_value("custom").run()
    app.number_input(key="dyn_horizon_m").set_value(7).run()
    app.switch_page("views/prune.py").run()
    app.selectbox(key="prune_criterion_select").set_value("magnitude").run()
    app.toggle(key="prune_per_layer").set_value(True).run()
    app.slider(key="prune_ratio_rnns.1.l0").set_value(0.2).run()
    assert not app.exception, [e.value for e in app.exception]
    app.switch_page("views/finetune.py").run()
    app.text_input(key="ft_name").set_value("previewed")
    app.checkbox(key="ft_dry_run").check()
    next(b for b in app.button if "Start" in b.label).click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    try:
        (job,) = jobs.list_jobs()
        config = config_of_job(job.args)
        assert config.lds_order == 2 and config.horizon == 7 and config.criterion == "magnitude"
        assert config.ratio == pytest.approx({"rnns.0.l0": 0.5, "rnns.1.l0": 0.2})
        assert "--lds-order" in job.args and "rnns.1.l0=0.2" in job.args[job.args.index("--ratio") + 1]
    finally:
        stop_jobs()


@pytest.mark.slow  # starts a background job
def test_jobs_of_earlier_sessions_appear_with_their_true_state(env):
    earlier = jobs.submit(["jobs", "list", "--json"], label="an earlier session's job")
    jobs.wait(earlier.id, timeout_s=60)
    app = open_page("views/finetune.py")
    app.toggle(key="ft_show_all").set_value(True).run()
    listed = app.dataframe[0].value
    row = listed[listed["job"] == "an earlier session's job"].iloc[0]  # a job without an output folder: its label
    assert row["state"] == "succeeded" and row["details"] == "an earlier session's job"


def write_pipeline(folder: Path, data_source: str = "synthetic:0", dry_run: bool = False) -> None:
    """A finished pipeline's output, as `dynaprune prune` writes it."""
    folder.mkdir(parents=True)
    (folder / "pipeline.json").write_text(json.dumps({
        "config": {"ratio": 0.5, "stages": 2, "criterion": "dynamics-greedy", "epochs_per_stage": 1,
                   "dry_run": dry_run},
        "data_source": data_source}))
    events = [
        {"event": "baseline", "val_ppl": 60.0, "params_recurrent": 900, "params_total": 2000, "oracle_ppl": 40.0},
        {"event": "stage_start", "stage": 1, "ratio": 0.3, "hidden_sizes": [8, 8], "zero_shot_val_ppl": 80.0,
         "params_recurrent": 600, "params_total": 1500},
        {"event": "epoch", "stage": 1, "epoch": 1, "val_ppl": 62.0, "train_loss": 4.1, "elapsed_s": 1.0},
        {"event": "stage_end", "stage": 1, "best_val_ppl": 62.0, "wall_s": 1.0},
        {"event": "stage_start", "stage": 2, "ratio": 0.5, "hidden_sizes": [6, 6], "zero_shot_val_ppl": 90.0,
         "params_recurrent": 400, "params_total": 1200},
        {"event": "epoch", "stage": 2, "epoch": 1, "val_ppl": 64.0, "train_loss": 4.2, "elapsed_s": 1.0},
        {"event": "stage_end", "stage": 2, "best_val_ppl": 64.0, "wall_s": 1.0},
        {"event": "final", "val_ppl": 64.0, "test_ppl": 63.0, "params_recurrent": 400, "params_total": 1200,
         "oracle_ppl": 40.0},
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    save_model(folder / "final.pt", RNNLanguageModel(ModelConfig(vocab_size=20, embedding_size=4, hidden_sizes=[6, 6])),
               None)


def test_compare_page_shows_stages_baseline_oracle_and_downloads(env):
    write_pipeline(env / "runs" / "prune-a")
    app = open_page("views/compare.py")
    assert not app.error
    figure = chart(app, "compare_curves")
    names = [trace.get("name", "") for trace in figure["data"]]
    assert any(name.endswith("zero-shot") for name in names)
    zero_shot = next(t for t in figure["data"] if t.get("name", "").endswith("zero-shot"))
    assert values(zero_shot["y"]) == [80.0, 90.0]
    annotations = " ".join(a["text"] for a in figure["layout"]["annotations"])
    assert "baseline 60.00" in annotations and "oracle 40.00" in annotations
    table = app.dataframe[0].value
    assert list(table["stage"]) == ["baseline", "1", "2", "final"]
    assert "zero-shot valid ppl" in table.columns and "None" not in table.to_string()
    assert list(table["parameters"]) == ["2,000", "1,500", "1,200", "1,200"]
    downloads = [element for element in app.get("download_button")]
    assert len(downloads) == 2  # the table as CSV, and final.pt
    tradeoff = chart(app, "compare_tradeoff")
    assert {trace.get("name") for trace in tradeoff["data"]} >= {"frontier"}


def test_compare_separates_corpora_and_never_preselects_a_dry_run(env):
    write_pipeline(env / "runs" / "a-dry", dry_run=True)
    write_pipeline(env / "runs" / "b-real")
    write_pipeline(env / "runs" / "c-ptb", data_source="ptb:/data/ptb")
    app = open_page("views/compare.py")
    corpus = app.selectbox(key="compare_corpus")
    assert set(corpus.options) >= {"synthetic:0", "Penn Treebank"} and corpus.value == "synthetic:0"
    runs = app.multiselect(key="compare_runs_synthetic:0")
    assert [str(v) for v in runs.value] == [str(env / "runs" / "b-real")]
    assert "runs: a-dry (dry run)" in runs.options and not any("c-ptb" in o for o in runs.options)
    names = " ".join(trace.get("name", "") for trace in chart(app, "compare_curves")["data"])
    assert "b-real" in names and "c-ptb" not in names
    corpus.set_value("ptb").run()
    assert not app.exception, [e.value for e in app.exception]
    assert [str(v) for v in app.multiselect(key="compare_runs_ptb").value] == [str(env / "runs" / "c-ptb")]
    names = " ".join(trace.get("name", "") for trace in chart(app, "compare_curves")["data"])
    assert "c-ptb" in names and "b-real" not in names


def test_compare_shows_the_reference_runs_offline_headline_rows_first(env):
    from analysis.reference_runs import export_reference_run

    for row in ("dynamics-greedy-50", "magnitude-50", "dynamics-greedy-30"):
        write_pipeline(env / "made" / f"{row}_seed-0")
        export_reference_run(env / "made" / f"{row}_seed-0", env / "reference-runs" / "synthetic", row=row, seed=0,
                             command="dynaprune prune ...")
    app = open_page("views/compare.py")
    assert not app.exception, [e.value for e in app.exception]
    runs = app.multiselect(key="compare_runs_synthetic:0")
    assert sorted(runs.format_func(v) for v in runs.value) == ["reference: dynamics-greedy-50, seed 0",
                                                                "reference: magnitude-50, seed 0"]
    assert "reference: dynamics-greedy-30, seed 0" in runs.options
    names = " ".join(trace.get("name", "") for trace in chart(app, "compare_curves")["data"])
    assert "reference: magnitude-50" in names
    tradeoff = chart(app, "compare_tradeoff")
    assert {trace.get("name") for trace in tradeoff["data"]} >= {"frontier"}
    assert len(app.get("download_button")) == 1  # the table; a reference run has no model to download


def test_compare_plots_a_sweeps_table_per_criterion_with_its_frontier(env):
    from analysis.sweeps.table import write_table

    sweep = env / "runs" / "sweep-a"
    (sweep / "records").mkdir(parents=True)
    (sweep / "sweep.json").write_text("{}")
    trials = [("magnitude", 0.3, 1500, 70.0, "succeeded"), ("magnitude", 0.5, 1200, 75.0, "succeeded"),
              ("dynamics-greedy", 0.5, 1200, 72.0, "succeeded"), ("random", 0.5, None, None, "failed")]
    for criterion, ratio, params, test, status in trials:
        name = f"criterion-{criterion}_ratio-{ratio}_seed-0"
        final = {"params_total": params, "test_ppl": test, "val_ppl": test and test + 1} if params else None
        (sweep / "records" / f"{name}.json").write_text(json.dumps({
            "name": name, "status": status, "source": "s", "command": f"dynaprune prune --criterion {criterion}",
            "options": {"criterion": criterion, "ratio": ratio, "seed": 0}, "summary": {"final": final}}))
    write_table(sweep)
    write_pipeline(env / "runs" / "b-real")  # the page's run sections need one run
    app = open_page("views/compare.py")
    assert not app.exception, [e.value for e in app.exception]
    figure = chart(app, "compare_sweep_tradeoff")
    by_name = {trace.get("name"): trace for trace in figure["data"]}
    assert set(by_name) == {"magnitude", "dynamics-greedy", "frontier"}  # the failed trial has no point
    assert values(by_name["frontier"]["y"]) == [72.0, 70.0]
    table = app.dataframe[-1].value
    assert list(table["status"]).count("failed") == 1 and "command" in table.columns


def test_prune_and_compare_show_the_same_unpruned_full_split_perplexity(env, synthetic_sample):
    events = [json.loads(line) for line in (synthetic_sample / "metrics.jsonl").read_text().splitlines()]
    recorded = f"{min(e['val_ppl'] for e in events if e.get('event') == 'epoch'):.2f}"
    app = open_page("views/prune.py")
    assert metric(app, "Unpruned validation perplexity (full split)") == recorded
    captions = " ".join(caption.value for caption in app.caption)
    assert "spread over the whole split" in captions and "same tokens" in captions
    assert "oracle: inf" not in captions and "oracle: nan" not in captions
    app.switch_page("views/compare.py").run()
    assert not app.exception, [e.value for e in app.exception]
    app.multiselect(key="compare_runs_synthetic:0").set_value([str(synthetic_sample)]).run()
    table = app.dataframe[0].value
    assert table.loc[table["run"] == "sample: synthetic", "valid ppl"].tolist() == [recorded]


def test_ptb_without_ptb_is_told_at_selection_and_not_started(samples, jobs_home, tmp_path, monkeypatch):
    if not (samples / "ptb-small" / "best.pt").is_file():
        pytest.skip("the embedded ptb-small sample is not here")
    from app.common import corpus_problem_of

    monkeypatch.setenv("DYNAPRUNE_SAMPLES_DIR", str(samples))
    monkeypatch.setenv("DYNAPRUNE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("DYNAPRUNE_PTB_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))  # no downloaded copy either
    corpus_problem_of.clear()
    app = open_page("views/data.py")
    app.selectbox(key="data_sample").select(samples / "ptb-small").run()
    app.button(key="use_sample").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("dynaprune download-ptb" in warning.value for warning in app.warning)
    assert "ptb-small" in app.sidebar.caption[0].value  # the sidebar names the trajectory just chosen
    app.switch_page("views/finetune.py").run()
    assert not app.exception, [e.value for e in app.exception]
    start = next(b for b in app.button if "Start" in b.label)
    assert start.disabled
    assert any("dynaprune download-ptb" in warning.value and "DYNAPRUNE_PTB_DIR" in warning.value
               for warning in app.warning)
    corpus_problem_of.clear()


def test_an_uploaded_archive_is_checked_and_unpacked_in_its_folder(env, samples, tmp_path):
    from app.common import import_archive

    folder = tmp_path / "uploads" / "session"
    trajectory_dir = samples / "synthetic" / "trajectory"
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as archive:
        for file in trajectory_dir.rglob("*"):
            if file.is_file():
                archive.write(file, Path("trajectory") / file.relative_to(trajectory_dir))
    extracted = import_archive("my run.zip", good.read_bytes(), folder, max_unpacked_bytes=10**9)
    assert extracted.parent == folder and (extracted / "manifest.json").is_file()
    assert [p.name for p in folder.iterdir()] == [extracted.name]  # the zip itself is gone

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escape.pt", b"x")
    with pytest.raises(InvalidInputError, match="outside"):
        import_archive("evil.zip", evil.read_bytes(), folder, max_unpacked_bytes=10**9)
    not_a_trajectory = tmp_path / "two.zip"
    with zipfile.ZipFile(not_a_trajectory, "w") as archive:
        archive.writestr("ckpt_1.pt", b"not a checkpoint")
    with pytest.raises(InvalidInputError):
        import_archive("two.zip", not_a_trajectory.read_bytes(), folder, max_unpacked_bytes=10**9)
    assert [p.name for p in folder.iterdir()] == [extracted.name]
    assert not (tmp_path / "uploads" / "escape.pt").exists() and not (tmp_path / "escape.pt").exists()


def test_a_trajectory_without_a_model_still_explores_and_prunes(samples, jobs_home, tmp_path, monkeypatch):
    bare = tmp_path / "bare-samples" / "synthetic"
    shutil.copytree(samples / "synthetic" / "trajectory", bare / "trajectory")
    monkeypatch.setenv("DYNAPRUNE_SAMPLES_DIR", str(bare.parent))
    app = open_page("views/prune.py")
    assert int(metric(app, "Units pruned in all")) > 0
    assert any(message.value == NO_MODEL_HINT for message in app.info)
    assert not any(m.label == "Zero-shot validation perplexity" for m in app.metric)
    app = open_page("views/finetune.py")
    assert any(message.value == NO_MODEL_HINT for message in app.info)
    assert not app.get("form")


def test_a_plain_checkpoint_folder_in_the_runs_folder_is_listed_and_told_how_to_get_a_model(env):
    torch.manual_seed(0)
    model = nn.ModuleDict({"embedding": nn.Embedding(12, 4), "lstm": nn.LSTM(4, 6), "head": nn.Linear(6, 12)})
    folder = env / "runs" / "my-checkpoints"
    folder.mkdir(parents=True)
    for step in (100, 200, 300, 400):
        with torch.no_grad():
            model["lstm"].weight_hh_l0.add_(0.05 * torch.randn_like(model["lstm"].weight_hh_l0))
        torch.save(model.state_dict(), folder / f"step_{step}.pt")
    app = open_page("views/data.py")
    app.radio(key="data_origin").set_value("A run in the runs folder").run()
    assert app.selectbox(key="data_run").options == ["runs: my-checkpoints"]
    app.selectbox(key="data_run").select(folder).run()
    app.button(key="use_run").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.session_state["source"] == str(folder)
    app.switch_page("views/prune.py").run()
    assert not app.exception, [e.value for e in app.exception]
    assert int(metric(app, "Units pruned in all")) > 0
    assert [message.value for message in app.info if "dynaprune model" in message.value] == [NO_MODEL_HINT]
    app.switch_page("views/finetune.py").run()
    assert any(message.value == NO_MODEL_HINT for message in app.info)


def test_a_diverged_snapshot_is_reported_not_raised(jobs_home, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(vocab_size=12, embedding_size=4, hidden_sizes=[5]))
    recorder = TrajectoryRecorder(model, tmp_path / "samples" / "synthetic" / "trajectory")
    for step in range(4):
        if step == 3:
            with torch.no_grad():
                model.rnns[0].weight_hh_l0[0, 0] = float("nan")
        recorder.record(step)
    monkeypatch.setenv("DYNAPRUNE_SAMPLES_DIR", str(tmp_path / "samples"))
    app = open_page("views/trajectories.py")
    assert any("NaN" in message.value and "diverged" in message.value for message in app.error)


EMBEDDED = sorted(p.name for p in EMBEDDED_SAMPLES.glob("*") if (p / "trajectory").is_dir())


@pytest.mark.parametrize("name", EMBEDDED or ["synthetic"])
@pytest.mark.slow  # more than 2 s
def test_each_embedded_sample_can_be_chosen_and_pruned(env, samples, name):
    app = open_page("views/data.py")
    app.selectbox(key="data_sample").select(samples / name).run()
    app.button(key="use_sample").click().run()
    assert not app.exception
    assert app.session_state["source"] == str(samples / name)
    app.switch_page("views/prune.py").run()
    assert not app.exception, [e.value for e in app.exception]
    assert int(metric(app, "Units pruned in all")) > 0
    problems = [w.value for w in app.warning]
    assert not problems or all("Perplexity unavailable" in p for p in problems)  # e.g. PTB not configured
