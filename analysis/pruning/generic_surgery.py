"""Structured surgery on a model dynaprune did not define (METHOD section 6, "bring your own RNN"):
remove hidden units from the nn.LSTM / nn.GRU / nn.RNN modules of any traceable nn.Module, and cut
the columns of whatever consumes them, found by tracing (analysis.pruning.graph).

    plan = {"rnn.l0": [0, 2, 5], "rnn.l1": [1, 2, 3]}          # or a PruningPlan; names as in trajectories/layers.py
    small = prune_model(model, plan, example_inputs=(tokens,))   # a deepcopy with smaller modules; model unchanged

What changes: each pruned recurrent module is rebuilt smaller (rows g*H + k of every weight_ih,
weight_hh and bias, column k of weight_hh, or of weight_hr for an LSTM with proj_size); inside a
multi-layer module the next layer's weight_ih loses columns k and, when bidirectional, H + k; an
nn.Linear / nn.LayerNorm / recurrent module fed by the units loses the matching input columns
(a LayerNorm's weight and bias entries; it then normalises over fewer units, so its outputs move
a little even for units that were silent).

Refused, with the layer and the module named: pruning a layer whose units reach something that
mixes them or cannot be cut (graph.UnitGraph.blocked: a decoder tied to the embedding, a sum or
matmul over the hidden axis, an unknown module, ...), and keeping different numbers of units in
the layers or directions of one module (they share one hidden_size; different indices are fine).
With on_blocked="skip" a blocked layer is left whole with a warning instead.

LSTM with proj_size: the units are the cell units; the output keeps its proj_size width, so no
consumer changes. (Trajectories of projected LSTMs are refused by trajectories/layers.py, so such
a plan has to come from elsewhere.)

Sizes held outside the pruned modules (an attribute like `self.nhid` used by init_hidden or a
view) are not changed: the pruned model is run once on the example inputs, initial states rebuilt
at the new width, and any failure is reported.
"""
from __future__ import annotations

import copy
import inspect
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from analysis.errors import InvalidInputError
from analysis.pruning.graph import RecurrentModule, UnitGraph, trace_unit_graph
from analysis.pruning.surgery import _validated_indices, kept_units

GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def prune_model(model: nn.Module, plan: Any, example_inputs, on_blocked: str = "raise",
                verify: bool = True) -> nn.Module:
    """A smaller copy of `model` keeping only the planned units of each named recurrent layer.

    Parameters
    ----------
    model : an nn.Module holding nn.LSTM / nn.GRU / nn.RNN modules (left unchanged).
    plan : a PruningPlan or {layer name: kept unit indices}; names as trajectories/layers.py gives
        them for the model's state dict ("rnn.l0", "rnn.l1_reverse", ...). Layers not named keep all units.
    example_inputs : forward's positional arguments (a tensor or a tuple) to trace the model with.
    on_blocked : "raise" (default) refuses to prune a layer whose consumers cannot be cut; "skip"
        keeps such a layer whole and warns.
    verify : run the pruned copy once on the example inputs and report a failure.

    Returns
    -------
    The pruned copy, in the same training mode as `model`.
    """
    if on_blocked not in ("raise", "skip"):
        raise InvalidInputError(f"on_blocked must be 'raise' or 'skip', got {on_blocked!r}")
    graph = trace_unit_graph(model, example_inputs)
    kept = resolve_kept_units(graph, plan, on_blocked)
    pruned = copy.deepcopy(model)
    paths = _module_paths(pruned)
    replacements: dict[str, nn.Module] = {}
    for name, rnn in graph.recurrent.items():
        consumer = graph.consumers.get(name)
        fed_by_pruned = consumer is not None and any(layer in kept for layer, _ in consumer.layout)
        input_columns = _layout_columns(consumer.layout, kept) if fed_by_pruned else None
        if fed_by_pruned or any(layer in kept for layer in rnn.all_layers):
            replacements[name] = _pruned_recurrent(rnn, kept, input_columns)
    for name, consumer in graph.consumers.items():
        if consumer.kind != "recurrent" and any(layer in kept for layer, _ in consumer.layout):
            replacements[name] = _pruned_consumer(model.get_submodule(name), _layout_columns(consumer.layout, kept))
    for name, module in replacements.items():
        for path in paths[id(pruned.get_submodule(name))]:
            parent, _, child = path.rpartition(".")
            setattr(pruned.get_submodule(parent), child, module)
    pruned.train(model.training)
    if verify:
        _verify_runs(pruned, graph, example_inputs)
    return pruned


def resolve_kept_units(graph: UnitGraph, plan: Any, on_blocked: str = "raise") -> dict[str, np.ndarray]:
    """The plan's kept indices per layer, validated against the traced model: known layer names,
    indices in range, no blocked layer pruned, equal counts within each recurrent module.
    Layers that keep every unit are left out of the result."""
    requested = kept_units(plan)
    sizes = {layer: rnn.module.hidden_size for rnn in graph.recurrent.values() for layer in rnn.all_layers}
    unknown = [name for name in requested if name not in sizes]
    if unknown:
        raise InvalidInputError(f"unknown layer names {unknown}; this model's recurrent layers are {list(sizes)}")
    kept = {}
    for layer, indices in requested.items():
        units = _validated_indices(layer, indices, sizes[layer])
        if len(units) == sizes[layer]:
            continue
        if layer in graph.blocked:
            message = f"cannot prune layer {layer!r}: {graph.blocked[layer]}"
            if on_blocked == "raise":
                raise InvalidInputError(message + "; leave this layer out of the plan")
            warnings.warn(message + "; keeping all its units", stacklevel=3)
            continue
        kept[layer] = units
    for rnn in graph.recurrent.values():
        counts = {layer: len(kept[layer]) if layer in kept else sizes[layer] for layer in rnn.all_layers}
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{layer} keeps {count}" for layer, count in counts.items())
            raise InvalidInputError(
                f"module `{rnn.name}`: its layers and directions share one hidden_size, so all must keep the same "
                f"number of units ({listing}); the indices may differ per layer")
    return kept


def _module_paths(model: nn.Module) -> dict[int, list[str]]:
    """Module id -> every path it is registered under (a module shared by two parents is replaced in both)."""
    paths: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(path)
    return paths


def _units(kept: dict, layer: str, size: int) -> torch.Tensor:
    return torch.as_tensor(kept[layer] if layer in kept else np.arange(size), dtype=torch.long)


def _layout_columns(layout, kept: dict) -> torch.Tensor:
    """Input columns that survive, for an input laid out as segments (layer or None, width)."""
    columns, offset = [], 0
    for layer, size in layout:
        columns.append(offset + (_units(kept, layer, size) if layer is not None else torch.arange(size)))
        offset += size
    return torch.cat(columns)


def _pruned_recurrent(rnn: RecurrentModule, kept: dict, input_columns: torch.Tensor | None) -> nn.Module:
    """A new module of the same type, smaller hidden (and input) size, with the kept rows and columns."""
    old = rnn.module
    H, projection = old.hidden_size, getattr(old, "proj_size", 0)
    units = [[_units(kept, layer, H) for layer in per_layer] for per_layer in rnn.layer_names]
    settings = dict(input_size=old.input_size if input_columns is None else len(input_columns),
                    hidden_size=len(units[0][0]), num_layers=old.num_layers, bias=old.bias,
                    batch_first=old.batch_first, dropout=old.dropout, bidirectional=old.bidirectional)
    if isinstance(old, nn.LSTM):
        settings["proj_size"] = projection
    if isinstance(old, nn.RNN):
        settings["nonlinearity"] = old.nonlinearity
    reference = old.weight_ih_l0
    new = type(old)(**settings).to(device=reference.device, dtype=reference.dtype)
    gates = GATES[type(old)]
    state = {}
    for index, per_layer in enumerate(units):
        for direction, own in enumerate(per_layer):
            suffix = f"_l{index}{'_reverse' if direction else ''}"
            rows = torch.cat([gate * H + own for gate in range(gates)])
            if index == 0:
                columns = input_columns
            elif projection:
                columns = None  # the previous layer's output is its projection, whose width stays
            else:
                below = units[index - 1]
                columns = torch.cat([below[0]] + ([H + below[1]] if len(below) > 1 else []))
            state[f"weight_ih{suffix}"] = _select(getattr(old, f"weight_ih{suffix}"), rows, columns)
            state[f"weight_hh{suffix}"] = _select(getattr(old, f"weight_hh{suffix}"), rows,
                                                  None if projection else own)
            if old.bias:
                for kind in ("bias_ih", "bias_hh"):
                    state[f"{kind}{suffix}"] = _select(getattr(old, f"{kind}{suffix}"), rows, None)
            if projection:
                state[f"weight_hr{suffix}"] = _select(getattr(old, f"weight_hr{suffix}"), None, own)
    new.load_state_dict(state)
    _copy_requires_grad(old, new)
    new.train(old.training)
    return new


def _pruned_consumer(old: nn.Module, columns: torch.Tensor) -> nn.Module:
    """A new nn.Linear (input columns cut) or nn.LayerNorm (weight and bias entries cut)."""
    reference = next(old.parameters(), None)
    where = {} if reference is None else dict(device=reference.device, dtype=reference.dtype)
    with torch.no_grad():
        if isinstance(old, nn.Linear):
            new = nn.Linear(len(columns), old.out_features, bias=old.bias is not None, **where)
            new.weight.copy_(_select(old.weight, None, columns))
            if old.bias is not None:
                new.bias.copy_(old.bias)
        else:
            new = nn.LayerNorm(len(columns), eps=old.eps, elementwise_affine=old.elementwise_affine,
                               bias=old.bias is not None, **where)
            for name in ("weight", "bias"):
                if getattr(old, name) is not None:
                    getattr(new, name).copy_(_select(getattr(old, name), columns, None))
    _copy_requires_grad(old, new)
    new.train(old.training)
    return new


def _select(tensor: torch.Tensor, rows: torch.Tensor | None, columns: torch.Tensor | None) -> torch.Tensor:
    result = tensor.detach()
    if rows is not None:
        result = result.index_select(0, rows.to(result.device))
    if columns is not None:
        result = result.index_select(1, columns.to(result.device))
    return result.clone().contiguous()


def _copy_requires_grad(old: nn.Module, new: nn.Module) -> None:
    flags = {name: parameter.requires_grad for name, parameter in old.named_parameters()}
    for name, parameter in new.named_parameters():
        parameter.requires_grad_(flags.get(name, True))


def _verify_runs(pruned: nn.Module, graph: UnitGraph, example_inputs) -> None:
    """Run the pruned copy once; initial states among the inputs are rebuilt as zeros of the new width."""
    inputs = list(example_inputs if isinstance(example_inputs, tuple) else (example_inputs,))
    parameters = list(inspect.signature(pruned.forward).parameters)
    for argument, module_name in graph.initial_state_inputs.items():
        position = parameters.index(argument)
        if position < len(inputs) and inputs[position] is not None:
            inputs[position] = _zero_state(pruned.get_submodule(module_name), inputs[position])
    was_training = pruned.training
    pruned.eval()
    try:
        with torch.no_grad():
            pruned(*inputs)
    except Exception as error:  # whatever the user's forward raises, the message must say what to look at
        raise InvalidInputError(
            f"the pruned {type(pruned).__name__} no longer runs on the example inputs ({type(error).__name__}: "
            f"{error}); a size kept outside the pruned modules (an attribute used in a view, a reshape or "
            "init_hidden) must follow the modules' new hidden_size / in_features") from error
    finally:
        pruned.train(was_training)


def _zero_state(module: nn.Module, old_state):
    """Zeros shaped like `old_state` but at `module`'s (new) hidden size."""
    projection = getattr(module, "proj_size", 0)
    if isinstance(old_state, tuple):
        h, c = old_state
        return (h.new_zeros(*h.shape[:-1], projection or module.hidden_size),
                c.new_zeros(*c.shape[:-1], module.hidden_size))
    return old_state.new_zeros(*old_state.shape[:-1], module.hidden_size)
