"""Importing a word language model trained by another script (`dynaprune import`): a folder of its
state dicts, saved during training and named by step (step_100.pt, step_200.pt, ...), becomes a
dynaprune run directory that `dynaprune eval`, `dynaprune prune` and the dashboard read like one of
their own:

    folder/step_100.pt ... step_900.pt  ->  out/best.pt        the chosen checkpoint as an RNNLanguageModel
       (+ the corpus, --data)               out/run.json       its description (model config, corpus, settings)
                                            out/vocab.json     the corpus's vocabulary
                                            out/metrics.jsonl  one "import" event with the validation perplexity
                                            out/trajectory/    every checkpoint's recurrent weights, as
                                                               TrajectoryRecorder writes them (layers rnns.<i>.l0)

    result = import_language_model("my_checkpoints", data="text:my_corpus", out="runs/mine")

What the tensors are is decided by analysis.lm.foreign; the import is refused unless the model's
vocabulary is the corpus's and the imported model computes the same outputs as the original.
Nothing is written until every check has passed, and then into a staging folder first.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.errors import InvalidInputError
from analysis.lm.corpora import Corpus, batchify, load_corpus
from analysis.lm.evaluation import evaluate, perplexity
from analysis.lm.foreign import ForeignLayout, ReferenceModel, check_same_outputs, foreign_layout
from analysis.lm.model import RNNLanguageModel, save_model
from analysis.lm.run_state import describe_run
from analysis.lm.training_config import TrainConfig
from analysis.runs import (
    BEST_MODEL_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    RUN_FILE,
    RUN_OUTPUTS,
    TRAJECTORY_DIR,
    VOCAB_FILE,
    clear_run_outputs,
)
from analysis.trajectories.checkpoints import load_state_dict
from analysis.trajectories.recorder import TrajectoryRecorder
from analysis.trajectories.trajectory import load_trajectory
from analysis.utils.fileio import atomic_write_json, atomic_write_text

# pytorch/examples word_language_model's defaults: the settings a fine-tuning of the import starts from.
EXAMPLES_TRAINING = {"optimizer": "sgd", "lr": 20.0, "lr_decay": 0.25, "clip": 0.25, "bptt": 35, "batch_size": 20,
                     "epochs": 40}
EXAMPLES_DROPOUT = 0.2
PREPROCESSING = ("words split on whitespace, <eos> at each line end, ids in order of first occurrence, as "
                 "pytorch/examples word_language_model builds its Dictionary")
STAGING_DIR = ".import-staging"
# The batch the original and the imported model must agree on: 20 tokens of 4 columns of the validation split.
CHECK_BATCH = (20, 4)


@dataclass
class ImportResult:
    out_dir: Path
    model: RNNLanguageModel
    layout: ForeignLayout
    checkpoint: Path
    step: int | None
    snapshots: int
    val_ppl: float
    max_difference: float


def import_language_model(folder: str | Path, *, data: str, out: str | Path, checkpoint: str | None = None,
                          train_config: TrainConfig | None = None, dropout: float = EXAMPLES_DROPOUT,
                          overwrite: bool = False, log: Callable[[str], None] | None = None) -> ImportResult:
    """Make the run directory `out` from the folder of state dicts `folder` and the corpus `data`.

    `checkpoint` chooses the model: a step number, a file name in the folder or a path (default:
    the last checkpoint by step). `train_config` records how the model was trained (default
    EXAMPLES_TRAINING); a pruning pipeline fine-tunes from it. `dropout` goes into the model config
    (it changes fine-tuning, not evaluation). An existing, non-empty `out` is refused unless
    `overwrite`, which then replaces only the files a run writes.
    """
    folder, out = Path(folder), Path(out)
    say = log or (lambda message: None)
    _check_folder(folder)
    _check_out(out, folder, overwrite)
    train_config = (train_config or TrainConfig.from_dict(EXAMPLES_TRAINING)).validate()
    corpus = load_corpus(data)
    trajectory = load_trajectory(folder)  # the snapshots in step order, read safely, each with the same layers
    chosen, step = _choose_checkpoint(trajectory.files, [int(s) for s in trajectory.steps], checkpoint, folder)
    state = load_state_dict(chosen)
    layout = foreign_layout(state, source=str(chosen))
    if layout.vocab_size != len(corpus.vocab):
        raise InvalidInputError(
            f"{chosen}: the model has a {layout.vocab_size}-word vocabulary but corpus {corpus.source} has "
            f"{len(corpus.vocab)} words; the model must have been trained on that corpus with the same preprocessing "
            f"({PREPROCESSING})")
    model = RNNLanguageModel(layout.model_config(dropout=dropout))
    model.load_state_dict(layout.converted(state))
    model.eval()
    difference = check_same_outputs(ReferenceModel(layout, state), model, _check_tokens(corpus), str(chosen))
    say(f"{chosen.name}: {layout.rnn_type} {layout.hidden_sizes}, embedding {layout.embedding_size}, vocabulary "
        f"{layout.vocab_size}{', tied' if layout.tied else ''}; outputs equal to the original's "
        f"(largest difference {difference:.2g})")
    val_loss, _ = evaluate(model, corpus.valid)
    say(f"valid perplexity {perplexity(val_loss):.2f} on {corpus.source}")

    staging = out / STAGING_DIR
    created = not out.exists()
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        _write_trajectory(staging / TRAJECTORY_DIR, layout, trajectory.files, trajectory.steps, say)
        extra = {"data_source": corpus.source, "step": step, "val_loss": val_loss, "val_ppl": perplexity(val_loss),
                 "train_config": train_config.to_dict(), "imported_from": str(chosen.resolve())}
        save_model(staging / BEST_MODEL_FILE, model, corpus.vocab, extra)
        run_info = describe_run(corpus, model.config, train_config.to_dict(), None, None)
        run_info["imported_from"] = {"folder": str(folder.resolve()), "checkpoint": str(chosen.resolve()),
                                     "step": step, "snapshots": len(trajectory), "tied_weights": layout.tied}
        atomic_write_json(staging / RUN_FILE, run_info)
        atomic_write_json(staging / VOCAB_FILE, corpus.vocab.to_json())
        event = {"event": "import", "source": str(folder.resolve()), "checkpoint": chosen.name, "step": step,
                 "snapshots": len(trajectory), "val_loss": val_loss, "val_ppl": perplexity(val_loss),
                 "data": corpus.source}
        atomic_write_text(staging / METRICS_FILE, json.dumps(event, sort_keys=True) + "\n")
        _replace_run_files(out, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    say(f"imported into {out}: {BEST_MODEL_FILE} (step {step}), {TRAJECTORY_DIR}/ with {len(trajectory)} snapshots")
    return ImportResult(out_dir=out, model=model, layout=layout, checkpoint=chosen, step=step,
                        snapshots=len(trajectory), val_ppl=perplexity(val_loss), max_difference=difference)


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: no such folder; give the folder of the model's saved state dicts")
    if (folder / MANIFEST_FILE).is_file() or (folder / TRAJECTORY_DIR / MANIFEST_FILE).is_file():
        raise InvalidInputError(
            f"{folder}: holds a recorded trajectory, which keeps the recurrent weights only; dynaprune import needs "
            f"the whole model: a folder of state dicts (torch.save(model.state_dict(), 'step_<n>.pt'))")


def _check_out(out: Path, folder: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} is a file; choose a directory for the imported run")
    if out.resolve() == folder.resolve():
        raise InvalidInputError(f"{out}: the output directory must not be the folder being imported")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(
            f"{out} already exists and is not empty; choose a new --out, or pass --overwrite to replace what a run "
            f"writes there ({', '.join(RUN_OUTPUTS[:4])}, ...; other files are kept)")


def _choose_checkpoint(files: list[Path], steps: list[int], wanted: str | None,
                       folder: Path) -> tuple[Path, int | None]:
    """(file, step) of the checkpoint `wanted` names: a step, a file in the folder or a path; default the last."""
    if wanted is None:
        return files[-1], steps[-1]
    text = str(wanted).strip()
    if text.isdigit():
        if int(text) not in steps:
            raise InvalidInputError(f"--checkpoint {text}: no checkpoint of step {text} in {folder}; its steps are "
                                    f"{steps[0]} to {steps[-1]} ({len(steps)} checkpoints)")
        return files[steps.index(int(text))], int(text)
    for candidate in (folder / text, Path(text)):
        if candidate.is_file():
            resolved = candidate.resolve()
            step = next((s for f, s in zip(files, steps) if f.resolve() == resolved), None)
            return candidate, step
    raise InvalidInputError(f"--checkpoint {text}: neither a step number nor a file (in {folder} or as a path)")


def _check_tokens(corpus: Corpus) -> torch.Tensor:
    length, columns = CHECK_BATCH
    columns = max(1, min(columns, corpus.valid.numel() // 2))
    source = batchify(corpus.valid, columns)
    return source[:length]


def _write_trajectory(directory: Path, layout: ForeignLayout, files: list[Path], steps,
                      say: Callable[[str], None]) -> None:
    """Every checkpoint's recurrent weights under dynaprune's layer names, through a TrajectoryRecorder."""
    model = RNNLanguageModel(layout.model_config())
    recorder = TrajectoryRecorder(model, directory, every=1, dtype="float32")
    for number, (file, step) in enumerate(zip(files, steps)):
        state = load_state_dict(file)
        layout.check_same_tensors(state, str(file))
        model.load_state_dict(layout.converted(state))
        recorder.record(int(step))
        if number % 20 == 19:
            say(f"converted {number + 1} of {len(files)} checkpoints")


def _replace_run_files(out: Path, staging: Path) -> None:
    """Swap the staged files into `out`, removing only what a run writes there."""
    clear_run_outputs(out)
    for item in staging.iterdir():
        item.replace(out / item.name)
    staging.rmdir()
