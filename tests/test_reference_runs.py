"""Reference runs (analysis.reference_runs) and the results script that writes them: a finished
pruning run is exported without weights or machine paths, reads like any run, and the document is
written from the exports alone; the Compare page shows them offline."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from analysis.errors import InvalidInputError
from analysis.pruning.pipeline import PipelineConfig, run_pruning_pipeline
from analysis.reference_runs import (
    REFERENCE_FILE,
    export_reference_run,
    find_reference_runs,
    read_reference,
)
from analysis.run_curves import read_run_description
from analysis.runs import read_run_metrics, run_kind
from analysis.sweeps.runner import read_records
from tests.conftest import REPO_ROOT
from tests.test_results_document import load_results_module


@pytest.fixture(scope="module")
def finished_run(samples, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "magnitude-50_seed-0"
    run_pruning_pipeline(out, source=samples / "synthetic", progress=False, log=None,
                         config=PipelineConfig(ratio=0.5, stages=2, epochs_per_stage=1, criterion="magnitude",
                                               dry_run=True))
    return out


def test_an_exported_run_reads_like_a_run_without_weights_or_machine_paths(finished_run, tmp_path):
    dest = export_reference_run(finished_run, tmp_path / "synthetic", row="magnitude-50", seed=0,
                                command="dynaprune prune ...")
    assert sorted(p.name for p in dest.iterdir()) == ["metrics.jsonl", "pipeline.json", REFERENCE_FILE]
    assert run_kind(dest) == "pipeline"
    assert read_run_metrics(dest) == read_run_metrics(finished_run)
    assert read_run_description(dest)["settings"]["criterion"] == "magnitude"
    text = (dest / "pipeline.json").read_text()
    assert str(finished_run.parent) not in text and str(Path.home()) not in text
    assert read_reference(dest)["row"] == "magnitude-50"
    assert find_reference_runs(tmp_path) == [dest]
    # exported again: replaced whole, nothing left half-written beside it
    export_reference_run(finished_run, tmp_path / "synthetic", row="magnitude-50", seed=0, command="again")
    assert read_reference(dest)["command"] == "again"
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [dest.name]


def test_unfinished_or_foreign_folders_are_neither_exported_nor_listed(finished_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished_run, unfinished)
    lines = (unfinished / "metrics.jsonl").read_text().splitlines()
    (unfinished / "metrics.jsonl").write_text("\n".join(line for line in lines if '"final"' not in line) + "\n")
    with pytest.raises(InvalidInputError, match="not finished"):
        export_reference_run(unfinished, tmp_path / "out", row="x", seed=0, command="c")
    with pytest.raises(InvalidInputError, match="not a pruning run"):
        export_reference_run(tmp_path / "out", tmp_path / "elsewhere", row="x", seed=0, command="c")
    root = tmp_path / "root" / "synthetic"
    good = export_reference_run(finished_run, root, row="magnitude-50", seed=0, command="c")
    forged = root / "forged"
    shutil.copytree(good, forged)
    (forged / REFERENCE_FILE).write_text(json.dumps({"format": "something else", "row": "x"}))
    garbage = root / "garbage"
    shutil.copytree(good, garbage)
    (garbage / REFERENCE_FILE).write_bytes(b"\x00\xff not json")
    assert find_reference_runs(tmp_path / "root") == [good]
    assert find_reference_runs(tmp_path / "nowhere") == []


SPEC = """
[sweep]
sources = ["{source}"]
seeds = [0]

[fixed]
stages = 2
epochs_per_stage = 1

[[points]]
name = "magnitude-50"
criterion = "magnitude"
ratio = 0.5

[[points]]
name = "broken-50"
ratio = 0.5
lds_order = 0
"""


@pytest.mark.slow
def test_results_script_exports_each_row_and_writes_the_document_from_the_exports(samples, tmp_path, monkeypatch):
    results = load_results_module()
    spec = tmp_path / "results-synthetic.toml"
    spec.write_text(SPEC.format(source=samples / "synthetic"))
    monkeypatch.setitem(results.SPECS, "synthetic", spec)
    reference, work = tmp_path / "reference-runs", tmp_path / "work"
    argv = ["--quick", "--only", "synthetic", "--work-dir", str(work), "--reference-dir", str(reference),
            "--output", str(tmp_path / "results.md")]
    assert results.main(argv) == 1  # the broken row failed, reported; the other finished
    exported = find_reference_runs(reference)
    assert [p.name for p in exported] == ["magnitude-50_seed-0"]
    assert "--criterion magnitude" in read_reference(exported[0])["command"]
    assert "lds_order" in read_records(work / "quick" / "synthetic")["broken-50_seed-0"]["message"]
    document = (tmp_path / "results.md").read_text()
    assert "| magnitude-50 | magnitude | 0.5 | full method |" in document
    # the runs themselves gone (another machine): the document comes back the same from the exports
    shutil.rmtree(work)
    assert results.main([*argv, "--document-only"]) == 0
    assert (tmp_path / "results.md").read_text() == document
    # an exported row is not run again
    assert results.main(argv) == 1
    assert not (work / "quick" / "synthetic" / "trials" / "magnitude-50_seed-0").exists()


def test_the_results_specs_name_every_documented_row_once():
    results = load_results_module()
    from analysis.sweeps import load_spec

    for corpus, path in results.SPECS.items():
        rows = [results.row_of(t.name)[0] for t in load_spec(path).trials()]
        assert all(t.error is None for t in load_spec(path).trials())
        assert set(rows) <= set(results.DOCUMENT_ORDER), corpus
        assert {f"{c}-{r}" for c in results.COMPARED for r in results.RATIOS} <= set(rows)
        assert "control-0" in rows
    assert results.SPECS["ptb"].is_relative_to(REPO_ROOT)


def test_the_full_method_from_other_sources_is_exported_apart_and_reported_source_by_source(finished_run, tmp_path):
    from analysis.reference_runs import SOURCE_REPEATS
    from analysis.utils.fileio import atomic_write_text

    reference = tmp_path / "reference-runs"
    tests = {("src-a", "magnitude"): 100.0, ("src-a", "taylor-iterative"): 98.0,
             ("src-b", "magnitude"): 120.0, ("src-b", "taylor-iterative"): 117.0,
             ("src-a", "dynamics-greedy"): 100.5, ("src-b", "dynamics-greedy"): 119.0}
    for (source, criterion), test_ppl in tests.items():
        dest = export_reference_run(finished_run, reference / SOURCE_REPEATS, row=f"{criterion}-50 from {source}",
                                    seed=0, command=f"dynaprune prune --from {source} --criterion {criterion}",
                                    name=f"{source}_{criterion}-50_seed-0")
        events = [{**e, "test_ppl": test_ppl} if e.get("event") == "final" else e for e in read_run_metrics(dest)]
        atomic_write_text(dest / "metrics.jsonl", "".join(json.dumps(e) + "\n" for e in events))
    assert len(find_reference_runs(reference, SOURCE_REPEATS)) == 6  # one folder per source and criterion
    with pytest.raises(InvalidInputError, match="plain name"):
        export_reference_run(finished_run, reference / SOURCE_REPEATS, row="r", seed=0, command="c", name="../x")

    results = load_results_module()
    output = tmp_path / "results.md"
    assert results.main(["--document-only", "--reference-dir", str(reference), "--output", str(output)]) == 0
    document = output.read_text()
    section = document[document.index("## Penn Treebank, seed repeats"):document.index("## Synthetic")]
    assert "| source | unpruned | magnitude | dynamics-greedy | taylor-iterative |" in section
    assert "| ptb-small" not in section  # no PTB table here to compare with
    assert "| src-a |" in section and "98.00 (-2.00%)" in section and "117.00 (-2.50%)" in section
    assert "- taylor-iterative: 2 source(s), mean -2.25%, from -2.50% to -2.00%: better on every source" in section
    assert "- dynamics-greedy: 2 source(s), mean -0.17%, from -0.83% to +0.50%: no consistent difference" in section
    assert "dynaprune prune --from src-b --criterion taylor-iterative" in section
    assert "PTB seed repeats at 50%, taylor-iterative: 2 source(s)" in document  # in the summary too
