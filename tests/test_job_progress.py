"""A job's progress moves within an epoch: training reports the fraction of all its batches done,
the pipeline scales it by stage, and a job's command stores it in the job's status every few
seconds (not every batch) with an estimate of the time left, which the Fine-tune panel shows."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from analysis import jobs
from analysis.jobs import records, reporting, store
from analysis.jobs.process import process_token
from analysis.lm.model import ModelConfig
from analysis.lm.training import TrainConfig, train_language_model
from analysis.utils.fileio import atomic_write_json
from analysis.utils.progress import ProgressUpdate


def running_job(home: Path, attempt: int = 1, args: list[str] | None = None, **spec_extra) -> Path:
    """A job directory in state running, its processes this test's own (so it reads as alive)."""
    job_dir = store.jobs_dir(home) / store.new_job_id()
    job_dir.mkdir(parents=True)
    atomic_write_json(job_dir / "spec.json", {"version": 1, "args": args or ["train", "--out", "x"], **spec_extra})
    me = process_token(os.getpid())
    store.write_status(job_dir, {"state": records.RUNNING, "attempt": attempt, "supervisor": me, "command": me,
                                 "started_at": 1.0, "message": "running"})
    return job_dir


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_time_left_follows_the_rate_seen_so_far():
    assert reporting.remaining_seconds((0.0, 0.0), (10.0, 0.25)) == pytest.approx(30.0)
    assert reporting.remaining_seconds((5.0, 0.5), (15.0, 0.75)) == pytest.approx(10.0)
    assert reporting.remaining_seconds((0.0, 0.2), (10.0, 0.2)) is None  # no progress: no rate
    assert reporting.remaining_seconds((3.0, 0.1), (3.0, 0.2)) is None


def test_the_reporter_writes_every_few_seconds_and_at_each_tasks_end(jobs_home):
    job_dir = running_job(jobs_home)
    clock = FakeClock()
    reporter = reporting.JobProgressReporter(job_dir, attempt=1, interval_s=3.0, clock=clock)
    stored = []
    for batch in range(1, 11):  # one batch a second, 10 batches of 40 in all (epoch 1 of 4)
        reporter(ProgressUpdate("epoch 1/4", batch, 10, "ppl 80.0", overall=batch / 40))
        progress = jobs.get_job(job_dir.name).progress
        if not stored or progress != stored[-1]:
            stored.append(progress)
        clock.now += 1.0
    # the first batch at once, then every 3 s, and the end of the epoch: 5 writes for 10 batches
    assert [p.done for p in stored] == [1, 4, 7, 10]
    last = stored[-1]
    assert last.fraction == pytest.approx(0.25) and last.task == "epoch 1/4" and last.total == 10
    assert last.detail == "ppl 80.0"
    # 9 batches (9/40) took 9 s: the 30 batches left take about 30 s
    assert last.remaining_s == pytest.approx(30.0)
    assert stored[0].remaining_s is None  # nothing to estimate from yet
    assert 0 < stored[1].fraction < last.fraction  # it moved within the epoch


def test_only_the_running_attempt_is_written(jobs_home):
    job_dir = running_job(jobs_home, attempt=2)
    reporting.JobProgressReporter(job_dir, attempt=1)(ProgressUpdate("epoch 1/1", 1, 2, overall=0.5))
    assert jobs.get_job(job_dir.name).progress is None  # an earlier attempt's command, outliving it
    store.update_status(job_dir, lambda status: {**status, "state": records.CANCELLED})
    reporting.JobProgressReporter(job_dir, attempt=2)(ProgressUpdate("epoch 1/1", 1, 2, overall=0.5))
    assert jobs.get_job(job_dir.name).progress is None  # ended: its status is final


def test_unreadable_or_nonsense_progress_is_ignored(jobs_home):
    job_dir = running_job(jobs_home)
    status = json.loads((job_dir / "status.json").read_text())

    def tamper(progress) -> None:  # as a hand edit would: json allows NaN where atomic writes refuse it
        (job_dir / "status.json").write_text(json.dumps({**status, "progress": progress}))

    for nonsense in ({"fraction": 1.5}, {"fraction": float("nan")}, {"fraction": True}, "half", [0.5],
                     {"task": "epoch 1/1"}):
        tamper(nonsense)
        assert jobs.get_job(job_dir.name).progress is None, nonsense
    tamper({"fraction": 0.5, "task": "epoch\x1b[31m 1", "done": -3, "total": "x", "remaining_s": -1, "detail": 7})
    progress = jobs.get_job(job_dir.name).progress
    assert progress.fraction == 0.5 and progress.task == "" and progress.detail == ""
    assert (progress.done, progress.total, progress.remaining_s) == (0, 0, None)


def test_a_reporter_exists_only_inside_a_job(jobs_home, monkeypatch):
    monkeypatch.delenv(reporting.JOB_ID_ENV_VAR, raising=False)
    assert reporting.job_progress_reporter() is None
    job_dir = running_job(jobs_home, attempt=3)
    monkeypatch.setenv(reporting.JOB_ID_ENV_VAR, job_dir.name)
    monkeypatch.setenv(reporting.JOB_ATTEMPT_ENV_VAR, "3")
    reporter = reporting.job_progress_reporter()
    assert reporter is not None and reporter.job_dir == job_dir and reporter.attempt == 3
    for job_id, attempt in (("../../etc", "3"), ("20250101T000000.000000-0123abcd", "3"), (job_dir.name, "x")):
        monkeypatch.setenv(reporting.JOB_ID_ENV_VAR, job_id)
        monkeypatch.setenv(reporting.JOB_ATTEMPT_ENV_VAR, attempt)
        assert reporting.job_progress_reporter() is None


def test_a_status_that_cannot_be_written_costs_a_report_not_the_training(jobs_home, monkeypatch):
    job_dir = running_job(jobs_home)

    def wedged(*args, **kwargs):
        raise jobs.CorruptJobError("status.json is not valid JSON")

    monkeypatch.setattr(store, "record_progress", wedged)
    reporting.JobProgressReporter(job_dir, attempt=1)(ProgressUpdate("epoch 1/1", 1, 2))  # no exception


def test_training_reports_the_fraction_of_all_epochs_after_every_batch(tmp_path, corpus):
    heard = []
    config = TrainConfig(epochs=2, bptt=5, batch_size=4, max_batches_per_epoch=3, max_eval_batches=1, record_every=0,
                         log_interval=2)
    train_language_model(tmp_path / "run", corpus=corpus, train_config=config,
                         model_config=ModelConfig(vocab_size=len(corpus.vocab), embedding_size=4, hidden_sizes=[5]),
                         progress=heard.append, evaluate_test=False, log=None)
    assert [u.overall for u in heard] == pytest.approx([b / 6 for b in range(1, 7)])


def test_a_training_job_stores_progress_within_the_epoch_at_a_sane_rate(jobs_home, tmp_path, corpus, monkeypatch):
    """The reporter as a job's command uses it, on a real training run of 2 epochs x 12 batches, with
    a clock that moves a second per batch: far fewer writes than batches, several inside each epoch."""
    job_dir = running_job(jobs_home)
    clock = FakeClock()
    reporter = reporting.JobProgressReporter(job_dir, attempt=1, interval_s=3.0, clock=clock)
    written = []
    record = store.record_progress

    def recording(job_dir_, attempt, progress):
        written.append(progress)
        return record(job_dir_, attempt, progress)

    monkeypatch.setattr(store, "record_progress", recording)

    def tick(update):
        reporter(update)
        clock.now += 1.0

    config = TrainConfig(epochs=2, bptt=5, batch_size=4, max_batches_per_epoch=12, max_eval_batches=1, record_every=0,
                         log_interval=4)
    train_language_model(tmp_path / "run", corpus=corpus, train_config=config,
                         model_config=ModelConfig(vocab_size=len(corpus.vocab), embedding_size=4, hidden_sizes=[5]),
                         progress=tick, evaluate_test=False, log=None)
    assert 4 <= len(written) < 24
    inside_first_epoch = [w for w in written if w["task"] == "epoch 1/2" and w["done"] < w["total"]]
    assert len(inside_first_epoch) >= 2 and all(0 < w["fraction"] < 0.5 for w in inside_first_epoch)
    assert [w["fraction"] for w in written] == sorted(w["fraction"] for w in written)
    assert written[-1]["fraction"] == pytest.approx(1.0) and written[-1]["remaining_s"] == pytest.approx(0.0)
    assert all(w["remaining_s"] is not None for w in written[1:])
    stored = jobs.get_job(job_dir.name).progress
    assert stored.fraction == pytest.approx(1.0) and stored.task == "epoch 2/2"


@pytest.mark.slow  # a dry-run pruning pipeline of two stages
def test_the_pipeline_counts_its_stages_in_the_fraction(samples, tmp_path):
    from analysis.pruning.config import PipelineConfig
    from analysis.pruning.pipeline import run_pruning_pipeline

    heard = []
    run_pruning_pipeline(tmp_path / "pruned", source=samples / "synthetic", progress=heard.append, log=None,
                         config=PipelineConfig(ratio=0.5, stages=2, epochs_per_stage=1, dry_run=True))
    first = [u for u in heard if u.task.startswith("stage 1/2, epoch 1/1")]
    second = [u for u in heard if u.task.startswith("stage 2/2, epoch 1/1")]
    assert first and second and len(first) + len(second) == len(heard)
    assert all(0 < u.overall <= 0.5 for u in first) and all(0.5 < u.overall <= 1.0 for u in second)
    assert [u.overall for u in heard] == sorted(u.overall for u in heard)
    assert first[-1].overall == pytest.approx(0.5) and second[-1].overall == pytest.approx(1.0)


@pytest.mark.slow  # runs a dry-run pruning job in the background
@pytest.mark.timeout(300)
def test_a_pruning_job_reports_its_progress_to_its_status(jobs_home, samples, tmp_path):
    out = tmp_path / "runs" / "pruned"
    job = jobs.submit(["prune", "--from", str(samples / "synthetic"), "--out", str(out), "--ratio", "0.5",
                       "--stages", "2", "--epochs-per-stage", "1", "--dry-run", "--no-progress"], owner="Ada")
    finished = jobs.wait(job.id, timeout_s=240)
    assert finished.state == jobs.SUCCEEDED, jobs.read_log(job.id, tail=30)
    # the last report is the end of the last epoch of the last stage
    assert finished.progress is not None and finished.progress.fraction == pytest.approx(1.0)
    assert finished.progress.task == "stage 2/2, epoch 1/1" and finished.progress.done == finished.progress.total
    status = json.loads((jobs.jobs_dir() / job.id / "status.json").read_text())
    assert status["progress"]["fraction"] == pytest.approx(1.0)
