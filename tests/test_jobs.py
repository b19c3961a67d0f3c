"""Background jobs with real processes: submit, queue order, cancel, loss detection, resume, CLI.

Every wait is bounded. Jobs are kept in the queue deterministically by holding the run slot's
lock from the test itself, instead of relying on how long a command takes.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis import jobs
from analysis.errors import InvalidInputError
from analysis.jobs.process import is_alive, process_token
from analysis.jobs.supervisor import slot_path

WAIT_S = 60.0
SHORT_COMMAND = ["jobs", "list", "--json"]
# A corpus small enough that an epoch takes a fraction of a second on one core.
SMALL_DATA = "synthetic:0:train=40000,valid=2000,test=2000"


def train_args(out: Path, epochs: int, seed: int = 3) -> list[str]:
    return ["train", "--preset", "synthetic-tiny", "--data", SMALL_DATA, "--out", str(out), "--epochs", str(epochs),
            "--seed", str(seed), "--no-progress", "--record-every", "0"]


def train_available() -> bool:
    from analysis.cli import COMMANDS

    return "train" in COMMANDS


needs_train = pytest.mark.skipif(not train_available(), reason="the train command is not registered")


def until(predicate, what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def occupied_slot(home: Path, index: int = 0):
    """Hold run slot `index` so that submitted jobs stay queued until the block ends."""
    path = slot_path(home, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def pid_running(pid: int) -> bool:
    return is_alive(process_token(pid))


def pid_gone(pid: int) -> bool:
    return not pid_running(pid)


def cli(*args: str) -> int:
    """Run the dynaprune command line in this process; returns its exit status."""
    from analysis.cli import main

    return main(list(args))


@pytest.mark.slow  # starts processes
def test_jobs_succeed_one_after_another_in_submission_order_with_output_logged(jobs_home):
    with occupied_slot(jobs_home):
        first = jobs.submit(SHORT_COMMAND, max_jobs=1, label="listing")
        second = jobs.submit(SHORT_COMMAND, max_jobs=1)
        assert jobs.JOB_ID_PATTERN.fullmatch(first.id) and first.label == "listing"
        time.sleep(0.5)
        assert [jobs.get_job(job.id).state for job in (first, second)] == [jobs.QUEUED, jobs.QUEUED]
    first, second = jobs.wait(first.id, timeout_s=WAIT_S), jobs.wait(second.id, timeout_s=WAIT_S)
    assert first.state == second.state == jobs.SUCCEEDED, jobs.read_log(first.id) + jobs.read_log(second.id)
    assert first.exit_code == second.exit_code == 0
    assert first.started_at < first.ended_at <= second.started_at, "two jobs ran at the same time under a limit of 1"

    # The listing ran inside the first job: it saw that job running and the second one queued.
    listed = [line for line in jobs.read_log(first.id).splitlines() if line.startswith("[{")]
    assert [(entry["id"], entry["state"]) for entry in json.loads(listed[0])] == [
        (first.id, jobs.RUNNING), (second.id, jobs.QUEUED)]
    assert jobs.read_log(first.id, tail=1).startswith("[dynaprune jobs")
    assert jobs.read_log(first.id, tail=0) == ""
    assert pid_gone(first.pid)
    until(lambda: pid_gone(second.supervisor_pid), "the supervisor to exit after the final status")


def test_limit_comes_from_the_environment(jobs_home, monkeypatch):
    monkeypatch.setenv("DYNAPRUNE_MAX_JOBS", "2")
    assert jobs.resolve_max_jobs() == 2
    assert jobs.resolve_max_jobs(3) == 3
    monkeypatch.setenv("DYNAPRUNE_MAX_JOBS", "many")
    with pytest.raises(InvalidInputError, match="DYNAPRUNE_MAX_JOBS"):
        jobs.resolve_max_jobs()
    with pytest.raises(InvalidInputError):
        jobs.resolve_max_jobs(0)


@pytest.mark.slow  # starts processes
def test_job_outlives_the_process_that_submitted_it(jobs_home):
    submit_and_exit = f"from analysis import jobs; print(jobs.submit({SHORT_COMMAND!r}).id)"
    with occupied_slot(jobs_home):
        submitter = subprocess.run([sys.executable, "-c", submit_and_exit], capture_output=True, text=True,
                                   timeout=WAIT_S)
        assert submitter.returncode == 0, submitter.stderr
        job_id = submitter.stdout.strip().splitlines()[-1]
        # The submitter has exited; the job waits in the queue with a live supervisor.
        waiting = jobs.get_job(job_id)
        assert waiting.state == jobs.QUEUED and pid_running(waiting.supervisor_pid)
    done = jobs.wait(job_id, timeout_s=WAIT_S)
    assert done.state == jobs.SUCCEEDED and done.exit_code == 0


@pytest.mark.slow  # starts processes
def test_cancelling_a_queued_job_removes_it_from_the_queue(jobs_home):
    with occupied_slot(jobs_home):
        job = jobs.submit(SHORT_COMMAND)
        cancelled = jobs.cancel(job.id)
        assert cancelled.state == jobs.CANCELLED and cancelled.started_at is None
        until(lambda: pid_gone(job.supervisor_pid), "the queued job's supervisor to exit")
    assert jobs.get_job(job.id).state == jobs.CANCELLED
    assert "attempt 1 started" not in jobs.read_log(job.id)
    with pytest.raises(jobs.JobStateError, match="nothing to cancel"):
        jobs.cancel(job.id)


@pytest.mark.slow  # starts processes
def test_killed_supervisor_is_reported_lost_and_the_job_resumes(jobs_home):
    with occupied_slot(jobs_home):
        job = jobs.submit(SHORT_COMMAND)
        os.kill(job.supervisor_pid, signal.SIGKILL)
        until(lambda: pid_gone(job.supervisor_pid), "the killed supervisor to disappear")
        lost = jobs.get_job(job.id)
        assert lost.state == jobs.LOST and "resume" in lost.message
        assert [entry.state for entry in jobs.list_jobs()] == [jobs.LOST]
        resumed = jobs.resume(job.id)
        assert resumed.id == job.id and resumed.attempt == 2 and resumed.state == jobs.QUEUED
    done = jobs.wait(job.id, timeout_s=WAIT_S)
    assert done.state == jobs.SUCCEEDED
    assert [entry["state"] for entry in done.history] == [jobs.LOST]
    with pytest.raises(jobs.JobStateError, match="only failed, cancelled or lost"):
        jobs.resume(job.id)


@pytest.mark.slow  # starts processes
def test_dead_or_recycled_pids_are_not_alive():
    me = process_token(os.getpid())
    assert is_alive(me)
    assert not is_alive({**me, "start_ticks": (me["start_ticks"] or 0) + 1}), "a reused pid was taken for ours"
    if me["boot_id"]:
        assert not is_alive({**me, "boot_id": "another-boot"})
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = process_token(child.pid)
    child.wait(timeout=WAIT_S)
    assert not is_alive(token)
    for nonsense in (None, {}, {"pid": 0}, {"pid": 1.5}, {"pid": -5}, "123"):
        assert not is_alive(nonsense)


@pytest.mark.slow  # starts processes
def test_corrupt_job_files_are_reported_not_fatal(jobs_home, capsys):
    with occupied_slot(jobs_home):
        job = jobs.cancel(jobs.submit(SHORT_COMMAND).id)  # a complete job directory, nothing run
    root = jobs.jobs_dir()
    (root / job.id / "status.json").write_text("{ half a fi")
    other = root / "20200101T000000.000000-0000beef"
    other.mkdir()
    (other / "status.json").write_text(json.dumps({"state": "succeeded"}))  # spec.json missing

    listed = {entry.id: entry for entry in jobs.list_jobs()}
    assert listed[job.id].state == listed[other.name].state == jobs.CORRUPT
    assert "status.json" in listed[job.id].message and "spec.json" in listed[other.name].message
    assert jobs.get_job(job.id).state == jobs.CORRUPT
    with pytest.raises(jobs.JobStateError):
        jobs.resume(job.id)
    with pytest.raises(jobs.JobStateError):
        jobs.cancel(other.name)

    assert cli("jobs", "list") == 0
    assert cli("jobs", "list", "--json") == 0
    assert {entry["status"] for entry in json.loads(capsys.readouterr().out.splitlines()[-1])} == {jobs.CORRUPT}
    assert cli("jobs", "show", job.id, "--json") == 1
    assert json.loads(capsys.readouterr().out)["status"] == jobs.CORRUPT


BAD_IDS = ["../../etc", "/tmp/x", "", ".", "20250101T000000.000000-0123ABCD",
           "20250101T000000.000000-0123abcd/..", "20250101T000000.000000-0123abc\x00",
           "20250101T000000.000000-0123abcd\n", "20250101T000000-0123abcd"]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_bad_ids_are_refused_before_any_path_is_built(jobs_home, bad_id):
    for call in (jobs.get_job, jobs.cancel, jobs.resume, jobs.read_log, jobs.read_metrics):
        with pytest.raises(InvalidInputError, match="invalid job id"):
            call(bad_id)
    assert not (jobs_home / "jobs").exists()


def test_unknown_ids_and_commands_give_clear_errors(jobs_home, capsys):
    with pytest.raises(jobs.UnknownJobError, match="no job"):
        jobs.get_job("20250101T000000.000000-0123abcd")
    for args in (["rm", "-rf", "/"], [], "train --out x", ["train", 3]):
        with pytest.raises(InvalidInputError):
            jobs.submit(args)
    assert not jobs.jobs_dir().exists() or not list(jobs.jobs_dir().iterdir())

    assert cli("jobs", "show", "20250101T000000.000000-0123abcd") == 2
    assert "no job" in capsys.readouterr().err
    assert cli("jobs", "logs", "../secrets") == 2
    assert "invalid job id" in capsys.readouterr().err
    assert cli("jobs", "submit", "--", "not-a-command") == 2
    assert "unknown dynaprune command" in capsys.readouterr().err


@pytest.mark.slow  # starts processes
def test_cli_round_trip(jobs_home, capsys):
    with occupied_slot(jobs_home):
        assert cli("jobs", "submit", "--json", "--label", "cli", "--", *SHORT_COMMAND) == 0
        submitted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert submitted["status"] == jobs.QUEUED and submitted["label"] == "cli"
        assert cli("jobs", "show", submitted["id"], "--json") == 0
        shown = json.loads(capsys.readouterr().out)
        assert {"id", "status", "pid", "exit_code"} <= set(shown) and shown["id"] == submitted["id"]
        assert cli("jobs", "cancel", submitted["id"]) == 0
        assert "cancelled" in capsys.readouterr().out
        assert cli("jobs", "list") == 0
        assert submitted["id"] in capsys.readouterr().out
        assert cli("jobs", "resume", submitted["id"], "--json") == 0
        assert json.loads(capsys.readouterr().out)["attempt"] == 2
        assert cli("jobs", "cancel", submitted["id"]) == 0
    assert cli("jobs", "logs", submitted["id"], "--tail", "5") == 0
    assert cli("jobs", "cancel", submitted["id"]) == 2  # already ended
    assert "nothing to cancel" in capsys.readouterr().err


def test_out_dir_is_recorded_absolute(tmp_path):
    assert jobs.out_dir_of(["train", "--out", "runs/a"], tmp_path) == str(tmp_path / "runs" / "a")
    assert jobs.out_dir_of(["train", "--out=/abs/b", "--out", "/abs/c"], tmp_path) == "/abs/c"
    assert jobs.out_dir_of(["eval"], tmp_path) is None


@needs_train
@pytest.mark.timeout(120)
@pytest.mark.slow  # starts processes
def test_cancelling_a_running_train_job_leaves_a_resumable_checkpoint(jobs_home, tmp_path):
    out = tmp_path / "run"
    job = jobs.submit(train_args(out, epochs=200))
    until(lambda: any(r.get("event") == "epoch" for r in jobs.read_metrics(job.id)), "the first epoch to end")
    assert jobs.get_job(job.id).state == jobs.RUNNING
    jobs.cancel(job.id, kill_timeout_s=30)
    done = jobs.wait(job.id, timeout_s=WAIT_S)
    assert done.state == jobs.CANCELLED and done.exit_code == 143, jobs.read_log(job.id)
    assert pid_gone(done.pid)
    until(lambda: pid_gone(done.supervisor_pid), "the supervisor to exit after the final status")
    assert (out / "checkpoint_last.pt").is_file()


@needs_train
@pytest.mark.timeout(150)
@pytest.mark.slow  # starts processes
def test_train_job_killed_mid_epoch_is_lost_then_resumes_to_the_uninterrupted_result(jobs_home, tmp_path):
    epochs = 4
    reference = subprocess.Popen([sys.executable, "-m", "analysis.cli", *train_args(tmp_path / "reference", epochs)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    job = jobs.submit(train_args(tmp_path / "run", epochs))
    until(lambda: any(r.get("event") == "epoch" for r in jobs.read_metrics(job.id)), "the first epoch to end")
    time.sleep(0.2)  # into the second epoch; wherever the kill lands, the result must not change
    running = jobs.get_job(job.id)
    assert running.state == jobs.RUNNING and pid_running(running.pid)
    os.kill(running.pid, signal.SIGKILL)
    lost = jobs.wait(job.id, timeout_s=WAIT_S)
    assert lost.state == jobs.LOST, jobs.read_log(job.id)

    resumed = jobs.resume(job.id)
    assert resumed.id == job.id
    done = jobs.wait(job.id, timeout_s=WAIT_S * 2)
    assert done.state == jobs.SUCCEEDED and done.attempt == 2, jobs.read_log(job.id)
    assert jobs.read_log(job.id).count("started: dynaprune train") == 2  # one log, appended

    assert reference.wait(timeout=WAIT_S * 2) == 0
    from analysis.utils.fileio import read_json_lines

    def final_val_ppl(records):
        return [r["val_ppl"] for r in records if r.get("event") == "epoch" and r.get("epoch") == epochs][-1]

    expected = final_val_ppl(read_json_lines(tmp_path / "reference" / "metrics.jsonl"))
    assert math.isclose(final_val_ppl(jobs.read_metrics(job.id)), expected, rel_tol=1e-4)


GOOD_OWNERS = {"Ada": "Ada", "  Zoë Müller ": "Zoë Müller", "李雷": "李雷", "O'Brien-2": "O'Brien-2",
               "J. Doe_3": "J. Doe_3", "x" * 40: "x" * 40}
# empty or long; path-like; control and invisible characters; markup a shared page would render (a
# link or an image would make every browser showing it fetch an address)
BAD_OWNERS = ["", "   ", "x" * 41, "../etc", "..", "a/b", "a\\b", "line\nbreak", "tab\there", "nul\x00", "bell\x07",
              "right\u202eto-left", "zero\u200bwidth", "![x](http://example.com/x.png)", "[Ada](http://e.com)",
              "**Ada**", "<b>Ada</b>", "$x^2$", ":red[Ada]", "Ada`", 7, None, b"Ada", ["Ada"]]


@pytest.mark.parametrize("given, kept", GOOD_OWNERS.items())
def test_a_job_owner_is_a_short_printable_name(given, kept):
    assert jobs.validate_owner(given) == kept


@pytest.mark.parametrize("bad", BAD_OWNERS)
def test_owners_that_are_empty_long_unprintable_or_path_like_are_refused(jobs_home, bad):
    with pytest.raises(InvalidInputError):
        jobs.validate_owner(bad)
    if bad is not None:  # None is "no owner", which submit accepts
        with pytest.raises(InvalidInputError):
            jobs.submit(SHORT_COMMAND, owner=bad)
        assert not jobs.jobs_dir().exists() or not list(jobs.jobs_dir().iterdir())  # refused before anything


@pytest.mark.slow  # starts processes
def test_the_owner_is_recorded_with_the_job_and_a_tampered_one_is_not_believed(jobs_home, capsys):
    with occupied_slot(jobs_home):
        job = jobs.cancel(jobs.submit(SHORT_COMMAND, owner="  Ada ", label="Ada's run").id)  # nothing run
        anonymous = jobs.cancel(jobs.submit(SHORT_COMMAND).id)
    assert job.owner == jobs.get_job(job.id).owner == "Ada" and job.label == "Ada's run"
    assert anonymous.owner is None
    assert cli("jobs", "show", job.id, "--json") == 0
    assert json.loads(capsys.readouterr().out)["owner"] == "Ada"
    spec_path = jobs.jobs_dir() / job.id / "spec.json"
    for tampered in ("../../etc", "a\nb", "x" * 500, 42):
        spec = json.loads(spec_path.read_text())
        spec["owner"] = tampered
        spec_path.write_text(json.dumps(spec))
        assert jobs.get_job(job.id).owner is None  # read as no owner, not as a name
    with occupied_slot(jobs_home):
        assert cli("jobs", "submit", "--json", "--owner", "Bob", "--", *SHORT_COMMAND) == 0
        submitted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        jobs.cancel(submitted["id"])
    assert submitted["owner"] == "Bob"
    assert cli("jobs", "submit", "--owner", "a/b", "--", *SHORT_COMMAND) == 2
    assert "'/'" in capsys.readouterr().err
