"""A word language model saved by someone else's training script, read from its state dict: which
tensors are the embedding, the recurrent stack and the decoder, the same model rebuilt from plain
torch modules, and its weights under the names of dynaprune's RNNLanguageModel.

The shape is pytorch/examples word_language_model's RNNModel:

    tokens (L, B) -> embedding (V, E) -> nn.LSTM / nn.GRU / nn.RNN, k layers -> linear decoder (V, H) + bias (V,)

but the tensors are told apart by their shapes (E is the first recurrent layer's input size, H the
last one's hidden size; only the embedding has no bias beside it), and by name only where shapes
leave a choice, so `encoder.weight` may as well be `embedding.weight` or `wte.weight`.

    layout = foreign_layout(state, source="step_900.pt")     # refuses what it cannot place, naming the keys
    model = RNNLanguageModel(layout.model_config(dropout=0.2))
    model.load_state_dict(layout.converted(state))
    check_same_outputs(ReferenceModel(layout, state), model, tokens, source="step_900.pt")
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from analysis.errors import CheckpointError
from analysis.lm.model import ModelConfig
from analysis.trajectories.layers import RecurrentLayerInfo, find_recurrent_layers

# RecurrentLayerInfo.kind (the torch class) -> ModelConfig.rnn_type; nn.RNN is taken to be tanh, its default.
RNN_TYPE_OF_KIND = {"LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN_TANH"}
TORCH_MODULES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}
# Name fragments that break a tie between tensors of the same shape.
EMBEDDING_HINTS = ("encoder", "embed", "emb", "wte", "lookup")
DECODER_HINTS = ("decoder", "decode", "head", "out", "fc", "linear", "proj", "classifier", "logit", "softmax")
# Outputs of the original and the imported model must agree this closely (absolute and relative).
OUTPUT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ForeignLayout:
    """Where each part of the model sits in the foreign state dict."""

    source: str
    shapes: dict[str, tuple[int, ...]]
    embedding_key: str
    layers: tuple[RecurrentLayerInfo, ...]
    decoder_weight_key: str  # the embedding's key when the weights are tied and saved once
    decoder_bias_key: str | None
    tied: bool

    @property
    def vocab_size(self) -> int:
        return self.shapes[self.embedding_key][0]

    @property
    def embedding_size(self) -> int:
        return self.shapes[self.embedding_key][1]

    @property
    def hidden_sizes(self) -> list[int]:
        return [info.hidden_size for info in self.layers]

    @property
    def rnn_type(self) -> str:
        return RNN_TYPE_OF_KIND[self.layers[0].kind]

    def model_config(self, dropout: float = 0.0) -> ModelConfig:
        """The RNNLanguageModel that computes what this model computes."""
        return ModelConfig(vocab_size=self.vocab_size, embedding_size=self.embedding_size,
                           hidden_sizes=self.hidden_sizes, rnn_type=self.rnn_type, dropout=dropout,
                           tie_weights=self.tied).validate()

    def check_same_tensors(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """CheckpointError unless `state` has exactly this layout's tensor names and shapes."""
        shapes = {key: tuple(value.shape) for key, value in state.items()}
        if shapes == self.shapes:
            return
        missing, extra = sorted(self.shapes.keys() - shapes.keys()), sorted(shapes.keys() - self.shapes.keys())
        reshaped = sorted(key for key in shapes.keys() & self.shapes.keys() if shapes[key] != self.shapes[key])
        details = [f"{label} {', '.join(keys[:6])}" for label, keys in
                   (("missing", missing), ("extra", extra), ("other shapes for", reshaped)) if keys]
        raise CheckpointError(f"{source}: holds other tensors than {self.source} ({'; '.join(details)}); all "
                              f"checkpoints of the folder must come from the same model")

    def converted(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state` under RNNLanguageModel's names, as float32; absent biases become zeros (what
        a layer built with bias=False computes)."""
        def tensor(key: str) -> torch.Tensor:
            return state[key].detach().to(device="cpu", dtype=torch.float32).clone()

        out = {"encoder.weight": tensor(self.embedding_key)}
        for i, info in enumerate(self.layers):
            rows = info.gates * info.hidden_size
            out[f"rnns.{i}.weight_ih_l0"] = tensor(info.weight_ih_key)
            out[f"rnns.{i}.weight_hh_l0"] = tensor(info.weight_hh_key)
            out[f"rnns.{i}.bias_ih_l0"] = tensor(info.bias_ih_key) if info.has_bias else torch.zeros(rows)
            out[f"rnns.{i}.bias_hh_l0"] = tensor(info.bias_hh_key) if info.has_bias else torch.zeros(rows)
        out["decoder.weight"] = out["encoder.weight"] if self.tied else tensor(self.decoder_weight_key)
        out["decoder.bias"] = (tensor(self.decoder_bias_key) if self.decoder_bias_key is not None
                               else torch.zeros(self.vocab_size))
        return out


def foreign_layout(state: Mapping[str, torch.Tensor], source: str) -> ForeignLayout:
    """Place every tensor of a word language model's state dict, or raise CheckpointError naming
    the keys that do not fit (bidirectional or projected layers, several stacks, no decoder,
    tensors left over)."""
    shapes = {str(key): tuple(value.shape) for key, value in state.items()}
    layers = find_recurrent_layers(shapes, source=source)  # refuses LSTM proj_size itself
    _check_one_stack(layers, source)
    placed = {key for info in layers for key in info.parameter_keys}
    rest = {key: shape for key, shape in shapes.items() if key not in placed}
    matrices = {key: shape for key, shape in rest.items() if len(shape) == 2}
    vectors = {key: shape for key, shape in rest.items() if len(shape) == 1}

    def bias_of(key: str) -> str | None:
        """The (rows,) bias of the same module as matrix `key`, if any: only a linear layer has one."""
        if not key.endswith("weight"):
            return None
        bias = key[: -len("weight")] + "bias"
        return bias if vectors.get(bias) == (matrices[key][0],) else None

    size_in, size_out = layers[0].input_size, layers[-1].hidden_size
    embedding = _pick_embedding(matrices, bias_of, size_in, rest, source)
    vocab = matrices[embedding][0]
    decoders = [key for key, shape in matrices.items() if key != embedding and shape == (vocab, size_out)]
    if len(decoders) > 1:
        decoders = [key for key in decoders if bias_of(key)] or decoders
        decoders = _by_hint(decoders, DECODER_HINTS, EMBEDDING_HINTS)
        if len(decoders) != 1:
            raise CheckpointError(f"{source}: cannot tell which of {', '.join(decoders)} is the decoder")
    lone_biases = [key for key, shape in vectors.items() if shape == (vocab,) and not _has_weight(key, matrices)]
    if decoders:
        decoder, bias = decoders[0], bias_of(decoders[0]) or (lone_biases[0] if len(lone_biases) == 1 else None)
    elif bias_of(embedding) or (lone_biases and size_in == size_out):
        # tied weights saved once: the one (V, E) matrix is the decoder's as well
        decoder, bias = embedding, bias_of(embedding) or lone_biases[0]
    else:
        raise CheckpointError(
            f"{source}: no decoder: expected a ({vocab}, {size_out}) matrix (vocabulary x the last layer's hidden "
            f"size) with a ({vocab},) bias beside the embedding {embedding!r}; found {_describe(rest)}")
    tied = decoder == embedding or bool(torch.equal(state[decoder], state[embedding]))
    left = sorted(set(rest) - {embedding, decoder, bias})
    if left:
        raise CheckpointError(
            f"{source}: cannot place {_describe({key: shapes[key] for key in left})}: dynaprune import reads an "
            f"embedding ({embedding}), one recurrent stack ({', '.join(info.name for info in layers)}) and a linear "
            f"decoder ({decoder}{', ' + bias if bias else ''}), nothing else")
    return ForeignLayout(source=source, shapes=shapes, embedding_key=embedding, layers=tuple(layers),
                         decoder_weight_key=decoder, decoder_bias_key=bias, tied=tied)


def _check_one_stack(layers: list[RecurrentLayerInfo], source: str) -> None:
    """One stack read bottom to top: all forward, one kind, each layer fed by the one below. It is
    one multi-layer module (rnn.l0, rnn.l1, ...) or single-layer modules numbered in order (rnns.0.l0, ...)."""
    reverse = [info.weight_hh_key for info in layers if info.reverse]
    if reverse:
        raise CheckpointError(f"{source}: bidirectional layers ({', '.join(reverse)}): a language model reads "
                              f"left to right, and dynaprune prunes unidirectional stacks only")
    kinds = sorted({info.kind for info in layers})
    if len(kinds) > 1:
        raise CheckpointError(f"{source}: recurrent layers of several kinds ({', '.join(kinds)}) in "
                              f"{', '.join(info.name for info in layers)}; dynaprune models use one kind")
    prefixes = list(dict.fromkeys(info.prefix for info in layers))
    numbered = len({re.sub(r"\d+", "#", prefix) for prefix in prefixes}) == 1 and all(
        info.index == 0 for info in layers)
    if len(prefixes) > 1 and not numbered:
        raise CheckpointError(f"{source}: several recurrent modules ({', '.join(prefixes)}); dynaprune import reads "
                              f"one stack: one multi-layer module, or single-layer modules numbered in order")
    if len(prefixes) == 1 and [info.index for info in layers] != list(range(len(layers))):
        raise CheckpointError(f"{source}: recurrent layers {', '.join(info.name for info in layers)} are not "
                              f"numbered 0, 1, ...; a layer is missing")
    if len(prefixes) == 1 and len({info.hidden_size for info in layers}) > 1:
        raise CheckpointError(f"{source}: the layers of {prefixes[0] or 'the module'} have different hidden sizes "
                              f"({', '.join(str(info.hidden_size) for info in layers)}); not one torch module")
    for below, above in zip(layers, layers[1:]):
        if above.input_size != below.hidden_size:
            raise CheckpointError(f"{source}: layer {above.name} takes inputs of size {above.input_size}, but "
                                  f"{below.name} below it gives {below.hidden_size}; not one stack")


def _pick_embedding(matrices: dict, bias_of, size_in: int, rest: dict, source: str) -> str:
    """The (V, E) matrix feeding the first layer: the one without a bias beside it, else by name."""
    candidates = [key for key, shape in matrices.items() if shape[1] == size_in]
    if not candidates:
        raise CheckpointError(f"{source}: no embedding: expected a (vocabulary, {size_in}) matrix, {size_in} being "
                              f"the first recurrent layer's input size; found {_describe(rest)}")
    unbiased = [key for key in candidates if bias_of(key) is None]
    if len(unbiased) == 1:
        return unbiased[0]
    if len(candidates) == 1:
        return candidates[0]
    chosen = _by_hint(unbiased or candidates, EMBEDDING_HINTS, DECODER_HINTS)
    if len(chosen) != 1:
        raise CheckpointError(f"{source}: cannot tell which of {', '.join(unbiased or candidates)} is the embedding")
    return chosen[0]


def _by_hint(keys: list[str], wanted: tuple[str, ...], unwanted: tuple[str, ...]) -> list[str]:
    """The keys whose names suggest `wanted` and not `unwanted`, if that narrows them; else all."""
    def says(key: str, hints: tuple[str, ...]) -> bool:
        return any(hint in key.lower() for hint in hints)

    narrowed = [key for key in keys if says(key, wanted) and not says(key, unwanted)]
    return narrowed or keys


def _has_weight(bias_key: str, matrices: dict) -> bool:
    return bias_key.endswith("bias") and bias_key[: -len("bias")] + "weight" in matrices


def _describe(shapes: Mapping[str, tuple]) -> str:
    items = [f"{key} {tuple(shape)}" for key, shape in shapes.items()]
    return ", ".join(items[:8]) + (", ..." if len(items) > 8 else "") if items else "nothing else"


class ReferenceModel(nn.Module):
    """The foreign model as its own script computes it, rebuilt from its tensors with plain torch
    modules (one nn.LSTM / nn.GRU / nn.RNN per recurrent module, F.embedding, F.linear) and none of
    dynaprune's: the yardstick the import is checked against."""

    def __init__(self, layout: ForeignLayout, state: Mapping[str, torch.Tensor]):
        super().__init__()

        def tensor(key: str) -> torch.Tensor:
            return state[key].detach().to(device="cpu", dtype=torch.float32)

        self.embedding = tensor(layout.embedding_key)
        self.decoder_weight = tensor(layout.decoder_weight_key)
        self.decoder_bias = None if layout.decoder_bias_key is None else tensor(layout.decoder_bias_key)
        self.stack = nn.ModuleList()
        for prefix in dict.fromkeys(info.prefix for info in layout.layers):
            layers = [info for info in layout.layers if info.prefix == prefix]
            first = layers[0]
            module = TORCH_MODULES[first.kind](first.input_size, first.hidden_size, num_layers=len(layers),
                                               bias=first.has_bias)
            dot = f"{prefix}." if prefix else ""
            module.load_state_dict({key[len(dot):]: tensor(key) for info in layers for key in info.parameter_keys})
            self.stack.append(module)
        self.eval()

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (L, B) -> logits (L, B, V), from a zero hidden state."""
        output = F.embedding(tokens, self.embedding)
        for module in self.stack:
            output, _ = module(output)
        return F.linear(output, self.decoder_weight, self.decoder_bias)


def check_same_outputs(reference: ReferenceModel, model: nn.Module, tokens: torch.Tensor, source: str) -> float:
    """The largest difference between the two models' logits on `tokens` (L, B); CheckpointError
    unless they agree to OUTPUT_TOLERANCE."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = reference(tokens)
            actual, _ = model(tokens)
    finally:
        model.train(was_training)
    difference = float((expected - actual).abs().max())
    if not torch.allclose(expected, actual, rtol=OUTPUT_TOLERANCE, atol=OUTPUT_TOLERANCE):
        raise CheckpointError(
            f"{source}: the imported model's outputs differ from the original's by up to {difference:.3g} (tolerance "
            f"{OUTPUT_TOLERANCE:g}) on a batch of {tokens.shape[0]}x{tokens.shape[1]} tokens; refusing the import. "
            f"The state dict's tensors were placed by shape and name, and this model is not the embedding -> "
            f"recurrent stack -> linear decoder shape dynaprune reads")
    return difference
