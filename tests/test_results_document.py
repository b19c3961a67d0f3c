"""benchmarks/results.py: the commands it documents reproduce the settings each run was made with."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from analysis.pruning.config import PipelineConfig
from tests.conftest import REPO_ROOT

RESULTS_SCRIPT = REPO_ROOT / "benchmarks" / "results.py"


def load_results_module():
    spec = importlib.util.spec_from_file_location("results_script", RESULTS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_each_documented_command_names_the_schedule_its_run_used(tmp_path):
    results = load_results_module()
    assert results.DEFAULT_LR_SCHEDULE == PipelineConfig().lr_schedule
    args = results.main_parser().parse_args(["--work-dir", str(tmp_path)])
    old, new = tmp_path / "old", tmp_path / "new"
    for out, config in ((old, {"epochs_per_stage": 1}), (new, {"epochs_per_stage": 2, "lr_schedule": "cosine"})):
        out.mkdir()
        (out / "pipeline.json").write_text(json.dumps({"config": config}))
    assert results.run_settings(old) == (1, "step")  # from before the schedule could be chosen
    assert results.run_settings(new) == (2, "cosine")
    assert results.run_settings(tmp_path / "missing") == (None, None)
    row = results.ROWS[0]
    documented_old = results.row_command(row, Path("src"), old, 0, args, *results.run_settings(old))
    documented_new = results.row_command(row, Path("src"), new, 0, args, *results.run_settings(new))
    assert documented_old[documented_old.index("--lr-schedule") + 1] == "step"
    assert "--lr-schedule" not in documented_new and "2" in documented_new
