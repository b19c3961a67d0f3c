"""`dynaprune train` and `dynaprune eval` end to end, including SIGTERM and resumption in a real process."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from analysis.cli import build_parser, main
from analysis.cli import train as train_cli
from analysis.lm.training_config import TrainConfig
from analysis.trajectories.trajectory import load_trajectory
from analysis.utils.options import config_argv
from tests.conftest import REPO_ROOT

SMALL_CORPUS = "synthetic:0:train=4000,valid=800,test=800,words=40,states=6"


def last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.slow  # trains a model
def test_dry_run_then_eval_json(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "synthetic-tiny", "--data", SMALL_CORPUS, "--out", str(run),
                 "--dry-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "valid ppl" in out and "oracle ppl" in out
    assert len(load_trajectory(run)) >= 3
    assert torch.load(run / "best.pt", weights_only=True)["data_source"] == load_source(run)

    assert main(["eval", str(run), "--split", "test", "--json"]) == 0
    result = last_json_line(capsys.readouterr().out)
    assert result["split"] == "test" and result["tokens"] > 0
    assert math.isfinite(result["perplexity"]) and result["perplexity"] > 1
    assert result["oracle_perplexity"] is not None and result["oracle_perplexity"] > 1

    assert main(["eval", str(run / "best.pt"), "--split", "valid", "--json", "--batch-size", "5"]) == 0
    assert last_json_line(capsys.readouterr().out)["split"] == "valid"


def load_source(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["data_source"]


def write_text_corpus(directory: Path) -> None:
    directory.mkdir(parents=True)
    words = [f"w{i}" for i in range(20)]
    for split, lines in (("train", 300), ("valid", 60), ("test", 60)):
        text = "\n".join(" ".join(words[(i * 7 + j * 3) % 20] for j in range(6)) for i in range(lines))
        (directory / f"{split}.txt").write_text(text + "\n", encoding="utf-8")


@pytest.mark.slow  # trains a model
def test_eval_of_a_moved_corpus_asks_for_data(tmp_path, capsys):
    corpus_dir, run = tmp_path / "corpus", tmp_path / "run"
    write_text_corpus(corpus_dir)
    assert main(["train", "--preset", "synthetic-tiny", "--data", f"text:{corpus_dir}", "--out", str(run),
                 "--dry-run", "--no-progress"]) == 0
    moved = tmp_path / "moved"
    shutil.move(corpus_dir, moved)
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "valid"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["eval", str(run), "--split", "valid", "--data", f"text:{moved}", "--json"]) == 0
    result = last_json_line(capsys.readouterr().out)
    assert result["oracle_perplexity"] is None and result["tokens"] > 0
    assert main(["eval", str(run), "--data", SMALL_CORPUS]) == 2  # a different vocabulary
    assert "vocabulary" in capsys.readouterr().err


# A value other than the synthetic-tiny preset's for every option `dynaprune train` has.
NON_PRESET_TRAINING = {
    "epochs": 5, "optimizer": "sgd", "lr": 0.0125, "lr_decay": 0.8, "decay_after_epoch": 2, "lr_schedule": "cosine",
    "clip": 0.25, "bptt": 7, "batch_size": 3, "eval_batch_size": 4, "eval_bptt": 9, "seed": 5, "record_every": 0,
    "record_dtype": "float16", "log_interval": 9, "max_batches_per_epoch": 6, "max_eval_batches": 3,
}


def test_every_train_option_goes_through_the_command_line_and_back():
    preset_config = TrainConfig.from_preset("synthetic-tiny")
    exposed = {field.name for field in dataclasses.fields(TrainConfig)} - set(train_cli.TEACHER_SETTINGS)
    assert set(NON_PRESET_TRAINING) == exposed
    for name, value in NON_PRESET_TRAINING.items():
        assert getattr(preset_config, name) != value, name
    config = dataclasses.replace(preset_config, **NON_PRESET_TRAINING).validate()
    for base in (None, preset_config):  # every option spelled out, or only the changed ones
        argv = ["train", "--preset", "synthetic-tiny", "--out", "runs/x",
                *config_argv(config, base=base, skip=train_cli.TEACHER_SETTINGS)]
        assert train_cli.config_from_args(build_parser().parse_args(argv)) == config
    plain = build_parser().parse_args(["train", "--preset", "synthetic-tiny", "--out", "runs/x"])
    assert train_cli.config_from_args(plain) == preset_config


@pytest.mark.slow  # trains a model
def test_train_refuses_to_resume_with_other_settings(tmp_path, capsys):
    run = tmp_path / "run"
    arguments = ["train", "--preset", "synthetic-tiny", "--data", SMALL_CORPUS, "--out", str(run), "--dry-run",
                 "--no-progress"]
    assert main(arguments) == 0
    assert main(arguments + ["--lr", "0.5"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(arguments + ["--lr", "0.5", "--overwrite"]) == 0


@pytest.mark.slow  # trains in a subprocess
def test_sigterm_stops_with_143_and_the_same_command_resumes(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "analysis.cli", "train", "--preset", "synthetic-tiny", "--data",
               "synthetic:0:train=20000,valid=1000,test=1000", "--out", str(run), "--epochs", "3",
               "--no-progress", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        manifest = run / "trajectory" / "manifest.json"
        deadline = time.monotonic() + 60
        # wait until a snapshot after step 0 exists: the loop (and its SIGTERM handler) is running
        while time.monotonic() < deadline and process.poll() is None:
            if manifest.is_file() and len(json.loads(manifest.read_text())["entries"]) >= 2:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    if process.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert process.returncode == 143, err
    assert "resume" in out
    assert (run / "checkpoint_last.pt").is_file()
    finished = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stdout
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3]
