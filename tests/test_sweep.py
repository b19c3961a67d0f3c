"""`dynaprune sweep`: the spec, the trials it expands to, the local and Ray backends, resuming,
failures, cancelling, early stopping and the results table."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from analysis.errors import InvalidInputError
from analysis.sweeps import load_spec, parse_spec, read_sweep_table, run_sweep, write_table
from analysis.sweeps.runner import read_records
from analysis.sweeps.trial import hopeless
from tests.conftest import REPO_ROOT

GRID = """
[sweep]
sources = ["{source}"]
seeds = [0]

[fixed]
dry_run = true
stages = 2

[grid]
criterion = ["dynamics-greedy", "magnitude"]
ratio = [0.3, 0.5]
"""


def write_spec(path: Path, source: Path, text: str = GRID) -> Path:
    path.write_text(text.format(source=source))
    return path


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def ray_env():
    """A short private temp dir (Ray's socket paths must stay short) and no token file in $HOME."""
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    yield {"RAY_TMPDIR": temp, "RAY_AUTH_MODE": "disabled"}
    shutil.rmtree(temp, ignore_errors=True)


# ----------------------------------------------------------------------------- the spec


def test_the_sample_spec_expands_to_a_four_trial_grid():
    spec = load_spec(REPO_ROOT / "benchmarks" / "sweeps" / "sample.toml")
    trials = spec.trials()
    assert [t.name for t in trials] == ["criterion-dynamics-greedy_ratio-0.3_seed-0",
                                        "criterion-dynamics-greedy_ratio-0.5_seed-0",
                                        "criterion-magnitude_ratio-0.3_seed-0", "criterion-magnitude_ratio-0.5_seed-0"]
    config = trials[1].config
    assert (config.criterion, config.ratio, config.stages, config.dry_run, config.seed) == \
        ("dynamics-greedy", 0.5, 2, True, 0)
    argv = trials[1].argv("out")
    assert argv[:5] == ["prune", "--from", "sample_checkpoints/synthetic", "--out", "out"]
    from analysis.cli.prune import config_of_job
    assert config_of_job(argv) == config  # the command rebuilds the trial's options exactly


def test_random_search_is_reproducible_and_reads_command_line_spellings():
    spec = parse_spec({"sweep": {"sources": ["s"], "search": "random", "samples": 5, "search_seed": 3,
                                 "seeds": [0, 1]},
                       "fixed": {"horizon": "inf"},
                       "random": {"da_l2": {"low": 1e-6, "high": 1e-3, "log": True},
                                  "epochs_per_stage": {"low": 1, "high": 3},
                                  "ratio": ["rnns.0.l0=0.3,rnns.1.l0=0.5", 0.5]}})
    trials = spec.trials()
    assert len(trials) == 10 and [t.name for t in trials] == [t.name for t in spec.trials()]
    for trial in trials:
        assert trial.error is None and trial.config.horizon == float("inf")
        assert 1e-6 <= trial.config.da_l2 <= 1e-3 and trial.config.epochs_per_stage in (1, 2, 3)
        assert trial.config.ratio in (0.5, {"rnns.0.l0": 0.3, "rnns.1.l0": 0.5})


@pytest.mark.parametrize("data, words", [
    ({"sweep": {}}, "sources"),
    ({"sweep": {"sources": ["s"]}, "grid": {"learning_rate": [1]}}, "not a prune option"),
    ({"sweep": {"sources": ["s"]}, "grid": {"seed": [1, 2]}}, "seeds"),
    ({"sweep": {"sources": ["s"]}, "grid": {"ratio": 0.5}}, "list"),
    ({"sweep": {"sources": ["s"]}, "fixed": {"ratio": 0.5}, "grid": {"ratio": [0.3]}}, "both"),
    ({"sweep": {"sources": ["s"], "search": "random"}, "random": {"lr": [1]}}, "samples"),
    ({"sweep": {"sources": ["s"]}, "resources": {"cpu": 1}}, "resources"),
    ({"sweep": {"sources": ["s"]}, "tune": {}}, "unknown table"),
    ({"sweep": {"sources": ["s"]}, "points": [{"ratio": 0.5}]}, "needs a name"),
    ({"sweep": {"sources": ["s"]}, "points": [{"name": "../up", "ratio": 0.5}]}, "needs a name"),
    ({"sweep": {"sources": ["s"]}, "points": [{"name": "a"}, {"name": "a"}]}, "twice"),
    ({"sweep": {"sources": ["s"]}, "points": [{"name": "a", "seed": 3}]}, "seeds"),
    ({"sweep": {"sources": ["s"]}, "points": [{"name": "a", "lr_rate": 3}]}, "not a prune option"),
    ({"sweep": {"sources": ["s"]}, "points": {"name": "a"}}, "table"),
])
def test_bad_specs_are_refused_with_a_reason(data, words):
    with pytest.raises(InvalidInputError, match=words):
        parse_spec(data)


def test_named_points_run_beside_the_grid_with_their_own_options_over_the_fixed_ones():
    spec = parse_spec({"sweep": {"sources": ["s"], "seeds": [0, 1]}, "fixed": {"stages": 2, "ratio": 0.5},
                       "grid": {"criterion": ["magnitude"]},
                       "points": [{"name": "control-0", "ratio": 0.0}, {"name": "one-shot", "stages": 1}]})
    trials = {t.name: t for t in spec.trials()}
    assert list(trials) == ["criterion-magnitude_seed-0", "criterion-magnitude_seed-1", "control-0_seed-0",
                            "control-0_seed-1", "one-shot_seed-0", "one-shot_seed-1"]
    assert (trials["control-0_seed-1"].config.ratio, trials["control-0_seed-1"].config.stages) == (0.0, 2)
    assert (trials["one-shot_seed-0"].config.ratio, trials["one-shot_seed-0"].config.stages) == (0.5, 1)
    only_points = parse_spec({"sweep": {"sources": ["s"]}, "points": [{"name": "p", "criterion": "random"}]})
    assert [t.name for t in only_points.trials()] == ["p_seed-0"]
    assert [t.name for t in parse_spec({"sweep": {"sources": ["s"]}}).trials()] == ["seed-0"]  # defaults only


def test_a_grid_point_with_a_bad_value_is_a_failed_trial_not_a_refused_sweep():
    spec = parse_spec({"sweep": {"sources": ["s"]}, "grid": {"ratio": [0.3, 1.5]}})
    good, bad = spec.trials()
    assert good.error is None and bad.config is None and "ratio" in bad.error


def test_early_stopping_compares_with_the_median_of_the_other_trials(tmp_path):
    for name, values in {"a": [10.0, 12.0], "b": [11.0], "c": [12.0, 13.0], "me": [14.0]}.items():
        (tmp_path / name).mkdir()
        lines = [json.dumps({"event": "stage_end", "stage": s + 1, "best_val_ppl": v}) for s, v in enumerate(values)]
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert hopeless("me", 1, 14.0, tmp_path, margin=0.1, min_trials=3)      # median 11, 14 > 12.1
    assert not hopeless("me", 1, 12.0, tmp_path, margin=0.1, min_trials=3)  # within the margin
    assert not hopeless("me", 2, 99.0, tmp_path, margin=0.1, min_trials=3)  # only two others reached stage 2


# ----------------------------------------------------------------------------- running sweeps


def assert_four_finished(out: Path) -> None:
    table = read_sweep_table(out)
    assert len(table) == 4 and set(table["status"]) == {"succeeded"}
    assert set(table["criterion"]) == {"dynamics-greedy", "magnitude"} and set(table["ratio"]) == {"0.3", "0.5"}
    for _, row in table.iterrows():
        assert row["command"].startswith("dynaprune prune --from ") and f"--out {out}" in row["command"]
        assert row["test_ppl"] > 1 and row["val_ppl"] > 1 and row["params_total"] > row["params_recurrent"] > 0
        assert len(row["zero_shot_val_ppl"].split(" / ")) == 2 and row["wall_s"] > 0
        assert isinstance(row["host"], str) and row["pid"] > 0
        assert "stages=2" in row["settings"] and "dry_run=True" in row["settings"]
    markdown = (out / "results.md").read_text()
    assert markdown.count("| criterion-") == 4 and "`dynaprune prune --from" in markdown


@pytest.mark.slow
def test_local_sweep_runs_every_trial_then_resumes_without_rerunning(tmp_path, synthetic_sample, monkeypatch):
    from analysis.cli import main

    spec = write_spec(tmp_path / "grid.toml", synthetic_sample)
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--backend", "local", "--max-parallel", "2"]) == 0
    assert_four_finished(out)
    before = {name: record["ended_at"] for name, record in read_records(out).items()}
    finals = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/final.pt")}

    result = run_sweep(load_spec(spec), out, backend="local", log=lambda line: None)
    assert result.exit_code == 0 and sorted(result.skipped) == sorted(before)
    assert {name: record["ended_at"] for name, record in read_records(out).items()} == before
    assert {p: p.stat().st_mtime_ns for p in out.glob("trials/*/final.pt")} == finals
    assert len(read_sweep_table(out / "results.csv")) == 4


@pytest.mark.slow
def test_a_failing_trial_is_reported_with_its_log_and_the_others_finish(tmp_path, synthetic_sample):
    text = GRID.replace('criterion = ["dynamics-greedy", "magnitude"]', 'criterion = ["magnitude"]').replace(
        "ratio = [0.3, 0.5]", 'ratio = [0.3, 1.5, "nolayer=0.5"]')
    lines = []
    result = run_sweep(load_spec(write_spec(tmp_path / "bad.toml", synthetic_sample, text)), tmp_path / "sweep",
                       backend="local", log=lines.append)
    assert result.exit_code == 1
    status = {r["name"]: r for r in result.records}
    assert status["criterion-magnitude_ratio-0.3_seed-0"]["status"] == "succeeded"
    at_start = status["criterion-magnitude_ratio-1.5_seed-0"]
    assert at_start["status"] == "failed" and "ratio" in at_start["message"]
    at_run = status["criterion-magnitude_ratio-nolayer=0.5_seed-0"]
    assert at_run["status"] == "failed" and at_run["exit_code"] == 2 and "nolayer" in at_run["log_tail"]
    assert any("nolayer" in line for line in lines)  # the log tail is shown, not only kept
    table = read_sweep_table(tmp_path / "sweep")
    assert len(table) == 3 and list(table["status"]).count("failed") == 2
    # failed trials are kept as they are unless asked
    again = run_sweep(load_spec(tmp_path / "bad.toml"), tmp_path / "sweep", backend="local", log=lines.append)
    assert len(again.skipped) == 3


@pytest.mark.slow
def test_sigterm_cancels_the_running_trials_which_then_resume(tmp_path, synthetic_sample):
    text = GRID.replace("dry_run = true", "dry_run = false\nepochs_per_stage = 1")
    spec = write_spec(tmp_path / "grid.toml", synthetic_sample, text)
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "analysis.cli", "sweep", str(spec), "--out", str(out), "--backend", "local"]
    sweep = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = out / "trials" / "criterion-dynamics-greedy_ratio-0.3_seed-0"
    deadline = time.monotonic() + 120
    while not any(first.glob("stage_1/checkpoint_last.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    sweep.send_signal(signal.SIGTERM)
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 143, output
    records = read_records(out)
    assert [r["status"] for r in records.values()] == ["cancelled"], output
    assert not (first / ".dynaprune.lock").exists() and (first / "pipeline.json").is_file()
    # the cancelled trial is continued, not started again; the one-trial sweep of it finishes
    only = text.replace('criterion = ["dynamics-greedy", "magnitude"]', 'criterion = ["dynamics-greedy"]').replace(
        "ratio = [0.3, 0.5]", "ratio = [0.3]")
    result = run_sweep(load_spec(write_spec(tmp_path / "one.toml", synthetic_sample, only)), out, backend="local",
                       log=lambda line: None)
    assert result.exit_code == 0 and result.records[0]["status"] == "succeeded"
    assert result.records[0]["attempts"] == 2
    events = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("baseline") == 1


@pytest.mark.slow
def test_ray_sweep_on_a_local_instance(tmp_path, synthetic_sample, ray_env):
    spec = write_spec(tmp_path / "grid.toml", synthetic_sample)
    out = tmp_path / "sweep"
    done = run_cli("sweep", str(spec), "--out", str(out), "--backend", "ray", "--num-cpus", "2", env=ray_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_four_finished(out)
    assert all(record.get("node_id") for record in read_records(out).values())
    again = run_cli("sweep", str(spec), "--out", str(out), "--backend", "ray", "--num-cpus", "2", env=ray_env)
    assert again.returncode == 0 and "4 trial(s) already done" in again.stdout and "0 trial(s) to run" in again.stdout


def test_table_of_an_empty_sweep_reads_back_with_every_column(tmp_path):
    frame = write_table(tmp_path)
    assert frame.empty and list(read_sweep_table(tmp_path).columns) == list(frame.columns)


@pytest.mark.slow
def test_early_stopping_stops_a_hopeless_trial_after_a_stage(tmp_path, synthetic_sample):
    text = GRID.replace('criterion = ["dynamics-greedy", "magnitude"]', 'criterion = ["magnitude"]').replace(
        "ratio = [0.3, 0.5]", "ratio = [0.1, 0.8]").replace("stages = 2", "stages = 3")
    # real stages (seconds each, not a dry run's fraction of one), one trial at a time: the watcher,
    # which polls between stages, sees stage 1 of the 0.8 trial end while its stage 2 still runs
    text = text.replace("dry_run = true", "dry_run = false\nepochs_per_stage = 1")
    text += "\n[early_stop]\nenabled = true\nmargin = 0.0\nmin_trials = 1\n"
    spec = write_spec(tmp_path / "early.toml", synthetic_sample, text)
    result = run_sweep(load_spec(spec), tmp_path / "sweep", backend="local", max_parallel=1, log=lambda line: None)
    status = {r["name"]: r for r in result.records}
    assert status["criterion-magnitude_ratio-0.1_seed-0"]["status"] == "succeeded"
    stopped = status["criterion-magnitude_ratio-0.8_seed-0"]
    assert stopped["status"] == "stopped" and "median" in stopped["message"] and result.exit_code == 0
    assert len(stopped["summary"]["stage_val_ppl"]) < 3  # it did not run to its last stage
    again = run_sweep(load_spec(spec), tmp_path / "sweep", backend="local", log=lambda line: None)
    assert sorted(again.skipped) == sorted(status)  # a stopped trial is not run again


@pytest.mark.slow
def test_sigterm_cancels_a_ray_sweep_leaving_its_trial_resumable(tmp_path, synthetic_sample, ray_env):
    text = GRID.replace("dry_run = true", "dry_run = false\nepochs_per_stage = 1").replace(
        'criterion = ["dynamics-greedy", "magnitude"]', 'criterion = ["magnitude"]').replace(
        "ratio = [0.3, 0.5]", "ratio = [0.3]")
    spec = write_spec(tmp_path / "one.toml", synthetic_sample, text)
    out = tmp_path / "sweep"
    trial = out / "trials" / "criterion-magnitude_ratio-0.3_seed-0"
    command = [sys.executable, "-m", "analysis.cli", "sweep", str(spec), "--out", str(out), "--backend", "ray",
               "--num-cpus", "1"]
    sweep = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, **ray_env})
    deadline = time.monotonic() + 180
    while not any(trial.glob("stage_1/checkpoint_last.pt")) and time.monotonic() < deadline:
        assert sweep.poll() is None, sweep.communicate()[0]
        time.sleep(0.2)
    sweep.send_signal(signal.SIGTERM)
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 143, output
    assert read_records(out)["criterion-magnitude_ratio-0.3_seed-0"]["status"] == "cancelled", output
    deadline = time.monotonic() + 90  # the trial's prune process saves its checkpoint and exits
    while (trial / ".dynaprune.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    result = run_sweep(load_spec(spec), out, backend="local", log=lambda line: None)
    assert result.exit_code == 0 and result.records[0]["status"] == "succeeded"
    events = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("baseline") == 1


@pytest.mark.slow
def test_a_sweep_runs_as_a_background_job(tmp_path, synthetic_sample):
    from analysis import jobs

    text = GRID.replace('criterion = ["dynamics-greedy", "magnitude"]', 'criterion = ["magnitude"]').replace(
        "ratio = [0.3, 0.5]", "ratio = [0.3]")
    spec = write_spec(tmp_path / "one.toml", synthetic_sample, text)
    job = jobs.submit(["sweep", str(spec), "--out", str(tmp_path / "sweep"), "--backend", "local"],
                      home=tmp_path / "home", max_jobs=1)
    ended = jobs.wait(job.id, timeout_s=300, home=tmp_path / "home")
    assert ended.state == "succeeded", jobs.read_log(job.id, home=tmp_path / "home")
    assert "1 succeeded" in jobs.read_log(job.id, home=tmp_path / "home")
    assert list(read_sweep_table(tmp_path / "sweep")["status"]) == ["succeeded"]
