"""How tensor operations move hidden units around: the rules analysis.pruning.graph applies to each
traced operation. A rule takes the unit layout of the operands (and their concrete shapes) and
returns the result's, or raises MixedUnitsError where the units could not be cut afterwards.

    Units(axis=2, layout=(("rnn.l1", 8), ("rnn.l1_reverse", 8)))    # bidirectional output, (T, B, 16)
    index_units(that, (slice(None), -1), ndim=3)                     # output[:, -1] -> Units(axis=1, ...)
    Stacked(("rnn.l0", "rnn.l0_reverse"), 8)                         # h_n: (layers x directions, B, 8)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class MixedUnitsError(Exception):
    """An operation mixes hidden units, or moves them where they cannot be followed; says which and why."""


@dataclass(frozen=True)
class Units:
    """A tensor whose axis `axis` is made of hidden units: segments (layer name, width) side by side;
    a segment named None holds columns from elsewhere (not prunable here, kept whole)."""

    axis: int
    layout: tuple[tuple[str | None, int], ...]

    @property
    def width(self) -> int:
        return sum(size for _, size in self.layout)


@dataclass(frozen=True)
class Stacked:
    """A recurrent module's h_n or c_n: axis 0 runs over (layer, direction) `names`, the last axis
    is the `hidden` units of the layer that axis 0 selects."""

    names: tuple[str, ...]
    hidden: int


@dataclass(frozen=True)
class ValueTuple:
    """A tuple result (a recurrent module's (output, h_n), max(dim)'s (values, indices))."""

    items: tuple


def layers_in(*values) -> list[str]:
    """Every layer name a set of unit values carries."""
    names: list[str] = []
    for value in values:
        if isinstance(value, Units):
            names += [name for name, _ in value.layout if name is not None]
        elif isinstance(value, Stacked):
            names += list(value.names)
        elif isinstance(value, ValueTuple):
            names += layers_in(*value.items)
    return list(dict.fromkeys(names))


def _require_units(value, what: str) -> Units:
    if isinstance(value, Stacked):
        raise MixedUnitsError(f"{what} of a stacked h_n / c_n (other than indexing it by layer) mixes layers")
    if not isinstance(value, Units):
        raise MixedUnitsError(f"{what} does not act on units in a way that can be followed")
    return value


def index_units(value, index, ndim: int):
    """`value[index]`: indexing other axes keeps the units; picking or slicing units does not."""
    if value is None:
        raise MixedUnitsError("units are used as an index")
    items = index if isinstance(index, tuple) else (index,)
    if isinstance(value, Stacked):
        first, rest = items[0], items[1:]
        if isinstance(first, int) and not isinstance(first, bool):
            if not -len(value.names) <= first < len(value.names):
                raise MixedUnitsError(f"index {first} is out of range for {len(value.names)} stacked states")
            chosen = Units(1, ((value.names[first], value.hidden),))
            return index_units(chosen, rest, 2) if rest else chosen
        if isinstance(first, slice) and not rest:
            return Stacked(tuple(value.names[first]), value.hidden)
        raise MixedUnitsError(f"indexing h_n / c_n with {index!r} cannot be followed; index the layer first "
                              "(h_n[-1]) or slice only the layer axis")
    value = _require_units(value, "indexing")
    consumed = sum(1 for item in items if item is not None and item is not Ellipsis)
    in_axis = out_axis = 0
    for item in items:
        if item is None:
            out_axis += 1
            continue
        if item is Ellipsis:
            skipped = ndim - consumed
            if in_axis <= value.axis < in_axis + skipped:
                return Units(value.axis - in_axis + out_axis, value.layout)
            in_axis, out_axis = in_axis + skipped, out_axis + skipped
            continue
        if isinstance(item, torch.Tensor) or isinstance(item, (list, bool)):
            raise MixedUnitsError("advanced (tensor or list) indexing cannot be followed")
        if in_axis == value.axis:
            if isinstance(item, slice) and item == slice(None):
                return Units(out_axis, value.layout)
            raise MixedUnitsError(f"indexing picks or slices particular hidden units ({item!r} on the unit axis)")
        in_axis += 1
        out_axis += 0 if isinstance(item, int) else 1
    return Units(value.axis - in_axis + out_axis, value.layout)


def permute_units(value, method: str, arguments, ndim: int) -> Units:
    """transpose / swapaxes / permute / t: the unit axis moves to where the permutation puts it."""
    value = _require_units(value, method)
    if method == "t":
        order = list(range(ndim))[::-1]
    elif method == "permute":
        order = list(arguments[0]) if len(arguments) == 1 and isinstance(arguments[0], (tuple, list)) \
            else list(arguments)
        order = [axis % ndim for axis in order]
    else:
        a, b = (axis % ndim for axis in arguments[:2])
        order = list(range(ndim))
        order[a], order[b] = order[b], order[a]
    return Units(order.index(value.axis), value.layout)


def reshape_units(value, in_shape: tuple, out_shape: tuple) -> Units:
    """view / reshape / flatten / (un)squeeze: allowed when the unit axis survives whole, i.e. some
    output axis has the unit axis's size with the same number of elements before and after it
    (then row-major order keeps every unit's position); a reshape that splits or merges it mixes units."""
    value = _require_units(value, "reshaping")
    a = value.axis
    before, size, after = math.prod(in_shape[:a]), in_shape[a], math.prod(in_shape[a + 1:])
    for b, out_size in enumerate(out_shape):
        if out_size == size and math.prod(out_shape[:b]) == before and math.prod(out_shape[b + 1:]) == after:
            return Units(b, value.layout)
    raise MixedUnitsError(f"the reshape {tuple(in_shape)} -> {tuple(out_shape)} merges or splits the unit axis "
                          f"(axis {a}), mixing hidden units")


def reduce_units(value, dims, ndim: int, keepdim: bool) -> Units:
    """mean / sum / max ... over `dims`: fine over time or batch, not over the unit axis."""
    value = _require_units(value, "a reduction")
    if dims is None:
        raise MixedUnitsError("a reduction over all axes mixes hidden units")
    if isinstance(dims, int) and not isinstance(dims, bool):
        dims = (dims,)
    if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) for d in dims):
        raise MixedUnitsError(f"a reduction over {dims!r} cannot be followed")
    dims = {d % ndim for d in dims}
    if value.axis in dims:
        raise MixedUnitsError("a reduction over the unit axis mixes hidden units")
    return Units(value.axis if keepdim else value.axis - sum(1 for d in dims if d < value.axis), value.layout)


def cat_units(values: list, shapes: list[tuple], dim: int, ndim: int) -> Units:
    """torch.cat: joining along the unit axis appends layouts (other tensors become None segments);
    joining along another axis needs every part to carry the same units."""
    dim %= ndim
    carried = [_require_units(value, "concatenation") for value in values if value is not None]
    if all(value.axis == dim for value in carried):
        layout: tuple = ()
        for value, shape in zip(values, shapes):
            layout += value.layout if value is not None else ((None, shape[dim]),)
        return Units(dim, layout)
    if len(carried) == len(values) and len({(value.axis, value.layout) for value in carried}) == 1:
        return carried[0]
    raise MixedUnitsError("a concatenation puts different units (or other values) on one unit axis")


def stack_units(values: list, shapes: list[tuple], dim: int, ndim: int) -> Units:
    """torch.stack: a new axis; every part must carry the same units."""
    dim %= ndim
    carried = [_require_units(value, "stacking") for value in values if value is not None]
    if len(carried) != len(values) or len({(value.axis, value.layout) for value in carried}) != 1:
        raise MixedUnitsError("a stack puts different units (or other values) on one unit axis")
    axis = carried[0].axis
    return Units(axis + 1 if dim <= axis else axis, carried[0].layout)


def pointwise_units(values: list, shapes: list, ndim: int):
    """An elementwise operation with broadcasting: every operand carrying units must bring the same
    layout to the same result axis, and the others must not span that axis (a full-width bias added
    to units would need cutting too)."""
    carried = [(value, shape) for value, shape in zip(values, shapes) if value is not None]
    if len(carried) == 1 and isinstance(carried[0][0], Stacked):
        others = [shape for value, shape in zip(values, shapes) if value is None and shape not in (None, ())]
        if others:
            raise MixedUnitsError("an elementwise operation combines h_n / c_n with another tensor")
        return carried[0][0]
    result_axes = set()
    for value, shape in carried:
        value = _require_units(value, "an elementwise operation")
        result_axes.add((value.axis + ndim - len(shape), value.layout))
    if len(result_axes) != 1:
        raise MixedUnitsError("an elementwise operation combines different units (e.g. of two layers)")
    axis, layout = result_axes.pop()
    for value, shape in zip(values, shapes):
        if value is None and shape is not None:
            own_axis = axis - (ndim - len(shape))
            if 0 <= own_axis < len(shape) and shape[own_axis] != 1:
                raise MixedUnitsError(f"an elementwise operation combines units with a tensor of shape {shape} that "
                                      "spans the unit axis and would need cutting too")
    return Units(axis, layout)
