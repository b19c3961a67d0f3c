"""`dynaprune import`: a word language model trained by a script of its own (tests/foreign/
train_word_lm.py, plain torch in the shape of pytorch/examples word_language_model) becomes a run
that `dynaprune eval` scores exactly as the script did and `dynaprune prune` prunes; and what does
not fit that shape is refused with the keys named.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from analysis.cli import main
from analysis.errors import CheckpointError, InvalidInputError, UnsafeCheckpointError
from analysis.lm.foreign import foreign_layout
from analysis.lm.importing import import_language_model
from analysis.lm.model import load_model
from analysis.runs import run_kind
from analysis.trajectories.trajectory import load_trajectory
from tests.conftest import REPO_ROOT

TRAIN_SCRIPT = REPO_ROOT / "tests" / "foreign" / "train_word_lm.py"
SUBJECTS = ["the cat", "a dog", "the old bird", "my friend", "the teacher"]
VERBS = ["sees", "likes", "chases", "finds", "hears"]
OBJECTS = ["the ball", "a red box", "the garden", "some bread", "the river"]
ENDINGS = ["today", "again", "at night", "", "quickly"]


def write_corpus(directory: Path, seed: int = 0) -> Path:
    """train/valid/test.txt of a small repetitive grammar; every valid and test word is in train."""
    rng = random.Random(seed)

    def lines(count: int) -> str:
        return "\n".join(" ".join(filter(None, (rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS),
                                                rng.choice(ENDINGS)))) for _ in range(count)) + "\n"

    directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", 150), ("valid", 40), ("test", 40)):
        (directory / f"{split}.txt").write_text(lines(count), encoding="utf-8")
    return directory


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.slow  # trains four tiny models in subprocesses, imports, evaluates and prunes each
@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_a_foreign_word_lm_is_imported_scored_alike_and_pruned(tmp_path, capsys, rnn_type, tied):
    corpus = write_corpus(tmp_path / "corpus")
    checkpoints = tmp_path / "checkpoints"
    command = [sys.executable, str(TRAIN_SCRIPT), "--data", str(corpus), "--save", str(checkpoints),
               "--model", rnn_type, "--emsize", "16", "--nhid", "16", "--nlayers", "2", "--batch-size", "4",
               "--bptt", "10", "--save-every", "4", "--eval-split", "test"] + (["--tied"] if tied else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    script = last_json(done.stdout)
    assert len(list(checkpoints.glob("step_*.pt"))) >= 3

    run = tmp_path / "runs" / "imported"
    status, out, err = cli(capsys, "import", str(checkpoints), "--data", f"text:{corpus}", "--out", str(run),
                           "--batch-size", "4", "--bptt", "10", "--json")
    assert status == 0, err
    imported = last_json(out)
    assert imported["rnn_type"] == rnn_type and imported["tie_weights"] == tied
    assert imported["hidden_sizes"] == [16, 16] and imported["step"] == script["steps"]
    assert run_kind(run) == "training" and (run / "best.pt").is_file() and (run / "vocab.json").is_file()
    trajectory = load_trajectory(run)
    assert trajectory.layers == ["rnns.0.l0", "rnns.1.l0"] and len(trajectory) == imported["snapshots"]
    model, info = load_model(run)
    assert model.config.tie_weights == tied and info["data_source"] == f"text:{corpus}"

    # the same perplexity as the script's own evaluation, on the same split with the same batch and window
    status, out, err = cli(capsys, "eval", str(run), "--split", "test", "--batch-size", "10", "--bptt", "10", "--json")
    assert status == 0, err
    assert last_json(out)["perplexity"] == pytest.approx(script["ppl"], rel=1e-4)

    pruned = tmp_path / "runs" / "pruned"
    status, out, err = cli(capsys, "prune", "--from", str(run), "--dry-run", "--ratio", "0.5", "--out", str(pruned),
                           "--no-progress")
    assert status == 0, err
    status, out, err = cli(capsys, "eval", str(pruned), "--json")
    assert status == 0, err
    assert last_json(out)["hidden_sizes"] == ([8, 16] if tied else [8, 8])  # tied: the last layer feeds the decoder


# ----------------------------------------------------------------------------- refusals, in process


class ExamplesModel(nn.Module):
    """The examples' RNNModel, the parts a state dict shows."""

    def __init__(self, vocab: int, size: int = 6, layers: int = 2, kind=nn.LSTM, tied: bool = False, **rnn_options):
        super().__init__()
        self.encoder = nn.Embedding(vocab, size)
        self.rnn = kind(size, size, layers, **rnn_options)
        self.decoder = nn.Linear(size, vocab)
        if tied:
            self.decoder.weight = self.encoder.weight


@pytest.fixture
def text_corpus(tmp_path) -> tuple[str, int]:
    from analysis.lm.corpora import load_corpus

    spec = f"text:{write_corpus(tmp_path / 'corpus')}"
    return spec, len(load_corpus(spec).vocab)


def save_steps(folder: Path, state_of_step, steps=(1, 2, 3)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for step in steps:
        torch.save(state_of_step(step), folder / f"step_{step}.pt")
    return folder


def trained_states(model: nn.Module):
    """State dicts that move a little from one step to the next, like training's."""
    def state(step: int) -> dict:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.01 * step * torch.randn_like(parameter))
        return {key: value.clone() for key, value in model.state_dict().items()}
    return state


def test_the_import_places_renamed_tensors_by_shape_and_keeps_a_chosen_checkpoint(tmp_path, text_corpus):
    spec, vocab = text_corpus
    torch.manual_seed(0)
    model = ExamplesModel(vocab, kind=nn.GRU, tied=True)
    renamed = {"embedding.weight": "encoder.weight", "out.weight": "decoder.weight", "out.bias": "decoder.bias"}
    states = trained_states(model)
    folder = save_steps(tmp_path / "ckpts", lambda step: {
        next((new for new, old in renamed.items() if old == key), key): value for key, value in states(step).items()})
    result = import_language_model(folder, data=spec, out=tmp_path / "run", checkpoint="2")
    assert result.step == 2 and result.layout.tied and result.layout.embedding_key == "embedding.weight"
    assert result.model.config.rnn_type == "GRU" and result.max_difference <= 1e-5
    original = torch.load(folder / "step_2.pt", weights_only=True)
    assert torch.equal(result.model.encoder.weight, original["embedding.weight"])
    assert load_trajectory(tmp_path / "run").layers == ["rnns.0.l0", "rnns.1.l0"]


@pytest.mark.parametrize("case, message", [
    ("bidirectional", "bidirectional layers"),
    ("projected", "proj_size"),
    ("extra", r"cannot place extra\.weight"),
    ("no decoder", "no decoder"),
])
def test_what_does_not_fit_is_refused_naming_the_keys(case, message):
    torch.manual_seed(0)
    options = {"bidirectional": {"bidirectional": True}, "projected": {"proj_size": 3}}.get(case, {})
    state = ExamplesModel(20, **options).state_dict()
    if case == "extra":
        state["extra.weight"] = torch.zeros(3, 3)
    if case == "no decoder":
        state = {key: value for key, value in state.items() if not key.startswith("decoder")}
    with pytest.raises(CheckpointError, match=message):
        foreign_layout(state, source="step_1.pt")


def test_a_vocabulary_of_another_size_is_refused_naming_both(tmp_path, text_corpus):
    spec, vocab = text_corpus
    folder = save_steps(tmp_path / "ckpts", trained_states(ExamplesModel(vocab + 3)))
    with pytest.raises(InvalidInputError, match=rf"{vocab + 3}-word vocabulary.*has {vocab} words.*same preprocessing"):
        import_language_model(folder, data=spec, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_existing_out_is_kept_unless_overwrite_and_then_only_run_files_go(tmp_path, text_corpus):
    spec, vocab = text_corpus
    folder = save_steps(tmp_path / "ckpts", trained_states(ExamplesModel(vocab)))
    out = tmp_path / "run"
    (out / "trajectory").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="already exists.*--overwrite"):
        import_language_model(folder, data=spec, out=out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "trajectory"]
    import_language_model(folder, data=spec, out=out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "best.pt").is_file()
    assert not (out / ".import-staging").exists()


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, text_corpus):
    spec, vocab = text_corpus
    folder = save_steps(tmp_path / "ckpts", trained_states(ExamplesModel(vocab)))
    torch.save(ExamplesModel(vocab), folder / "step_4.pt")  # a pickled module, not a state dict
    with pytest.raises(UnsafeCheckpointError):
        import_language_model(folder, data=spec, out=tmp_path / "run")
