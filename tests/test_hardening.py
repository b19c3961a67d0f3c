"""Hardening: hostile or broken inputs end in one clear line (CLI exit status 2, no traceback) and
leave nothing half-written. One section per case of the "Hardening" issue; the property tests for
the readers are at the end (profile in tests/conftest.py)."""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from analysis.cli import main
from analysis.errors import CheckpointError, DynapruneError, InvalidInputError, UnsafeCheckpointError
from analysis.jobs import records, store
from analysis.lm.model import ModelConfig, RNNLanguageModel, load_model, save_model
from analysis.runs import check_output_dir
from analysis.trajectories.checkpoints import load_state_dict, read_safetensors_shapes
from analysis.trajectories.trajectory import load_trajectory
from analysis.uploads import path_arguments, paths_used_by_jobs, remove_stale_uploads
from analysis.utils.fileio import atomic_write_json
from analysis.utils.runlock import LOCK_FILE, RunLockedError, run_lock
from tests.conftest import REPO_ROOT, SMALL_CORPUS

JOB_ID = "20250101T120000.123456-0123abcd"


def one_clear_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\x1b" not in err
    assert len(err.splitlines()) == 1, err
    return err


def gru_trajectory(folder: Path, make_state, steps=(0, 10, 20)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for step in steps:
        torch.save(make_state(), folder / f"ckpt_{step}.pt")
    return folder


# ---------------------------------------------------------------- 4. files that are not checkpoints


@pytest.fixture
def not_checkpoints(tmp_path) -> dict[str, Path]:
    files = {"text": tmp_path / "notes.pt", "empty": tmp_path / "empty.pt", "passwd": tmp_path / "passwd",
             "whole model": tmp_path / "whole.pt"}
    files["text"].write_text("hello, this is not a model\n")
    files["empty"].write_bytes(b"")
    shutil.copy("/etc/passwd", files["passwd"]) if Path("/etc/passwd").is_file() else files["passwd"].write_text(
        "root:x:0:0:root:/root:/bin/sh\n")
    torch.save(nn.LSTM(2, 3), files["whole model"])
    return files


@pytest.mark.parametrize("kind", ["text", "empty", "passwd", "whole model"])
def test_eval_and_prune_on_a_file_that_is_no_checkpoint_say_what_it_is(not_checkpoints, kind, tmp_path, capsys):
    path = not_checkpoints[kind]
    for argv in (["eval", str(path)], ["prune", "--from", str(path), "--out", str(tmp_path / "out")]):
        assert main(argv) == 2
        line = one_clear_line(capsys)
        assert str(path) in line
        assert "weights_only" not in line and "add_safe_globals" not in line
        if kind == "whole model":
            assert "model.state_dict()" in line and "torch.nn.modules.rnn.LSTM" in line
        elif kind == "empty":
            assert "empty file" in line
        else:
            assert "text file" in line
    assert not (tmp_path / "out").exists()


def test_a_whole_pickled_model_is_refused_unrun(not_checkpoints):
    with pytest.raises(UnsafeCheckpointError, match=r"model\.state_dict\(\)"):
        load_state_dict(not_checkpoints["whole model"])


def test_a_checkpoint_with_a_garbage_model_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "odd.pt"
    torch.save({"model_config": {"vocab_size": "many", "hidden_sizes": "abc"}, "model_state": {}}, path)
    assert main(["eval", str(path)]) == 2
    assert str(path) in one_clear_line(capsys)
    torch.save({"model_config": [1, 2], "model_state": 3}, path)
    assert main(["eval", str(path)]) == 2
    assert str(path) in one_clear_line(capsys)


# ---------------------------------------------------------------- 9. devices and seeds


@pytest.mark.parametrize("argv, expected", [
    (["--device", "nonsense"], "not a device name"),
    (["--device", "meta"], "not supported"),
    (["--seed", "-1"], "seed"),
    (["--seed", str(2**63)], "seed"),
])
@pytest.mark.parametrize("command", ["train", "prune"])
def test_bad_device_or_seed_is_refused_before_any_work(command, argv, expected, tmp_path, capsys):
    out = tmp_path / "out"
    head = (["train", "--preset", "synthetic-tiny", "--data", SMALL_CORPUS] if command == "train"
            else ["prune", "--from", str(tmp_path / "missing")])
    assert main([*head, "--out", str(out), *argv]) == 2
    assert expected in one_clear_line(capsys)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_only_machine_is_one_line(tmp_path, capsys):
    assert main(["train", "--preset", "synthetic-tiny", "--out", str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert "--device 'cuda'" in one_clear_line(capsys)


# ---------------------------------------------------------------- 10. complex weights


def test_complex_weights_are_refused(tmp_path):
    state = {k: v.to(torch.complex64) for k, v in nn.GRU(2, 3).state_dict().items()}
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="complex"):
        load_state_dict(tmp_path / "c.pt")
    save_file(state, tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="complex"):
        read_safetensors_shapes(tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="complex"):
        load_state_dict(tmp_path / "c.safetensors")
    folder = gru_trajectory(tmp_path / "traj", lambda: {k: v.to(torch.complex64)
                                                        for k, v in nn.GRU(2, 3).state_dict().items()})
    with pytest.raises(CheckpointError, match="complex"):
        load_trajectory(folder)


# ---------------------------------------------------------------- 5. huge step numbers


def test_step_numbers_beyond_int64_are_refused(tmp_path):
    folder = gru_trajectory(tmp_path / "names", lambda: nn.GRU(2, 3).state_dict(), steps=(0, 10, 2**63))
    with pytest.raises(CheckpointError, match="2\\^63"):
        load_trajectory(folder)
    long = gru_trajectory(tmp_path / "long", lambda: nn.GRU(2, 3).state_dict(), steps=(0, 10))
    torch.save(nn.GRU(2, 3).state_dict(), long / f"ckpt_{'9' * 200}.pt")
    with pytest.raises(CheckpointError, match="2\\^63"):
        load_trajectory(long)
    largest = gru_trajectory(tmp_path / "largest", lambda: nn.GRU(2, 3).state_dict(), steps=(0, 10, 2**63 - 1))
    assert int(load_trajectory(largest).steps[-1]) == 2**63 - 1


def test_manifest_steps_beyond_int64_are_refused(tmp_path):
    root = tmp_path / "recorded"
    (root / "snapshots").mkdir(parents=True)
    entries = []
    for index, step in enumerate((0, 1, 2**63)):
        save_file(nn.GRU(2, 3).state_dict(), root / "snapshots" / f"s{index}.safetensors")
        entries.append({"step": step, "file": f"snapshots/s{index}.safetensors"})
    (root / "manifest.json").write_text(json.dumps({"format_version": 1, "entries": entries}))
    with pytest.raises(CheckpointError, match="entry 2"):
        load_trajectory(root)
    (root / "manifest.json").write_text('{"format_version": 1, "entries": [{"step": 1' + "0" * 5000 + "}]}")
    with pytest.raises(CheckpointError):
        load_trajectory(root)


# ---------------------------------------------------------------- 6. NaN timestamps of jobs


def write_job(home: Path, status: dict, job_id: str = JOB_ID) -> Path:
    job_dir = store.jobs_dir(home) / job_id
    job_dir.mkdir(parents=True)
    (job_dir / "spec.json").write_text(json.dumps({"args": ["train", "--out", "runs/x"], "created_at": math.nan}))
    (job_dir / "status.json").write_text(json.dumps(status))
    return job_dir


def test_nan_and_infinite_timestamps_show_the_job(jobs_home, capsys):
    write_job(jobs_home, {"state": "failed", "started_at": math.nan, "ended_at": math.inf,
                          "heartbeat_at": -math.inf, "queued_at": 1e300, "exit_code": 1, "attempt": 1})
    job = store.load_job(store.job_path(JOB_ID, jobs_home))
    assert job.state == "failed" and job.started_at is None and job.ended_at is None and job.queued_at is None
    assert main(["jobs", "list"]) == 0
    assert JOB_ID in capsys.readouterr().out
    assert main(["jobs", "show", JOB_ID]) == 0
    shown = capsys.readouterr().out
    assert JOB_ID in shown and "failed" in shown


# ---------------------------------------------------------------- 11. broken pipe, dashboard settings


def test_a_broken_pipe_ends_quietly(jobs_home):
    for number in range(800):  # more lines than a pipe buffers
        write_job(jobs_home, {"state": "failed"}, job_id=f"20250101T120000.{number:06d}-0123abcd")
    done = subprocess.run(f"{sys.executable} -m analysis.cli jobs list | head -1", shell=True, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DYNAPRUNE_HOME": str(jobs_home)})
    assert done.stdout.startswith("ID")
    assert done.stderr == ""


def test_the_dashboard_listens_on_loopback_from_any_folder(tmp_path):
    probe = ("import streamlit.config as c; c._main_script_path = sys.argv[1]; "
             "c.get_config_options(force_reparse=True); "
             "print(c.get_option('server.address'), c.get_option('server.maxUploadSize'))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    done = subprocess.run([sys.executable, "-c", f"import sys; {probe}", str(REPO_ROOT / "app" / "main.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**env, "HOME": str(tmp_path)})
    assert done.stdout.split() == ["127.0.0.1", "200"], done.stderr


# ---------------------------------------------------------------- 2. output folders and the run lock


def test_an_output_folder_of_something_else_is_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("mine")
    with pytest.raises(InvalidInputError, match="other files"):
        check_output_dir(other, "training", overwrite=False)
    with pytest.raises(InvalidInputError, match="other files"):
        check_output_dir(other, "pipeline", overwrite=False)
    check_output_dir(other, "training", overwrite=True)
    borrowed = tmp_path / "borrowed"
    (borrowed / "trajectory").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="trajectory"):
        check_output_dir(borrowed, "training", overwrite=False)
    training = tmp_path / "training"
    training.mkdir()
    (training / "run.json").write_text("{}")
    (training / "checkpoint_last.pt").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="a training run"):
        check_output_dir(training, "pipeline", overwrite=False)
    check_output_dir(training, "training", overwrite=False)
    check_output_dir(tmp_path / "new", "pipeline", overwrite=False)


def test_train_refuses_a_folder_of_other_files_and_overwrite_keeps_them(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "trajectory").mkdir()
    argv = ["train", "--preset", "synthetic-tiny", "--data", SMALL_CORPUS, "--out", str(out), "--dry-run",
            "--no-progress", "--epochs", "1", "--record-every", "2"]
    assert main(argv) == 2
    assert "--overwrite" in one_clear_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "trajectory"]
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep me" and (out / "best.pt").is_file()
    assert not (out / LOCK_FILE).exists()
    capsys.readouterr()
    pipeline_out = tmp_path / "pruned"
    assert main(["prune", "--from", str(out), "--out", str(out), "--ratio", "0.5", "--dry-run"]) == 2
    assert "a training run" in one_clear_line(capsys)
    assert not pipeline_out.exists() and (out / "best.pt").is_file()


def test_a_second_writer_fails_at_once_and_a_stale_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mkdir()
        (run / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid}))
        started = time.monotonic()
        with pytest.raises(RunLockedError, match=f"process {sleeper.pid}"):
            with run_lock(run):
                pass
        assert time.monotonic() - started < 5
    finally:
        sleeper.kill()
        sleeper.wait()
    with run_lock(run):  # the holder is dead now: its lock is stale
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(RunLockedError):
            with run_lock(run):
                pass
    assert not (run / LOCK_FILE).exists()
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError):
        with run_lock(fresh):
            raise ValueError("the run failed before writing anything")
    assert not fresh.exists()


# ---------------------------------------------------------------- 8. unwritable or full output


def test_an_unusable_output_location_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["train", "--preset", "synthetic-tiny", "--data", SMALL_CORPUS, "--out", str(blocker / "run"),
                 "--dry-run", "--no-progress"]) == 2
    assert str(blocker) in one_clear_line(capsys)
    assert blocker.read_text() == "x"


def test_a_full_disk_keeps_the_file_that_was_there(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    atomic_write_json(target, {"old": True})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        atomic_write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["train", "--preset", "synthetic-tiny", "--data", SMALL_CORPUS, "--out", str(locked / "run"),
                     "--dry-run", "--no-progress"]) == 2
        assert str(locked) in one_clear_line(capsys)
    finally:
        locked.chmod(0o755)


# ---------------------------------------------------------------- 3. upload retention and names


def test_job_arguments_in_every_form_protect_their_upload(tmp_path, jobs_home):
    assert path_arguments(["prune", "--from=/a/b", "--out", "c", "-x", "--ratio=0.5"]) == \
        ["prune", "/a/b", "c", "0.5"]
    root = jobs_home / "uploads"
    kept, spelled, gone = root / "s1", root / "s2", root / "s3"
    for folder in (kept, spelled, gone):
        (folder / "run").mkdir(parents=True)
        os.utime(folder, (0, 0))
        os.utime(folder / "run", (0, 0))
    in_use = [kept / "run", (tmp_path / "elsewhere" / ".." / "home" / "uploads" / "s2" / "run")]
    removed = remove_stale_uploads(jobs_home, max_age_s=1.0, in_use=in_use)
    assert removed == [gone] and kept.is_dir() and spelled.is_dir()
    job_dir = write_job(jobs_home, {"state": "failed"})
    spec = json.loads((job_dir / "spec.json").read_text())
    spec.update(args=["prune", f"--from={root}/s1/../s1/run", "--out", "o"], cwd=str(tmp_path))
    (job_dir / "spec.json").write_text(json.dumps(spec))
    assert (kept / "run").resolve() in paths_used_by_jobs(jobs_home)


def test_uploads_with_colliding_names_get_folders_of_their_own(samples, tmp_path):
    pytest.importorskip("streamlit")
    from app.common import import_archive

    folder = tmp_path / "uploads" / "session"
    archive = tmp_path / "a.zip"
    trajectory_dir = samples / "synthetic" / "trajectory"
    with zipfile.ZipFile(archive, "w") as handle:
        for file in trajectory_dir.rglob("*"):
            if file.is_file():
                handle.write(file, Path("trajectory") / file.relative_to(trajectory_dir))
    first = import_archive("x.zip.zip", archive.read_bytes(), folder, max_unpacked_bytes=10**9)
    second = import_archive("x.zip", archive.read_bytes(), folder, max_unpacked_bytes=10**9)
    assert first != second and first.name == "x.zip" and (second / "manifest.json").is_file()
    assert sorted(p.name for p in folder.iterdir()) == sorted([first.name, second.name])


# ---------------------------------------------------------------- 7. a supervisor killed mid-run


def dead_token() -> dict:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = {"pid": child.pid, "start_ticks": None, "boot_id": None}
    child.wait()
    return token


def test_a_job_whose_command_recorded_its_exit_is_not_lost(jobs_home):
    command = dead_token()
    status = {"state": "running", "attempt": 2, "supervisor": dead_token(), "command": command,
              "started_at": time.time(), "queued_at": time.time()}
    job_dir = write_job(jobs_home, status)
    (job_dir / "exit.json").write_text(json.dumps({"attempt": 2, "pid": command["pid"], "exit_code": 0,
                                                   "ended_at": time.time()}))
    job = store.load_job(job_dir)
    assert job.state == "succeeded" and job.exit_code == 0 and "exit record" in job.message
    other = write_job(jobs_home, status, job_id="20250101T120000.123456-0123abce")
    (other / "exit.json").write_text(json.dumps({"attempt": 1, "pid": command["pid"], "exit_code": 0}))
    assert store.load_job(other).state == "lost"  # an earlier attempt's record says nothing of this one


def test_the_command_writes_its_exit_record(jobs_home):
    job_dir = write_job(jobs_home, {"state": "running", "attempt": 3})
    done = subprocess.run([sys.executable, "-m", "analysis.cli", "jobs", "list"], cwd=REPO_ROOT, capture_output=True,
                          timeout=120, env={**os.environ, "DYNAPRUNE_HOME": str(jobs_home), "DYNAPRUNE_JOB_ID": JOB_ID,
                                            "DYNAPRUNE_JOB_ATTEMPT": "3"})
    assert done.returncode == 0
    record = json.loads((job_dir / "exit.json").read_text())
    assert record["attempt"] == 3 and record["exit_code"] == 0 and isinstance(record["pid"], int)


@pytest.mark.slow
def test_killing_the_supervisor_does_not_lose_a_job_that_succeeds(jobs_home, tmp_path):
    from analysis import jobs

    job = jobs.submit(["train", "--preset", "synthetic-tiny", "--data", SMALL_CORPUS, "--out", str(tmp_path / "r"),
                       "--dry-run", "--no-progress"])
    deadline = time.monotonic() + 60
    while (job := jobs.get_job(job.id)).pid is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.pid is not None, job
    os.kill(job.supervisor_pid, signal.SIGKILL)
    while time.monotonic() < deadline + 120 and not jobs.get_job(job.id).finished:
        time.sleep(0.2)
    assert jobs.get_job(job.id).state == "succeeded"


# ---------------------------------------------------------------- 1. declared sizes against real bytes


def test_an_expanded_view_is_refused_before_it_is_copied(tmp_path):
    torch.save({"rnn.weight_hh_l0": torch.zeros(1).expand(100_000, 100_000)}, tmp_path / "ckpt_1.pt")
    with pytest.raises(CheckpointError, match="expanded"):
        load_state_dict(tmp_path / "ckpt_1.pt")
    storage = torch.zeros(3000)
    torch.save({"w": storage.as_strided((1000, 1000), (1, 1))}, tmp_path / "overlap.pt")
    with pytest.raises(CheckpointError, match="overlapping"):
        load_state_dict(tmp_path / "overlap.pt", mmap=True)
    folder = gru_trajectory(tmp_path / "traj", lambda: {
        **nn.GRU(2, 3).state_dict(), "weight_hh_l0": torch.zeros(1).expand(9, 3)})
    with pytest.raises(CheckpointError, match="expanded"):
        load_trajectory(folder)


def test_a_safetensors_header_that_lies_about_its_sizes_is_refused(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 16]}}).encode()
    path = tmp_path / "ckpt_1.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match="safetensors"):
        read_safetensors_shapes(path)


def test_a_model_config_without_matching_weights_is_refused_unbuilt(tmp_path):
    small = RNNLanguageModel(ModelConfig(vocab_size=10, embedding_size=4, hidden_sizes=[5]))
    path = save_model(tmp_path / "m.pt", small, None)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model_config"]["hidden_sizes"] = [12_000]
    torch.save(checkpoint, path)
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(path)
    assert time.monotonic() - started < 5


def test_the_memory_budget_names_the_file_and_the_size(tmp_path, monkeypatch, capsys):
    model = RNNLanguageModel(ModelConfig(vocab_size=50, embedding_size=8, hidden_sizes=[16]))
    path = save_model(tmp_path / "m.pt", model, None)
    monkeypatch.setenv("DYNAPRUNE_MAX_LOAD_BYTES", "1000")
    with pytest.raises(CheckpointError, match="DYNAPRUNE_MAX_LOAD_BYTES") as caught:
        load_model(path)
    assert str(path) in str(caught.value) and "KiB" in str(caught.value)
    assert main(["eval", str(path)]) == 2
    assert "budget" in one_clear_line(capsys)
    monkeypatch.setenv("DYNAPRUNE_MAX_LOAD_BYTES", "lots")
    with pytest.raises(InvalidInputError, match="DYNAPRUNE_MAX_LOAD_BYTES"):
        load_model(path)


def test_a_failed_upload_leaves_nothing_unpacked(tmp_path):
    pytest.importorskip("streamlit")
    from app.common import import_archive

    folder = tmp_path / "uploads" / "session"
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for step in (0, 1, 2):
            handle.writestr(f"ckpt_{step}.pt", b"\x80\x02 not really a pickle")
    with pytest.raises(DynapruneError):
        import_archive("bad.zip", archive.read_bytes(), folder, max_unpacked_bytes=10**9)
    assert list(folder.iterdir()) == []


# ---------------------------------------------------------------- 12. property tests for the readers

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)


def fresh_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@given(data=st.binary(max_size=600), suffix=st.sampled_from([".pt", ".pth", ".safetensors"]))
def test_random_bytes_are_never_more_than_a_checkpoint_error(tmp_path, data, suffix):
    path = fresh_folder(tmp_path, "bytes") / f"ckpt_1{suffix}"
    path.write_bytes(data)
    try:
        load_state_dict(path)
    except DynapruneError:
        pass


@given(header=json_values, padding=st.binary(max_size=64))
def test_random_safetensors_headers_are_never_more_than_a_checkpoint_error(tmp_path, header, padding):
    text = json.dumps(header).encode()
    path = fresh_folder(tmp_path, "headers") / "ckpt_1.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + padding)
    for reader in (read_safetensors_shapes, load_state_dict):
        try:
            reader(path)
        except DynapruneError:
            pass


@given(manifest=json_values | st.fixed_dictionaries(
    {"format_version": st.integers(-2, 3), "entries": st.lists(json_values | st.fixed_dictionaries(
        {"step": st.integers(-5, 2**70), "file": st.text(max_size=30)}), max_size=5)}))
def test_random_manifests_are_never_more_than_a_checkpoint_error(tmp_path, manifest):
    root = fresh_folder(tmp_path, "manifest")
    (root / "manifest.json").write_text(json.dumps(manifest))
    try:
        load_trajectory(root)
    except DynapruneError:
        pass


member_names = st.text(alphabet="ab./\\:_-", min_size=1, max_size=12).map(lambda s: s + ".pt") | st.sampled_from(
    ["../x.pt", "/abs.pt", "a/../../x.pt", "C:/x.pt", "ok/ckpt_1.pt", "manifest.json", "x.exe"])


@pytest.mark.filterwarnings("ignore:Duplicate name")
@given(members=st.lists(st.tuples(member_names, st.binary(max_size=100)), min_size=1, max_size=5))
def test_random_zips_unpack_inside_their_folder_or_not_at_all(tmp_path, members):
    from analysis.trajectories.archives import extract_checkpoint_archive

    work = fresh_folder(tmp_path, "zips")
    archive, destination = work / "in.zip", work / "dest" / "inner"
    with zipfile.ZipFile(archive, "w") as handle:
        for name, data in members:
            handle.writestr(name, data)
    try:
        extracted = extract_checkpoint_archive(archive, destination)
    except DynapruneError:
        extracted = None
    outside = [p for p in work.rglob("*") if p != archive and not p.is_relative_to(destination)
               and p not in (work / "dest",)]
    assert outside == []
    if extracted is not None:
        assert extracted.resolve().is_relative_to(destination.resolve())
        assert all(p.resolve().is_relative_to(extracted.resolve()) for p in extracted.rglob("*"))


@given(status=json_values | st.fixed_dictionaries(
    {"state": st.sampled_from(list(records.STATES)), "started_at": st.floats(), "ended_at": json_values,
     "heartbeat_at": st.floats(), "attempt": json_values, "exit_code": json_values, "history": json_values,
     "command": json_values, "supervisor": json_values}))
def test_random_job_status_files_still_list(tmp_path, monkeypatch, status, capsys):
    home = fresh_folder(tmp_path, "home")
    monkeypatch.setenv("DYNAPRUNE_HOME", str(home))
    write_job(home, status)
    job = store.load_job(store.job_path(JOB_ID, home))
    assert job.id == JOB_ID
    assert main(["jobs", "list"]) == 0
    assert main(["jobs", "show", JOB_ID]) in (0, 1)
    capsys.readouterr()
