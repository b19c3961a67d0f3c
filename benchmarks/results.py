"""Regenerate docs/results.md: pruning results on Penn Treebank and on the synthetic language.

    python benchmarks/results.py                      # both corpora (PTB needs DYNAPRUNE_PTB_DIR)
    python benchmarks/results.py --only synthetic     # minutes on two cores
    python benchmarks/results.py --only ptb --ptb-source runs/ptb-small
    python benchmarks/results.py --quick              # every row as a dry run, written to <work-dir>/results-quick.md
    python benchmarks/results.py --document-only      # rewrite docs/results.md from the finished runs

Each row of the tables is one `dynaprune prune` run in <work-dir>/<corpus>/<row>-seed<k>: the
dynamics, magnitude and random criteria at 30/50/70% with the full method (3 stages, distillation,
discrimination-aware L2), at 50% the ablations one-shot, no distillation, plain L2 and no
regularisation, and a control: nothing pruned, the same fine-tuning (does fine-tuning alone help?).
A finished run is skipped and an interrupted one continues, so running the same command again
resumes the whole table; SIGTERM stops it (exit status 143) after saving. --workers N runs N
rows at a time (each with --threads torch threads) through the sweep runner of `dynaprune sweep`
(analysis.sweeps; each row's output goes to <work-dir>/logs/), and --address HOST:PORT runs them on a
Ray cluster instead (docs/scaling.md). The
document is rewritten from every finished run in the work directory, whichever part was run.

Cost on one thread: a synthetic row takes about a minute; a PTB fine-tuning epoch of the ptb-small
student with its teacher about 5 minutes, so the 14 PTB rows take about 14 x 3 x E x 5 minutes
(E = --epochs-per-stage: about 3.5 hours for E = 1, 7 hours for E = 2), half that with --workers 2
on two cores if the runs do not slow each other down.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.runs import PIPELINE_FILE, read_run_metrics  # noqa: E402
from analysis.utils.fileio import atomic_write_text  # noqa: E402

DEFAULT_SOURCES = {"synthetic": REPO / "sample_checkpoints" / "synthetic",
                   "ptb": REPO / "sample_checkpoints" / "ptb-small"}
CORPUS_TITLES = {"ptb": "Penn Treebank (ptb-small: 2 x 200 LSTM)",
                 "synthetic": "Synthetic language (synthetic-tiny: 2 x 64 LSTM)"}
# Defaults of both tables; the strength of DA-L2 follows PipelineConfig's default unless --da-l2 is given.
DEFAULT_EPOCHS_PER_STAGE = 2
DEFAULT_LR_SCHEDULE = "cosine"  # dynaprune prune's default (PipelineConfig.lr_schedule)
SCHEDULE_WORDS = {"cosine": "the rate annealed from half the source run's initial rate to 0 over each stage "
                            "(`--lr-schedule cosine`)",
                  "step": "the rate held at half the source run's initial rate, decayed after each epoch "
                          "(`--lr-schedule step`)"}
GOAL_IMPROVEMENT = 0.0062  # the claim: perplexity at least 0.62% better than the unpruned model


@dataclass(frozen=True)
class Row:
    name: str
    criterion: str
    ratio: float
    variant: str = "full method"
    flags: tuple[str, ...] = ()
    corpora: tuple[str, ...] = ("ptb", "synthetic")


ROWS = [Row(f"{criterion}-{int(ratio * 100)}", criterion, ratio)
        for ratio in (0.3, 0.5, 0.7) for criterion in ("dynamics", "magnitude", "random")] + [
    Row("control-0", "none", 0.0, "no pruning, the same fine-tuning (control)"),
    Row("one-shot-50", "dynamics", 0.5, "one-shot (1 stage)", ("--one-shot",)),
    Row("no-distillation-50", "dynamics", 0.5, "no distillation", ("--no-distillation",)),
    Row("plain-l2-50", "dynamics", 0.5, "plain L2", ("--plain-l2",)),
    Row("no-regularization-50", "dynamics", 0.5, "no regularisation", ("--no-regularization",)),
    # how the default DA-L2 strength was chosen (cheap on the synthetic language only)
    Row("da-l2-1e-4-50", "dynamics", 0.5, "DA-L2 lambda 1e-4", ("--da-l2", "1e-4"), ("synthetic",)),
    Row("da-l2-1e-3-50", "dynamics", 0.5, "DA-L2 lambda 1e-3", ("--da-l2", "1e-3"), ("synthetic",)),
]
# Rows run in this order (a row already started comes first): the comparison at 50%, its control
# and the ablations at 50% (the goal is stated at 50%) before the other ratios.
RUN_ORDER = ("dynamics-50", "magnitude-50", "random-50", "control-0", "no-regularization-50", "plain-l2-50",
             "no-distillation-50", "one-shot-50", "dynamics-30", "magnitude-30", "random-30",
             "dynamics-70", "magnitude-70", "random-70")
ABLATIONS = ("one-shot-50", "no-distillation-50", "plain-l2-50", "no-regularization-50", "da-l2-1e-4-50",
             "da-l2-1e-3-50")


def rows_of(corpus: str) -> list[Row]:
    return [row for row in ROWS if corpus in row.corpora]


def row_dir(args, corpus: str, row: Row, seed: int) -> Path:
    return args.work_dir / corpus / f"{row.name}-seed{seed}"


def row_command(row: Row, source: Path, out: Path, seed: int, args, epochs: int | None = None,
                lr_schedule: str | None = None) -> list[str]:
    """The `dynaprune prune` arguments of one row (epochs per stage and rate schedule: those given, else
    --epochs-per-stage and --lr-schedule)."""
    criterion = "dynamics" if row.criterion == "none" else row.criterion  # nothing to choose at ratio 0
    command = ["prune", "--from", str(source), "--out", str(out), "--ratio", f"{row.ratio:g}", "--criterion",
               criterion, "--epochs-per-stage", str(epochs or args.epochs_per_stage), "--seed", str(seed)]
    if criterion == "dynamics":  # the clustering rule's rows were run with LDS order 4, its best (docs/criteria.md)
        command[command.index(criterion) + 1:command.index(criterion) + 1] = ["--lds-order", "4"]
    schedule = lr_schedule or args.lr_schedule
    if schedule != DEFAULT_LR_SCHEDULE:
        command += ["--lr-schedule", schedule]
    if args.da_l2 is not None and "--da-l2" not in row.flags:
        command += ["--da-l2", f"{args.da_l2:g}"]
    return command + list(row.flags) + (["--dry-run"] if args.quick else [])


def shown(command: list[str]) -> str:
    """The command as a reader would type it, paths relative to the repository where possible."""
    def relative(part: str) -> str:
        path = Path(part)
        return str(path.relative_to(REPO)) if path.is_absolute() and path.is_relative_to(REPO) else part
    return "dynaprune " + " ".join(shlex.quote(relative(part)) for part in command)


def finished(out: Path) -> dict | None:
    return next((e for e in read_run_metrics(out) if e.get("event") == "final"), None)


def run_corpus(corpus: str, source: Path, args) -> int:
    """Run every unfinished row of one corpus through the sweep runner (analysis.sweeps: each row a trial,
    its output in <work-dir>/logs/<corpus>/), up to args.workers at a time on this machine, or on a Ray
    cluster with --address; 143 if stopped by SIGTERM or Ctrl-C (the running rows resumable)."""
    from analysis.sweeps.runner import run_trials
    from analysis.sweeps.spec import Resources
    from analysis.sweeps.trial import FAILED, trial_task

    def priority(item):
        row, seed = item
        started = row_dir(args, corpus, row, seed).exists()
        rank = RUN_ORDER.index(row.name) if row.name in RUN_ORDER else len(RUN_ORDER)
        return (not started, seed, rank)

    pending = sorted(((row, seed) for seed in args.seeds for row in rows_of(corpus)
                      if not finished(row_dir(args, corpus, row, seed))), key=priority)
    tasks = []
    for row, seed in pending:
        out = row_dir(args, corpus, row, seed)
        command = row_command(row, source, out, seed, args)
        print(f"[{corpus}] {row.name} seed {seed}: {shown(command)}", flush=True)
        tasks.append(trial_task(out.name, [*command, "--threads", str(args.threads), "--no-progress"], out,
                                args.work_dir / "logs" / corpus / f"{out.name}.txt"))

    def finish(record: dict) -> None:
        print(f"[{corpus}] {record['name']}: {record['status']} (exit status {record.get('exit_code')})"
              + ("; continuing" if record["status"] == FAILED else ""), flush=True)
        if record.get("log_tail"):
            print("    " + record["log_tail"].replace("\n", "\n    "), flush=True)

    backend = "ray" if args.address else "local"
    if run_trials(tasks, finish, backend=backend, address=args.address, max_parallel=args.workers,
                  resources=Resources(cpus=args.threads)):
        print("stopped; run the same command again to continue", flush=True)
        return 143
    return 0


# ----------------------------------------------------------------------------- the document


def collect(corpus: str, source: Path, args) -> dict:
    """Finished results of one corpus: the baseline and, per row, the final events of each seed."""
    baseline, rows, commands, epochs_seen, schedules_seen = None, {}, {}, set(), set()
    for row in rows_of(corpus):
        finals = []
        for seed in seeds_of(args, corpus, row):
            out = row_dir(args, corpus, row, seed)
            events = read_run_metrics(out)
            final = next((e for e in events if e.get("event") == "final"), None)
            if final is not None:
                wall = sum(e.get("wall_s", 0.0) for e in events if e.get("event") == "stage_end")
                zero_shot = [e["zero_shot_val_ppl"] for e in events if e.get("event") == "stage_start"]
                finals.append({**final, "wall_s": wall, "zero_shot": zero_shot})
                baseline = baseline or next((e for e in events if e.get("event") == "baseline"), None)
            epochs, schedule = run_settings(out)
            if epochs is not None:
                epochs_seen.add(epochs)
                schedules_seen.add(schedule)
            commands.setdefault(row.name, []).append((row, out, seed, epochs, schedule))
        rows[row.name] = finals
    # a row not started yet is shown with the budget of the rows that were, where they agree
    default_epochs = next(iter(epochs_seen)) if len(epochs_seen) == 1 else None
    default_schedule = next(iter(schedules_seen)) if len(schedules_seen) == 1 else None
    commands = {name: [shown(row_command(row, source, out, seed, args, epochs or default_epochs,
                                         schedule or default_schedule))
                       for row, out, seed, epochs, schedule in entries] for name, entries in commands.items()}
    return {"baseline": baseline, "rows": rows, "commands": commands, "epochs": sorted(epochs_seen),
            "schedules": sorted(schedules_seen)}


def run_settings(out: Path) -> tuple[int | None, str | None]:
    """The fine-tuning epochs per stage and rate schedule a run was started with (from its
    description; a run from before the schedule could be chosen used "step"), or Nones."""
    try:
        config = json.loads((out / PIPELINE_FILE).read_text(encoding="utf-8"))["config"]
        epochs, schedule = config["epochs_per_stage"], config.get("lr_schedule", "step")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None
    if not isinstance(epochs, int) or not isinstance(schedule, str):
        return None, None
    return epochs, schedule


def seeds_of(args, corpus: str, row: Row) -> list[int]:
    """The seeds asked for now and any others already run for this row (the document shows them all)."""
    found = {int(path.name.rsplit("-seed", 1)[1]) for path in (args.work_dir / corpus).glob(f"{row.name}-seed*")
             if path.name.rsplit("-seed", 1)[1].isdigit() and finished(path)}
    return sorted(found | set(args.seeds))


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


def corpus_section(corpus: str, results: dict, args) -> list[str]:
    lines = [f"## {CORPUS_TITLES[corpus]}", ""]
    if results["epochs"]:
        schedules = " or ".join(SCHEDULE_WORDS.get(name, name) for name in results["schedules"])
        lines += [f"Fine-tuning: {' or '.join(map(str, results['epochs']))} epoch(s) per stage, {schedules}.", ""]
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
    for row in rows_of(corpus):
        finals = results["rows"][row.name]
        tests = [f["test_ppl"] for f in finals]
        cuts = zip(*[f["zero_shot"] for f in finals]) if finals else []
        zero_shot = " / ".join(f"{mean(values):.1f}" for values in cuts) or "—"
        cells = [row.name, row.criterion, f"{row.ratio:g}", row.variant, zero_shot,
                 summarise([f["val_ppl"] for f in finals]),
                 summarise(tests), change(mean(tests) if tests else None, base_test),
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
              + (f"; pruning and fine-tuning took {sum(walls) / 60:.1f} minutes in all." if walls else "."), ""]
    lines += goal_lines(results, base_test) + [""]
    lines += ["Commands (one per row and seed; `--threads N --no-progress` were added when run):", "", "```"]
    lines += [command for row in rows_of(corpus) for command in results["commands"][row.name]] + ["```", ""]
    return lines


def goal_lines(results: dict, base_test: float | None) -> list[str]:
    spread = {name: (min(f["test_ppl"] for f in finals), max(f["test_ppl"] for f in finals))
              for name, finals in results["rows"].items() if finals}
    tests = {name: mean([f["test_ppl"] for f in finals]) for name, finals in results["rows"].items() if finals}
    lines = ["Against the goal:", ""]
    full = tests.get("dynamics-50")
    if full is None or base_test is None:
        return lines + ["- the full method at 50% has not finished yet."]
    gain = 1 - full / base_test
    verdict = "met" if gain >= GOAL_IMPROVEMENT else "not met"
    direction = "better" if gain >= 0 else "worse"
    lines.append(f"- full method, dynamics criterion, 50%: test perplexity {full:.2f} against {base_test:.2f} "
                 f"unpruned, {abs(gain) * 100:.2f}% {direction} (goal: at least 0.62% better): **{verdict}**.")
    control = tests.get("control-0")
    if control is not None:
        lines.append(f"- control, the unpruned model fine-tuned the same way: test perplexity {control:.2f} "
                     f"({change(control, base_test)} against the unpruned model); the full method at 50% is "
                     f"{change(full, control)} against it.")
    for ratio in (30, 50, 70):
        ours = tests.get(f"dynamics-{ratio}")
        others = {c: tests.get(f"{c}-{ratio}") for c in ("magnitude", "random")}
        if ours is None or any(v is None for v in others.values()):
            lines.append(f"- {ratio}%: not all three criteria have finished.")
            continue
        beaten = [c for c, v in others.items() if ours < v]
        words = ("beats both" if len(beaten) == 2 else f"beats only {beaten[0]}" if beaten else "beats neither")
        clear = [c for c in others if spread[f"dynamics-{ratio}"][1] < spread[f"{c}-{ratio}"][0]]
        if spread[f"dynamics-{ratio}"][0] != spread[f"dynamics-{ratio}"][1]:
            words += (f"; over the seeds its worst run is better than every run of {' and '.join(clear)}" if clear
                      else "; the seed ranges overlap, so the order is not established")
        lines.append(f"- {ratio}%: dynamics {ours:.2f}, magnitude {others['magnitude']:.2f}, random "
                     f"{others['random']:.2f} test perplexity: dynamics {words}.")
    variants = {row.name: row.variant for row in ROWS}
    for name in ABLATIONS:
        if name in tests:
            verdict = "better" if tests[name] < full else "worse" if tests[name] > full else "the same"
            lines.append(f"- {variants[name]} at 50%: test perplexity {tests[name]:.2f}, {change(tests[name], full)} "
                         f"against the full method ({verdict}).")
    return lines


def write_document(path: Path, sections: list[list[str]], summary: list[str], args) -> None:
    lines = [f"# {args.title}", "",
             "Regenerated by `python benchmarks/results.py` (see its docstring for the options) from the pruning runs "
             f"in `{args.work_dir_shown}`; every number below comes from those runs.", "",
             "Setting: each row starts from the sample model of that corpus (`sample_checkpoints/`), removes the given "
             "fraction of every layer's hidden units and fine-tunes. *Full method*: 3 stages (ratios "
             "1 - (1 - r)^(s/3)), each fine-tuned (for the epochs given under each corpus) "
             "with cross-entropy, distillation from the previous stage (alpha 0.5, "
             "tau 2) and discrimination-aware L2, units chosen by the criterion named. Perplexities are word-level "
             "over the whole split (batch 10, bptt 35); the test perplexity is that of the model with the best "
             "validation perplexity of the last stage. \"test vs baseline\" is the relative change of test "
             "perplexity: negative is better. \"zero-shot valid ppl per cut\" is the validation perplexity right "
             "after each cut, before fine-tuning: it shows how well the criterion chose, before fine-tuning evens "
             "things out.", "",
             "The \"dynamics\" rows use the clustering rule of METHOD section 5 (`--criterion dynamics`, LDS order "
             "4), the default when they were run. The default is now `dynamics-greedy`; docs/criteria.md compares "
             "the two and has the full method with it.", "",
             "Goal (the published claim, METHOD.md): at 50% the full method's test perplexity is at least 0.62% better "
             "than the unpruned model's, and the dynamics criterion beats magnitude and random at the same ratio and "
             "fine-tuning budget.", "",
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
    "(119.46). That table, with both corpora, is [results-step-schedule.md](results-step-schedule.md). With that "
    "schedule the starting rate was probed with one cut to 50% and one epoch "
    "(`--one-shot --epochs-per-stage 1 --lr X --lr-schedule step`): test perplexity 119.01 at X = 10, 133.74 at "
    "X = 1, 155.79 at X = 0.2.",
    "- The control row separates pruning from fine-tuning. On ptb-small (2 x 200, no dropout) the fine-tuning "
    "itself, with its annealed rate and distillation from the previous stage, improves the unpruned model; a pruned "
    "row that beats the unpruned model but not the control owes its gain to the extra training, not to the pruning.",
    "- The default strength of the discrimination-aware L2 penalty, lambda = 1e-5, was chosen on the synthetic "
    "language against 1e-4 and 1e-3 with the step schedule, and stays the best of the three with the cosine one "
    "(the da-l2 rows compare them with the full method). "
    "With plain SGD over one PTB epoch (2,323 steps) at the cosine schedule's mean rate for ptb-small (5), lambda = "
    "1e-4 would shrink the weights of a unit of importance 0 by a factor of about e^-2.3, 1e-5 by about e^-0.23.",
    "- Each row is one run; where several seeds were run the table shows their mean and range. Differences smaller "
    "than that range are not evidence either way. On ptb-small the seed changes only the random criterion's "
    "choice: the model has no dropout, batches come in order and the importances' calibration batches are fixed, "
    "so a dynamics or magnitude row comes out the same for every seed (with the step schedule the one-shot row and "
    "the rate probe at X = 10, the same command run twice, gave the same perplexities to the last digit). "
    "How much a small perturbation moves a row: dynamics-50 run with the "
    "teacher's output layer in bfloat16 (`--teacher-precision bfloat16`, soft targets within about 1e-5 nats of "
    "float32's) chose partly other units in stages 2 and 3 and ended at test perplexity 110.80 instead of 109.83 "
    "(+0.9%). Differences between criteria of that size are within what such perturbations do; their order on PTB "
    "could only be firmed up with source models trained from other seeds.",
    "- How the criteria choose before any fine-tuning, `python benchmarks/zero_shot_sweep.py` (one cut to 50%, "
    "validation perplexity): on ptb-small magnitude 269.80, random 464.11, dynamics 278.79 to 317.00 over LDS "
    "orders 1, 2, 4, 8 and horizons 3 and the default (the default order 4: 281.70); on the synthetic sample "
    "(`--source sample_checkpoints/synthetic --orders 2 4 --horizons 0`) dynamics at order 4 chooses better than "
    "magnitude, 84.28 against 89.06. The ptb-small sample's trajectory holds 13 snapshots, one per epoch end, "
    "which is little to fit each unit's dynamics from; a denser one was not tried.",
    "- Wall times include stretches during which the runs were paused (SIGSTOP) while speed benchmarks ran, and "
    "rows ran two or three at a time on two cores.",
]


def main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(DEFAULT_SOURCES), help="run one corpus (the document shows both)")
    parser.add_argument("--epochs-per-stage", type=int, default=DEFAULT_EPOCHS_PER_STAGE,
                        help=f"fine-tuning epochs per stage (default {DEFAULT_EPOCHS_PER_STAGE})")
    parser.add_argument("--da-l2", type=float, help="DA-L2 strength (default: dynaprune prune's)")
    parser.add_argument("--lr-schedule", choices=sorted(SCHEDULE_WORDS), default=DEFAULT_LR_SCHEDULE,
                        help=f"fine-tuning rate schedule of new runs (default {DEFAULT_LR_SCHEDULE})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to run each row with (default 0)")
    parser.add_argument("--quick", action="store_true", help="dry-run rows, to check the whole table in a few minutes")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "results", help="where the runs live")
    parser.add_argument("--ptb-source", type=Path, default=DEFAULT_SOURCES["ptb"], help="the PTB model to prune")
    parser.add_argument("--synthetic-source", type=Path, default=DEFAULT_SOURCES["synthetic"])
    parser.add_argument("--output", type=Path, help="document to write (default docs/results.md; with --quick "
                                                    "<work-dir>/results-quick.md)")
    parser.add_argument("--title", default="Results: pruning by weight dynamics", help="the document's title")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--document-only", action="store_true",
                        help="rewrite the document from the finished runs without running anything")
    parser.add_argument("--workers", type=int, default=1,
                        help="rows run at the same time (default 1; on two cores, 2 with --threads 1)")
    parser.add_argument("--address", help="run the rows on this Ray cluster (docs/scaling.md; the work directory "
                                          "must be on a filesystem every node sees)")
    return parser


def main() -> int:
    args = main_parser().parse_args()
    if args.quick:
        args.work_dir = args.work_dir / "quick"
    args.work_dir = args.work_dir.resolve()
    shown = args.work_dir.relative_to(REPO) if args.work_dir.is_relative_to(REPO) else args.work_dir
    args.work_dir_shown = str(shown)
    output = args.output or (args.work_dir / "results-quick.md" if args.quick else REPO / "docs" / "results.md")
    sources = {"synthetic": args.synthetic_source.resolve(), "ptb": args.ptb_source.resolve()}

    status = 0
    for corpus in ("synthetic", "ptb"):
        if args.only not in (None, corpus) or args.document_only:
            continue
        if corpus == "ptb" and not os.environ.get("DYNAPRUNE_PTB_DIR"):
            print("skipping Penn Treebank: set DYNAPRUNE_PTB_DIR to the directory holding ptb.train.txt", flush=True)
            continue
        if not sources[corpus].exists():
            print(f"skipping {corpus}: {sources[corpus]} does not exist (see sample_checkpoints/README.md)", flush=True)
            continue
        status = run_corpus(corpus, sources[corpus], args)
        if status:
            break
    sections, summary = [], []
    for corpus in ("ptb", "synthetic"):
        results = collect(corpus, sources[corpus], args)
        sections.append(corpus_section(corpus, results, args))
        base_test = None if results["baseline"] is None else results["baseline"]["test_ppl"]
        findings = [line for line in goal_lines(results, base_test)
                    if line.startswith(("- full", "- control", "- 30%", "- 50%", "- 70%"))]
        summary.append(f"- {CORPUS_TITLES[corpus]}: " + ("no finished runs yet." if results["baseline"] is None else
                                                          " ".join(line[2:] for line in findings)))
    write_document(output, sections, summary, args)
    print(f"wrote {output}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
