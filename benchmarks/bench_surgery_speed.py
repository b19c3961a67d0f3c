"""Inference speed of a structurally pruned model against the dense one and a masked one.

    python benchmarks/bench_surgery_speed.py [--quick] [--threads 1]

Model: the ptb-small LSTM language model (vocabulary 10000, 2x200). Three variants, timed in the
same run on the same input: dense; 50% of each layer's hidden units removed with prune_units
(smaller matrices); and the dense model with half of its recurrent weight rows masked by
torch.nn.utils.prune.ln_structured (same sizes, zeros). Prints tokens per second and the ratios
to dense: the median over rounds that time the variants one after another. Target: pruned >= 1.8x;
masked about 1x (a mask saves no arithmetic).
"""
from __future__ import annotations

import argparse
import copy
import time
from statistics import median

import numpy as np
import torch
import torch.nn.utils.prune as torch_prune

from analysis.lm.model import PRESETS, ModelConfig, RNNLanguageModel
from analysis.pruning.surgery import count_parameters, prune_units

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


class Timer:
    """Forward passes of one model over a fixed batch, its hidden state carried along."""

    def __init__(self, model: RNNLanguageModel, bptt: int = 35, batch_size: int = 20):
        self.model, self.tokens = model, bptt * batch_size
        self.inputs = torch.randint(0, VOCAB_SIZE, (bptt, batch_size), generator=torch.Generator().manual_seed(1))
        self.hidden = model.init_hidden(batch_size)
        self.seconds(3)  # warm-up

    @torch.no_grad()
    def seconds(self, batches: int) -> float:
        started = time.perf_counter()
        for _ in range(batches):
            _, self.hidden = self.model(self.inputs, self.hidden)
        return (time.perf_counter() - started) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (seconds)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier timings on a shared machine)")
    parser.add_argument("--decoder", action="store_true",
                        help="also time the decoder's ways of adding the bias, at the dense and pruned sizes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches, rounds = (5, 6) if args.quick else (10, 30)
    if args.decoder:
        compare_decoder_paths(rounds=6 if args.quick else 25)
    variants = build_variants()
    timers = {name: Timer(model) for name, model in variants.items()}
    # Rounds alternate the variants, and each round's ratios compare timings taken seconds apart,
    # so a change in machine load hits both sides of a ratio alike; the median round is reported.
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, timer in timers.items():
            times[name].append(timer.seconds(batches))
    dense_times = times["dense"]
    ratios = {name: sorted(d / t for d, t in zip(dense_times, values)) for name, values in times.items()}
    print(f"ptb-small LSTM LM, vocabulary {VOCAB_SIZE}, {int(PRUNE_FRACTION * 100)}% of hidden units removed, "
          f"{torch.get_num_threads()} thread(s), batch 20 x bptt 35, {rounds} alternating rounds of {batches} batches")
    for name, model in variants.items():
        counts = count_parameters(model)
        speed = timers[name].tokens / median(times[name])
        spread = ratios[name]
        print(f"  {name:22s} {speed:12,.0f} tokens/s (median round)   speed ratio {median(spread):5.2f}x "
              f"(rounds {spread[len(spread) // 4]:.2f}-{spread[(3 * len(spread)) // 4]:.2f}, middle half)   "
              f"hidden {model.config.hidden_sizes}   recurrent params {counts['recurrent']:,}")
    pruned_ratio = median(ratios["pruned (prune_units)"])
    masked_ratio = median(ratios["masked (torch prune)"])
    verdict = "OK" if pruned_ratio >= 1.8 else "BELOW TARGET"
    print(f"pruned/dense speed ratio: {pruned_ratio:.3f} (target >= 1.8) {verdict}")
    print(f"masked/dense speed ratio: {masked_ratio:.3f} (expected about 1)")


def compare_decoder_paths(rounds: int, tokens: int = 700) -> None:
    """Milliseconds per (tokens x K)(K x vocabulary) decoder product with bias, three ways, for the
    dense (K = 200) and pruned (K = 100) sizes: medians of alternating rounds."""
    import torch.nn.functional as F

    ways = {}
    for K in (200, 100):
        generator = torch.Generator().manual_seed(K)
        x, weight, bias = (torch.randn(tokens, K, generator=generator), torch.randn(VOCAB_SIZE, K, generator=generator),
                           torch.randn(VOCAB_SIZE, generator=generator))
        with_bias = torch.cat([weight, bias[:, None]], dim=1)
        ways[f"K={K}  F.linear (bias fused in addmm)"] = lambda x=x, w=weight, b=bias: F.linear(x, w, b)
        ways[f"K={K}  product, then bias in place (training)"] = lambda x=x, w=weight, b=bias: (x @ w.t()).add_(b)
        ways[f"K={K}  [h, 1] [W | b]^T (no gradient)"] = lambda x=x, wb=with_bias: torch.mm(
            torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1), wb.t())
    times = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            started = time.perf_counter()
            for _ in range(5):
                way()
            times[name].append((time.perf_counter() - started) / 5 * 1000)
    print(f"decoder, {tokens} tokens x vocabulary {VOCAB_SIZE}, median of {rounds} alternating rounds:")
    for name, values in times.items():
        print(f"  {name:48s} {median(values):7.2f} ms")


if __name__ == "__main__":
    main()
