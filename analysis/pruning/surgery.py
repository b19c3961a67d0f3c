"""Structured surgery: remove hidden units from a recurrent language model (METHOD section 6).

The result is a genuinely smaller model built from ordinary PyTorch modules, not a mask:

    plan = {"rnns.0.l0": np.array([0, 3, 5, ...]), "rnns.1.l0": ...}   # kept units per layer
    small = prune_units(model, plan)      # or a PruningPlan (its .kept)
    count_parameters(small)               # {"recurrent": ..., "total": ...}

Unit k of a layer with hidden size H and G gate blocks owns rows {g*H + k} of weight_ih,
weight_hh and both biases; removing it also removes column k of weight_hh and column k of the
consumer's input weights (the next layer's weight_ih, or the decoder's weight).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from analysis.errors import InvalidInputError
from analysis.lm.model import GATES_PER_UNIT, ModelConfig, RNNLanguageModel


def kept_units(plan: Any) -> Mapping[str, Any]:
    """The kept unit indices per layer of a PruningPlan, or of a dict layer name -> indices."""
    kept = getattr(plan, "kept", plan)
    if not isinstance(kept, Mapping):
        raise InvalidInputError(
            f"a pruning plan must be a PruningPlan or a dict layer name -> kept unit indices, "
            f"got {type(plan).__name__}")
    return kept


def _validated_indices(layer: str, indices: Any, hidden_size: int) -> np.ndarray:
    array = np.asarray(indices)
    if array.ndim != 1:
        raise InvalidInputError(f"layer {layer}: kept unit indices must be a 1-D list, got shape {array.shape}")
    if array.size == 0:
        raise InvalidInputError(f"layer {layer}: keeping zero units would cut the network; keep at least one")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(array == np.round(array)):
            raise InvalidInputError(f"layer {layer}: kept unit indices must be integers, got {array.dtype}")
        array = array.astype(np.int64)
    bad = array[(array < 0) | (array >= hidden_size)]
    if bad.size:
        raise InvalidInputError(
            f"layer {layer}: unit indices {bad[:5].tolist()} out of range; "
            f"the layer has {hidden_size} units (0..{hidden_size - 1})")
    unique, counts = np.unique(array, return_counts=True)
    if np.any(counts > 1):
        raise InvalidInputError(f"layer {layer}: duplicate unit indices {unique[counts > 1][:5].tolist()}")
    return unique.astype(np.int64)


def prune_units(model: RNNLanguageModel, plan: Any) -> RNNLanguageModel:
    """A new, smaller model keeping only the listed units of each named layer; `model` is left untouched.

    Layers the plan does not mention keep all their units. Raises InvalidInputError for unknown
    layer names, out-of-range or duplicate indices, an empty kept set, or pruning the last layer
    of a model whose decoder is tied to its embedding.
    """
    if not isinstance(model, RNNLanguageModel):
        raise InvalidInputError(f"prune_units needs an RNNLanguageModel, got {type(model).__name__}")
    requested = kept_units(plan)
    names = model.layer_names
    unknown = [name for name in requested if name not in names]
    if unknown:
        raise InvalidInputError(f"unknown layer names {unknown}; this model's recurrent layers are {names}")

    config = model.config
    kept: list[np.ndarray] = []
    for name, rnn in zip(names, model.rnns):
        if name in requested:
            kept.append(_validated_indices(name, requested[name], rnn.hidden_size))
        else:
            kept.append(np.arange(rnn.hidden_size))
    last = len(names) - 1
    if config.tie_weights and len(kept[last]) != model.rnns[last].hidden_size:
        raise InvalidInputError(
            f"layer {names[last]}: cannot prune the last layer of a model with tied embedding and decoder weights "
            f"(its size must stay equal to the embedding size); prune the other layers only")

    gates = GATES_PER_UNIT[config.rnn_type]
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    for index, (rnn, units) in enumerate(zip(model.rnns, kept)):
        hidden = rnn.hidden_size
        units_t = torch.as_tensor(units, dtype=torch.long)
        rows = torch.cat([gate * hidden + units_t for gate in range(gates)])
        prefix = f"rnns.{index}."
        for kind in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            key = prefix + kind
            if key in state:
                state[key] = state[key].index_select(0, rows)
        state[prefix + "weight_hh_l0"] = state[prefix + "weight_hh_l0"].index_select(1, units_t)
        consumer = f"rnns.{index + 1}.weight_ih_l0" if index < last else "decoder.weight"
        if not (consumer == "decoder.weight" and config.tie_weights):
            state[consumer] = state[consumer].index_select(1, units_t)

    new_config = ModelConfig.from_dict({**config.to_dict(), "hidden_sizes": [len(units) for units in kept]})
    pruned = RNNLanguageModel(new_config)
    pruned.load_state_dict({key: value.contiguous() for key, value in state.items()})
    pruned.train(model.training)
    return pruned


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts: the recurrent layers alone, and the whole model (tied weights counted once)."""
    recurrent = sum(p.numel() for p in model.rnns.parameters()) if hasattr(model, "rnns") else 0
    total = sum(p.numel() for p in model.parameters())
    return {"recurrent": int(recurrent), "total": int(total)}
