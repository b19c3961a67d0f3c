"""`dynaprune train` and `dynaprune eval` end to end, including SIGTERM and resumption in a real process."""
from __future__ import annotations

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

from analysis.cli import main
from analysis.trajectories.trajectory import load_trajectory

SMALL_CORPUS = "synthetic:0:train=4000,valid=800,test=800,words=40,states=6"
REPO = Path(__file__).resolve().parents[1]




def last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


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


def test_train_refuses_to_resume_with_other_settings(tmp_path, capsys):
    run = tmp_path / "run"
    arguments = ["train", "--preset", "synthetic-tiny", "--data", SMALL_CORPUS, "--out", str(run), "--dry-run",
                 "--no-progress"]
    assert main(arguments) == 0
    assert main(arguments + ["--lr", "0.5"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(arguments + ["--lr", "0.5", "--overwrite"]) == 0


def test_sigterm_stops_with_143_and_the_same_command_resumes(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "analysis.cli", "train", "--preset", "synthetic-tiny", "--data",
               "synthetic:0:train=20000,valid=1000,test=1000", "--out", str(run), "--epochs", "3",
               "--no-progress", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stdout
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3]
