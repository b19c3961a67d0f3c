"""Every snippet of docs/your-own-model.md and README.md's Python examples runs as written."""
from __future__ import annotations

import math
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from analysis.cli import main
from tests.conftest import REPO_ROOT
from tests.test_import import TRAIN_SCRIPT, write_corpus

YOUR_OWN_MODEL = REPO_ROOT / "docs" / "your-own-model.md"


def code_blocks(path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture()
def foreign_folder(tmp_path, monkeypatch):
    """An empty folder with corpus/ and checkpoints/ of a word LM trained by a script of its own."""
    corpus = write_corpus(tmp_path / "corpus")
    command = [sys.executable, str(TRAIN_SCRIPT), "--data", str(corpus), "--save", str(tmp_path / "checkpoints"),
               "--model", "LSTM", "--emsize", "16", "--nhid", "16", "--nlayers", "2", "--batch-size", "4",
               "--bptt", "10", "--save-every", "4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow  # trains a tiny model in a subprocess, imports, evaluates, prunes, and runs a pruner
def test_your_own_model_page_runs_as_written(foreign_folder, capsys):
    commands = [line for block in code_blocks(YOUR_OWN_MODEL, "bash") for line in block.splitlines()
                if line.strip()]
    assert [c.split()[:2] for c in commands] == [["dynaprune", "import"], ["dynaprune", "eval"],
                                                 ["dynaprune", "prune"]]
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
    assert (foreign_folder / "runs" / "imported-pruned" / "final.pt").is_file()

    capsys.readouterr()
    namespace: dict = {"__name__": "docs"}
    for block in code_blocks(YOUR_OWN_MODEL, "python"):
        exec(compile(block, str(YOUR_OWN_MODEL), "exec"), namespace)  # noqa: S102 - our own documentation
    printed = capsys.readouterr().out.split()
    hidden, parameters, final_loss = int(printed[0]), int(printed[1]), float(printed[2])
    original = sum(p.numel() for p in namespace["Classifier"]().parameters())
    assert hidden == 8 and parameters < original and math.isfinite(final_loss)
    assert printed[3:] == ["8", "16"]


@pytest.mark.slow  # records a short training run for the snippets to read
def test_readme_python_snippets_run(tmp_path, monkeypatch, synthetic_sample):
    blocks = code_blocks(REPO_ROOT / "README.md", "python")
    assert blocks, "README.md has Python examples"
    checkpoints = tmp_path / "my_checkpoints"
    checkpoints.mkdir()
    for snapshot in sorted((synthetic_sample / "trajectory" / "snapshots").glob("*.safetensors")):
        shutil.copy(snapshot, checkpoints / snapshot.name)
    monkeypatch.chdir(tmp_path)
    first = blocks[0]
    namespace: dict = {"__name__": "readme"}
    exec(compile(first, "README.md", "exec"), namespace)  # noqa: S102
    plan, baseline = namespace["plan"], namespace["baseline"]
    assert set(plan.pruned) == set(baseline.pruned) == set(namespace["trajectory"].layers)
    hidden = {layer: namespace["trajectory"].layer_info(layer).hidden_size for layer in plan.pruned}
    assert {k: len(v) for k, v in plan.pruned.items()} == {k: round(h / 2) for k, h in hidden.items()}
    assert any(set(plan.pruned[k]) != set(baseline.pruned[k]) for k in plan.pruned)  # dynamics changed the choice
