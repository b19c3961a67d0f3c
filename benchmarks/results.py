"""Regenerate docs/results.md: pruning results on Penn Treebank and on the synthetic language.

    python benchmarks/results.py                      # both corpora (PTB needs DYNAPRUNE_PTB_DIR)
    python benchmarks/results.py --only synthetic     # the synthetic table (about an hour on one core)
    python benchmarks/results.py --only ptb --workers 2
    python benchmarks/results.py --quick              # every row as a dry run, into <work-dir>/quick/
    python benchmarks/results.py --document-only      # rewrite docs/results.md from docs/reference-runs/

The rows are sweep specs: benchmarks/sweeps/results-ptb.toml and results-synthetic.toml, each row a
named point (`dynaprune sweep` reads the same files). This script runs a corpus's spec with the
sweep runner (analysis.sweeps) into <work-dir>/<corpus>/ (trials/, records/, logs/, results.csv),
--workers rows at a time on this machine or, with --address HOST:PORT, on a Ray cluster
(docs/scaling.md). As each row finishes, its description and metrics, without weights, are
exported to docs/reference-runs/<corpus>/<row>_seed-<k>/ (analysis.reference_runs): the dashboard's
Compare page shows them offline, and the document is written from them alone. A row already
exported is not run again (--rerun runs it again); an interrupted one continues from its
checkpoint, so the same command resumes the whole table, also on another machine that has only the
exported rows. SIGTERM or Ctrl-C stops it (exit status 143) after saving.

Cost on one thread: a synthetic row takes about a minute; a PTB row (3 stages of 1 epoch of the
ptb-small student with its teacher) about 15 minutes.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from source_repeats import collect_source_repeats, source_repeats_section  # noqa: E402

from analysis.dynamics.criteria import DEFAULT_CRITERION  # noqa: E402
from analysis.reference_runs import (  # noqa: E402
    DEFAULT_REFERENCE_ROOT,
    export_reference_run,
    find_reference_runs,
    read_reference,
)
from analysis.runs import PIPELINE_FILE, read_run_metrics  # noqa: E402
from analysis.sweeps import load_spec, run_sweep  # noqa: E402
from analysis.sweeps.runner import TRIALS_DIR  # noqa: E402
from analysis.sweeps.trial import SUCCEEDED  # noqa: E402
from analysis.utils.fileio import atomic_write_text, read_json_object  # noqa: E402

CORPORA = ("ptb", "synthetic")
SPECS = {corpus: REPO / "benchmarks" / "sweeps" / f"results-{corpus}.toml" for corpus in CORPORA}
CORPUS_TITLES = {"ptb": "Penn Treebank (ptb-small: 2 x 200 LSTM)",
                 "synthetic": "Synthetic language (synthetic-tiny: 2 x 64 LSTM)"}
SCHEDULE_WORDS = {"cosine": "the rate annealed from half the source run's initial rate to 0 over each stage "
                            "(`--lr-schedule cosine`)",
                  "step": "the rate held at half the source run's initial rate, decayed after each epoch "
                          "(`--lr-schedule step`)"}
GOAL_IMPROVEMENT = 0.0062  # the claim: perplexity at least 0.62% better than the unpruned model
TIE = 0.001  # two criteria whose mean test perplexities differ by less than this fraction tie
MAIN = DEFAULT_CRITERION  # the criterion the goal is about: dynaprune prune's default
COMPARED = (MAIN, "magnitude", "random")
PREVIOUS = "dynamics-greedy"  # the default before the criterion study's second round
ABLATION_BASE = f"{PREVIOUS}-50"  # the ablations (and the control) ran with the previous default
RATIOS = (30, 50, 70)
# what a row that is not "criterion-ratio" with the full method changes
VARIANTS = {"control-0": "no pruning, the same fine-tuning (control)",
            "dynamics-50": "the clustering rule of METHOD section 5 (`--criterion dynamics`, LDS order 4)",
            "one-shot-50": "one-shot (1 stage)", "no-distillation-50": "no distillation", "plain-l2-50": "plain L2",
            "no-regularization-50": "no regularisation", "da-l2-1e-4-50": "DA-L2 lambda 1e-4",
            "da-l2-1e-3-50": "DA-L2 lambda 1e-3"}
ABLATIONS = ("dynamics-50", "one-shot-50", "no-distillation-50", "plain-l2-50", "no-regularization-50",
             "da-l2-1e-4-50", "da-l2-1e-3-50")
# other criteria, full method at 50%
OTHER_CRITERIA = ("dynamics-taylor-iterative-50", "dynamics-taylor-50", "taylor-50")
DOCUMENT_ORDER = ([f"{c}-{r}" for r in RATIOS for c in (*COMPARED, PREVIOUS)] + ["control-0"] + list(OTHER_CRITERIA)
                  + list(ABLATIONS))


def row_of(trial_name: str) -> tuple[str, int]:
    """("magnitude-50", 0) from the trial name "magnitude-50_seed-0"."""
    row, _, seed = trial_name.rpartition("_seed-")
    return row, int(seed)


# ----------------------------------------------------------------------------- running


def corpus_spec(corpus: str, args):
    spec = load_spec(SPECS[corpus])
    spec.sources = [args.sources[corpus]]
    spec.resources = dataclasses.replace(spec.resources, threads=args.threads)
    if args.seeds:
        spec.seeds = list(args.seeds)
    if args.quick:
        spec.fixed = {**spec.fixed, "dry_run": True}
    return spec


def export(record: dict, corpus: str, args) -> None:
    """Keep a finished row: its description and metrics into the reference runs."""
    if record.get("status") != SUCCEEDED:
        return
    row, seed = row_of(record["name"])
    dest = export_reference_run(args.work_dir / corpus / TRIALS_DIR / record["name"], args.reference_dir / corpus,
                                row=row, seed=seed, command=record["command"])
    print(f"[{corpus}] {record['name']}: exported to {shown_path(dest)}", flush=True)


def run_corpus(corpus: str, args) -> int:
    """Run every row of one corpus not yet exported; 143 if stopped by SIGTERM or Ctrl-C, 1 if a row failed."""
    spec = corpus_spec(corpus, args)
    done = set() if args.rerun else {path.name for path in find_reference_runs(args.reference_dir, corpus)}
    if args.rows:
        unknown = sorted(set(args.rows) - set(spec.named_points))
        if unknown:
            raise SystemExit(f"--rows: {corpus} has no row(s) {unknown}; its rows are {list(spec.named_points)}")
        done |= {f"{name}_seed-{seed}" for name in spec.named_points if name not in args.rows for seed in spec.seeds}
    result = run_sweep(spec, args.work_dir / corpus, backend="ray" if args.address else "local",
                       address=args.address, max_parallel=args.workers, skip=done,
                       log=lambda line: print(f"[{corpus}] {line}", flush=True),
                       on_trial_end=lambda record: export(record, corpus, args))
    for record in result.records:  # rows that ended in an earlier call of this script, before any export
        if record["name"] not in done and not (args.reference_dir / corpus / record["name"]).is_dir():
            export(record, corpus, args)
    return result.exit_code


# ----------------------------------------------------------------------------- the document


def collect(corpus: str, args) -> dict:
    """The exported results of one corpus: the baseline and, per row, each seed's final event with its
    zero-shot perplexities, wall time and command; and the fine-tuning budgets seen."""
    baseline, rows, epochs_seen, schedules_seen = None, {}, set(), set()
    for run in find_reference_runs(args.reference_dir, corpus):
        record, events = read_reference(run), read_run_metrics(run)
        final = next(e for e in events if e.get("event") == "final")
        config = read_json_object(run / PIPELINE_FILE, "a reference run's description", "").get("config", {})
        epochs_seen.add(config.get("epochs_per_stage"))
        schedules_seen.add(config.get("lr_schedule", "step"))
        baseline = baseline or next((e for e in events if e.get("event") == "baseline"), None)
        rows.setdefault(record["row"], []).append({
            **final, "seed": record["seed"], "command": record["command"],
            "criterion": "none" if config.get("ratio") == 0 else config.get("criterion"), "ratio": config.get("ratio"),
            "wall_s": sum(e.get("wall_s", 0.0) for e in events if e.get("event") == "stage_end"),
            "zero_shot": [e["zero_shot_val_ppl"] for e in events if e.get("event") == "stage_start"]})
    planned = [row_of(t.name)[0] for t in load_spec(SPECS[corpus]).trials()]
    order = [r for r in DOCUMENT_ORDER if r in planned or r in rows] + sorted(set(rows) - set(DOCUMENT_ORDER))
    return {"baseline": baseline, "rows": {name: sorted(rows.get(name, []), key=lambda f: f["seed"])
                                           for name in order},
            "epochs": sorted(e for e in epochs_seen if e is not None), "schedules": sorted(schedules_seen)}


def summarise(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{mean(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def change(value: float | None, reference: float | None) -> str:
    if value is None or reference is None:
        return "—"
    return f"{(value / reference - 1) * 100:+.2f}%"


def corpus_section(corpus: str, results: dict) -> list[str]:
    lines = [f"## {CORPUS_TITLES[corpus]}", ""]
    if results["epochs"]:
        schedules = " or ".join(SCHEDULE_WORDS.get(name, name) for name in results["schedules"])
        lines += [f"Fine-tuning: {' or '.join(map(str, results['epochs']))} epoch(s) per stage, {schedules}. "
                  f"Spec: `benchmarks/sweeps/{SPECS[corpus].name}`.", ""]
    baseline = results["baseline"]
    if baseline is None:
        lines += ["No finished runs yet. Run `python benchmarks/results.py --only " + corpus + "`"
                  + (" (needs DYNAPRUNE_PTB_DIR)" if corpus == "ptb" else "") + ".", ""]
    oracle = baseline is not None and baseline.get("oracle_ppl") is not None
    header = ("| row | criterion | ratio | variant | zero-shot valid ppl per cut | valid ppl | test ppl "
              "| test vs baseline | recurrent params | total params |")
    rule = "|---|---|---|---|---|---|---|---|---|---|"
    if oracle:
        header, rule = header + " oracle test ppl |", rule + "---|"
    lines += [header, rule]
    if baseline is not None:
        cells = ["baseline (unpruned)", "—", "0", "—", "—", f"{baseline['val_ppl']:.2f}", f"{baseline['test_ppl']:.2f}",
                 "—", str(baseline["params_recurrent"]), str(baseline["params_total"])]
        if oracle:
            cells.append(f"{baseline['test_oracle_ppl']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    base_test = None if baseline is None else baseline["test_ppl"]
    for name, finals in results["rows"].items():
        tests = [f["test_ppl"] for f in finals]
        cuts = zip(*[f["zero_shot"] for f in finals]) if finals else []
        zero_shot = " / ".join(f"{mean(values):.1f}" for values in cuts) or "—"
        criterion = finals[0]["criterion"] if finals else name.rsplit("-", 1)[0] if name not in VARIANTS else "—"
        ratio = f"{finals[0]['ratio']:g}" if finals else f"{int(name.rsplit('-', 1)[1]) / 100:g}"
        cells = [name, criterion, ratio, VARIANTS.get(name, "full method"), zero_shot,
                 summarise([f["val_ppl"] for f in finals]), summarise(tests),
                 change(mean(tests) if tests else None, base_test),
                 str(finals[0]["params_recurrent"]) if finals else "—",
                 str(finals[0]["params_total"]) if finals else "—"]
        if oracle:
            cells.append(f"{finals[0]['test_oracle_ppl']:.2f}" if finals else "—")
        lines.append("| " + " | ".join(cells) + " |")
    done = sum(1 for finals in results["rows"].values() if finals)
    runs = sorted({len(finals) for finals in results["rows"].values() if finals})
    walls = [f["wall_s"] for finals in results["rows"].values() for f in finals]
    seeds = (f" ({'/'.join(map(str, runs))} seeds each: mean, and the range in brackets)" if runs and runs[-1] > 1
             else "")
    lines += ["", f"{done} of {len(results['rows'])} rows finished{seeds}"
              + (f"; pruning and fine-tuning took {sum(walls) / 60:.1f} minutes in all." if walls else ".")
              + ("" if done == len(results["rows"]) else
                 f" The rest: `python benchmarks/results.py --only {corpus}` runs them."), ""]
    lines += goal_lines(results, base_test) + [""]
    lines += ["Commands (one per row and seed, as the sweep ran them; `--threads N --device cpu` were added):", "",
              "```"]
    lines += [f["command"] for finals in results["rows"].values() for f in finals] + ["```", ""]
    return lines


def goal_lines(results: dict, base_test: float | None) -> list[str]:
    finished = {name: finals for name, finals in results["rows"].items() if finals}
    spread = {name: (min(f["test_ppl"] for f in finals), max(f["test_ppl"] for f in finals))
              for name, finals in finished.items()}
    tests = {name: mean([f["test_ppl"] for f in finals]) for name, finals in finished.items()}
    lines = ["Against the goal:", ""]
    full = tests.get(f"{MAIN}-50")
    if full is None or base_test is None:
        return lines + ["- the full method at 50% has not finished yet."]
    gain = 1 - full / base_test
    verdict = "met" if gain >= GOAL_IMPROVEMENT else "not met"
    direction = "better" if gain >= 0 else "worse"
    lines.append(f"- full method, {MAIN} criterion, 50%: test perplexity {full:.2f} against {base_test:.2f} "
                 f"unpruned, {abs(gain) * 100:.2f}% {direction} (goal: at least 0.62% better): **{verdict}**.")
    control = tests.get("control-0")
    if control is not None:
        lines.append(f"- control, the unpruned model fine-tuned the same way: test perplexity {control:.2f} "
                     f"({change(control, base_test)} against the unpruned model); the full method at 50% is "
                     f"{change(full, control)} against it.")
    for ratio in RATIOS:
        ours = tests.get(f"{MAIN}-{ratio}")
        others = {c: tests.get(f"{c}-{ratio}") for c in COMPARED[1:]}
        if ours is None or any(v is None for v in others.values()):
            lines.append(f"- {ratio}%: not all three criteria have finished.")
            continue
        tied = [c for c, v in others.items() if abs(ours / v - 1) < TIE]
        beaten = [c for c, v in others.items() if ours < v and c not in tied]
        words = ("beats both" if len(beaten) == 2 else f"beats only {beaten[0]}" if beaten else "beats neither")
        if tied:
            words += f" (within {TIE:.1%} of {' and '.join(tied)}: a tie)"
        clear = [c for c in others if spread[f"{MAIN}-{ratio}"][1] < spread[f"{c}-{ratio}"][0]]
        if spread[f"{MAIN}-{ratio}"][0] != spread[f"{MAIN}-{ratio}"][1]:
            words += (f"; over the seeds its worst run is better than every run of {' and '.join(clear)}" if clear
                      else "; the seed ranges overlap, so the order is not established")
        lines.append(f"- {ratio}%: {MAIN} {ours:.2f}, magnitude {others['magnitude']:.2f}, random "
                     f"{others['random']:.2f} test perplexity: {MAIN} {words}.")
    previous = [f"{ratio}%: {tests[f'{PREVIOUS}-{ratio}']:.2f} ({change(tests[f'{PREVIOUS}-{ratio}'], tests[key])} "
                f"against {MAIN})" for ratio in RATIOS
                if f"{PREVIOUS}-{ratio}" in tests and (key := f"{MAIN}-{ratio}") in tests]
    if previous:
        lines.append(f"- {PREVIOUS}, the default before {MAIN}: " + "; ".join(previous) + ".")
    others = [f"{name.rsplit('-', 1)[0]} {tests[name]:.2f}" for name in OTHER_CRITERIA if name in tests]
    if others and "magnitude-50" in tests:
        lines.append(f"- other criteria at 50%: {', '.join(others)} test perplexity, against {MAIN} {full:.2f} and "
                     f"magnitude {tests['magnitude-50']:.2f}.")
    base = tests.get(ABLATION_BASE)
    for name in ABLATIONS:
        if name in tests and base is not None:
            verdict = "better" if tests[name] < base else "worse" if tests[name] > base else "the same"
            lines.append(f"- {VARIANTS[name]} at 50%: test perplexity {tests[name]:.2f}, {change(tests[name], base)} "
                         f"against {ABLATION_BASE}, the full method it changes ({verdict}).")
    return lines


def write_document(path: Path, sections: list[list[str]], summary: list[str], args) -> None:
    lines = [f"# {args.title}", "",
             "Regenerated by `python benchmarks/results.py` (see its docstring for the options) from the sweep specs "
             "`benchmarks/sweeps/results-ptb.toml` and `results-synthetic.toml`, and from the criterion study's "
             "full-method runs (`benchmarks/criteria_study.py`). Every number below comes from the "
             f"runs exported to `{shown_path(args.reference_dir)}/` (each run's description and metrics, without "
             "weights); the dashboard's Compare page shows the same runs, offline.", "",
             "Setting: each row starts from the sample model of that corpus (`sample_checkpoints/`), removes the given "
             "fraction of every layer's hidden units and fine-tunes. *Full method*: 3 stages (ratios "
             "1 - (1 - r)^(s/3)), each fine-tuned (for the epochs given under each corpus) "
             "with cross-entropy, distillation from the previous stage (alpha 0.5, "
             f"tau 2) and discrimination-aware L2, units chosen by the criterion in the row's "
             f"criterion column (`{MAIN}` is dynaprune prune's default, chosen in docs/criteria.md). Perplexities "
             "are word-level over the whole split (batch 10, bptt 35); the test perplexity is that of the model with "
             "the best validation perplexity of the last stage. \"test vs baseline\" is the relative change of test "
             "perplexity: negative is better. \"zero-shot valid ppl per cut\" is the validation perplexity right "
             "after each cut, before fine-tuning: it shows how well the criterion chose, before fine-tuning evens "
             "things out.", "",
             "Goal (the published claim, METHOD.md): at 50% the full method's test perplexity is at least 0.62% better "
             "than the unpruned model's, and the dynamics criterion beats magnitude and random at the same ratio and "
             f"fine-tuning budget. The summary holds dynaprune prune's default criterion (`{MAIN}`) to it, and shows "
             f"`{PREVIOUS}` (the dynamics criterion that was the default before) beside it.", "",
             "## Summary", ""] + summary + [""]
    for section in sections:
        lines += section
    lines += NOTES
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")


NOTES = [
    "## Notes", "",
    "- The synthetic sample is a small model trained for 8 epochs, still above its oracle perplexity: pruning it "
    "removes capacity it needs, and fine-tuning also continues its unfinished training. Its numbers say little about "
    "PTB, where the sample is trained with the whole reference schedule (13 epochs).",
    "- Fine-tuning rate: each stage starts at half the source run's initial rate (10 for ptb-small, whose own "
    "training ended at 0.04) and anneals it to 0 along a cosine over the stage (`--lr-schedule cosine`, the "
    "default). Before, the rate was held for a one-epoch stage (`--lr-schedule step`): on PTB even the control then "
    "lost 6.85% test perplexity (120.25) and the full method at 50% ended 6.15% worse than the unpruned model "
    "(119.46). That table, with both corpora, is [results-step-schedule.md](results-step-schedule.md).",
    "- The control row separates pruning from fine-tuning. On ptb-small (2 x 200, no dropout) the fine-tuning "
    "itself, with its annealed rate and distillation from the previous stage, improves the unpruned model; a pruned "
    "row that beats the unpruned model but not the control owes its gain to the extra training, not to the pruning.",
    "- The default strength of the discrimination-aware L2 penalty, lambda = 1e-5, was chosen on the synthetic "
    "language against 1e-4 and 1e-3 (the da-l2 rows compare them with the full method). "
    "With plain SGD over one PTB epoch (2,323 steps) at the cosine schedule's mean rate for ptb-small (5), lambda = "
    "1e-4 would shrink the weights of a unit of importance 0 by a factor of about e^-2.3, 1e-5 by about e^-0.23.",
    "- Each row is one run per seed; where several seeds were run the table shows their mean and range. Differences "
    "smaller than that range are not evidence either way. On ptb-small the seed changes only the random criterion's "
    "choice: the model has no dropout, batches come in order and the importances' calibration batches are fixed, "
    "so a dynamics or magnitude row comes out the same for every seed. How much a small perturbation moves a row "
    "(measured with the clustering rule, then the default): its 50% row run with the teacher's output layer in "
    "bfloat16 (`--teacher-precision bfloat16`) chose partly other units in stages 2 and 3 and ended at test "
    "perplexity 110.80 instead of 109.83 (+0.9%). Differences between criteria of that size are within what such "
    "perturbations do; docs/criteria.md compares the criteria over source models trained from other seeds.",
    "- Wall times are those of rows run one or two at a time on a two-core machine that was also running other "
    "work; they are not speed measurements (docs/benchmarks.md has those).",
]


def shown_path(path: Path) -> str:
    path = Path(path).absolute()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=CORPORA, help="run one corpus (the document shows both)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to run each row with (default: the spec's)")
    parser.add_argument("--quick", action="store_true", help="dry-run rows, to check the whole table in minutes "
                                                             "(into <work-dir>/quick/, document results-quick.md)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "results", help="where the runs live")
    parser.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE_ROOT,
                        help="where finished rows are exported (default docs/reference-runs)")
    parser.add_argument("--ptb-source", type=Path, help="the PTB model to prune (default: the spec's)")
    parser.add_argument("--synthetic-source", type=Path, help="the synthetic model to prune (default: the spec's)")
    parser.add_argument("--output", type=Path, help="document to write (default docs/results.md)")
    parser.add_argument("--title", default="Results: pruning by weight dynamics", help="the document's title")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--document-only", action="store_true",
                        help="rewrite the document from the exported rows without running anything")
    parser.add_argument("--rerun", action="store_true", help="run rows again even when they were exported")
    parser.add_argument("--rows", nargs="+", metavar="ROW", help="run only these rows (names of the specs' points)")
    parser.add_argument("--workers", type=int, default=1,
                        help="rows run at the same time (default 1; on two cores, 2 with --threads 1)")
    parser.add_argument("--address", help="run the rows on this Ray cluster (docs/scaling.md; the work directory "
                                          "must be on a filesystem every node sees)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = main_parser().parse_args(argv)
    given = {"ptb": args.ptb_source, "synthetic": args.synthetic_source}
    args.work_dir = args.work_dir.absolute()
    if args.quick:
        args.work_dir = args.work_dir / "quick"
        if args.reference_dir == DEFAULT_REFERENCE_ROOT:
            args.reference_dir = args.work_dir / "reference-runs"
    args.reference_dir = args.reference_dir.absolute()
    output = (args.output or (args.work_dir / "results-quick.md" if args.quick else REPO / "docs" / "results.md"))
    output = output.absolute()
    # the specs name their sources relative to the project; a source given here is made absolute first
    args.sources = {corpus: str(given[corpus].absolute()) if given[corpus] else load_spec(SPECS[corpus]).sources[0]
                    for corpus in CORPORA}
    os.chdir(REPO)

    status = 0
    for corpus in CORPORA:
        if args.only not in (None, corpus) or args.document_only:
            continue
        if corpus == "ptb" and not os.environ.get("DYNAPRUNE_PTB_DIR"):
            print("skipping Penn Treebank: set DYNAPRUNE_PTB_DIR to the directory holding ptb.train.txt", flush=True)
            continue
        if not Path(args.sources[corpus]).exists():
            print(f"skipping {corpus}: {args.sources[corpus]} does not exist (see sample_checkpoints/README.md)",
                  flush=True)
            continue
        status = run_corpus(corpus, args)
        if status == 143:
            break
    sections, summary = [], []
    for corpus in CORPORA:
        results = collect(corpus, args)
        sections.append(corpus_section(corpus, results))
        base_test = None if results["baseline"] is None else results["baseline"]["test_ppl"]
        findings = [line for line in goal_lines(results, base_test)
                    if line.startswith(("- full", "- control", "- 30%", "- 50%", "- 70%"))]
        summary.append(f"- {CORPUS_TITLES[corpus]}: " + ("no finished runs yet." if results["baseline"] is None else
                                                          " ".join(line[2:] for line in findings)))
        if corpus == "ptb":
            at_half = {name.rsplit("-", 1)[0]: mean(f["test_ppl"] for f in finals)
                       for name, finals in results["rows"].items()
                       if finals and name.endswith("-50") and name not in VARIANTS}
            repeats = source_repeats_section(collect_source_repeats(args.reference_dir), at_half, base_test, TIE)
            sections.append(repeats)
            summary += [line.replace("- ", "- PTB seed repeats at 50%, ", 1) for line in repeats
                        if line.startswith("- ")]
    write_document(output, sections, summary, args)
    print(f"wrote {shown_path(output)}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
