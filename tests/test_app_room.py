"""The dashboard as a room's shared instrument, driven by Streamlit's AppTest: the Fine-tune page asks
once for a participant's name, keeps it in the page's address, labels the jobs started with it and
lists one's own jobs by default; a running job's bar moves within an epoch with the time left; and
a model trained on Penn Treebank, where there is none, offers to fetch it (from the operator's
mirror, $DYNAPRUNE_PTB_URL: here a local server, or a port nothing listens on).
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from analysis import jobs
from analysis.jobs import records, store
from analysis.jobs.process import process_token
from analysis.lm import download
from analysis.lm.download import ptb_files_verified
from analysis.utils.fileio import atomic_write_json
from tests.conftest import REPO_ROOT
from tests.test_download import served  # noqa: F401  (a fixture: a local HTTP server)
from tests.test_jobs import occupied_slot

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

MAIN = str(REPO_ROOT / "app" / "main.py")
FINETUNE = "views/finetune.py"
TIMEOUT_S = 60


@pytest.fixture()
def room(env, tmp_path, monkeypatch):
    """The dashboard's settings for one test (conftest's env), with an empty PTB cache."""
    monkeypatch.delenv("DYNAPRUNE_PTB_DIR", raising=False)
    monkeypatch.delenv(download.PTB_URL_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no downloaded Penn Treebank either
    clear_corpus_cache()
    yield tmp_path
    clear_corpus_cache()


def clear_corpus_cache() -> None:
    from app.common import corpus_problem_of

    corpus_problem_of.clear()  # cached for 30 s across the tests of this process


def open_page(page: str, name: str | None = None, source: Path | None = None) -> AppTest:
    """A fresh browser session on `page`; `name` in the address as ?name=..., as after a reload."""
    app = AppTest.from_file(MAIN, default_timeout=TIMEOUT_S)
    if name is not None:
        app.query_params["name"] = name
    if source is not None:
        app.session_state["source"] = str(source)
    app.run()
    app.switch_page(page).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def asks_for_a_name(app: AppTest) -> bool:
    try:
        app.text_input(key="participant_input")
    except KeyError:
        return False
    return True


def listed_jobs(app: AppTest) -> list[str]:
    return list(app.dataframe[0].value["job"]) if app.dataframe else []


def start_button(app: AppTest):
    return next(b for b in app.button if "Start" in b.label)


def write_job(home: Path, title: str, owner: str | None, state: str = records.CANCELLED, progress: dict | None = None,
              attempt: int = 1) -> str:
    """A prune job's directory as submit and a supervisor leave it, without running anything. A
    running one names this test's process as its own, so it reads as alive."""
    job_id = store.new_job_id()
    job_dir = store.jobs_dir(home) / job_id
    job_dir.mkdir(parents=True)
    out = str(home.parent / "runs" / title)
    atomic_write_json(job_dir / "spec.json", {"version": 1, "args": ["prune", "--from", "x", "--out", out],
                                              "label": f"sample → {title}", "owner": owner, "out_dir": out,
                                              "created_at": time.time()})
    me = process_token(os.getpid()) if state == records.RUNNING else None
    store.write_status(job_dir, {"state": state, "attempt": attempt, "started_at": time.time(), "supervisor": me,
                                 "command": me, "message": state, "progress": progress})
    return job_id


def test_the_name_is_asked_once_and_kept_in_the_address(room):
    app = open_page(FINETUNE)
    assert asks_for_a_name(app)
    app.text_input(key="participant_input").set_value("  Ada Lovelace ")
    next(b for b in app.button if b.label == "Use this name").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.query_params["name"] == "Ada Lovelace"
    assert not asks_for_a_name(app)
    assert any("Participant: **Ada Lovelace**" in caption.value for caption in app.caption)
    assert "ada-lovelace" in app.text_input(key="ft_name").value  # the default folder is one's own
    app.run()  # the next run of the same session does not ask again
    assert not asks_for_a_name(app)

    reloaded = open_page(FINETUNE, name="Ada Lovelace")  # a new session, the same address: a reload
    assert not asks_for_a_name(reloaded)
    assert any("Ada Lovelace" in caption.value for caption in reloaded.caption)

    reloaded.button(key="participant_change").click().run()
    assert asks_for_a_name(reloaded) and "name" not in reloaded.query_params


def keeps_the_name_in_the_address():
    """A page of the router, as AppTest runs a function: the session knows the name, the address lost it."""
    import streamlit as st

    from app import participant

    st.session_state.setdefault("participant", "Ada")
    participant.keep_in_address()


def test_the_name_goes_back_into_an_address_that_lost_it():
    app = AppTest.from_function(keeps_the_name_in_the_address, default_timeout=TIMEOUT_S)
    app.run()
    assert app.query_params["name"] == "Ada"


@pytest.mark.parametrize("typed", ["../etc/passwd", "a\\b", "tab\there", "   "])  # longer ones: the box stops at 40
def test_a_name_that_cannot_label_a_job_is_refused(room, typed):
    app = open_page(FINETUNE)
    app.text_input(key="participant_input").set_value(typed)
    next(b for b in app.button if b.label == "Use this name").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("That name cannot be used" in error.value for error in app.error)
    assert asks_for_a_name(app) and "name" not in app.query_params


def test_an_unusable_name_in_the_address_is_dropped_with_a_warning(room):
    app = open_page(FINETUNE, name="evil/../name")
    assert any("was not used" in warning.value and "'/'" in warning.value for warning in app.warning)
    assert asks_for_a_name(app) and "name" not in app.query_params


@pytest.mark.slow  # starts a job's supervisor (the job stays queued, then is cancelled)
def test_a_job_started_with_a_name_is_labelled_with_it(room, jobs_home):
    app = open_page(FINETUNE, name="Ada")
    app.text_input(key="ft_name").set_value("ada-run")
    app.checkbox(key="ft_dry_run").check()
    with occupied_slot(jobs_home):
        start_button(app).click().run()
        assert not app.exception and not app.error, [e.value for e in app.error]
        (job,) = jobs.list_jobs()
        jobs.cancel(job.id)
    assert job.owner == "Ada" and job.out_dir.endswith("ada-run")
    table = app.dataframe[0].value
    assert list(table["job"]) == ["ada-run"] and list(table["participant"]) == ["Ada"]
    assert app.selectbox(key="ft_job_select").format_func(job.id) == "ada-run"  # one's own: by its name alone

    assert listed_jobs(open_page(FINETUNE, name="Ada")) == ["ada-run"]  # after a reload, still Ada's
    assert listed_jobs(open_page(FINETUNE, name="Bob")) == []  # not Bob's


def test_own_jobs_are_listed_by_default_and_everyones_on_request(room, jobs_home):
    ada = write_job(jobs_home, "ada-run", "Ada")
    bob = write_job(jobs_home, "bob-run", "Bob")
    write_job(jobs_home, "cli-run", None)

    app = open_page(FINETUNE, name="Ada")
    assert listed_jobs(app) == ["ada-run"]
    app.button(key=f"resume_{ada}")  # one's own job: resumable here
    app.toggle(key="ft_show_everyone").set_value(True).run()
    table = app.dataframe[0].value
    assert list(table["job"]) == ["cli-run", "bob-run", "ada-run"]  # the newest first
    assert list(table["participant"]) == ["", "Bob", "Ada"]
    app.selectbox(key="ft_job_select").set_value(bob).run()
    assert app.selectbox(key="ft_job_select").format_func(bob) == "bob-run (Bob)"
    with pytest.raises(KeyError):
        app.button(key=f"resume_{bob}")  # somebody else's: resumed from their session
    assert any("Bob's job" in caption.value for caption in app.caption)

    assert listed_jobs(open_page(FINETUNE)) == ["cli-run"]  # no name yet: the jobs started without one


def test_a_running_jobs_bar_moves_within_the_epoch_with_the_time_left(room, jobs_home):
    progress = {"fraction": 0.3, "task": "stage 1/3, epoch 2/2", "done": 12, "total": 40, "detail": "ppl 88.1",
                "remaining_s": 300.0, "updated_at": time.time()}
    job_id = write_job(jobs_home, "ada-run", "Ada", state=records.RUNNING, progress=progress)
    try:
        app = open_page(FINETUNE, name="Ada")
        (bar,) = app.get("progress")
        assert bar.proto.value == 30  # not 0: no epoch has ended yet
        assert bar.proto.text == "running: stage 1/3, epoch 2/2, batch 12 of 40 (ppl 88.1), about 5 min left"
        app.button(key=f"cancel_{job_id}")  # one's own running job: cancel (which asks first) is offered
    finally:
        store.update_status(store.jobs_dir(jobs_home) / job_id, lambda status: {**status, "state": records.CANCELLED})


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ptb_sample(samples: Path) -> Path:
    sample = samples / "ptb-small"
    if not (sample / "best.pt").is_file():
        pytest.skip("the embedded ptb-small sample is not here")
    return sample


def test_fetching_ptb_offline_says_so_in_one_line_and_writes_nothing(room, samples, monkeypatch):
    sample = ptb_sample(samples)
    monkeypatch.setenv(download.PTB_URL_ENV_VAR, f"http://127.0.0.1:{closed_port()}/ptb/")
    app = open_page("views/data.py", source=sample)
    assert any("dynaprune download-ptb" in warning.value for warning in app.warning)
    app.button(key="data_fetch_ptb").click().run()
    assert not app.exception, [e.value for e in app.exception]
    (error,) = [e.value for e in app.error]
    assert error.startswith("Could not fetch Penn Treebank: ") and "\n" not in error
    assert "check the address and the network" in error
    cache = room / "cache" / "dynaprune" / "ptb"
    assert not cache.exists() or list(cache.iterdir()) == []
    app.switch_page(FINETUNE).run()
    assert start_button(app).disabled
    app.button(key="ft_fetch_ptb")  # offered here too


def test_no_fetch_is_offered_where_the_operator_chose_the_ptb_folder(room, samples, monkeypatch):
    sample = ptb_sample(samples)
    monkeypatch.setenv("DYNAPRUNE_PTB_DIR", str(room / "nowhere"))  # set, but empty: fetching would not help
    app = open_page(FINETUNE, source=sample)
    assert start_button(app).disabled
    with pytest.raises(KeyError):
        app.button(key="ft_fetch_ptb")


def test_fetching_ptb_from_the_operators_mirror_enables_start(ptb_dir, room, samples, served,  # noqa: F811
                                                              monkeypatch):  # ptb_dir first: room unsets it
    sample = ptb_sample(samples)
    root, base = served
    for name in download.PTB_SHA256:
        (root / name).write_bytes((ptb_dir / name).read_bytes())
    monkeypatch.setenv(download.PTB_URL_ENV_VAR, base)
    app = open_page(FINETUNE, source=sample)
    assert start_button(app).disabled
    app.button(key="ft_fetch_ptb").click().run()
    assert not app.exception and not app.error, [e.value for e in [*app.exception, *app.error]]
    assert any("fetched and verified" in message.value for message in app.success)
    assert not start_button(app).disabled  # found at once, not after the 30 s the check is cached
    assert ptb_files_verified(room / "cache" / "dynaprune" / "ptb")
    with pytest.raises(KeyError):
        app.button(key="ft_fetch_ptb")  # nothing left to fetch
