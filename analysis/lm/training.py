"""Training word-level language models, recording the recurrent weights' trajectory.

    result = train_language_model("runs/small", corpus=load_corpus("ptb"), model_config=model_config,
                                  train_config=TrainConfig.from_preset("ptb-small"))

A run directory (layout: analysis.runs) holds the run's description, its vocabulary, its events
(one per line), a resumable checkpoint, the model with the best validation loss
(analysis.lm.model.save_model) and the recorded trajectory (analysis.trajectories.recorder).
Calling the function again on the same directory resumes exactly where it stopped
(analysis.lm.run_state); SIGTERM stops it after the current batch with a checkpoint written. The
loop also serves fine-tuning: pass `initial_model` (a pruned student), `teacher` (distillation,
METHOD section 8) and `extra_loss` (e.g. a regulariser). The settings (TrainConfig) live in
analysis.lm.training_config, scoring (`evaluate`) in analysis.lm.evaluation.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from analysis.errors import DynapruneError, InvalidInputError
from analysis.lm.corpora import Corpus, batchify, get_batch
from analysis.lm.evaluation import evaluate, perplexity
from analysis.lm.model import ModelConfig, RNNLanguageModel, load_model, save_model
from analysis.lm.run_state import Progress, TrainingState, describe_run, open_run_dir, restore, write_checkpoint
from analysis.lm.training_config import (
    OPTIMIZERS,
    TEACHER_PRECISIONS,
    TrainConfig,
    resolve_record_every,
    steps_per_epoch,
)
from analysis.pruning.distillation import distillation_loss
from analysis.runs import BEST_MODEL_FILE, LAST_CHECKPOINT_FILE, METRICS_FILE, TRAJECTORY_DIR
from analysis.trajectories.recorder import TrajectoryRecorder
from analysis.utils.allocator import reuse_freed_memory
from analysis.utils.devices import checked_device
from analysis.utils.fileio import append_json_line
from analysis.utils.progress import ProgressCallback, ProgressUpdate
from analysis.utils.runlock import run_lock
from analysis.utils.stopping import StopFlag, sigterm_requests_stop


class TrainingInterrupted(DynapruneError):
    """Training stopped on SIGTERM after writing a resumable checkpoint."""

    def __init__(self, message: str, checkpoint: Path):
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class LossContext:
    """What an `extra_loss` callback sees for one training batch."""
    model: RNNLanguageModel
    inputs: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    task_loss: torch.Tensor  # the cross-entropy; with a teacher, its value only (no gradient flows through it)
    teacher_logits: torch.Tensor | None
    epoch: int
    step: int


@dataclass
class TrainResult:
    run_dir: Path
    model: RNNLanguageModel  # the weights after the last epoch
    best_val_loss: float
    best_val_ppl: float
    test_ppl: float | None
    steps: int
    metrics: list[dict]
    resumed: bool


def train_language_model(out_dir: str | Path, *, corpus: Corpus, train_config: TrainConfig,
                         model_config: ModelConfig | None = None, initial_model: RNNLanguageModel | None = None,
                         teacher: RNNLanguageModel | None = None,
                         extra_loss: Callable[[LossContext], torch.Tensor | None] | None = None,
                         on_epoch_start: Callable[[RNNLanguageModel, int], None] | None = None,
                         overwrite: bool = False, progress: ProgressCallback | None = None, evaluate_test: bool = True,
                         device: str | torch.device = "cpu", log: Callable[[str], None] | None = print) -> TrainResult:
    """Train (or resume training) a language model into the run directory `out_dir`; see the module
    docstring.

    The model is built from `model_config`, or `initial_model` starts from given weights (a copy is
    trained; the argument is left untouched).
    With a `teacher`, the task loss becomes (1 - alpha) CE + alpha tau^2 KL(teacher || student).
    `extra_loss(context)` returns a term added to the loss (or None). `on_epoch_start(model, epoch)`
    runs before each epoch, e.g. to refresh importances; callbacks' own state is not checkpointed.
    After the last epoch the best model is scored on the test split (`evaluate_test`). `progress`
    hears of every batch (task "epoch e/E", `overall` the fraction of all epochs' batches done;
    TerminalProgress draws it as a bar).
    Raises TrainingInterrupted after SIGTERM, once the checkpoint is written. On glibc systems it
    first sets the process's malloc to keep freed memory (`analysis.utils.allocator.reuse_freed_memory`):
    the per-step (tokens x vocabulary) buffers then stop costing page faults.
    """
    reuse_freed_memory()
    train_config, device = train_config.validate(), checked_device(device)
    with run_lock(out_dir):  # one writer per run directory; a second one fails at once
        trainer = _Trainer(Path(out_dir), corpus, model_config, train_config, initial_model, teacher, device,
                           overwrite, log)
        with sigterm_requests_stop() as stop:  # SIGTERM: stop after the current batch, checkpoint written
            trainer.train(stop, extra_loss, on_epoch_start, progress)
            return trainer.finish(evaluate_test)


class _Trainer:
    """One run directory's training state: model, optimiser, progress, metrics, recorder."""

    def __init__(self, run_dir: Path, corpus: Corpus, model_config: ModelConfig | None, config: TrainConfig,
                 initial_model, teacher, device: torch.device, overwrite: bool, log):
        if initial_model is not None:
            if model_config is not None and model_config.to_dict() != initial_model.config.to_dict():
                raise InvalidInputError("model_config and initial_model.config differ; pass only one of them")
            model_config = initial_model.config
        if model_config is None:
            raise InvalidInputError("pass a model_config or an initial_model")
        if model_config.vocab_size != len(corpus.vocab):
            raise InvalidInputError(f"the model has a {model_config.vocab_size}-word vocabulary but corpus "
                                    f"{corpus.source} has {len(corpus.vocab)} words; build the model for this corpus")
        self.run_dir, self.corpus, self.config, self.device, self.log = run_dir, corpus, config, device, log
        self.n_batches = steps_per_epoch(corpus.train.numel(), config)
        if self.n_batches < 1:
            raise InvalidInputError(
                f"the training split of {corpus.source} is too short for batch size {config.batch_size}")
        self.record_every = resolve_record_every(config, corpus.train.numel())
        self.run_info = describe_run(corpus, model_config, {**config.to_dict(), "record_every": self.record_every},
                                     initial_model, teacher)
        self.checkpoint_path = run_dir / LAST_CHECKPOINT_FILE
        checkpoint = open_run_dir(run_dir, self.run_info, corpus.vocab.to_json(), overwrite)

        torch.manual_seed(config.seed)
        self.model = copy.deepcopy(initial_model) if initial_model is not None else RNNLanguageModel(model_config)
        self.model.to(device).train()
        self.teacher = None
        if teacher is not None:
            self.teacher = copy.deepcopy(teacher).to(device).eval()
            self.teacher.set_inference_precision(TEACHER_PRECISIONS[config.teacher_precision])
        self.optimizer = OPTIMIZERS[config.optimizer](self.model.parameters(), lr=config.lr)
        self.train_data = batchify(corpus.train, config.batch_size).to(device)
        self.progress = Progress()
        self.hidden = self.teacher_hidden = None
        self.metrics: list[dict] = []
        self.resumed = checkpoint is not None
        if checkpoint is not None:
            state = restore(checkpoint, run_dir, self.model, self.optimizer, device)
            self.progress, self.hidden, self.teacher_hidden, self.metrics = (state.progress, state.hidden,
                                                                             state.teacher_hidden, state.metrics)
            if not self.progress.finished:
                _log(log, f"resuming {run_dir} at epoch {self.progress.epoch}, batch {self.progress.batch} "
                          f"(step {self.progress.step})")
        self.recorder = None
        if self.record_every > 0:
            self.recorder = TrajectoryRecorder(self.model, run_dir / TRAJECTORY_DIR, every=self.record_every,
                                               dtype=config.record_dtype)
            if not self.resumed:
                self.recorder.record(0, epoch=0, metrics={"lr": config.lr_at_step(0, self.n_batches)})

    def _write_checkpoint(self) -> None:
        write_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.corpus, self.run_info, self.device,
                         TrainingState(self.progress, self.hidden, self.teacher_hidden, self.metrics))

    def _emit(self, event: dict) -> None:
        self.metrics.append(event)
        append_json_line(self.run_dir / METRICS_FILE, event)

    def _interrupted(self) -> TrainingInterrupted:
        p = self.progress
        return TrainingInterrupted(f"training stopped at epoch {p.epoch}, batch {p.batch} (step {p.step}); checkpoint "
                                   f"written to {self.checkpoint_path}; run the same command again to resume",
                                   self.checkpoint_path)

    def train(self, stop: StopFlag, extra_loss, on_epoch_start, progress: ProgressCallback | None) -> None:
        config, p = self.config, self.progress
        started = time.monotonic() - p.elapsed_s
        while p.epoch <= config.epochs:
            epoch = p.epoch
            if on_epoch_start is not None:
                on_epoch_start(self.model, epoch)
            if p.batch == 0:
                self.hidden = self.model.init_hidden(config.batch_size)
                self.teacher_hidden = None if self.teacher is None else self.teacher.init_hidden(config.batch_size)
            task, detail = f"epoch {epoch}/{config.epochs}", ""
            while p.batch < self.n_batches and not stop.requested:
                lr = self._set_lr()
                loss = self._train_batch(epoch, extra_loss)
                p.step, p.batch = p.step + 1, p.batch + 1
                p.epoch_loss_sum, p.epoch_batches = p.epoch_loss_sum + loss, p.epoch_batches + 1
                p.interval_loss_sum, p.interval_batches = p.interval_loss_sum + loss, p.interval_batches + 1
                if p.interval_batches >= config.log_interval:
                    mean = p.interval_loss_sum / p.interval_batches
                    self._emit({"event": "train", "epoch": epoch, "step": p.step, "batch": p.batch,
                                "train_loss": mean, "train_ppl": perplexity(mean), "lr": lr,
                                "elapsed_s": time.monotonic() - started})
                    detail = f"ppl {perplexity(mean):.1f}"
                    p.interval_loss_sum, p.interval_batches = 0.0, 0
                if progress:
                    overall = ((epoch - 1) * self.n_batches + p.batch) / (config.epochs * self.n_batches)
                    progress(ProgressUpdate(task, p.batch, self.n_batches, detail, overall=overall))
                if self.recorder is not None and p.step % self.record_every == 0:
                    self.recorder.record(p.step, epoch=epoch, metrics={"train_loss": loss, "lr": lr})
            p.elapsed_s = time.monotonic() - started
            if p.batch < self.n_batches:  # stop requested mid-epoch
                self._write_checkpoint()
                raise self._interrupted()
            self._end_epoch(epoch, lr, started)
            if stop.requested and p.epoch <= config.epochs:
                raise self._interrupted()

    def _set_lr(self) -> float:
        """Set the rate of the next optimiser step (the schedule's value at the current step) and return it."""
        lr = self.config.lr_at_step(self.progress.step, self.n_batches)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _train_batch(self, epoch: int, extra_loss) -> float:
        config = self.config
        inputs, targets = get_batch(self.train_data, self.progress.batch * config.bptt, config.bptt)
        self.hidden = self.model.detach_hidden(self.hidden)
        logits, self.hidden = self.model(inputs, self.hidden)
        flat_logits = logits.view(-1, logits.size(-1))
        teacher_logits = None
        if self.teacher is None:
            task_loss = loss = F.cross_entropy(flat_logits, targets)
        else:
            with torch.no_grad():
                teacher_logits, self.teacher_hidden = self.teacher(inputs, self.teacher_hidden)
            combined = distillation_loss(flat_logits, teacher_logits.view_as(flat_logits), targets,
                                         config.distill_alpha, config.distill_temperature)
            loss, task_loss = combined.loss, combined.cross_entropy
        if extra_loss is not None:
            extra = extra_loss(LossContext(self.model, inputs, targets, logits, task_loss, teacher_logits,
                                           epoch, self.progress.step))
            if extra is not None:
                loss = loss + extra
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip)
        self.optimizer.step()
        value = task_loss.item()
        if not math.isfinite(value):
            raise InvalidInputError(f"training diverged at epoch {epoch}, batch {self.progress.batch} (loss {value}); "
                                    f"lower the learning rate or the clipping threshold")
        return value

    def _end_epoch(self, epoch: int, lr: float, started: float) -> None:
        """Validate, keep the best model, log, and checkpoint at the start of the next epoch."""
        p, config = self.progress, self.config
        val_loss, _ = evaluate(self.model, self.corpus.valid, config.eval_batch_size, config.eval_bptt,
                               config.max_eval_batches)
        train_loss = p.epoch_loss_sum / max(1, p.epoch_batches)
        event = {"event": "epoch", "epoch": epoch, "step": p.step, "train_loss": train_loss, "val_loss": val_loss,
                 "val_ppl": perplexity(val_loss), "lr": lr, "elapsed_s": time.monotonic() - started}
        oracle = self.corpus.oracle_perplexity("valid")
        if oracle is not None:
            event["oracle_ppl"] = oracle
        if val_loss < p.best_val_loss:
            p.best_val_loss = val_loss
            save_model(self.run_dir / BEST_MODEL_FILE, self.model, self.corpus.vocab,
                       {"data_source": self.corpus.source, "epoch": epoch, "step": p.step, "val_loss": val_loss,
                        "val_ppl": perplexity(val_loss), "train_config": self.run_info["train_config"]})
        self._emit(event)
        _log(self.log, f"epoch {epoch:3d} | lr {lr:.4g} | train ppl {perplexity(train_loss):8.2f} | valid ppl "
                       f"{perplexity(val_loss):8.2f}" + (f" | oracle ppl {oracle:.2f}" if oracle is not None else "")
                       + f" | {event['elapsed_s']:.1f}s")
        p.epoch, p.batch, p.epoch_loss_sum, p.epoch_batches = epoch + 1, 0, 0.0, 0
        p.elapsed_s = time.monotonic() - started
        self.hidden = self.teacher_hidden = None
        self._write_checkpoint()

    def finish(self, evaluate_test: bool) -> TrainResult:
        """Record the final snapshot, score the best model on the test split, and mark the run finished."""
        p, config = self.progress, self.config
        if not p.finished:
            if self.recorder is not None and p.step % self.record_every != 0:
                self.recorder.record(p.step, epoch=config.epochs, metrics={"final": True})
            final = {"event": "final", "step": p.step, "best_val_loss": p.best_val_loss,
                     "best_val_ppl": perplexity(p.best_val_loss), "elapsed_s": p.elapsed_s}
            if evaluate_test and (self.run_dir / BEST_MODEL_FILE).is_file():
                best, _ = load_model(self.run_dir / BEST_MODEL_FILE)
                p.test_loss, tokens = evaluate(best.to(self.device), self.corpus.test, config.eval_batch_size,
                                               config.eval_bptt, config.max_eval_batches)
                final.update(test_loss=p.test_loss, test_ppl=perplexity(p.test_loss), test_tokens=tokens)
                if self.corpus.oracle_perplexity("test") is not None:
                    final["test_oracle_ppl"] = self.corpus.oracle_perplexity("test")
            self._emit(final)
            p.finished = True
            self._write_checkpoint()
            _log(self.log, f"done: best valid ppl {final['best_val_ppl']:.2f}"
                           + (f", test ppl {final['test_ppl']:.2f}" if "test_ppl" in final else "")
                           + f" ({self.run_dir})")
        elif self.resumed:
            _log(self.log, f"{self.run_dir} already holds a finished run; nothing to do (--overwrite trains it again)")
        return TrainResult(run_dir=self.run_dir, model=self.model, best_val_loss=p.best_val_loss,
                           best_val_ppl=perplexity(p.best_val_loss),
                           test_ppl=None if p.test_loss is None else perplexity(p.test_loss), steps=p.step,
                           metrics=self.metrics, resumed=self.resumed)


def _log(log: Callable[[str], None] | None, message: str) -> None:
    if log is print:
        tqdm.write(message, file=sys.stdout)  # keeps a progress bar intact
    elif log is not None:
        log(message)

