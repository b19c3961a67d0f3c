"""The prune-and-fine-tune pipeline: stage schedule, run-directory layout, resume, ablations, CLI."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import analysis.pruning.da_l2 as da_l2
import analysis.pruning.pipeline as pipeline
from analysis import cli
from analysis.cli import prune as prune_cli
from analysis.errors import CheckpointError, InvalidInputError
from analysis.lm.evaluation import evaluate
from analysis.lm.model import ModelConfig, load_model
from analysis.lm.training import TrainConfig, train_language_model
from analysis.pruning.config import parse_ratio
from analysis.pruning.pipeline import PipelineConfig, PipelineInterrupted, run_pruning_pipeline
from analysis.pruning.surgery import count_parameters
from analysis.utils.options import config_argv

SOURCE_SIZES = [12, 10]
EVENT_KEYS = {
    "baseline": {"val_ppl", "test_ppl", "params_recurrent", "params_total", "oracle_ppl"},
    "stage_start": {"stage", "ratio", "hidden_sizes", "zero_shot_val_ppl", "params_recurrent", "params_total"},
    "epoch": {"stage", "epoch", "val_ppl", "train_loss", "elapsed_s"},
    "stage_end": {"stage", "best_val_ppl", "wall_s"},
    "final": {"val_ppl", "test_ppl", "params_recurrent", "params_total", "oracle_ppl"},
}


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, corpus) -> Path:
    """A small trained model with its recorded trajectory, like a sample directory."""
    run_dir = tmp_path_factory.mktemp("source") / "run"
    config = TrainConfig(epochs=3, lr=1.0, lr_decay=0.5, decay_after_epoch=1, bptt=5, batch_size=4,
                         max_batches_per_epoch=6, max_eval_batches=4, log_interval=2, record_every=2, seed=7)
    model_config = ModelConfig(vocab_size=len(corpus.vocab), embedding_size=8, hidden_sizes=SOURCE_SIZES, dropout=0.3)
    train_language_model(run_dir, corpus=corpus, model_config=model_config, train_config=config, progress=False,
                         log=None)
    return run_dir


def prune(source, out, corpus, **options):
    return run_pruning_pipeline(out, source=source, config=PipelineConfig(**options), corpus=corpus, progress=False,
                                log=None)


def events_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class TrainingSpy:
    """Wraps the pipeline's training call: records its arguments and can send SIGTERM mid-stage."""

    def __init__(self, monkeypatch, stop_in_stage: str | None = None, stop_at_step: int | None = None):
        self.calls, self.stop_in_stage, self.stop_at_step = [], stop_in_stage, stop_at_step
        self.real = pipeline.train_language_model
        monkeypatch.setattr(pipeline, "train_language_model", self)

    def __call__(self, run_dir, *args, **kwargs):
        self.calls.append({"run_dir": Path(run_dir), **kwargs})
        inner = kwargs.get("extra_loss")
        if self.stop_in_stage == Path(run_dir).name:
            def extra_loss(context):
                if context.step == self.stop_at_step:
                    os.kill(os.getpid(), signal.SIGTERM)  # training stops after this batch
                return None if inner is None else inner(context)
            kwargs["extra_loss"] = extra_loss
        return self.real(run_dir, *args, **kwargs)


def test_the_stage_schedule_removes_the_same_fraction_of_what_is_left_each_stage():
    config = PipelineConfig(ratio=0.5, stages=3)
    np.testing.assert_allclose(config.stage_ratios(), [1 - 0.5 ** (1 / 3), 1 - 0.5 ** (2 / 3), 0.5])
    # 200 units: 41.26 -> 41, 74.01 -> 74 and 100 units removed in all
    assert config.kept_units(200) == [159, 126, 100]
    assert config.kept_units(64) == [51, 40, 32]
    assert PipelineConfig(ratio=0.7, stages=1).kept_units(200) == [60]
    with pytest.raises(InvalidInputError, match="ratio"):
        PipelineConfig(ratio=1.0).validate()
    with pytest.raises(InvalidInputError, match="criterion"):
        PipelineConfig(criterion="largest").validate()


@pytest.mark.slow  # trains a source model and runs the pipeline
def test_a_two_stage_dry_run_writes_the_documented_layout(tmp_path, source_run, corpus):
    out = tmp_path / "prune"
    result = prune(source_run, out, corpus, ratio=0.5, stages=2, epochs_per_stage=1, dry_run=True)
    config = PipelineConfig(ratio=0.5, stages=2)
    expected_sizes = [[config.kept_units(h)[s] for h in SOURCE_SIZES] for s in range(2)]
    assert expected_sizes == [[8, 7], [6, 5]]

    description = json.loads((out / "pipeline.json").read_text())
    assert description["config"]["ratio"] == 0.5 and description["config"]["stages"] == 2
    assert description["data_source"] == corpus.source and description["source"] == str(source_run.resolve())

    events = events_of(out)
    assert [e["event"] for e in events] == ["baseline", "stage_start", "epoch", "stage_end",
                                            "stage_start", "epoch", "stage_end", "final"]
    for event in events:
        assert EVENT_KEYS[event["event"]] <= set(event), event
    starts = [e for e in events if e["event"] == "stage_start"]
    assert [e["hidden_sizes"] for e in starts] == expected_sizes
    assert [e["stage"] for e in starts] == [1, 2]

    for stage in (1, 2):
        stage_dir = out / f"stage_{stage}"
        for name in ("best.pt", "metrics.jsonl", "checkpoint_last.pt", "run.json", "plan.json", "importances.json"):
            assert (stage_dir / name).is_file(), f"stage_{stage}/{name}"
        assert (stage_dir / "trajectory" / "manifest.json").is_file()
        plan = json.loads((stage_dir / "plan.json").read_text())
        assert [len(layer["kept"]) for layer in plan["layers"]] == expected_sizes[stage - 1]
        # each stage anneals its own rate (the cosine schedule, the default)
        stage_config = json.loads((stage_dir / "run.json").read_text())["train_config"]
        assert stage_config["lr_schedule"] == "cosine" and stage_config["epochs"] == 1

    raw = torch.load(out / "final.pt", weights_only=True)
    assert raw["model_config"]["hidden_sizes"] == [6, 5]
    model, info = load_model(out)
    assert info["path"].endswith("final.pt") and info["data_source"] == corpus.source
    final = events[-1]
    assert count_parameters(model) == {"recurrent": final["params_recurrent"], "total": final["params_total"]}
    mean_nll, _ = evaluate(model, corpus.valid, 10, 35, max_batches=2)
    assert np.exp(mean_nll) == pytest.approx(final["val_ppl"], rel=1e-5)
    assert result.val_ppl == final["val_ppl"]


@pytest.mark.slow  # trains a source model and runs the pipeline
def test_ratio_zero_fine_tunes_the_unpruned_model_as_a_control(tmp_path, source_run, corpus):
    out = tmp_path / "control"
    prune(source_run, out, corpus, ratio=0.0, stages=2, epochs_per_stage=1, dry_run=True)
    events = events_of(out)
    assert [e["hidden_sizes"] for e in events if e["event"] == "stage_start"] == [SOURCE_SIZES, SOURCE_SIZES]
    baseline, final = events[0], events[-1]
    assert final["params_total"] == baseline["params_total"]
    # the weights were fine-tuned, not just copied
    model, _ = load_model(out)
    source_model, _ = load_model(source_run)
    assert not torch.equal(model.decoder.weight, source_model.decoder.weight)


@pytest.mark.slow  # trains a source model and runs the pipeline
def test_running_again_after_an_interruption_mid_stage_ends_as_an_uninterrupted_run(tmp_path, source_run, corpus,
                                                                                     monkeypatch):
    options = dict(ratio=0.5, stages=2, epochs_per_stage=2, seed=3)
    reference = prune(source_run, tmp_path / "straight", corpus, **options)

    spy = TrainingSpy(monkeypatch, stop_in_stage="stage_2", stop_at_step=8)  # epoch 2 of stage 2
    with pytest.raises(PipelineInterrupted, match="stage 2"):
        prune(source_run, tmp_path / "resumed", corpus, **options)
    monkeypatch.setattr(pipeline, "train_language_model", spy.real)
    resumed = prune(source_run, tmp_path / "resumed", corpus, **options)

    expected, got = reference.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert resumed.test_ppl == reference.test_ppl
    kinds = [(e["event"], e.get("stage"), e.get("epoch")) for e in events_of(tmp_path / "resumed")]
    assert kinds == [(e["event"], e.get("stage"), e.get("epoch")) for e in events_of(tmp_path / "straight")]


@pytest.mark.slow  # trains a source model and runs the pipeline
def test_sigterm_while_choosing_units_stops_at_once_and_the_rerun_finishes_the_same(
        tmp_path, source_run, corpus, monkeypatch):
    options = dict(ratio=0.5, stages=2, epochs_per_stage=1, dry_run=True)
    reference = prune(source_run, tmp_path / "straight", corpus, **options)
    real_choose = pipeline.choose_units

    def choose_then_signal(*args, **kwargs):
        plan = real_choose(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return plan

    monkeypatch.setattr(pipeline, "choose_units", choose_then_signal)
    with pytest.raises(PipelineInterrupted, match="run the same command again"):
        prune(source_run, tmp_path / "resumed", corpus, **options)
    assert not (tmp_path / "resumed" / "stage_1" / "run.json").exists()
    assert [e["event"] for e in events_of(tmp_path / "resumed")] == ["baseline"]
    monkeypatch.undo()
    resumed = prune(source_run, tmp_path / "resumed", corpus, **options)
    resumed_state = resumed.model.state_dict()
    assert all(torch.equal(value, resumed_state[key]) for key, value in reference.model.state_dict().items())
    events = [e["event"] for e in events_of(tmp_path / "straight")]
    assert [e["event"] for e in events_of(tmp_path / "resumed")] == events


@pytest.mark.slow  # trains a source model and runs the pipeline
def test_a_finished_run_is_not_redone_and_other_options_are_refused(tmp_path, source_run, corpus, monkeypatch):
    out = tmp_path / "prune"
    prune(source_run, out, corpus, stages=1, epochs_per_stage=1, dry_run=True)
    before = (out / "metrics.jsonl").read_text()
    spy = TrainingSpy(monkeypatch)
    prune(source_run, out, corpus, stages=1, epochs_per_stage=1, dry_run=True)
    assert spy.calls == [] and (out / "metrics.jsonl").read_text() == before
    with pytest.raises(CheckpointError, match="ratio 0.5 -> 0.3"):
        prune(source_run, out, corpus, ratio=0.3, stages=1, epochs_per_stage=1, dry_run=True)
    run_pruning_pipeline(out, source=source_run, config=PipelineConfig(ratio=0.3, stages=1, epochs_per_stage=1,
                                                                       dry_run=True),
                         corpus=corpus, overwrite=True, progress=False, log=None)
    assert json.loads((out / "pipeline.json").read_text())["config"]["ratio"] == 0.3
    # a run from before the schedule could be chosen used the per-epoch one: it resumes only as that
    stored = json.loads((out / "pipeline.json").read_text())
    del stored["config"]["lr_schedule"]
    (out / "pipeline.json").write_text(json.dumps(stored))
    with pytest.raises(CheckpointError, match="lr_schedule 'step' -> 'cosine'"):
        prune(source_run, out, corpus, ratio=0.3, stages=1, epochs_per_stage=1, dry_run=True)
    spy = TrainingSpy(monkeypatch)
    prune(source_run, out, corpus, ratio=0.3, stages=1, epochs_per_stage=1, dry_run=True, lr_schedule="step")
    assert spy.calls == []


@pytest.mark.slow  # trains a source model and runs the pipeline
def test_ablation_switches_change_what_they_should(tmp_path, source_run, corpus, monkeypatch):
    measured = []
    real_importances = da_l2.unit_importances
    monkeypatch.setattr(da_l2, "unit_importances",
                        lambda *args, **kwargs: measured.append(1) or real_importances(*args, **kwargs))
    spy = TrainingSpy(monkeypatch)

    prune(source_run, tmp_path / "full", corpus, stages=2, epochs_per_stage=1, dry_run=True)
    assert [call["teacher"] is not None for call in spy.calls] == [True, True]
    assert all(call["extra_loss"] is not None for call in spy.calls) and len(measured) == 2

    spy.calls.clear(), measured.clear()
    out = tmp_path / "bare"
    prune(source_run, out, corpus, stages=1, epochs_per_stage=1, distillation=False, regularization="none",
          dry_run=True)
    assert [p.name for p in sorted(out.glob("stage_*"))] == ["stage_1"]
    assert spy.calls[0]["teacher"] is None and spy.calls[0]["extra_loss"] is None and measured == []
    assert json.loads((out / "stage_1" / "run.json").read_text())["teacher_sha256"] is None
    assert load_model(out)[0].config.hidden_sizes == [6, 5]

    spy.calls.clear()
    prune(source_run, tmp_path / "plain", corpus, stages=1, epochs_per_stage=1, regularization="l2", dry_run=True)
    assert spy.calls[0]["extra_loss"] is not None and measured == []
    assert not (tmp_path / "plain" / "stage_1" / "importances.json").exists()


@pytest.mark.slow  # trains a source model and runs the pipeline
def test_a_model_file_without_a_trajectory_prunes_by_importance_but_not_by_dynamics(tmp_path, source_run, corpus):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(source_run / "best.pt", alone / "model.pt")
    with pytest.raises(InvalidInputError, match="trajectory"):
        prune(alone / "model.pt", tmp_path / "dynamics", corpus, stages=1, criterion="dynamics-greedy", dry_run=True)
    for criterion in ("magnitude", None):  # None: the default, taylor-iterative, reads the model and its corpus
        options = {"criterion": criterion} if criterion else {}
        result = prune(alone / "model.pt", tmp_path / str(criterion), corpus, stages=1, dry_run=True, **options)
        assert result.model.config.hidden_sizes == [6, 5]


@pytest.mark.slow  # trains a source model and runs the pipeline
def test_the_command_line_prunes_stops_with_143_on_sigterm_and_continues(tmp_path, source_run, capsys, monkeypatch):
    out = tmp_path / "cli"
    argv = ["prune", "--from", str(source_run), "--out", str(out), "--stages", "2", "--epochs-per-stage", "1",
            "--dry-run", "--no-progress", "--json", "--teacher-precision", "bfloat16", "--lr-schedule", "step"]
    TrainingSpy(monkeypatch, stop_in_stage="stage_1", stop_at_step=1)
    assert cli.main(argv) == 143
    assert "stopped" in capsys.readouterr().out
    monkeypatch.undo()
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["hidden_sizes"] == [6, 5] and summary["out"] == str(out)
    stage_config = json.loads((out / "stage_2" / "run.json").read_text())["train_config"]
    assert stage_config["teacher_precision"] == "bfloat16" and stage_config["lr_schedule"] == "step"
    assert cli.main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["hidden_sizes"] == [6, 5]
    assert cli.main(["prune", "--from", str(source_run), "--out", str(tmp_path / "x"), "--plain-l2",
                     "--no-regularization"]) == 2
    assert "contradict" in capsys.readouterr().err


# ------------------------------------------------------------------ options: one declaration, CLI and jobs

# A value other than the default for every option; the test below fails for a field missing here.
NON_DEFAULT_OPTIONS = {
    "ratio": {"rnns.0.l0": 0.3, "rnns.1.l0": 0.55}, "stages": 2, "criterion": "magnitude", "epochs_per_stage": 3,
    "regularization": "l2", "da_l2": 3e-4, "da_l2_gamma": 2.5, "importance_refresh_epochs": 0,
    "calibration_batches": 5, "distillation": False, "distill_alpha": 0.25, "distill_temperature": 3.5,
    "teacher_precision": "bfloat16", "lds_order": 2, "horizon": math.inf, "lr": 0.123, "lr_decay": 0.7,
    "decay_after_epoch": 2, "lr_schedule": "step", "snapshots_per_stage": 7, "seed": 11, "dry_run": True,
}


def test_every_pipeline_option_goes_through_a_jobs_arguments_and_back():
    defaults = PipelineConfig()
    assert set(NON_DEFAULT_OPTIONS) == {field.name for field in dataclasses.fields(PipelineConfig)}
    for field in dataclasses.fields(PipelineConfig):
        assert NON_DEFAULT_OPTIONS[field.name] != getattr(defaults, field.name), field.name
    config = PipelineConfig(**NON_DEFAULT_OPTIONS).validate()
    args = prune_cli.job_args("runs/source", "runs/out", config)
    assert prune_cli.config_of_job(args) == config
    parsed = cli.build_parser().parse_args(args)  # the full command line, as `dynaprune jobs submit` runs it
    assert prune_cli.config_from_args(parsed) == config
    for field in dataclasses.fields(PipelineConfig):  # each option alone, the others at their defaults
        single = dataclasses.replace(defaults, **{field.name: NON_DEFAULT_OPTIONS[field.name]})
        only = ["prune", "--from", "a", "--out", "b", *config_argv(single, base=defaults)]
        assert prune_cli.config_of_job(only) == single, field.name


def test_arguments_stored_by_older_jobs_still_parse():
    # as the Fine-tune page built them before every option had a flag
    old = ["prune", "--from", "s", "--out", "o", "--ratio", "0.3", "--stages", "3", "--criterion", "random",
           "--epochs-per-stage", "1", "--da-l2", "0.001", "--kd-alpha", "0.4", "--kd-tau", "3", "--lr-schedule",
           "step", "--teacher-precision", "bfloat16", "--no-progress", "--one-shot", "--dry-run",
           "--no-distillation", "--plain-l2"]
    assert prune_cli.config_of_job(old) == PipelineConfig(
        ratio=0.3, stages=1, criterion="random", epochs_per_stage=1, da_l2=0.001, distill_alpha=0.4,
        distill_temperature=3.0, lr_schedule="step", teacher_precision="bfloat16", dry_run=True, distillation=False,
        regularization="l2")
    no_regularization = prune_cli.config_of_job(["prune", "--from", "s", "--out", "o", "--no-regularization"])
    assert no_regularization.regularization == "none"
    with pytest.raises(InvalidInputError, match="contradict"):
        prune_cli.config_of_job(["prune", "--from", "s", "--out", "o", "--regularization", "da-l2", "--plain-l2"])


def test_per_layer_ratios_parse_validate_and_name_unknown_layers():
    assert parse_ratio("0.25") == 0.25
    assert parse_ratio("rnns.0.l0=0.3, rnns.1.l0=0.5") == {"rnns.0.l0": 0.3, "rnns.1.l0": 0.5}
    config = PipelineConfig(ratio={"rnns.0.l0": 0.5}, stages=2).validate()
    assert config.kept_units(12, "rnns.0.l0") == [8, 6] and config.kept_units(10, "rnns.1.l0") == [10, 10]
    with pytest.raises(InvalidInputError, match="rnns.7.l0"):
        PipelineConfig(ratio={"rnns.7.l0": 0.5, "rnns.0.l0": 0.1}).check_layers(["rnns.0.l0", "rnns.1.l0"])
    with pytest.raises(InvalidInputError, match=r"\[0, 1\)"):
        PipelineConfig(ratio={"rnns.0.l0": 1.0}).validate()
    with pytest.raises(InvalidInputError, match="bad value"):
        prune_cli.config_of_job(["prune", "--from", "s", "--out", "o", "--ratio", "rnns.0.l0=bad value"])


@pytest.mark.slow  # trains a source model and runs the pipeline
def test_per_layer_ratios_lds_order_and_horizon_from_the_command_line(tmp_path, source_run, capsys):
    out = tmp_path / "layers"
    assert cli.main(["prune", "--from", str(source_run), "--out", str(out), "--ratio", "rnns.0.l0=0.5,rnns.1.l0=0.2",
                     "--stages", "2", "--epochs-per-stage", "1", "--lds-order", "2", "--horizon", "inf",
                     "--dry-run", "--no-progress"]) == 0
    description = json.loads((out / "pipeline.json").read_text())
    config = PipelineConfig.from_dict(description["config"])
    assert config.ratio == {"rnns.0.l0": 0.5, "rnns.1.l0": 0.2} and config.lds_order == 2 and math.isinf(config.horizon)
    assert description["stage_hidden_sizes"] == [[8, 9], [6, 8]]
    assert load_model(out)[0].config.hidden_sizes == [6, 8]
    starts = [e for e in events_of(out) if e["event"] == "stage_start"]
    assert [e["layer_ratios"] for e in starts] == [pytest.approx({"rnns.0.l0": 4 / 12, "rnns.1.l0": 1 / 10}),
                                                   pytest.approx({"rnns.0.l0": 0.5, "rnns.1.l0": 0.2})]
    assert starts[-1]["ratio"] == pytest.approx(8 / 22)
    capsys.readouterr()
    assert cli.main(["prune", "--from", str(source_run), "--out", str(tmp_path / "x"), "--ratio",
                     "rnns.0.l0=0.5,rnns.5.l0=0.2", "--dry-run"]) == 2
    assert "rnns.5.l0" in capsys.readouterr().err


@pytest.mark.slow  # trains a source model and runs the pipeline
def test_a_run_stored_with_the_old_distillation_names_resumes(tmp_path, source_run, corpus, monkeypatch):
    out = tmp_path / "old-names"
    options = dict(stages=1, epochs_per_stage=1, distill_alpha=0.3, distill_temperature=1.5, dry_run=True)
    prune(source_run, out, corpus, **options)
    stored = json.loads((out / "pipeline.json").read_text())
    config = stored["config"]
    config["kd_alpha"], config["kd_tau"] = config.pop("distill_alpha"), config.pop("distill_temperature")
    (out / "pipeline.json").write_text(json.dumps(stored))
    assert PipelineConfig.from_dict(config) == PipelineConfig(**options)
    spy = TrainingSpy(monkeypatch)
    prune(source_run, out, corpus, **options)  # a finished run: nothing to redo, and no "different settings"
    assert spy.calls == []
    with pytest.raises(CheckpointError, match="distill_alpha 0.3 -> 0.5"):
        prune(source_run, out, corpus, **{**options, "distill_alpha": 0.5})


@pytest.mark.slow  # trains a source model and runs the pipeline
@pytest.mark.parametrize("criterion", ["taylor", "dynamics-taylor"])
def test_the_taylor_criteria_read_the_teachers_taylor_importances(tmp_path, source_run, corpus, criterion):
    from analysis.dynamics.selection import select_units
    from analysis.dynamics.trajectory_fit import fit_trajectory
    from analysis.pruning.importance import unit_importances
    from analysis.pruning.stages import choose_units
    from analysis.trajectories.trajectory import load_trajectory

    out = tmp_path / "prune"
    prune(source_run, out, corpus, ratio=0.5, stages=1, epochs_per_stage=1, dry_run=True, criterion=criterion)
    plan_file = json.loads((out / "stage_1" / "plan.json").read_text())
    kept = {layer["layer"]: layer["kept"] for layer in plan_file["layers"]}
    teacher, _ = load_model(source_run / "best.pt")
    taylor = unit_importances(teacher, corpus.train, max_batches=2)  # a dry run's calibration batches
    if criterion == "taylor":  # the strongest units by Taylor importance stay
        expected = {layer: sorted(np.argsort(scores, kind="stable")[len(scores) - len(kept[layer]):].tolist())
                    for layer, scores in taylor.items()}
    else:  # the greedy dynamics rule, with Taylor importances in place of final norms
        trajectory = load_trajectory(source_run / "trajectory")
        fits = fit_trajectory(trajectory, order=min(8, len(trajectory) - 1))
        plan = select_units({layer: fit.distances for layer, fit in fits.items()}, ratio=0.5,
                            criterion="dynamics-greedy", importance=taylor, seed=1)
        expected = {layer: units.tolist() for layer, units in plan.kept.items()}
    assert kept == expected
    with pytest.raises(InvalidInputError, match="calibration tokens"):
        choose_units(teacher, source_run / "trajectory", {k: len(v) for k, v in kept.items()},
                     PipelineConfig(ratio=0.5, stages=1, criterion=criterion, dry_run=True), 1)


@pytest.mark.slow  # trains a source model
@pytest.mark.parametrize("criterion", ["taylor-iterative", "dynamics-taylor-iterative"])
def test_iterative_criteria_measure_again_on_the_model_cut_so_far(monkeypatch, source_run, corpus, criterion):
    from analysis.dynamics.criteria import CRITERIA
    from analysis.pruning import stages

    teacher, _ = load_model(source_run / "best.pt")
    measured_sizes = []

    def bias_norms(model):  # each unit's own gate biases: surgery keeps them as they are
        return {layer: rnn.bias_ih_l0.detach().reshape(-1, rnn.hidden_size).norm(dim=0).double().numpy()
                for layer, rnn in zip(model.layer_names, model.rnns)}

    def measure(model, tokens, max_batches):  # a stand-in importance that reads the model it is given
        measured_sizes.append({layer: rnn.hidden_size for layer, rnn in zip(model.layer_names, model.rnns)})
        return bias_norms(model)

    monkeypatch.setattr(stages, "unit_importances", measure)
    target = {layer: size // 2 for layer, size in zip(teacher.layer_names, SOURCE_SIZES)}
    config = PipelineConfig(ratio=0.5, stages=1, criterion=criterion)
    plan = stages.choose_units(teacher, source_run / "trajectory", target, config, 1, calibration_tokens=corpus.train)

    chunks = CRITERIA[criterion].measurement_chunks
    assert chunks > 1 and len(measured_sizes) == chunks
    for layer, size in zip(teacher.layer_names, SOURCE_SIZES):
        sizes = [measured[layer] for measured in measured_sizes]
        assert sizes[0] == size and sizes == sorted(sizes, reverse=True) and sizes[-1] > target[layer]
        # the chunks remove the units evenly: each measurement sees the layer cut by whole chunks
        assert [size - s for s in sizes] == [round((size - target[layer]) * c / chunks) for c in range(chunks)]
        assert len(plan.kept[layer]) == target[layer]
        assert sorted(np.concatenate([plan.kept[layer], plan.pruned[layer]]).tolist()) == list(range(size))
    measured_sizes.clear()  # nothing to remove (the control): nothing is measured
    whole = {layer: size for layer, size in zip(teacher.layer_names, SOURCE_SIZES)}
    plan_whole = stages.choose_units(teacher, source_run / "trajectory", whole, config, 1,
                                     calibration_tokens=corpus.train)
    assert measured_sizes == [] and {k: v.tolist() for k, v in plan_whole.kept.items()} == \
        {layer: list(range(size)) for layer, size in whole.items()}
    if criterion == "taylor-iterative":
        # an importance that does not change as units go: chunk by chunk gives what one ranking gives
        for layer, scores in bias_norms(teacher).items():
            strongest = np.sort(np.argsort(scores, kind="stable")[len(scores) - target[layer]:])
            assert plan.kept[layer].tolist() == strongest.tolist()

    # the trace: which chunk removed each unit, and what it scored then (a bias norm survives surgery as it is)
    choice = stages.trace_unit_choice(teacher, source_run / "trajectory", target, config, 1,
                                      calibration_tokens=corpus.train)
    assert choice.importance_source == "taylor"
    for layer, size in zip(teacher.layer_names, SOURCE_SIZES):
        assert choice.plan.kept[layer].tolist() == plan.kept[layer].tolist()
        chunk = choice.removed_in_chunk[layer]
        assert np.flatnonzero(chunk == 0).tolist() == plan.kept[layer].tolist()
        schedule = [round((size - target[layer]) * c / chunks) for c in range(chunks + 1)]
        assert np.bincount(chunk, minlength=chunks + 1)[1:].tolist() == np.diff(schedule).tolist()
        np.testing.assert_allclose(choice.importance[layer], bias_norms(teacher)[layer])
        np.testing.assert_allclose(choice.first_importance[layer], bias_norms(teacher)[layer])
        if criterion == "taylor-iterative":  # a static importance: each chunk removes weaker units than the next
            scores = bias_norms(teacher)[layer]
            for c in range(1, chunks):
                if (chunk == c).any() and (chunk > c).any():
                    assert scores[chunk == c].max() <= scores[chunk > c].min()


@pytest.mark.slow  # trains a source model
def test_a_measured_cut_is_the_pipelines_choice_and_leaves_the_model_alone(source_run, corpus):
    from analysis.exploration import measured_removal_table
    from analysis.pruning.preview import measured_cut
    from analysis.pruning.stages import choose_units

    teacher, _ = load_model(source_run / "best.pt")
    before = {name: value.clone() for name, value in teacher.state_dict().items()}
    ratios = {"rnns.0.l0": 0.5, "rnns.1.l0": 0.3}
    choice = measured_cut(teacher, ratios, "taylor-iterative", corpus.train, trajectory_dir=source_run)
    target = {"rnns.0.l0": 6, "rnns.1.l0": 7}  # 12 and 10 units less round(0.5 * 12) and round(0.3 * 10)
    plan = choose_units(teacher, source_run / "trajectory", target, PipelineConfig(criterion="taylor-iterative"), 0,
                        calibration_tokens=corpus.train)
    assert {k: v.tolist() for k, v in choice.plan.kept.items()} == {k: v.tolist() for k, v in plan.kept.items()}
    assert all(torch.equal(before[name], value) for name, value in teacher.state_dict().items())
    assert all(not rnn._forward_hooks for rnn in teacher.rnns)

    table = measured_removal_table(choice, "rnns.0.l0", np.arange(12.0))
    assert sorted(table["unit"]) == choice.plan.pruned["rnns.0.l0"].tolist()
    assert table["chunk"].is_monotonic_increasing and table["chunk"].min() >= 1
    assert (table["final weight norm"] == table["unit"]).all()
    with pytest.raises(InvalidInputError, match="weight_norms has 3 entries"):
        measured_removal_table(choice, "rnns.0.l0", np.ones(3))
    with pytest.raises(InvalidInputError, match="unknown layer"):
        measured_cut(teacher, {"rnns.7.l0": 0.5}, "taylor", corpus.train)
    with pytest.raises(InvalidInputError, match="unknown criterion"):
        measured_cut(teacher, ratios, "largest-first", corpus.train)
    with pytest.raises(InvalidInputError, match="ratio must be in"):
        measured_cut(teacher, {"rnns.0.l0": "half"}, "taylor", corpus.train)
    # a dynamics criterion reads the trajectory; nothing is measured, so the importance is the final norm
    greedy = measured_cut(teacher, ratios, "dynamics-greedy", None, trajectory_dir=source_run)
    assert greedy.importance_source == "final-norm"
    assert set(np.unique(greedy.removed_in_chunk["rnns.0.l0"])) == {0, 1}


@pytest.mark.slow  # trains a source model
@pytest.mark.parametrize("criterion", ["taylor-iterative", "dynamics-taylor-iterative"])
def test_the_criterion_study_measured_what_the_pipeline_runs(source_run, corpus, criterion):
    """docs/criteria.md's numbers for a criterion come from benchmarks/criteria_variants.py, a separate
    implementation for the study; both must choose the same units."""
    import importlib.util
    import sys

    from analysis.pruning.stages import choose_units
    from analysis.trajectories.trajectory import load_trajectory
    from tests.conftest import REPO_ROOT

    script = REPO_ROOT / "benchmarks" / "criteria_variants.py"
    spec = importlib.util.spec_from_file_location("criteria_variants", script)
    study = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = study  # its dataclasses look their module up there
    spec.loader.exec_module(study)
    teacher, _ = load_model(source_run / "best.pt")
    units = study.SourceUnits(model=teacher, trajectory=load_trajectory(source_run / "trajectory"),
                              calibration_tokens=corpus.train)
    studied = study.choose_kept_units(units, study.VARIANTS[criterion], 0.5)
    target = {layer: len(kept) for layer, kept in studied.items()}
    plan = choose_units(teacher, source_run / "trajectory", target, PipelineConfig(ratio=0.5, criterion=criterion), 1,
                        calibration_tokens=corpus.train)
    assert {layer: kept.tolist() for layer, kept in plan.kept.items()} == \
        {layer: kept.tolist() for layer, kept in studied.items()}
