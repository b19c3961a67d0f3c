"""Cost of a fine-tuning step with distillation and discrimination-aware L2, against a plain
cross-entropy step of the same pruned student.

    python benchmarks/bench_finetune_step.py [--quick] [--threads 1]

The student is a ptb-small model (2 x 200 LSTM, vocabulary 10,000) pruned to 50% (2 x 100 units);
the teacher is the unpruned model. Tokens are random (the cost does not depend on them). Both
variants run through the real training loop (analysis.lm.training.train_language_model). A step is
timed from one batch's loss callback to the next, so it holds everything a step does (forward
passes, loss, backward, clipping, the optimiser) and none of a run's fixed costs (validation,
checkpoints written with fsync, the once-per-epoch importance measurement), which vary far more
on a shared machine than a step does. Each variant's step time is the median over the steps of a
run; the variants alternate over several rounds and the median round's ratio is reported.
The distillation step is timed twice: with the teacher's output layer in float32 (the default) and
in bfloat16 (--teacher-precision bfloat16). Each line also gives the median minor page faults per
step; --keep-default-malloc skips analysis.utils.allocator's tuning to show what it saves. Target:
ratio <= 1.6.
"""
from __future__ import annotations

import argparse
import copy
import resource
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
import torch
import torch.nn.functional as F

import analysis.utils.allocator as allocator
from analysis.lm.corpora import Corpus, Vocabulary
from analysis.lm.model import PRESETS, ModelConfig, RNNLanguageModel
from analysis.lm.training import TrainConfig, train_language_model
from analysis.pruning.da_l2 import DiscriminationAwareL2
from analysis.pruning.surgery import prune_units

VOCAB = 10_000
REPO = Path(__file__).resolve().parents[1]
FULL = "CE + distillation + DA-L2"
FULL_BF16 = "CE + distillation (bfloat16 teacher) + DA-L2"


def random_corpus(n_train: int, seed: int = 0) -> Corpus:
    generator = torch.Generator().manual_seed(seed)
    streams = {name: torch.randint(0, VOCAB, (size,), generator=generator)
               for name, size in (("train", n_train), ("valid", 2_000), ("test", 2_000))}
    return Corpus(source="random-tokens", vocab=Vocabulary(f"w{i}" for i in range(VOCAB)), **streams)


def step_seconds(run_dir: Path, corpus: Corpus, student, teacher, regularizer, teacher_precision: str,
                 batches: int) -> tuple[float, float]:
    """Median seconds and minor page faults per training step of one run of `batches` steps (the
    first two left out as warm-up)."""
    config = TrainConfig.from_preset("ptb-small", epochs=1, max_batches_per_epoch=batches, max_eval_batches=1,
                                     record_every=0, teacher_precision=teacher_precision)
    stamps, faults = [], []

    def timed_loss(context):  # called once per batch, after the task loss and before backward
        stamps.append(time.perf_counter())
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        return None if regularizer is None else regularizer.loss(context)

    train_language_model(run_dir, corpus=corpus, train_config=config, initial_model=student, teacher=teacher,
                         extra_loss=timed_loss,
                         on_epoch_start=None if regularizer is None else regularizer.on_epoch_start,
                         overwrite=True, progress=False, evaluate_test=False, log=None)
    return median(np.diff(stamps[2:])), median(np.diff(faults[2:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier timings on a shared machine)")
    parser.add_argument("--keep-default-malloc", action="store_true",
                        help="skip analysis.utils.allocator's tuning, to see what it saves (page faults per step)")
    args = parser.parse_args()
    if args.keep_default_malloc:
        allocator._applied = False  # as if tried and failed: train_language_model leaves malloc alone
    torch.set_num_threads(args.threads)
    batches = 12 if args.quick else 40
    rounds = 2 if args.quick else 5
    repeats = 2 if args.quick else 3  # of each part timed alone

    config = TrainConfig.from_preset("ptb-small")
    corpus = random_corpus((batches + 2) * config.batch_size * config.bptt)
    torch.manual_seed(0)
    teacher = RNNLanguageModel(ModelConfig(vocab_size=VOCAB, **PRESETS["ptb-small"]["model"]))
    student = prune_units(teacher, {name: np.arange(0, rnn.hidden_size, 2)
                                    for name, rnn in zip(teacher.layer_names, teacher.rnns)})
    regularizer = DiscriminationAwareL2(lam=1e-4, calibration_tokens=corpus.train, batch_size=config.batch_size,
                                        bptt=config.bptt)
    variants = {"plain CE": (None, None, "float32"),
                FULL: (teacher, regularizer, "float32"),
                FULL_BF16: (teacher, regularizer, "bfloat16")}
    steps = {name: [] for name in variants}
    faults = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as work:
        for _ in range(rounds):
            for name, (with_teacher, with_penalty, precision) in variants.items():
                seconds, step_faults = step_seconds(Path(work) / "run", corpus, student, with_teacher, with_penalty,
                                                    precision, batches)
                steps[name].append(seconds)
                faults[name].append(step_faults)
    per_step = {name: median(values) for name, values in steps.items()}
    print(f"student hidden sizes {student.config.hidden_sizes} (teacher {teacher.config.hidden_sizes}), vocabulary "
          f"{VOCAB}, batch {config.batch_size} x bptt {config.bptt}, {torch.get_num_threads()} thread(s), "
          f"{rounds} alternating rounds of {batches} steps (medians)")
    for name, seconds in per_step.items():
        rounds_ms = " ".join(f"{value * 1000:.0f}" for value in steps[name])
        print(f"  {name:48s} {seconds * 1000:8.1f} ms/step   (rounds: {rounds_ms}); "
              f"{median(faults[name]):.0f} page faults/step")
    parts = extra_parts(teacher, student, regularizer, corpus, config, repeats)
    print("  where the extra time goes (each part timed alone, per step):")
    for name, seconds in parts.items():
        print(f"    {name:36s} {seconds * 1000:8.1f} ms ({seconds / per_step['plain CE']:.2f} of a plain step)")
    print(bfloat16_target_error())
    for name, teacher_part in ((FULL, "teacher forward"), (FULL_BF16, "teacher forward, bfloat16 decoder")):
        ratios = sorted(kd / plain for kd, plain in zip(steps[name], steps["plain CE"]))
        ratio = median(ratios)
        floor = 1 + parts[teacher_part] / per_step["plain CE"]
        print(f"step ratio, {name}: {ratio:.3f}x, median of {rounds} rounds ({ratios[0]:.2f}-{ratios[-1]:.2f}) "
              f"(target <= 1.6x) {'OK' if ratio <= 1.6 else 'ABOVE TARGET'}; its teacher's forward pass alone sets "
              f"a floor of {floor:.2f}x")


def bfloat16_target_error(tokens: int = 8_000) -> str:
    """How far the bfloat16 teacher's logits and soft targets softmax(z / 2) are from float32's, on
    the ptb-small sample model and the start of PTB's validation split (needs DYNAPRUNE_PTB_DIR)."""
    from analysis.errors import DynapruneError
    from analysis.lm.corpora import batchify, load_corpus
    from analysis.lm.model import load_model

    try:
        model, _ = load_model(REPO / "sample_checkpoints" / "ptb-small")
        corpus = load_corpus("ptb")
    except DynapruneError as error:
        return f"bfloat16 teacher error: not measured ({error})"
    model.eval()
    data = batchify(corpus.valid, 20)[: tokens // 20]
    rounded = copy.deepcopy(model).set_inference_precision(torch.bfloat16)
    with torch.no_grad():
        exact, approximate = model(data)[0], rounded(data)[0]
    p, q = torch.log_softmax(exact / 2, -1), torch.log_softmax(approximate / 2, -1)
    kl = (p.exp() * (p - q)).sum(-1)
    return (f"bfloat16 teacher error on the ptb-small sample, {kl.numel()} PTB validation tokens: logits differ by at "
            f"most {(exact - approximate).abs().max():.3g} (their std {exact.std():.3g}); KL between the soft targets "
            f"at tau 2: mean {kl.mean():.2g}, max {kl.max():.2g} nats")


def extra_parts(teacher, student, regularizer, corpus, config, repeats: int, steps: int = 10) -> dict[str, float]:
    """Seconds per step of each addition to a plain step: teacher forward, distillation term, penalty."""
    from analysis.lm.corpora import batchify, get_batch
    from analysis.pruning.distillation import distillation_kl, distillation_loss

    inputs, _ = get_batch(batchify(corpus.train, config.batch_size), 0, config.bptt)
    teacher = teacher.eval()
    with torch.no_grad():
        teacher_logits = teacher(inputs)[0].view(-1, VOCAB)
    student_logits = torch.randn_like(teacher_logits, requires_grad=True)
    regularizer.on_epoch_start(student, 1)
    context = type("Context", (), {"model": student, "epoch": 1})()

    def teacher_forward():
        with torch.no_grad():
            teacher(inputs)

    bf16_teacher = copy.deepcopy(teacher).set_inference_precision(torch.bfloat16)

    def bf16_teacher_forward():
        with torch.no_grad():
            bf16_teacher(inputs)

    targets = torch.randint(0, VOCAB, (student_logits.shape[0],))

    def separate_terms():
        (0.5 * F.cross_entropy(student_logits, targets) + 2.0 * distillation_kl(student_logits, teacher_logits, 2.0)
         ).backward()

    parts = {"teacher forward": teacher_forward,
             "teacher forward, bfloat16 decoder": bf16_teacher_forward,
             "cross-entropy alone, forward + backward": lambda: F.cross_entropy(student_logits, targets).backward(),
             "CE + distillation, fused (used)": lambda: distillation_loss(student_logits, teacher_logits, targets,
                                                                          0.5, 2.0).loss.backward(),
             "CE + distillation as two terms": separate_terms,
             "DA-L2 penalty, forward + backward": lambda: regularizer.loss(context).backward()}
    best = {}
    for name, part in parts.items():
        part()
        best[name] = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(steps):
                part()
            best[name] = min(best[name], (time.perf_counter() - started) / steps)
    return best


if __name__ == "__main__":
    main()
