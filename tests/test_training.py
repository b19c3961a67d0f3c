"""Training loop: perplexity, run-directory files, trajectories, exact resume after SIGTERM or a crash."""
from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.errors import CheckpointError, InvalidInputError
from analysis.lm.corpora import load_corpus
from analysis.lm.evaluation import evaluate
from analysis.lm.model import ModelConfig, RNNLanguageModel, load_model
from analysis.lm.training import TrainConfig, TrainingInterrupted, train_language_model
from analysis.pruning.surgery import prune_units
from analysis.trajectories.trajectory import load_trajectory


def model_config(corpus, **kwargs) -> ModelConfig:
    return ModelConfig(vocab_size=len(corpus.vocab), embedding_size=8, hidden_sizes=[12, 10], **kwargs)


def train_config(**kwargs) -> TrainConfig:
    settings = dict(epochs=3, lr=1.0, lr_decay=0.5, decay_after_epoch=1, bptt=5, batch_size=4,
                    max_batches_per_epoch=6, max_eval_batches=4, log_interval=2, record_every=2, seed=7)
    return TrainConfig(**{**settings, **kwargs})


def train(run_dir, corpus, **kwargs):
    options = dict(progress=False, log=None)
    options.update(kwargs)
    config = options.pop("config", train_config())
    mconfig = options.pop("mconfig", model_config(corpus, dropout=0.3))
    return train_language_model(run_dir, corpus=corpus, model_config=mconfig, train_config=config, **options)


def test_evaluate_is_exp_of_the_mean_token_nll_with_state_carried():
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(vocab_size=9, embedding_size=3, hidden_sizes=[4], dropout=0.5))
    stream = torch.randint(0, 9, (53,), generator=torch.Generator().manual_seed(2))
    mean_nll, n_tokens = evaluate(model, stream, batch_size=3, bptt=4)
    assert model.training, "evaluate must restore the training mode"
    # by hand: three columns of 17 tokens, each read in one pass, predicting tokens 2..17
    model.eval()
    columns = stream[:51].view(3, 17).t()
    with torch.no_grad():
        logits, _ = model(columns[:-1])
    log_probs = F.log_softmax(logits, dim=-1).gather(2, columns[1:].unsqueeze(-1)).squeeze(-1)
    assert n_tokens == 16 * 3
    assert mean_nll == pytest.approx(-log_probs.mean().item(), rel=1e-5)
    assert math.exp(mean_nll) == pytest.approx(math.exp(-log_probs.double().mean().item()), rel=1e-5)


@pytest.mark.slow  # trains a model
def test_training_writes_every_file_and_a_loadable_trajectory(tmp_path, corpus):
    result = train(tmp_path / "run", corpus, config=train_config(record_dtype="float16"))
    run = tmp_path / "run"
    for name in ("run.json", "vocab.json", "metrics.jsonl", "checkpoint_last.pt", "best.pt"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["data_source"] == corpus.source and info["vocab_size"] == len(corpus.vocab)
    assert info["model_config"]["hidden_sizes"] == [12, 10] and info["train_config"]["record_every"] == 2
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert [e["lr"] for e in epochs] == [1.0, 0.5, 0.25]
    for event in epochs:
        assert {"step", "train_loss", "val_loss", "val_ppl", "elapsed_s", "oracle_ppl"} <= set(event)
        assert event["val_ppl"] == pytest.approx(math.exp(event["val_loss"]))
    assert sum(e["event"] == "train" for e in events) == 9  # every 2 of 18 batches
    assert events[-1]["event"] == "final" and events[-1]["test_ppl"] == pytest.approx(result.test_ppl)
    assert result.best_val_loss == min(e["val_loss"] for e in epochs)

    trajectory = load_trajectory(run)
    assert list(trajectory.steps) == list(range(0, 19, 2))
    assert trajectory.layers == ["rnns.0.l0", "rnns.1.l0"]
    final = trajectory.weight_matrix("rnns.1.l0", len(trajectory) - 1, "weight_hh")
    np.testing.assert_allclose(final, result.model.rnns[1].weight_hh_l0.detach().numpy(), atol=1e-2)

    for name in ("best.pt", "checkpoint_last.pt"):
        assert isinstance(torch.load(run / name, weights_only=True), dict)
    best, best_info = load_model(run)
    assert best_info["data_source"] == corpus.source and best_info["val_loss"] == result.best_val_loss
    assert evaluate(best, corpus.valid, 10, 35, max_batches=4)[0] == pytest.approx(result.best_val_loss, rel=1e-6)


@pytest.mark.slow  # trains a model
def test_default_record_interval_gives_about_forty_snapshots(tmp_path, corpus):
    config = train_config(record_every=None, max_batches_per_epoch=None, epochs=2, max_eval_batches=1)
    result = train(tmp_path / "run", corpus, config=config, evaluate_test=False)
    snapshots = len(load_trajectory(tmp_path / "run"))
    assert result.steps == 2 * math.ceil((3000 // 4 - 1) / 5)  # 750 rows of 4, read 5 at a time
    assert 20 <= snapshots <= 60


class StopAt:
    """An extra-loss callback that adds nothing but interrupts training at a chosen step."""

    def __init__(self, step: int | None, how: str):
        self.step, self.how = step, how

    def __call__(self, context):
        if context.step == self.step:
            if self.how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise RuntimeError("simulated crash")
        return None


def final_state(run_dir, result):
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trajectory = load_trajectory(run_dir)
    snapshots = [trajectory.weight_matrix("rnns.0.l0", i, "weight_ih") for i in range(len(trajectory))]
    drop_time = [{k: v for k, v in e.items() if k != "elapsed_s"} for e in events]
    return result.model.state_dict(), drop_time, list(trajectory.steps), snapshots


# 6 batches an epoch, a snapshot every 2 steps: step 3 is mid-epoch, 5 an epoch's last batch; a crash
# at step 9 comes after snapshot 8 but the last checkpoint is at step 6, so the trajectory rewinds.
@pytest.mark.parametrize("stop_step, how, rnn_type", [(3, "sigterm", "LSTM"), (5, "sigterm", "LSTM"),
                                                      (9, "crash", "LSTM"), (13, "crash", "LSTM"),
                                                      (3, "sigterm", "GRU")])
@pytest.mark.slow  # trains a model
def test_interrupted_run_resumes_to_the_same_result(tmp_path, corpus, stop_step, how, rnn_type):
    reference_dir, interrupted_dir = tmp_path / "reference", tmp_path / "interrupted"
    mconfig = model_config(corpus, dropout=0.3, rnn_type=rnn_type)
    reference = final_state(reference_dir, train(reference_dir, corpus, mconfig=mconfig, extra_loss=StopAt(None, how)))
    previous_handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted if how == "sigterm" else RuntimeError):
        train(interrupted_dir, corpus, mconfig=mconfig, extra_loss=StopAt(stop_step, how))
    assert signal.getsignal(signal.SIGTERM) is previous_handler
    if stop_step == 9:
        assert 8 in load_trajectory(interrupted_dir).steps
    resumed_result = train(interrupted_dir, corpus, mconfig=mconfig, extra_loss=StopAt(None, how))
    assert resumed_result.resumed
    resumed = final_state(interrupted_dir, resumed_result)
    assert set(resumed[0]) == set(reference[0])
    assert all(torch.equal(resumed[0][k], reference[0][k]) for k in reference[0])
    assert resumed[1] == reference[1]
    assert resumed[2] == reference[2]
    assert all(np.array_equal(a, b) for a, b in zip(resumed[3], reference[3]))


def test_the_cosine_schedule_anneals_each_run_to_zero_and_the_step_schedule_is_per_epoch():
    cosine = train_config(lr=2.0, epochs=2, lr_schedule="cosine").validate()
    rates = [cosine.lr_at_step(step, 10) for step in range(20)]
    assert rates[0] == 2.0 and rates[10] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(rates, rates[1:])) and 0 < rates[-1] < 0.03
    step = train_config(lr=2.0).validate()  # halved after each epoch from the first
    assert [step.lr_at_step(s, 10) for s in (0, 9, 10, 25)] == [2.0, 2.0, 1.0, 0.5]
    with pytest.raises(InvalidInputError, match="lr_schedule"):
        train_config(lr_schedule="linear").validate()


@pytest.mark.slow  # trains a model
def test_a_cosine_run_sets_the_rate_every_step_and_resumes_on_the_same_schedule(tmp_path, corpus):
    config = train_config(lr_schedule="cosine")
    reference = final_state(tmp_path / "reference", train(tmp_path / "reference", corpus, config=config))
    logged = [(e["step"], e["lr"]) for e in reference[1] if e["event"] == "train"]
    # each train event carries the rate of the step just taken (6 batches an epoch)
    assert logged == [(s, pytest.approx(config.lr_at_step(s - 1, 6))) for s, _ in logged]
    assert [lr for _, lr in logged] == sorted((lr for _, lr in logged), reverse=True)
    assert logged[-1][1] < 0.05 * config.lr
    with pytest.raises(TrainingInterrupted):
        train(tmp_path / "interrupted", corpus, config=config, extra_loss=StopAt(8, "sigterm"))
    resumed = final_state(tmp_path / "interrupted", train(tmp_path / "interrupted", corpus, config=config))
    assert all(torch.equal(resumed[0][k], reference[0][k]) for k in reference[0])
    assert resumed[1] == reference[1]


@pytest.mark.slow  # trains a model
def test_sigterm_at_an_epoch_end_stops_there_with_a_checkpoint(tmp_path, corpus):
    with pytest.raises(TrainingInterrupted, match="run the same command again") as stopped:
        train(tmp_path / "run", corpus, extra_loss=StopAt(5, "sigterm"))  # step 5 is epoch 1's last batch
    checkpoint = torch.load(stopped.value.checkpoint, weights_only=True)
    assert checkpoint["progress"]["epoch"] == 2 and checkpoint["progress"]["batch"] == 0
    assert (tmp_path / "run" / "best.pt").is_file()


@pytest.mark.slow  # trains a model
def test_resuming_with_other_settings_is_refused(tmp_path, corpus):
    with pytest.raises(TrainingInterrupted):
        train(tmp_path / "run", corpus, extra_loss=StopAt(2, "sigterm"))
    with pytest.raises(CheckpointError, match=r"train_config.lr.*--overwrite"):
        train(tmp_path / "run", corpus, config=train_config(lr=0.5))
    with pytest.raises(CheckpointError, match="data_fingerprint"):
        train(tmp_path / "run", load_corpus("synthetic:1:train=3000,valid=600,test=600,words=30,states=6"))
    fresh = train(tmp_path / "run", corpus, config=train_config(lr=0.5), overwrite=True)
    assert not fresh.resumed and fresh.metrics[0]["lr"] == 0.5


@pytest.mark.slow  # trains a model
def test_a_run_stored_before_the_schedule_and_precision_settings_resumes_with_their_old_values(tmp_path, corpus):
    with pytest.raises(TrainingInterrupted):
        train(tmp_path / "run", corpus, extra_loss=StopAt(2, "sigterm"))
    description = json.loads((tmp_path / "run" / "run.json").read_text())
    for name in ("lr_schedule", "teacher_precision"):
        del description["train_config"][name]
    (tmp_path / "run" / "run.json").write_text(json.dumps(description))
    with pytest.raises(CheckpointError, match="train_config.lr_schedule"):
        train(tmp_path / "run", corpus, config=train_config(lr_schedule="cosine"))
    assert train(tmp_path / "run", corpus).resumed  # the defaults are the values those runs used


@pytest.mark.slow  # trains a model
def test_finished_run_is_not_trained_again(tmp_path, corpus):
    first = train(tmp_path / "run", corpus)
    again = train(tmp_path / "run", corpus)
    assert again.resumed and again.steps == first.steps and again.best_val_loss == first.best_val_loss
    assert len(again.metrics) == len(first.metrics)


@pytest.mark.slow  # trains a model
def test_fine_tuning_a_pruned_student_with_a_teacher_and_an_extra_loss(tmp_path, corpus):
    teacher = train(tmp_path / "teacher", corpus).model
    student = prune_units(teacher, {"rnns.0.l0": list(range(6))})
    untouched = {k: v.clone() for k, v in student.state_dict().items()}
    seen = []

    def shrink_recurrent_weights(context):
        seen.append(context.teacher_logits is not None and context.teacher_logits.shape == context.logits.shape)
        return 10.0 * sum(p.pow(2).sum() for p in context.model.rnns.parameters())

    result = train(tmp_path / "student", corpus, mconfig=None, initial_model=student, teacher=teacher,
                   extra_loss=shrink_recurrent_weights, config=train_config(epochs=1, lr=0.05))
    assert all(seen) and len(seen) == 6
    assert all(torch.equal(v, untouched[k]) for k, v in student.state_dict().items()), "initial model changed"
    assert result.model.config.hidden_sizes == [6, 10]
    plain = train(tmp_path / "plain", corpus, mconfig=None, initial_model=student,
                  config=train_config(epochs=1, lr=0.05))
    norm = lambda m: sum(p.norm() for p in m.rnns.parameters())  # noqa: E731
    assert norm(result.model) < norm(plain.model)
    assert load_model(tmp_path / "student")[0].config.hidden_sizes == [6, 10]


@pytest.mark.slow  # trains a model
def test_a_bfloat16_teacher_distils_almost_the_same_student(tmp_path, corpus):
    teacher = train(tmp_path / "teacher", corpus).model
    student = prune_units(teacher, {"rnns.0.l0": list(range(6))})
    runs = {precision: train(tmp_path / precision, corpus, mconfig=None, initial_model=student, teacher=teacher,
                             config=train_config(epochs=1, lr=0.05, teacher_precision=precision))
            for precision in ("float32", "bfloat16")}
    stored = json.loads((tmp_path / "bfloat16" / "run.json").read_text())
    assert stored["train_config"]["teacher_precision"] == "bfloat16"
    exact, rounded = (runs[p].best_val_loss for p in ("float32", "bfloat16"))
    assert exact != rounded and abs(exact - rounded) < 1e-3 * exact
    with pytest.raises(InvalidInputError, match="teacher_precision"):
        train_config(teacher_precision="float16").validate()
