"""Unit importances for discrimination-aware L2 (METHOD section 7): the first-order Taylor estimate
of how much the loss depends on each hidden unit, measured on a few calibration batches.

    s = unit_importances(model, corpus.train, max_batches=8)     # {layer: (H,) in [0, 1]}
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from analysis.errors import InvalidInputError
from analysis.lm.model import RNNLanguageModel

DEFAULT_CALIBRATION_BATCHES = 8


def unit_importances(model: RNNLanguageModel, data: torch.Tensor | Iterable, *,
                     max_batches: int = DEFAULT_CALIBRATION_BATCHES,
                     batch_size: int = 20, bptt: int = 35) -> dict[str, np.ndarray]:
    """First-order Taylor importance of every hidden unit, normalised per layer to [0, 1].

    s_k = mean over calibration batches of |sum_{t,b} dL/dh_{t,b,k} * h_{t,b,k}|, with h the output
    of each recurrent layer (captured by forward hooks) and L the mean next-token cross-entropy;
    each layer is then divided by its largest value (a layer whose units all score 0 stays 0).
    `data` is a 1-D token stream (read in `bptt` windows of `batch_size` columns, the hidden state
    carried across windows, as in training) or an iterable of (inputs (L, B), targets (L*B,)) pairs.
    Dropout is off while measuring; the model's weights, gradients and mode are left unchanged.
    """
    if not isinstance(model, RNNLanguageModel):
        raise InvalidInputError(f"unit_importances needs an RNNLanguageModel, got {type(model).__name__}")
    if isinstance(max_batches, bool) or int(max_batches) < 1:
        raise InvalidInputError(f"max_batches must be a positive integer, got {max_batches!r}")
    device = next(model.parameters()).device
    captured: list[torch.Tensor | None] = [None] * len(model.rnns)

    def capture(index: int):
        def hook(module, inputs, output):
            captured[index] = output[0]
        return hook

    handles = [rnn.register_forward_hook(capture(i)) for i, rnn in enumerate(model.rnns)]
    totals = [torch.zeros(rnn.hidden_size, dtype=torch.float64, device=device) for rnn in model.rnns]
    was_training, batches = model.training, 0
    model.eval()
    try:
        with torch.enable_grad():
            hidden = None
            for inputs, targets in _calibration_batches(data, batch_size, bptt):
                if batches >= max_batches:
                    break
                inputs, targets = inputs.to(device), targets.to(device)
                if hidden is None or _hidden_batch_size(hidden) != inputs.shape[1]:
                    hidden = model.init_hidden(inputs.shape[1])
                logits, hidden = model(inputs, hidden)
                hidden = model.detach_hidden(hidden)
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets)
                if not all(output is not None and output.requires_grad for output in captured):
                    raise InvalidInputError("unit_importances needs a model whose parameters require gradients")
                gradients = torch.autograd.grad(loss, captured)
                for total, output, gradient in zip(totals, captured, gradients):
                    total += (gradient * output.detach()).sum(dim=(0, 1)).abs().double()
                batches += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if batches == 0:
        raise InvalidInputError("no calibration batch to measure unit importances on; the token stream is too short")
    result = {}
    for name, total in zip(model.layer_names, totals):
        mean = (total / batches).cpu().numpy()
        peak = mean.max()
        result[name] = mean / peak if peak > 0 else np.zeros_like(mean)
    return result


def _hidden_batch_size(hidden) -> int:
    """The batch size a model's hidden state was built for."""
    first = hidden[0]
    return int((first[0] if isinstance(first, tuple) else first).shape[1])


def _calibration_batches(data, batch_size: int, bptt: int):
    if isinstance(data, torch.Tensor):
        from analysis.lm.corpora import batchify, get_batch

        source = batchify(data, batch_size)
        for start in range(0, source.size(0) - 1, bptt):
            yield get_batch(source, start, bptt)
        return
    for item in data:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InvalidInputError("calibration batches must be (inputs, targets) pairs")
        yield item
