"""Who consumes each recurrent layer's hidden units, in any model holding nn.LSTM / nn.GRU / nn.RNN
modules: found by tracing the model on an example input (torch.fx, recurrent modules as leaves)
and following each layer's unit axis through the traced operations.

    graph = trace_unit_graph(model, (tokens,))
    graph.layers              # ["rnn.l0", "rnn.l1"]: names as trajectories/layers.py gives them
    graph.consumers           # {"decoder": Consumer(kind="linear", layout=(("rnn.l1", 200),))}
    graph.blocked             # {"rnn.l1": "its units reach `decoder`, whose weight is tied to ..."}

A value's units are described by one axis and a layout along it: segments (layer name or None for
columns that come from elsewhere, width). The output of a bidirectional layer is, on its last axis,

    [ rnn.l1 (H) | rnn.l1_reverse (H) ]      columns k and H + k belong to unit k of each direction

and h_n is a stack over (layer, direction) whose last axis is one layer's units, so h_n[-1] is the
last layer's last direction. Operations known to keep units apart (dropout, activations, indexing
other axes, concatenation, reductions over time, reshapes that keep the unit axis whole) carry the
layout on; nn.Linear, nn.LayerNorm and recurrent modules consume it (their input columns are cut).
Anything else that touches units (a sum or matmul over the hidden axis, a reshape mixing it with
another axis, an unknown module, a weight shared with another module) blocks the layers involved:
`blocked` says why, and analysis.pruning.generic_surgery refuses to prune them. Nothing is guessed.
"""
from __future__ import annotations

import inspect
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from analysis.errors import InvalidInputError
from analysis.pruning.unit_ops import (
    MixedUnitsError,
    Stacked,
    Units,
    ValueTuple,
    cat_units,
    index_units,
    layers_in,
    permute_units,
    pointwise_units,
    reduce_units,
    reshape_units,
    stack_units,
)

RECURRENT_TYPES = (nn.LSTM, nn.GRU, nn.RNN)
# Modules that act on each unit separately (or on nothing but the batch/time axes).
PASS_THROUGH_MODULES = (nn.Dropout, nn.Dropout1d, nn.AlphaDropout, nn.Identity, nn.ReLU, nn.Tanh, nn.Sigmoid,
                        nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softsign, nn.Hardtanh, nn.Mish)


@dataclass(frozen=True)
class RecurrentModule:
    """One nn.LSTM / nn.GRU / nn.RNN of the model and the names of its layer directions."""

    name: str
    module: nn.Module
    layer_names: tuple[tuple[str, ...], ...]   # [layer][direction]

    @property
    def all_layers(self) -> list[str]:
        return [name for per_layer in self.layer_names for name in per_layer]


@dataclass(frozen=True)
class Consumer:
    """A module whose input columns are units: kind "linear", "layernorm" or "recurrent" (layer 0's weight_ih)."""

    name: str
    kind: str
    layout: tuple[tuple[str | None, int], ...]


@dataclass
class UnitGraph:
    """The result of `trace_unit_graph`: recurrent modules, the consumers of their units, blocked layers."""

    recurrent: dict[str, RecurrentModule] = field(default_factory=dict)
    consumers: dict[str, Consumer] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)
    initial_state_inputs: dict[str, str] = field(default_factory=dict)  # forward argument -> recurrent module

    @property
    def layers(self) -> list[str]:
        return [name for rnn in self.recurrent.values() for name in rnn.all_layers]

    def block(self, layers, reason: str) -> None:
        for layer in layers:
            self.blocked.setdefault(layer, reason)


def layer_names_of(prefix: str, module: nn.Module) -> tuple[tuple[str, ...], ...]:
    """Names of each direction of each layer, exactly as trajectories/layers.py names them."""
    dot = f"{prefix}." if prefix else ""
    directions = ("",) + (("_reverse",) if module.bidirectional else ())
    return tuple(tuple(f"{dot}l{index}{suffix}" for suffix in directions) for index in range(module.num_layers))


def trace_unit_graph(model: nn.Module, example_inputs) -> UnitGraph:
    """Trace `model` on `example_inputs` and find what consumes each recurrent layer's units.

    Parameters
    ----------
    model : any nn.Module holding nn.LSTM / nn.GRU / nn.RNN modules; its forward must be traceable
        by torch.fx (no Python control flow on tensor values). Left unchanged.
    example_inputs : a tensor or a tuple of forward's positional arguments (None for an argument
        left at its default, e.g. an initial hidden state).

    Returns
    -------
    UnitGraph with the recurrent modules (and their layer names), each consumer's input layout,
    and the layers that cannot be pruned, each with the reason.
    """
    if isinstance(model, RECURRENT_TYPES) or not isinstance(model, nn.Module):
        raise InvalidInputError(f"trace_unit_graph needs a model that contains recurrent modules and what consumes "
                                f"them, got {type(model).__name__}")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    graph = UnitGraph()
    for name, module in model.named_modules():
        if isinstance(module, nn.RNNBase):
            graph.recurrent[name] = RecurrentModule(name, module, layer_names_of(name, module))
            if type(module) not in RECURRENT_TYPES:
                graph.block(graph.recurrent[name].all_layers,
                            f"`{name}` is a {type(module).__name__}, a subclass of a torch recurrent module that "
                            "surgery cannot rebuild")
    if not graph.recurrent:
        raise InvalidInputError(f"{type(model).__name__} holds no nn.LSTM, nn.GRU or nn.RNN module")
    traced, values = _trace_and_run(model, inputs)
    _Propagation(model, graph, traced, values).run()
    return graph


class _LeafRecurrentTracer(fx.Tracer):
    """torch.fx tracer that never looks inside a recurrent module (subclasses included)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, nn.RNNBase) or super().is_leaf_module(module, qualified_name)


def _trace_and_run(model: nn.Module, inputs: tuple):
    """The traced graph, and every node's value on the example inputs (for shapes and index arguments)."""
    parameters = list(inspect.signature(model.forward).parameters)
    if len(inputs) > len(parameters):
        raise InvalidInputError(f"{len(inputs)} example inputs for {type(model).__name__}.forward, which takes "
                                f"{len(parameters)} arguments ({parameters})")
    # Arguments given as None or not given are fixed at trace time, so `if hidden is None:` traces.
    concrete = {name: None for name, value in zip(parameters, inputs) if value is None}
    signature = inspect.signature(model.forward)
    for name in parameters[len(inputs):]:
        default = signature.parameters[name].default
        if default is not inspect.Parameter.empty:
            concrete[name] = default
    tracer = _LeafRecurrentTracer()
    tracer.record_stack_traces = True
    try:
        traced = tracer.trace(model, concrete_args=concrete or None)
    except Exception as error:  # torch.fx raises many types; the caller needs one message
        raise InvalidInputError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(error).__name__}: {error}); structured "
            "pruning of a model of your own needs a forward without Python control flow on tensor values") from error
    module = fx.GraphModule(model, traced)
    values: dict[fx.Node, object] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            values[node] = super().run_node(node)
            return values[node]

    given = [value for value in inputs if value is not None]
    # fork_rng: dropout in a training-mode model must not move the caller's random stream
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        try:
            Recorder(module).run(*given)
        except Exception as error:
            raise InvalidInputError(f"{type(model).__name__} does not run on the example inputs as traced "
                                    f"({type(error).__name__}: {error})") from error
    return traced, values


def _where(node: fx.Node) -> str:
    """The user's source line a traced node came from, when torch.fx recorded it."""
    lines = (node.stack_trace or "").splitlines()
    for first, second in zip(lines, lines[1:]):
        if first.strip().startswith("File") and "/torch/" not in first:
            location = first.strip().split(", in ")[0].replace("File ", "")
            return f" at {location}: `{second.strip()}`"
    return ""


class _Propagation:
    """Walks the traced graph in order, carrying each value's unit layout (Units / Stacked / ValueTuple)."""

    def __init__(self, model: nn.Module, graph: UnitGraph, traced: fx.Graph, values: dict):
        self.model, self.graph, self.traced, self.values = model, graph, traced, values
        self.units: dict[fx.Node, object] = {}
        self.modules = dict(model.named_modules())
        self.calls: dict[str, list[tuple]] = {}
        self.shared = _shared_parameter_owners(model)

    def run(self) -> None:
        placeholders = [node for node in self.traced.nodes if node.op == "placeholder"]
        for node in self.traced.nodes:
            carried = [value for value in _flat(self._arg_units(node)) if value is not None]
            if node.op == "call_module" and isinstance(self.modules[node.target], nn.RNNBase):
                self.units[node] = self._recurrent_call(node, placeholders)
            elif node.op == "output":
                for value in carried:
                    if not isinstance(value, Stacked):  # returned states are fed back in, not consumed
                        self._refuse(node, value, "leave the model through its output, where what consumes them "
                                                  "cannot be cut")
            elif carried:
                try:
                    self.units[node] = self._transfer(node)
                except MixedUnitsError as refusal:
                    for value in carried:
                        self._refuse(node, value, str(refusal))
        for name, layouts in self.calls.items():
            kind = layouts[0][0]
            distinct = {layout for _, layout in layouts}
            if len(distinct) > 1:
                self.graph.block(layers_in(*[Units(0, layout) for layout in distinct]),
                                 f"`{name}` is called on units of different layouts {sorted(distinct, key=str)}")
            else:
                self.graph.consumers[name] = Consumer(name, kind, layouts[0][1])

    def _arg_units(self, node: fx.Node):
        # literals (dims, indices) map to None too: only values traced from the recurrent outputs carry units
        return fx.node.map_aggregate((node.args, node.kwargs),
                                     lambda arg: self.units.get(arg) if isinstance(arg, fx.Node) else None)

    def _concrete(self, node: fx.Node):
        return fx.node.map_arg((node.args, node.kwargs), lambda arg: self.values.get(arg))

    def _refuse(self, node: fx.Node, value, why: str) -> None:
        layers = layers_in(value)
        what = f"`{node.target}`" if node.op == "call_module" else f"operation {_describe(node)}"
        self.graph.block(layers, f"its units reach {what}{_where(node)}, and {why}")

    def _consume(self, name: str, kind: str, value, node: fx.Node) -> None:
        if not isinstance(value, Units) or value.axis != self.values[node.args[0]].dim() - 1:
            raise MixedUnitsError(f"`{name}` reads units on an axis other than its last (feature) axis")
        self.calls.setdefault(name, []).append((kind, value.layout))

    def _recurrent_call(self, node: fx.Node, placeholders: list[fx.Node]):
        name = node.target
        rnn = self.graph.recurrent[name]
        module = rnn.module
        args, _ = self._arg_units(node)
        if len(node.args) > 1 and node.args[1] in placeholders:
            self.graph.initial_state_inputs[node.args[1].target] = name
        if len(args) > 1 and any(value is not None for value in _flat(args[1])):
            for value in _flat(args[1]):
                if value is not None:
                    self._refuse(node, value, "an initial state's width is tied to this module's hidden size")
        if args and args[0] is not None:
            try:
                self._consume(name, "recurrent", args[0], node)
            except MixedUnitsError as refusal:
                self._refuse(node, args[0], str(refusal))
        # Output and h_n carry the last layer's units, unless projected (their width is proj_size then,
        # which pruning never changes); c_n always carries the cell units.
        projected = getattr(module, "proj_size", 0) > 0
        hidden = module.hidden_size
        last = rnn.layer_names[-1]
        output = None if projected else Units(self.values[node][0].dim() - 1, tuple((layer, hidden) for layer in last))
        states = tuple(name for per_layer in rnn.layer_names for name in per_layer)
        h_n = None if projected else Stacked(states, hidden)
        if isinstance(module, nn.LSTM):
            return ValueTuple((output, ValueTuple((h_n, Stacked(states, hidden)))))
        return ValueTuple((output, h_n))

    def _transfer(self, node: fx.Node):
        """The unit layout of `node`'s result from its arguments'; raises MixedUnitsError where units would mix."""
        (args, kwargs), (concrete_args, concrete_kwargs) = self._arg_units(node), self._concrete(node)
        result = self.values[node]
        first = args[0] if args else None
        if node.op == "call_module":
            module = self.modules[node.target]
            if isinstance(module, PASS_THROUGH_MODULES):
                return first
            if type(module) in (nn.Linear, nn.LayerNorm):
                self._check_replaceable(node.target, module)
                if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
                    raise MixedUnitsError("it normalises over more than the unit axis")
                self._consume(node.target, "linear" if isinstance(module, nn.Linear) else "layernorm", first, node)
                return first if isinstance(module, nn.LayerNorm) else None
            raise MixedUnitsError(f"a {type(module).__name__} is not known to keep hidden units apart")
        target = node.target
        method = node.target if node.op == "call_method" else _torch_function_name(node.target)
        if target is operator.getitem:
            if isinstance(first, ValueTuple):
                chosen = first.items[concrete_args[1]]
                return ValueTuple(chosen) if isinstance(chosen, tuple) else chosen
            return index_units(first, concrete_args[1], self.values[node.args[0]].dim())
        if target is getattr and concrete_args[1] in ("shape", "dtype", "device", "ndim", "is_cuda"):
            return None
        if target is getattr and concrete_args[1] in ("values", "indices") and isinstance(first, ValueTuple):
            return first.items[0 if concrete_args[1] == "values" else 1]
        if method in ("size", "dim", "numel", "get_device"):
            return None
        if method in _POINTWISE or target in _POINTWISE_FUNCTIONS:
            operands = list(args) + list(kwargs.values())
            shapes = [_shape(value) for value in list(concrete_args) + list(concrete_kwargs.values())]
            return pointwise_units(operands, shapes, result.dim())
        if method in ("transpose", "swapaxes", "permute", "t"):
            return permute_units(first, method, concrete_args[1:], self.values[node.args[0]].dim())
        if method in ("view", "reshape", "flatten", "unsqueeze", "squeeze", "unflatten"):
            return reshape_units(first, tuple(self.values[node.args[0]].shape), tuple(result.shape))
        if method in ("mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "nansum", "nanmean"):
            dims = concrete_kwargs.get("dim", concrete_args[1] if len(concrete_args) > 1 else None)
            reduced = reduce_units(first, dims, self.values[node.args[0]].dim(),
                                   bool(concrete_kwargs.get("keepdim", concrete_args[2] if len(concrete_args) > 2
                                                            and isinstance(concrete_args[2], bool) else False)))
            return ValueTuple((reduced, reduced)) if isinstance(result, tuple) else reduced
        if method in ("softmax", "log_softmax"):
            dim = concrete_kwargs.get("dim", concrete_args[1] if len(concrete_args) > 1 else None)
            if isinstance(first, Units) and dim is not None and dim % result.dim() != first.axis:
                return first
            raise MixedUnitsError("a softmax over the unit axis mixes hidden units")
        if method in ("cat", "concat", "concatenate", "stack"):
            tensors = concrete_args[0]
            dim = concrete_kwargs.get("dim", concrete_args[1] if len(concrete_args) > 1 else 0)
            join = cat_units if method != "stack" else stack_units
            return join(list(args[0]), [tuple(tensor.shape) for tensor in tensors], dim, result.dim())
        raise MixedUnitsError("it is not known to keep hidden units apart (it may sum or multiply over them)")

    def _check_replaceable(self, name: str, module: nn.Module) -> None:
        for parameter_name, parameter in module.named_parameters(recurse=False):
            owners = [owner for owner in self.shared.get(id(parameter), []) if owner != f"{name}.{parameter_name}"]
            if owners:
                raise MixedUnitsError(f"its {parameter_name} is tied to {owners[0]} (shared with another module, "
                                      "e.g. the embedding), so its width cannot change")
        if torch.nn.utils.parametrize.is_parametrized(module):
            raise MixedUnitsError("it is parametrized (e.g. weight_norm), which surgery cannot rebuild")


_POINTWISE = {"relu", "tanh", "sigmoid", "gelu", "silu", "elu", "leaky_relu", "dropout", "contiguous", "float",
              "double", "half", "bfloat16", "to", "clone", "detach", "type_as", "abs", "neg", "exp", "log", "pow",
              "sqrt", "add", "sub", "mul", "div", "true_divide", "clamp", "clip", "masked_fill", "where",
              "relu_", "tanh_", "sigmoid_", "add_", "mul_", "softsign", "hardtanh", "mish", "square", "cpu", "cuda"}
_POINTWISE_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
                        F.dropout, F.relu, F.gelu, F.silu, F.elu, F.leaky_relu, F.tanh, F.sigmoid, torch.tanh,
                        torch.sigmoid, torch.relu, torch.where, torch.clamp}


def _torch_function_name(function) -> str:
    """The name of a torch / torch.nn.functional function ("" for anything else, e.g. a helper of the user's)."""
    name = getattr(function, "__name__", "")
    return name if getattr(torch, name, None) is function or getattr(F, name, None) is function else ""


def _describe(node: fx.Node) -> str:
    if isinstance(node.target, str):
        return f"`.{node.target}()` (node {node.name!r})"
    module = getattr(node.target, "__module__", None) or "torch"
    module = {"_operator": "operator", "torch._C._nn": "torch.nn.functional"}.get(module, module)
    return f"`{module}.{getattr(node.target, '__name__', node.target)}` (node {node.name!r})"


def _shape(value) -> tuple | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _flat(value):
    """Every leaf of nested tuples / lists / dicts / ValueTuples (units or None)."""
    if isinstance(value, ValueTuple):
        for item in value.items:
            yield from _flat(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _flat(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flat(item)
    else:
        yield value


def _shared_parameter_owners(model: nn.Module) -> dict[int, list[str]]:
    """Parameter id -> every name it is registered under, for parameters registered more than once (tied weights)."""
    owners: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(parameter), []).append(name)
    return {key: names for key, names in owners.items() if len(names) > 1}


def layout_sizes(layout: Sequence[tuple[str | None, int]]) -> int:
    return sum(size for _, size in layout)
