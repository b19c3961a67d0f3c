"""Scoring a language model on a token stream: the mean next-token negative log-likelihood over a
1-D stream of token ids (METHOD section 9), and perplexity, its exponential.

    mean_nll, n_tokens = evaluate(model, corpus.valid)
    print(perplexity(mean_nll))
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from analysis.errors import InvalidInputError
from analysis.lm.corpora import batchify, get_batch
from analysis.lm.model import RNNLanguageModel

# How every perplexity in this project is measured (METHOD section 9): 10 columns, 35-token windows.
EVAL_BATCH_SIZE = 10
EVAL_BPTT = 35


def perplexity(mean_nll: float) -> float:
    return math.exp(min(mean_nll, 700.0))


@torch.no_grad()
def evaluate(model: RNNLanguageModel, data: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE, bptt: int = EVAL_BPTT,
             max_batches: int | None = None) -> tuple[float, int]:
    """Mean next-token negative log-likelihood over a 1-D token stream, and the number of tokens scored.

    The stream is cut into `batch_size` columns and read `bptt` tokens at a time with the hidden
    state carried across windows (METHOD section 9); perplexity is exp of the mean.
    """
    was_training = model.training
    model.eval()
    try:
        source = batchify(data, batch_size).to(next(model.parameters()).device)
        hidden = model.init_hidden(batch_size)
        total_nll, n_tokens = 0.0, 0
        for count, start in enumerate(range(0, source.size(0) - 1, bptt)):
            if max_batches is not None and count >= max_batches:
                break
            inputs, targets = get_batch(source, start, bptt)
            logits, hidden = model(inputs, hidden)
            total_nll += F.cross_entropy(logits.view(-1, logits.size(-1)), targets, reduction="sum").item()
            n_tokens += targets.numel()
    finally:
        model.train(was_training)
    if n_tokens == 0:
        raise InvalidInputError(
            f"an evaluation stream of {data.numel()} tokens is too short for batch size {batch_size}")
    return total_nll / n_tokens, n_tokens
