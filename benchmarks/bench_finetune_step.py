"""Cost of a fine-tuning step with distillation and discrimination-aware L2, against a plain
cross-entropy step of the same pruned student.

    python benchmarks/bench_finetune_step.py [--quick] [--threads 1]

The student is a ptb-small model (2 x 200 LSTM, vocabulary 10,000) pruned to 50% (2 x 100 units);
the teacher is the unpruned model. Tokens are random (the cost does not depend on them). Both
variants run through the real training loop (analysis.training.train_language_model); a step's
time is the difference between a long and a short run divided by the difference in steps, so the
fixed costs of a run (validation, checkpoints, the once-per-epoch importance measurement) cancel.
Each variant keeps its fastest of a few alternating repeats. Target: ratio <= 1.6.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from analysis.corpora import Corpus, Vocabulary
from analysis.lm import PRESETS, ModelConfig, RNNLanguageModel
from analysis.regularization import DiscriminationAwareL2
from analysis.surgery import prune_units
from analysis.training import TrainConfig, train_language_model

VOCAB = 10_000


def random_corpus(n_train: int, seed: int = 0) -> Corpus:
    generator = torch.Generator().manual_seed(seed)
    streams = {name: torch.randint(0, VOCAB, (size,), generator=generator)
               for name, size in (("train", n_train), ("valid", 2_000), ("test", 2_000))}
    return Corpus(source="random-tokens", vocab=Vocabulary(f"w{i}" for i in range(VOCAB)), **streams)


def run_seconds(run_dir: Path, corpus: Corpus, student, teacher, regularizer, batches: int) -> float:
    config = TrainConfig.from_preset("ptb-small", epochs=1, max_batches_per_epoch=batches, max_eval_batches=1,
                                     record_every=0)
    started = time.perf_counter()
    train_language_model(run_dir, corpus, None, config, initial_model=student, teacher=teacher,
                         extra_loss=None if regularizer is None else regularizer.loss,
                         on_epoch_start=None if regularizer is None else regularizer.on_epoch_start,
                         overwrite=True, progress=False, evaluate_test=False, log=None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier timings on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    short, long = (4, 24) if args.quick else (5, 45)
    repeats = 2 if args.quick else 3

    config = TrainConfig.from_preset("ptb-small")
    corpus = random_corpus((long + 2) * config.batch_size * config.bptt)
    torch.manual_seed(0)
    teacher = RNNLanguageModel(ModelConfig(vocab_size=VOCAB, **PRESETS["ptb-small"]["model"]))
    student = prune_units(teacher, {name: np.arange(0, rnn.hidden_size, 2)
                                    for name, rnn in zip(teacher.layer_names, teacher.rnns)})
    regularizer = DiscriminationAwareL2(lam=1e-4, calibration_tokens=corpus.train, batch_size=config.batch_size,
                                        bptt=config.bptt)
    variants = {"plain CE": (None, None), "CE + distillation + DA-L2": (teacher, regularizer)}
    best = {name: {short: float("inf"), long: float("inf")} for name in variants}
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as work:
        for _ in range(repeats):
            for name, (with_teacher, with_penalty) in variants.items():
                for batches in (short, long):
                    seconds = run_seconds(Path(work) / "run", corpus, student, with_teacher, with_penalty, batches)
                    best[name][batches] = min(best[name][batches], seconds)
    per_step = {name: (times[long] - times[short]) / (long - short) for name, times in best.items()}
    print(f"student hidden sizes {student.config.hidden_sizes} (teacher {teacher.config.hidden_sizes}), vocabulary "
          f"{VOCAB}, batch {config.batch_size} x bptt {config.bptt}, {torch.get_num_threads()} thread(s), "
          f"best of {repeats}, steps {short} vs {long}")
    for name, seconds in per_step.items():
        print(f"  {name:28s} {seconds * 1000:8.1f} ms/step")
    parts = extra_parts(teacher, student, regularizer, corpus, config, repeats)
    print("  where the extra time goes (each part timed alone, per step):")
    for name, seconds in parts.items():
        print(f"    {name:36s} {seconds * 1000:8.1f} ms ({seconds / per_step['plain CE']:.2f} of a plain step)")
    ratio = per_step["CE + distillation + DA-L2"] / per_step["plain CE"]
    floor = 1 + parts["teacher forward"] / per_step["plain CE"]
    print(f"fine-tuning step ratio: {ratio:.2f}x (target <= 1.6x) {'OK' if ratio <= 1.6 else 'ABOVE TARGET'}; "
          f"the teacher's forward pass alone sets a floor of {floor:.2f}x")


def extra_parts(teacher, student, regularizer, corpus, config, repeats: int, steps: int = 10) -> dict[str, float]:
    """Seconds per step of each addition to a plain step: teacher forward, distillation term, penalty."""
    from analysis.corpora import batchify, get_batch
    from analysis.regularization import distillation_kl, distillation_loss

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

    targets = torch.randint(0, VOCAB, (student_logits.shape[0],))

    def separate_terms():
        (0.5 * F.cross_entropy(student_logits, targets) + 2.0 * distillation_kl(student_logits, teacher_logits, 2.0)
         ).backward()

    parts = {"teacher forward": teacher_forward,
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
