"""Finding the nn.LSTM / nn.GRU / nn.RNN layers of a state dict from its parameter names and
shapes, and the one table of their gate blocks.

    layers = find_recurrent_layers(read_safetensors_shapes("step_100.safetensors"))
    layers[0].name, layers[0].kind, GATE_NAMES[layers[0].kind]    # "rnn.l0", "LSTM", ("input (i)", ...)
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from analysis.errors import CheckpointError, NoRecurrentLayerError

# PyTorch's gate blocks per layer kind, in row order (METHOD section 2). Kinds are the torch module
# class names; gate counts, display names and the kind a weight_hh shape implies all come from here.
GATE_NAMES: dict[str, tuple[str, ...]] = {
    "LSTM": ("input (i)", "forget (f)", "cell (g)", "output (o)"),
    "GRU": ("reset (r)", "update (z)", "new (n)"),
    "RNN": ("hidden (h)",),
}
GATES_PER_KIND = {kind: len(names) for kind, names in GATE_NAMES.items()}
_KIND_OF_GATES = {len(names): kind for kind, names in GATE_NAMES.items()}
_WEIGHT_HH = re.compile(r"^(?:(?P<prefix>.*)\.)?weight_hh_l(?P<index>\d+)(?P<reverse>_reverse)?$")


@dataclass(frozen=True)
class RecurrentLayerInfo:
    """One direction of one layer of an nn.LSTM / nn.GRU / nn.RNN, located in a state dict.

    `name` is the module prefix + ".l{index}" (+ "_reverse"), e.g. "rnn.l0", "rnns.1.l0_reverse";
    just "l0" for a bare module's state dict. Hidden unit k owns rows {g*H + k : g < gates}.
    """

    name: str
    prefix: str
    index: int
    reverse: bool
    kind: str
    gates: int
    input_size: int
    hidden_size: int
    weight_ih_key: str
    weight_hh_key: str
    bias_ih_key: str | None
    bias_hh_key: str | None

    @property
    def unit_dim(self) -> int:
        """Length d = G*(D+H) of a unit's weight vector (METHOD.md section 2)."""
        return self.gates * (self.input_size + self.hidden_size)

    @property
    def weight_ih_shape(self) -> tuple[int, int]:
        return (self.gates * self.hidden_size, self.input_size)

    @property
    def weight_hh_shape(self) -> tuple[int, int]:
        return (self.gates * self.hidden_size, self.hidden_size)

    @property
    def has_bias(self) -> bool:
        return self.bias_ih_key is not None

    @property
    def parameter_keys(self) -> list[str]:
        keys = [self.weight_ih_key, self.weight_hh_key, self.bias_ih_key, self.bias_hh_key]
        return [key for key in keys if key is not None]


def find_recurrent_layers(
    shapes: Mapping[str, tuple | torch.Size], source: str | None = None
) -> list[RecurrentLayerInfo]:
    """Recurrent layers in a {parameter name: shape} mapping, ordered by module prefix (numbers
    compared as numbers), then layer index, forward before reverse.

    Raises CheckpointError for layouts this project does not handle (LSTM proj_size, missing or
    misshapen partner tensors) and NoRecurrentLayerError when there is no recurrent layer;
    `source` (a file name) is put in front of the messages.
    """
    where = f"{source}: " if source else ""
    layers = []
    for key, shape in shapes.items():
        match = _WEIGHT_HH.match(key)
        if match is None:
            continue
        prefix, index, reverse = match["prefix"] or "", int(match["index"]), bool(match["reverse"])
        dot = f"{prefix}." if prefix else ""
        suffix = f"_l{index}{'_reverse' if reverse else ''}"
        name = f"{dot}l{index}{'_reverse' if reverse else ''}"
        if f"{dot}weight_hr{suffix}" in shapes:
            raise CheckpointError(
                f"{where}layer {name!r} is an LSTM with proj_size (has weight_hr{suffix}); "
                "projected LSTMs are not supported."
            )
        hh = tuple(shape)
        if len(hh) != 2 or hh[1] == 0 or hh[0] % hh[1] or hh[0] // hh[1] not in _KIND_OF_GATES:
            raise CheckpointError(
                f"{where}layer {name!r}: weight_hh shape {hh} is not (G*H, H) with G = 4 (LSTM), "
                "3 (GRU) or 1 (RNN); this layout (e.g. LSTM proj_size) is not supported."
            )
        hidden, gates = hh[1], hh[0] // hh[1]
        ih_key = f"{dot}weight_ih{suffix}"
        if ih_key not in shapes:
            raise CheckpointError(f"{where}layer {name!r} has {key} but no {ih_key}.")
        ih = tuple(shapes[ih_key])
        if len(ih) != 2 or ih[0] != hh[0]:
            raise CheckpointError(f"{where}layer {name!r}: {ih_key} has shape {ih}, expected ({hh[0]}, D).")
        bias_keys = [f"{dot}bias_ih{suffix}", f"{dot}bias_hh{suffix}"]
        present = [k in shapes for k in bias_keys]
        if any(present) and not all(present):
            raise CheckpointError(f"{where}layer {name!r} has only one of {bias_keys}.")
        for bias_key in bias_keys if all(present) else []:
            if tuple(shapes[bias_key]) != (hh[0],):
                raise CheckpointError(
                    f"{where}layer {name!r}: {bias_key} has shape {tuple(shapes[bias_key])}, expected ({hh[0]},)."
                )
        layers.append(RecurrentLayerInfo(
            name=name, prefix=prefix, index=index, reverse=reverse,
            kind=_KIND_OF_GATES[gates], gates=gates, input_size=ih[1], hidden_size=hidden,
            weight_ih_key=ih_key, weight_hh_key=key,
            bias_ih_key=bias_keys[0] if all(present) else None,
            bias_hh_key=bias_keys[1] if all(present) else None,
        ))
    if not layers:
        seen = ", ".join(list(shapes)[:6]) or "no tensors"
        raise NoRecurrentLayerError(
            f"{where}no nn.LSTM, nn.GRU or nn.RNN parameters (weight_hh_l<k>) found; saw {seen}"
            f"{', ...' if len(shapes) > 6 else ''}."
        )
    return sorted(layers, key=lambda info: (_natural_key(info.prefix), info.index, info.reverse))


def _natural_key(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]
