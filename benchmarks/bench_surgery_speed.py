"""Inference speed of a structurally pruned model against the dense one and a masked one.

    python benchmarks/bench_surgery_speed.py [--quick] [--threads 1]

Model: the ptb-small LSTM language model (vocabulary 10000, 2x200). Three variants, timed in the
same run on the same input: dense; 50% of each layer's hidden units removed with prune_units
(smaller matrices); and the dense model with half of its recurrent weight rows masked by
torch.nn.utils.prune.ln_structured (same sizes, zeros). Prints tokens per second and the ratios
to dense. Target: pruned >= 1.8x; masked about 1x (a mask saves no arithmetic).
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.utils.prune as torch_prune

from analysis.lm import PRESETS, ModelConfig, RNNLanguageModel
from analysis.surgery import count_parameters, prune_units

VOCAB_SIZE = 10_000
PRUNE_FRACTION = 0.5


def build_variants(seed: int = 0) -> dict[str, RNNLanguageModel]:
    torch.manual_seed(seed)
    dense = RNNLanguageModel(ModelConfig(vocab_size=VOCAB_SIZE, **PRESETS["ptb-small"]["model"])).eval()
    rng = np.random.default_rng(seed)
    plan = {name: np.sort(rng.choice(rnn.hidden_size, rnn.hidden_size - round(PRUNE_FRACTION * rnn.hidden_size),
                                      replace=False))
            for name, rnn in zip(dense.layer_names, dense.rnns)}
    pruned = prune_units(dense, plan).eval()
    masked = copy.deepcopy(dense)
    for rnn in masked.rnns:
        for name in ("weight_ih_l0", "weight_hh_l0"):
            torch_prune.ln_structured(rnn, name, amount=PRUNE_FRACTION, n=2, dim=0)
    return {"dense": dense, "pruned (prune_units)": pruned, "masked (torch prune)": masked.eval()}


@torch.no_grad()
def tokens_per_second(model: RNNLanguageModel, batches: int, repeats: int, bptt: int = 35, batch_size: int = 20) -> float:
    inputs = torch.randint(0, VOCAB_SIZE, (bptt, batch_size), generator=torch.Generator().manual_seed(1))
    hidden = model.init_hidden(batch_size)
    for _ in range(3):  # warm-up
        _, hidden = model(inputs, hidden)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(batches):
            _, hidden = model(inputs, hidden)
        best = min(best, time.perf_counter() - started)
    return batches * bptt * batch_size / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches and repeats (seconds)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier timings on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches, repeats = (10, 3) if args.quick else (40, 7)
    variants = build_variants()
    # interleave the variants so a change in machine load hits all of them alike
    speeds = {name: 0.0 for name in variants}
    for _ in range(2):
        for name, model in variants.items():
            speeds[name] = max(speeds[name], tokens_per_second(model, batches, repeats))
    dense_speed = speeds["dense"]
    print(f"ptb-small LSTM LM, vocabulary {VOCAB_SIZE}, {int(PRUNE_FRACTION * 100)}% of hidden units removed, "
          f"{torch.get_num_threads()} thread(s), batch 20 x bptt 35, best of {repeats * 2} x {batches} batches")
    for name, model in variants.items():
        counts = count_parameters(model)
        print(f"  {name:22s} {speeds[name]:12,.0f} tokens/s   ratio {speeds[name] / dense_speed:5.2f}x   "
              f"hidden {model.config.hidden_sizes}   recurrent params {counts['recurrent']:,}")
    pruned_ratio = speeds["pruned (prune_units)"] / dense_speed
    masked_ratio = speeds["masked (torch prune)"] / dense_speed
    print(f"pruned/dense speed ratio: {pruned_ratio:.2f} (target >= 1.8) {'OK' if pruned_ratio >= 1.8 else 'BELOW TARGET'}")
    print(f"masked/dense speed ratio: {masked_ratio:.2f} (expected about 1)")


if __name__ == "__main__":
    main()
