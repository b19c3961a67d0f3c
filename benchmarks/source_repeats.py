"""The seed repeats of docs/results.md's PTB rows at 50%: the full method from other source models.

benchmarks/criteria_study.py --full-method prunes each held-out source model of docs/criteria.md
(ptb-small's preset trained from other seeds, and a GRU) to 50% with `dynaprune prune`'s defaults and
exports each finished run to docs/reference-runs/ptb-sources/ (analysis.reference_runs.SOURCE_REPEATS),
its row named "<criterion>-50 from <source>". benchmarks/results.py writes this section from them:
each source's test perplexities by criterion, each criterion's change against magnitude on the same
source (a paired comparison: the sources differ more from each other than the criteria do), and
whether that change has one sign on every source.
"""
from __future__ import annotations

from pathlib import Path
from statistics import mean

from analysis.reference_runs import SOURCE_REPEAT_JOIN, SOURCE_REPEATS, find_reference_runs, read_reference
from analysis.runs import read_run_metrics

BASELINE_CRITERION = "magnitude"
RATIO = 50


def collect_source_repeats(reference_dir: Path) -> dict:
    """{source: {"unpruned": test ppl of the source, "tests": {criterion: test ppl}, "commands": [...]}}"""
    repeats: dict = {}
    for run in find_reference_runs(reference_dir, SOURCE_REPEATS):
        record = read_reference(run)
        row, _, source = record["row"].partition(SOURCE_REPEAT_JOIN)
        criterion, _, ratio = row.rpartition("-")
        if not source or ratio != str(RATIO):
            continue
        events = read_run_metrics(run)
        final = next(e for e in events if e.get("event") == "final")
        baseline = next((e for e in events if e.get("event") == "baseline"), {})
        entry = repeats.setdefault(source, {"unpruned": baseline.get("test_ppl"), "tests": {}, "commands": []})
        entry["tests"][criterion] = final["test_ppl"]
        entry["commands"].append(record["command"])
    return repeats


def _change(value: float, reference: float) -> float:
    return (value / reference - 1) * 100


def source_repeats_section(repeats: dict, tuning_tests: dict[str, float], tuning_unpruned: float | None,
                           tie: float) -> list[str]:
    """The section's lines. `tuning_tests` are the PTB table's 50% rows from the sample ({criterion: test
    ppl}), shown first for comparison; `tie` is the fraction below which two perplexities tie."""
    lines = [f"## Penn Treebank, seed repeats: the full method at {RATIO}% from other source models", ""]
    if not repeats:
        return lines + ["No exported runs yet: `python benchmarks/criteria_study.py --full-method --sources "
                        "lstm-seed2 gru-seed2 lstm-seed4` runs them (with --train it trains the sources first).", ""]
    criteria = list(dict.fromkeys(c for entry in repeats.values() for c in entry["tests"]))
    criteria.sort(key=lambda c: (c != BASELINE_CRITERION, c))
    shown_tuning = any(c in tuning_tests for c in criteria)
    lines += ["Source models of docs/criteria.md, trained with ptb-small's settings from other seeds (lstm-seed2, "
              "lstm-seed4) or as a GRU (gru-seed2), each pruned to 50% with `dynaprune prune`'s defaults (3 stages "
              "of 1 epoch, distillation, DA-L2, seed 0) by `python benchmarks/criteria_study.py --full-method`. "
              f"Test perplexity, with the change against {BASELINE_CRITERION} from the same source in brackets "
              "(negative is better)" + ("; the first row is the table above." if shown_tuning else "."), "",
              "| source | unpruned | " + " | ".join(criteria) + " |", "|---|---|" + "---|" * len(criteria)]
    sources = ([("ptb-small (above)", {"unpruned": tuning_unpruned, "tests": tuning_tests})] if shown_tuning else [])
    sources += sorted(repeats.items())
    changes: dict[str, list[float]] = {c: [] for c in criteria}
    for name, entry in sources:
        tests, base = entry["tests"], entry["tests"].get(BASELINE_CRITERION)
        cells = []
        for criterion in criteria:
            value = tests.get(criterion)
            if value is None:
                cells.append("—")
            elif criterion == BASELINE_CRITERION or base is None:
                cells.append(f"{value:.2f}")
            else:
                changes[criterion].append(_change(value, base))
                cells.append(f"{value:.2f} ({changes[criterion][-1]:+.2f}%)")
        unpruned = "—" if entry["unpruned"] is None else f"{entry['unpruned']:.2f}"
        lines.append(f"| {name} | {unpruned} | " + " | ".join(cells) + " |")
    lines += ["", f"Against {BASELINE_CRITERION}, source by source:", ""]
    for criterion in criteria[1:]:
        found = changes[criterion]
        if not found:
            continue
        low, high = min(found), max(found)
        if high < -tie * 100:
            verdict = "better on every source"
        elif low > tie * 100:
            verdict = "worse on every source"
        else:
            verdict = "no consistent difference: the changes straddle or sit within the tie"
        lines.append(f"- {criterion}: {len(found)} source(s), mean {mean(found):+.2f}%, from {low:+.2f}% to "
                     f"{high:+.2f}%: {verdict} (a tie is within {tie:.1%}).")
    lines += ["", "Commands (the source paths are those `benchmarks/criteria_study.py --train` writes):", "", "```"]
    lines += [command for _, entry in sorted(repeats.items()) for command in entry["commands"]] + ["```", ""]
    return lines
