"""Tests of the numbers the dashboard puts side by side: the results table and its CSV
(analysis.run_curves.results_table), the size/perplexity trade-off and its frontier, the recorded
full-split perplexity, the validation windows spread over a split (analysis.pruning.preview) and
whether a model's corpus can be read here (analysis.corpus_availability)."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.corpus_availability import corpus_problem
from analysis.errors import InvalidInputError
from analysis.lm.corpora import load_corpus
from analysis.pruning.preview import load_validation_tokens, spread_windows, window_starts
from analysis.run_curves import (
    RESULT_COLUMNS,
    SETTING_COLUMNS,
    lower_envelope,
    read_run_description,
    recorded_validation_perplexity,
    results_csv,
    results_for_display,
    results_table,
    tradeoff_points,
)

SMALL_SYNTHETIC = "synthetic:0:train=2000,valid=1500,test=100,states=4,words=30"


def write_pipeline(folder: Path, *, ratio=0.5, criterion="magnitude", dry_run=False, data_source="synthetic:0",
                   final_ppl=64.0) -> Path:
    folder.mkdir(parents=True)
    config = {"ratio": ratio, "stages": 2, "criterion": criterion, "epochs_per_stage": 1, "lds_order": 4, "seed": 3,
              "dry_run": dry_run}
    (folder / "pipeline.json").write_text(json.dumps({"config": config, "data_source": data_source}))
    events = [
        {"event": "baseline", "val_ppl": 60.0, "params_recurrent": 900, "params_total": 2000},
        {"event": "stage_start", "stage": 1, "ratio": ratio * 0.6, "hidden_sizes": [8, 8], "zero_shot_val_ppl": 80.0,
         "params_recurrent": 600, "params_total": 1500},
        {"event": "stage_end", "stage": 1, "best_val_ppl": 62.0, "wall_s": 1.234},
        {"event": "stage_start", "stage": 2, "ratio": ratio, "hidden_sizes": [6, 6], "zero_shot_val_ppl": 90.0,
         "params_recurrent": 400, "params_total": 1200},
        {"event": "stage_end", "stage": 2, "best_val_ppl": final_ppl, "wall_s": 1.0},
        {"event": "final", "val_ppl": final_ppl, "test_ppl": 63.123456, "params_recurrent": 400,
         "params_total": 1200},
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return folder


def test_recorded_perplexity_is_the_runs_own_full_split_figure():
    training = [{"event": "epoch", "val_ppl": 70.0}, {"event": "epoch", "val_ppl": 65.0},
                {"event": "final", "best_val_ppl": 65.0, "test_ppl": 66.0}]
    assert recorded_validation_perplexity(training) == 65.0
    assert recorded_validation_perplexity(training[:2]) == 65.0  # still training: the best epoch so far
    assert recorded_validation_perplexity([{"event": "final", "val_ppl": 64.0}]) == 64.0  # a pipeline
    assert recorded_validation_perplexity([]) is None


def test_the_sample_records_its_full_split_perplexity(synthetic_sample):
    events = [json.loads(line) for line in (synthetic_sample / "metrics.jsonl").read_text().splitlines()]
    best = min(e["val_ppl"] for e in events if e.get("event") == "epoch")
    assert recorded_validation_perplexity(events) == pytest.approx(best)


def test_results_table_has_readable_columns_typed_values_and_the_runs_settings(tmp_path, synthetic_sample):
    write_pipeline(tmp_path / "prune-a", dry_run=True)
    results = results_table([("prune-a", tmp_path / "prune-a"), ("sample", synthetic_sample)])
    assert list(results.columns) == RESULT_COLUMNS + SETTING_COLUMNS
    assert results["stage"].tolist() == ["baseline", "1", "2", "final", "trained"]
    assert str(results["parameters"].dtype) == "Int64" and results["parameters"].notna().all()  # the sample's counted
    assert results.loc[0, "criterion"] == "magnitude" and results.loc[0, "target ratio"] == 0.5
    assert results.loc[0, "epochs per stage"] == 1 and results.loc[0, "LDS order"] == 4
    assert bool(results.loc[0, "dry run"]) and not bool(results.loc[4, "dry run"])
    shown = results_for_display(results)
    assert list(shown.columns) == RESULT_COLUMNS
    assert "zero-shot valid ppl" in shown.columns and "wall time (s)" in shown.columns
    text = shown.to_string()
    assert "None" not in text and "nan" not in text.lower() and "<NA>" not in text
    assert shown.loc[0, "parameters"] == "2,000" and shown.loc[1, "wall time (s)"] == "1.2"

    exported = pd.read_csv(io.StringIO(results_csv(results)))
    assert {"criterion", "target ratio", "stages", "epochs per stage", "LDS order", "seed", "dry run"} <= set(
        exported.columns)
    assert exported["parameters"].dtype.kind == "i" and exported.loc[3, "test ppl"] == 63.12
    assert "2000.0" not in results_csv(results)


def test_run_descriptions_name_the_corpus_wherever_ptb_lives(tmp_path):
    write_pipeline(tmp_path / "on-ptb", data_source="ptb:/somewhere/ptb")
    write_pipeline(tmp_path / "on-synthetic", data_source="synthetic:0", dry_run=True)
    assert read_run_description(tmp_path / "on-ptb")["corpus"] == "ptb"
    synthetic = read_run_description(tmp_path / "on-synthetic")
    assert synthetic["corpus"] == "synthetic:0" and synthetic["dry_run"]
    assert read_run_description(tmp_path)["kind"] is None  # not a run


def test_tradeoff_marks_unpruned_and_control_and_draws_the_frontier(tmp_path):
    write_pipeline(tmp_path / "greedy", criterion="dynamics-greedy", final_ppl=61.0)
    write_pipeline(tmp_path / "magnitude", criterion="magnitude", final_ppl=70.0)
    write_pipeline(tmp_path / "control", ratio=0.0, final_ppl=59.0)
    results = results_table([(name, tmp_path / name) for name in ("greedy", "magnitude", "control")])
    points = tradeoff_points(results)
    assert (points["role"] == "unpruned").sum() == 1  # the one source model, however many pipelines start from it
    assert set(points.loc[points["role"] == "control", "run"]) == {"control"}
    assert set(points.loc[points["role"] == "pruned", "criterion"]) == {"dynamics-greedy", "magnitude"}
    assert set(points["group"]) == {"dynamics-greedy", "magnitude", "unpruned model", "control (ratio 0)"}
    assert points["parameters"].is_monotonic_increasing

    frontier = lower_envelope(points, "valid ppl")
    assert frontier["parameters"].is_monotonic_increasing and frontier["valid ppl"].is_monotonic_decreasing
    for _, point in points.iterrows():  # nothing lies below the frontier
        reachable = frontier[frontier["parameters"] <= point["parameters"]]["valid ppl"]
        assert not reachable.empty and reachable.min() <= point["valid ppl"]
    assert lower_envelope(points, "test ppl")["test ppl"].notna().all()


def test_spread_windows_cover_the_whole_stream_in_equal_stretches():
    tokens = torch.arange(1000)
    picked = spread_windows(tokens, 100, windows=10)
    assert picked.numel() == 100
    stretches = picked.view(10, 10)
    assert stretches[0, 0] == 0 and stretches[-1, -1] == 999  # from the beginning to the end
    assert all(torch.equal(row, torch.arange(row[0], row[0] + 10)) for row in stretches)  # each one contiguous
    gaps = [b - a for a, b in zip(window_starts(1000, 10, 10), window_starts(1000, 10, 10)[1:])]
    assert max(gaps) - min(gaps) <= 1
    assert torch.equal(spread_windows(tokens[:50], 100, windows=10), tokens[:50])  # short streams whole
    with pytest.raises(InvalidInputError):
        spread_windows(tokens, 100, windows=0)


def test_validation_windows_estimate_the_whole_split_with_their_own_oracle():
    corpus = load_corpus(SMALL_SYNTHETIC)
    spread = load_validation_tokens(SMALL_SYNTHETIC, corpus.vocab.to_json(), max_tokens=400, windows=10)
    assert spread.capped and spread.windows == 10 and spread.tokens.numel() == 400
    assert torch.equal(spread.tokens[-40:], corpus.valid[-40:])  # the last stretch ends where the split ends
    # the oracle of the same tokens: each given all before it in the split, a stretch's first one not scored
    log_probs = corpus.language.token_log_probs(corpus.valid.numpy())
    starts = window_starts(1500, 40, 10)
    scored = [value for start in starts for value in log_probs[start + 1:start + 40]]
    assert spread.oracle_perplexity == pytest.approx(math.exp(-sum(scored) / len(scored)))
    assert math.isfinite(spread.oracle_perplexity)
    prefix = load_validation_tokens(SMALL_SYNTHETIC, corpus.vocab.to_json(), max_tokens=400)
    assert prefix.windows == 1 and torch.equal(prefix.tokens, corpus.valid[:400])


def test_a_missing_ptb_is_told_with_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("DYNAPRUNE_PTB_DIR", raising=False)
    empty_cache = tmp_path / "cache"
    problem = corpus_problem("ptb", cache_dir=empty_cache)
    assert "dynaprune download-ptb" in problem and "DYNAPRUNE_PTB_DIR" in problem
    assert corpus_problem("ptb:/nowhere/ptb", cache_dir=empty_cache) is not None
    assert corpus_problem("synthetic:0", cache_dir=empty_cache) is None and corpus_problem(None) is None
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        (ptb / name).write_text("a b c\n")
    assert corpus_problem(f"ptb:{ptb}", cache_dir=empty_cache) is None
    monkeypatch.setenv("DYNAPRUNE_PTB_DIR", str(ptb))
    assert corpus_problem("ptb", cache_dir=empty_cache) is None
