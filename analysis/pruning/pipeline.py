"""The iterative prune-and-fine-tune pipeline (METHOD section 8): reach a target pruning ratio in
stages; at each stage the previous stage's best model is the teacher, units are chosen from the
trajectory its weights followed while it trained, and the pruned student is fine-tuned with
cross-entropy, distillation from the teacher and discrimination-aware L2, recording its own
trajectory for the next stage.

    config = PipelineConfig(ratio=0.5, stages=3, criterion="dynamics", epochs_per_stage=2)
    result = run_pruning_pipeline("runs/prune-a", source="sample_checkpoints/synthetic", config=config)

The output directory (layout: analysis.runs) holds the pipeline's description (the options, the
source, the corpus), its events (baseline, stage_start, epoch, stage_end, final), one folder per
stage (a training run directory, plus the plan of the units it pruned and the importances the
penalty used) and the final model (an ordinary model file). What the pipeline starts from is
resolved in analysis.pruning.source; each stage's units and settings come from
analysis.pruning.stages. Every file is written atomically; running the same call again continues where it
stopped: finished stages are skipped and an interrupted stage resumes from its checkpoint. SIGTERM
stops it with PipelineInterrupted: at once outside training, after the current batch while training.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from analysis.dynamics.selection import PruningPlan
from analysis.errors import CheckpointError, DynapruneError, InvalidInputError
from analysis.lm.evaluation import evaluate, perplexity
from analysis.lm.model import RNNLanguageModel, load_model, save_model
from analysis.lm.run_state import fingerprint
from analysis.lm.training import TrainingInterrupted, train_language_model
from analysis.lm.training_config import SETTINGS_OF_OLDER_RUNS
from analysis.pruning.config import DRY_RUN_LIMITS, PipelineConfig
from analysis.pruning.da_l2 import DiscriminationAwareL2
from analysis.pruning.source import READ_REMEDY, resolve_source
from analysis.pruning.stages import choose_units, stage_train_config
from analysis.pruning.surgery import count_parameters, prune_units
from analysis.runs import (
    BEST_MODEL_FILE,
    FINAL_MODEL_FILE,
    IMPORTANCE_FILE,
    METRICS_FILE,
    PIPELINE_FILE,
    PLAN_FILE,
    check_output_dir,
    clear_run_outputs,
    stage_path,
)
from analysis.utils.devices import checked_device
from analysis.utils.fileio import (
    append_json_line,
    atomic_write_json,
    atomic_write_text,
    read_json_lines,
    read_json_object,
)
from analysis.utils.progress import ProgressCallback, ProgressUpdate
from analysis.utils.runlock import run_lock
from analysis.utils.stopping import sigterm_requests_stop

PIPELINE_FORMAT = "dynaprune-pipeline"


class PipelineInterrupted(DynapruneError):
    """The pipeline stopped on SIGTERM; running it again with the same options continues it."""


@dataclass
class PipelineResult:
    out_dir: Path
    model: RNNLanguageModel
    val_ppl: float
    test_ppl: float
    baseline: dict
    events: list[dict]


def run_pruning_pipeline(out_dir: str | Path, *, source: str | Path, config: PipelineConfig, data: str | None = None,
                         corpus=None, overwrite: bool = False, progress: ProgressCallback | None = None,
                         device: str = "cpu",
                         log: Callable[[str], None] | None = print) -> PipelineResult:
    """Prune the model in `source` (see resolve_source) to `config.ratio` in `config.stages` stages
    into the directory `out_dir`; see the module docstring. `data` overrides the corpus recorded
    with the source (`corpus`: one already loaded). Raises PipelineInterrupted after SIGTERM, once
    everything so far is saved."""
    config, device = config.validate(), checked_device(device)
    with run_lock(out_dir):  # one writer per run directory; a second one fails at once
        check_output_dir(out_dir, "pipeline", overwrite)  # before the source and corpus are loaded
        return _Pipeline(Path(source), Path(out_dir), config, data, corpus, overwrite, progress, device, log).run()


class _Pipeline:
    def __init__(self, source_path, out, config, data, corpus, overwrite, progress, device, log):
        from analysis.lm.corpora import load_corpus

        self.out, self.config, self.progress, self.device, self.log = out, config, progress, device, log
        self.source = resolve_source(source_path)
        spec = data or self.source.data_source
        if not spec and corpus is None:
            raise InvalidInputError(f"{self.source.model_path} does not record its corpus; pass --data SPEC")
        self.corpus = corpus if corpus is not None else load_corpus(spec)
        self.corpus.check_vocabulary(str(self.source.model_path), self.source.model.config.vocab_size,
                                     self.source.vocab)
        if out.exists() and not out.is_dir():
            raise InvalidInputError(f"{out} is a file; choose a directory for the pruning run")
        original = self.source.model
        config.check_layers(original.layer_names)
        self.kept = {name: config.kept_units(rnn.hidden_size, name)
                     for name, rnn in zip(original.layer_names, original.rnns)}
        last = original.layer_names[-1]
        if original.config.tie_weights and self.kept[last][-1] != original.rnns[-1].hidden_size:
            # the last layer's width is the embedding's, which the tied decoder shares: it cannot shrink
            self.kept[last] = [original.rnns[-1].hidden_size] * config.stages
            self._say(f"note: {last} feeds a decoder tied to the embedding, so it keeps all "
                      f"{original.rnns[-1].hidden_size} units; only the other layers are pruned")
        self.description = {
            "format": PIPELINE_FORMAT, "format_version": 1, "config": config.to_dict(),
            "source": str(self.source.path.resolve()), "source_model": str(self.source.model_path.resolve()),
            "source_model_sha256": fingerprint(original.state_dict()), "data_source": self.corpus.source,
            "original_hidden_sizes": list(original.config.hidden_sizes), "stage_ratios": (
                {name: config.stage_ratios(name) for name in original.layer_names} if config.per_layer
                else config.stage_ratios()),
            "stage_hidden_sizes": [[self.kept[name][s] for name in original.layer_names] for s in range(config.stages)]}
        self._open(overwrite)
        self.events = read_json_lines(out / METRICS_FILE)

    def _open(self, overwrite: bool) -> None:
        stored_path = self.out / PIPELINE_FILE
        if stored_path.is_file() and not overwrite:
            stored = read_json_object(stored_path, "the pruning run's description", READ_REMEDY)
            old_config = {**SETTINGS_OF_OLDER_RUNS, **PipelineConfig.with_current_names(stored.get("config") or {})}
            new_config = self.description["config"]
            differences = [f"{key} {old_config.get(key)!r} -> {new_config.get(key)!r}"
                           for key in sorted(set(old_config) | set(new_config))
                           if old_config.get(key) != new_config.get(key)]
            differences += [key for key in ("source_model_sha256", "data_source")
                            if stored.get(key) != self.description[key]]
            if differences:
                raise CheckpointError(f"{self.out} holds a pruning run with different settings "
                                      f"({', '.join(differences)}); "
                                      f"choose another output directory, or pass --overwrite to start it again")
            return
        check_output_dir(self.out, "pipeline", overwrite)
        # an earlier run, started again (overwrite), or a run stopped before its description was written
        clear_run_outputs(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / METRICS_FILE, "")
        atomic_write_json(stored_path, self.description)

    def _stage_ratio(self, stage: int) -> dict:
        """{"ratio": r_s} after stage `stage`; with per-layer ratios r_s is the fraction of all the
        original units removed (a number the tables can show) and "layer_ratios" has each layer's."""
        if not self.config.per_layer:
            return {"ratio": self.config.stage_ratios()[stage - 1]}
        original = dict(zip(self.source.model.layer_names, self.source.model.config.hidden_sizes))
        kept = {name: sizes[stage - 1] for name, sizes in self.kept.items()}
        return {"ratio": (sum(original.values()) - sum(kept.values())) / sum(original.values()),
                "layer_ratios": {name: (original[name] - kept[name]) / original[name] for name in original}}

    def _emit(self, event: dict) -> None:
        self.events.append(event)
        append_json_line(self.out / METRICS_FILE, event)

    def _find(self, kind: str, stage: int | None = None) -> dict | None:
        return next((e for e in self.events
                     if e.get("event") == kind and (stage is None or e.get("stage") == stage)), None)

    def _say(self, message: str) -> None:
        if self.log is print:
            tqdm.write(message, file=sys.stdout)  # keeps a progress bar intact
            sys.stdout.flush()
        elif self.log is not None:
            self.log(message)

    def _evaluate(self, model: RNNLanguageModel, split: str) -> float:
        limit = DRY_RUN_LIMITS["max_eval_batches"] if self.config.dry_run else None
        mean_nll, _ = evaluate(model.to(self.device), self.corpus.split(split), max_batches=limit)
        return perplexity(mean_nll)

    def _reference(self, model: RNNLanguageModel, kind: str) -> dict:
        event = {"event": kind, "val_ppl": self._evaluate(model, "valid"), "test_ppl": self._evaluate(model, "test"),
                 **{f"params_{k}": v for k, v in count_parameters(model).items()},
                 "hidden_sizes": list(model.config.hidden_sizes)}
        if self.corpus.oracle_perplexity("valid") is not None:
            event.update(oracle_ppl=self.corpus.oracle_perplexity("valid"),
                         test_oracle_ppl=self.corpus.oracle_perplexity("test"))
        return event

    def run(self) -> PipelineResult:
        with sigterm_requests_stop(interrupt=_stopped_between_runs):
            if self._find("baseline") is None:
                baseline = self._reference(self.source.model, "baseline")
                self._emit(baseline)
                self._say(f"baseline {self.source.path}: hidden sizes {baseline['hidden_sizes']}, valid ppl "
                          f"{baseline['val_ppl']:.2f}, test ppl {baseline['test_ppl']:.2f}, "
                          f"{baseline['params_recurrent']} recurrent / {baseline['params_total']} parameters")
            teacher, trajectory_dir = self.source.model, self.source.trajectory_dir
            for stage in range(1, self.config.stages + 1):
                stage_dir = stage_path(self.out, stage)
                if self._find("stage_end", stage) is None:
                    self._run_stage(stage, stage_dir, teacher, trajectory_dir)
                teacher, _ = load_model(stage_dir / BEST_MODEL_FILE)
                teacher.train()
                trajectory_dir = stage_dir
            final = self._find("final")
            if final is None:
                final = self._reference(teacher, "final")
                save_model(self.out / FINAL_MODEL_FILE, teacher, self.corpus.vocab,
                           {"data_source": self.corpus.source, "val_ppl": final["val_ppl"],
                            "test_ppl": final["test_ppl"],
                            "pipeline": {"source": self.description["source"], "config": self.config.to_dict()}})
                self._emit(final)
            self._say(f"final: hidden sizes {teacher.config.hidden_sizes}, valid ppl {final['val_ppl']:.2f}, test ppl "
                      f"{final['test_ppl']:.2f}, {final['params_recurrent']} recurrent / {final['params_total']} "
                      f"parameters; model saved in {self.out / FINAL_MODEL_FILE}")
        final_model, _ = load_model(self.out / FINAL_MODEL_FILE)
        return PipelineResult(out_dir=self.out, model=final_model, val_ppl=final["val_ppl"], test_ppl=final["test_ppl"],
                              baseline=self._find("baseline"), events=list(self.events))

    def _run_stage(self, stage: int, stage_dir: Path, teacher: RNNLanguageModel, trajectory_dir: Path | None) -> None:
        config, started = self.config, time.monotonic()
        target = {name: kept[stage - 1] for name, kept in self.kept.items()}
        plan_path = stage_dir / PLAN_FILE
        if plan_path.is_file():  # chosen before an interruption: reuse it, so the student is the same
            plan = PruningPlan.from_dict(read_json_object(plan_path, "the stage's pruning plan", READ_REMEDY))
        else:
            plan = choose_units(teacher, trajectory_dir, target, config, stage, calibration_tokens=self.corpus.train)
            atomic_write_json(plan_path, {**plan.to_dict(), "stage": stage, **self._stage_ratio(stage)})
        student = prune_units(teacher, plan)
        if self._find("stage_start", stage) is None:
            zero_shot = self._evaluate(student, "valid")
            sizes = list(student.config.hidden_sizes)
            self._emit({"event": "stage_start", "stage": stage, **self._stage_ratio(stage),
                        "hidden_sizes": sizes, "zero_shot_val_ppl": zero_shot, "prepare_s": time.monotonic() - started,
                        **{f"params_{k}": v for k, v in count_parameters(student).items()}})
            self._say(f"stage {stage}/{config.stages}: ratio {self._stage_ratio(stage)['ratio']:.3f}, hidden sizes "
                      f"{sizes}, {count_parameters(student)['total']} parameters, zero-shot valid ppl {zero_shot:.2f}")
        train_config = stage_train_config(self.source.train_config, config, stage, self.corpus.train.numel())
        regularizer = DiscriminationAwareL2(
            lam=config.da_l2 if config.uses_penalty else 0.0, gamma=config.da_l2_gamma,
            plain=config.regularization == "l2", calibration_tokens=self.corpus.train,
            calibration_batches=DRY_RUN_LIMITS["calibration_batches"] if config.dry_run else config.calibration_batches,
            batch_size=train_config.batch_size, bptt=train_config.bptt,
            refresh_every=config.importance_refresh_epochs, store_path=stage_dir / IMPORTANCE_FILE)

        def on_epoch_start(model, epoch):
            self._copy_epoch_events(stage, stage_dir)
            regularizer.on_epoch_start(model, epoch)

        try:
            train_language_model(stage_dir, corpus=self.corpus, train_config=train_config, initial_model=student,
                                 teacher=teacher if config.uses_teacher else None,
                                 extra_loss=regularizer.loss if regularizer.active else None,
                                 on_epoch_start=on_epoch_start, progress=self._stage_progress(stage),
                                 evaluate_test=False,
                                 device=self.device, log=self.log)
        except TrainingInterrupted as stopped:
            raise PipelineInterrupted(f"stage {stage}: {stopped}") from stopped
        self._copy_epoch_events(stage, stage_dir)
        stage_events = read_json_lines(stage_dir / METRICS_FILE)
        trained = next(e for e in stage_events if e.get("event") == "final")
        start = self._find("stage_start", stage)
        self._emit({"event": "stage_end", "stage": stage, "best_val_ppl": trained["best_val_ppl"],
                    "wall_s": float(start.get("prepare_s", 0.0)) + float(trained["elapsed_s"])})

    def _stage_progress(self, stage: int) -> ProgressCallback | None:
        """The pipeline's progress callback as one stage's training reports to it: the task names the
        stage, and `overall` counts the stages before it (each stage trains the same number of batches)."""
        if not self.progress:  # None, or False as some callers pass
            return None
        stages = self.config.stages

        def report(update: ProgressUpdate) -> None:
            overall = None if update.overall is None else (stage - 1 + update.overall) / stages
            self.progress(replace(update, task=f"stage {stage}/{stages}, {update.task}", overall=overall))

        return report

    def _copy_epoch_events(self, stage: int, stage_dir: Path) -> None:
        """Mirror the stage run's per-epoch validation into the pipeline's log (once per epoch)."""
        logged = {e.get("epoch") for e in self.events if e.get("event") == "epoch" and e.get("stage") == stage}
        for event in read_json_lines(stage_dir / METRICS_FILE):
            if event.get("event") == "epoch" and event.get("epoch") not in logged:
                copied = {"event": "epoch", "stage": stage, **{k: event[k] for k in
                          ("epoch", "val_ppl", "train_loss", "elapsed_s", "lr", "oracle_ppl") if k in event}}
                self._emit(copied)
                logged.add(event.get("epoch"))


def _stopped_between_runs() -> PipelineInterrupted:
    """Outside training, SIGTERM stops the pipeline at once: everything it has written so far was
    written atomically, so nothing is lost. (While a stage trains, the training loop's own handler
    takes over and stops after the current batch with a resumable checkpoint.)"""
    return PipelineInterrupted("stopped by SIGTERM between training runs; run the same command again to continue")
