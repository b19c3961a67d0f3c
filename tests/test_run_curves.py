"""Tests of analysis.run_curves: the curves and tables of runs on the Compare and Fine-tune pages."""

import numpy as np

from analysis.run_curves import pipeline_curve, pipeline_table, reference_lines, training_curve

PIPELINE_EVENTS = [
    {"event": "baseline", "val_ppl": 100.0, "params_recurrent": 1000, "params_total": 5000, "oracle_ppl": 50.0},
    {"event": "stage_start", "stage": 1, "ratio": 0.2, "hidden_sizes": [8, 8], "zero_shot_val_ppl": 130.0,
     "params_recurrent": 700, "params_total": 4000},
    {"event": "epoch", "stage": 1, "epoch": 1, "val_ppl": 110.0, "train_loss": 4.7, "elapsed_s": 1.0},
    {"event": "epoch", "stage": 1, "epoch": 2, "val_ppl": 104.0, "train_loss": 4.6, "elapsed_s": 2.0},
    {"event": "stage_end", "stage": 1, "best_val_ppl": 104.0, "wall_s": 2.5},
    {"event": "stage_start", "stage": 2, "ratio": 0.36, "hidden_sizes": [6, 6], "zero_shot_val_ppl": 150.0,
     "params_recurrent": 400, "params_total": 3000},
    {"event": "epoch", "stage": 2, "epoch": 1, "val_ppl": 108.0, "train_loss": 4.7, "elapsed_s": 1.0},
    {"event": "stage_end", "stage": 2, "best_val_ppl": 108.0, "wall_s": 1.5},
    {"event": "final", "val_ppl": 108.0, "test_ppl": 107.0, "params_recurrent": 400, "params_total": 3000,
     "oracle_ppl": 50.0},
]


def test_pipeline_curve_places_zero_shot_points_at_each_cut():
    curve = pipeline_curve(PIPELINE_EVENTS)
    assert curve["kind"].tolist() == ["baseline", "zero-shot", "epoch", "epoch", "zero-shot", "epoch"]
    assert curve["position"].tolist() == [0, 0, 1, 2, 2, 3]
    assert curve["val_ppl"].tolist() == [100.0, 130.0, 110.0, 104.0, 150.0, 108.0]
    assert pipeline_curve([]).empty


def test_pipeline_table_has_a_row_per_stage_and_final():
    table = pipeline_table(PIPELINE_EVENTS)
    assert table["stage"].tolist() == ["baseline", "1", "2", "final"]
    stage_two = table.iloc[2]
    assert stage_two["hidden_sizes"] == "6 x 6" and stage_two["val_ppl"] == 108.0 and stage_two["wall_s"] == 1.5
    assert stage_two["zero_shot_val_ppl"] == 150.0
    assert table.iloc[3]["test_ppl"] == 107.0
    assert table["params_total"].dtype.kind in "if" and np.isnan(table.iloc[0]["zero_shot_val_ppl"])
    assert "ratio" in table.to_csv(index=False).splitlines()[0]


def test_reference_lines_and_training_curve():
    assert reference_lines(PIPELINE_EVENTS) == {"baseline": 100.0, "oracle": 50.0}
    events = [{"event": "epoch", "epoch": 1, "val_ppl": 90.0, "oracle_ppl": 40.0}, {"event": "test", "test_ppl": 3.0},
              {"event": "epoch", "epoch": 2, "val_ppl": 80.0}]
    assert training_curve(events)["val_ppl"].tolist() == [90.0, 80.0]
    assert reference_lines(events) == {"oracle": 40.0}
