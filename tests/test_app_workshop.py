"""The dashboard as a workshop instrument, driven by Streamlit's AppTest: the start page says what
the tool is, what is loaded and links the path through the pages; the Learn page goes one step at a
time with the step in the URL; a link's ?source= opens a sample or a run, while a name that is not
one of them is ignored with a notice and never read; Reset returns to the embedded sample.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from app import participant
from app.method_steps import STEPS, TERMS, help_text, step_of
from tests.test_app import MAIN, TIMEOUT_S, chart

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

PATH = ["data", "trajectories", "dynamics", "prune", "finetune", "compare", "learn"]  # the pages' URL names
STEP_CHARTS = {"log": "learn_norms", "signal": "learn_paths", "lds": "learn_eigenvalues", "distance": "learn_distances",
               "cluster": "learn_embedding", "cut": "learn_sizes", "da-l2": "learn_importance",
               "stages": "learn_schedule"}


def start(query: dict | None = None, page: str | None = None) -> AppTest:
    """The dashboard opened at `query` (the URL's query parameters), on its start page or on `page`."""
    app = AppTest.from_file(MAIN, default_timeout=TIMEOUT_S)
    app.query_params.update(query or {})
    app.run()
    if page:
        app.switch_page(page).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def page_links(app: AppTest) -> list[str]:
    return [link.proto.page for link in app.get("page_link")]


def shown_step(app: AppTest) -> str:
    return app.subheader[0].value


def all_text(app: AppTest) -> str:
    return "\n".join(element.value for kind in ("markdown", "caption", "warning", "success", "info")
                     for element in getattr(app, kind))


def test_the_start_page_is_the_default_and_links_the_path_in_order(env, samples, monkeypatch):
    from app.common import corpus_problem_of

    monkeypatch.delenv("DYNAPRUNE_PTB_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(env / "empty-cache"))
    corpus_problem_of.clear()
    app = start()
    assert app.title[0].value == "dynaprune"
    assert page_links(app) == PATH
    assert "Trajectory: **sample: synthetic**" in all_text(app)
    assert any("Penn Treebank is not on this machine" in w.value and "download-ptb" in w.value for w in app.warning)
    assert app.query_params == {"source": "synthetic"}  # the address names what is loaded, ready to hand out

    ptb = env / "ptb"
    ptb.mkdir()
    for split in ("train", "valid", "test"):
        (ptb / f"ptb.{split}.txt").write_text("a b c\n")
    monkeypatch.setenv("DYNAPRUNE_PTB_DIR", str(ptb))
    corpus_problem_of.clear()
    app = start()
    assert any("Penn Treebank is on this machine" in s.value for s in app.success)
    assert not any("Penn Treebank" in w.value for w in app.warning)
    corpus_problem_of.clear()


def test_data_stays_reachable_and_shows_the_default_sample(env):
    app = start(page="views/data.py")
    assert app.title[0].value == "Data"
    assert app.get_by_key("data_origin") is not None


@pytest.mark.slow  # renders every step once: several seconds
def test_learn_goes_step_by_step_with_the_step_in_the_url(env):
    app = start(page="views/learn.py")
    assert shown_step(app).startswith("1. ") and app.query_params["step"] == "log"
    assert app.button(key="learn_previous").disabled
    for number, step in enumerate(STEPS, start=1):
        if number > 1:
            app.button(key="learn_next").click().run()
            assert not app.exception, [e.value for e in app.exception]
        assert shown_step(app) == f"{number}. {step.title}"
        assert app.query_params["step"] == step.slug
        assert chart(app, STEP_CHARTS[step.slug])["data"], step.slug
        assert [c for c in STEP_CHARTS.values() if any(e.proto.id.endswith(c) for e in app.get("plotly_chart"))] \
            == [STEP_CHARTS[step.slug]]  # only this step's figure
        assert app.latex, f"step {step.slug} shows its formula"
        assert page_links(app) == [Path(page).stem for page, _ in step.try_on]
        text = all_text(app)
        for term in TERMS.values():  # every term another page uses is defined in its step
            if term.step == step.slug:
                assert f"**{term.name}**: {term.meaning}" in text
    assert app.button(key="learn_next").disabled

    app.button(key="learn_previous").click().run()
    assert app.query_params["step"] == "da-l2" and shown_step(app).startswith("7. ")
    app.radio(key="learn_step").set_value("distance").run()
    assert app.query_params["step"] == "distance" and shown_step(app).startswith("4. ")


def test_a_link_to_a_learn_step_opens_that_step(env):
    app = start({"step": "stages"}, page="views/learn.py")
    assert shown_step(app) == f"8. {step_of('stages').title}"
    assert chart(app, "learn_schedule")["data"]
    app.slider(key="learn_stages").set_value(5).run()
    assert len(chart(app, "learn_schedule")["data"][0]["x"]) == 5


def test_a_link_to_no_step_is_ignored_with_a_notice(env):
    app = start({"step": "../../etc"}, page="views/learn.py")
    assert shown_step(app).startswith("1. ")
    assert any("names no step" in w.value for w in app.warning)
    assert app.query_params["step"] == "log"


def test_a_learn_step_survives_a_visit_to_the_page_where_it_is_tried(env):
    app = start({"step": "lds"}, page="views/learn.py")
    app.query_params.pop("step")  # the browser drops the page's parameters when it changes pages
    app.switch_page("views/dynamics.py").run()
    app.switch_page("views/learn.py").run()
    assert shown_step(app).startswith("3. ") and app.query_params["step"] == "lds"


def test_pages_take_their_help_texts_from_the_steps_that_define_the_terms(env):
    app = start(page="views/trajectories.py")
    assert help_text("T") in app.get_by_key("traj_snapshot").help
    assert "step 1" in help_text("T") and "step 4" in help_text("horizon") and "step 8" in help_text("tau")


@pytest.mark.slow  # the dynamics page fits every unit
def test_the_dynamics_page_explains_its_terms(env):
    app = start(page="views/dynamics.py")
    horizon = app.get_by_key("dyn_horizon").help
    assert help_text("horizon") in horizon and help_text("martin") in horizon and help_text("T") in horizon
    assert app.get_by_key("dyn_clusters").help == help_text("average_linkage")
    helps = {m.label: m.proto.help for m in app.metric}
    assert helps["Median one-step R²"] == help_text("one_step_r2")
    assert helps["Units with ρ(A) ≥ 1"] == help_text("spectral_radius")
    assert any(c.proto.help == help_text("mds") for c in app.caption)


def test_a_link_opens_the_sample_it_names(env, samples):
    app = start({"source": "ptb-small"}, page="views/data.py")
    assert app.session_state["source"] == str(samples / "ptb-small")
    assert "ptb-small" in app.sidebar.caption[0].value
    assert app.query_params["source"] == "ptb-small"
    app.switch_page("views/learn.py").run()  # it stays chosen on the other pages
    assert "ptb-small" in app.caption[0].value


def test_a_link_opens_a_run_by_its_name_under_the_runs_folder(env, samples):
    run = env / "runs" / "tiny"
    shutil.copytree(samples / "synthetic", run)
    app = start({"source": "runs/tiny"})
    assert app.session_state["source"] == str(run)
    # the Data page names a chosen run the same way, relative to the runs folder
    app.switch_page("views/data.py").run()
    app.selectbox(key="data_sample").select(samples / "ptb-small").run()
    app.button(key="use_sample").click().run()
    assert app.query_params["source"] == "ptb-small"
    assert not any(str(env) in value for value in app.query_params.values())


OUTSIDE = "<the outside trajectory's absolute path>"
HOSTILE = ["../../etc", "/etc/passwd", OUTSIDE, "../outside", "runs/../outside", "runs/../../outside", "synthetic/..",
           "ptb-small/../../outside", "![x](http://example.com/x.png)", "runs/" + "a" * 300]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_link_naming_no_sample_or_run_is_ignored_and_never_read(env, samples, value, monkeypatch):
    from app import common

    shutil.copytree(samples / "synthetic", env / "outside")  # a real trajectory next to the runs folder
    read = []

    def recorded_load(path, *args, **kwargs):
        read.append(str(path))
        return load_trajectory(path, *args, **kwargs)

    load_trajectory = common.load_trajectory
    monkeypatch.setattr(common, "load_trajectory", recorded_load)
    app = start({"source": str(env / "outside") if value == OUTSIDE else value})
    assert app.session_state["source"] == str(samples / "synthetic")
    (notice,) = [w.value for w in app.warning if "ignored" in w.value]
    # the value is echoed as code, cut to harmless characters: no markdown, link or image from a URL
    assert re.fullmatch(r"The link's trajectory `[\w./:-]{0,60}` is neither .* ignored\.", notice), notice
    assert app.query_params["source"] == "synthetic"  # the address names what is shown instead
    assert not [path for path in read if "outside" in path]
    app.run()  # the notice is said once
    assert not [w.value for w in app.warning if "ignored" in w.value]


def test_reset_returns_to_the_sample_and_forgets_the_choices(env, samples):
    (env / "runs").mkdir()
    (env / "runs" / "notes.txt").write_text("kept")
    files_before = sorted(str(p) for p in [*samples.rglob("*"), *(env / "runs").rglob("*")])
    app = start({"source": "ptb-small", "step": "cluster"}, page="views/learn.py")
    app.slider(key="learn_ratio").set_value(0.8).run()
    app.switch_page("views/trajectories.py").run()
    app.radio(key="traj_dims").set_value(3).run()
    assert app.session_state["traj_dims"] == 3
    app.session_state[participant.SESSION_KEY] = "Ada"

    app.button(key="reset_to_sample").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.title[0].value == "dynaprune"  # back on the start page
    assert app.session_state["source"] == str(samples / "synthetic")
    assert "sample: synthetic" in app.sidebar.caption[0].value
    assert app.query_params == {"source": "synthetic", "name": "Ada"}  # the name stays in the address too
    for key in ("learn_ratio", "learn_step", "traj_dims"):
        assert key not in app.session_state, key
    assert app.session_state[participant.SESSION_KEY] == "Ada"  # who sits here is no choice to forget
    app.switch_page("views/learn.py").run()
    assert shown_step(app).startswith("1. ")
    app.radio(key="learn_step").set_value("cluster").run()
    assert app.slider(key="learn_ratio").value == 0.5
    assert sorted(str(p) for p in [*samples.rglob("*"), *(env / "runs").rglob("*")]) == files_before


def test_the_stages_step_shows_what_the_stages_did_in_the_reference_runs(env):
    from analysis.reference_runs import export_reference_run
    from tests.test_app import write_pipeline

    app = start({"step": "stages"}, page="views/learn.py")
    assert "learn_reference_stages" not in [c.key for c in app.get("plotly_chart")]  # none shipped here
    for row in ("dynamics-greedy-50", "magnitude-50", "dynamics-greedy-30"):
        write_pipeline(env / "made" / row)
        export_reference_run(env / "made" / row, env / "reference-runs" / "synthetic", row=row, seed=0, command="c")
    app = start({"step": "stages"}, page="views/learn.py")
    figure = chart(app, "learn_reference_stages")
    assert sorted(trace["name"] for trace in figure["data"]) == ["dynamics-greedy-50", "magnitude-50"]
    assert "synthetic language" in all_text(app)
