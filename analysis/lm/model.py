"""Word-level recurrent language models: embedding -> stacked recurrent layers -> linear decoder.

Each recurrent layer is its own single-layer nn.LSTM / nn.GRU / nn.RNN in `model.rnns`, so layers
can have different hidden sizes once units are pruned. Parameter names therefore read
`rnns.<i>.weight_ih_l0`, and the layer names used by trajectories and pruning plans are
`rnns.<i>.l0`.

    config = ModelConfig(vocab_size=10000, **PRESETS["ptb-small"]["model"])
    model = RNNLanguageModel(config)
    save_model("runs/ptb-small/model.pt", model, vocab, {"data_source": "ptb"})
    model, info = load_model("runs/ptb-small")        # a checkpoint file or a run directory
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from analysis.errors import CheckpointError, InvalidInputError
from analysis.runs import resolve_model_path
from analysis.trajectories.checkpoints import read_torch_file
from analysis.trajectories.layers import GATES_PER_KIND
from analysis.utils.configs import PlainConfig
from analysis.utils.fileio import atomic_path
from analysis.utils.limits import check_load_budget, one_line

RNN_TYPES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN}
# Gate blocks per hidden unit; the torch class name is the layer kind of the one gate table.
GATES_PER_UNIT = {rnn_type: GATES_PER_KIND[module.__name__] for rnn_type, module in RNN_TYPES.items()}

MODEL_FORMAT = "dynaprune-model"


@dataclass
class ModelConfig(PlainConfig):
    config_name = "model config"

    vocab_size: int
    embedding_size: int = 200
    hidden_sizes: list[int] = field(default_factory=lambda: [200, 200])
    rnn_type: str = "LSTM"
    dropout: float = 0.0
    tie_weights: bool = False
    init_range: float = 0.1

    def validate(self) -> ModelConfig:
        if self.rnn_type not in RNN_TYPES:
            raise InvalidInputError(f"rnn_type {self.rnn_type!r} is not one of {sorted(RNN_TYPES)}")
        if int(self.vocab_size) < 1 or int(self.embedding_size) < 1:
            raise InvalidInputError(
                f"vocab_size and embedding_size must be positive, got {self.vocab_size}, {self.embedding_size}")
        if not self.hidden_sizes or any(int(h) < 1 for h in self.hidden_sizes):
            raise InvalidInputError(f"hidden_sizes must be a non-empty list of positive sizes, got {self.hidden_sizes}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise InvalidInputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.tie_weights and int(self.hidden_sizes[-1]) != int(self.embedding_size):
            raise InvalidInputError(
                f"tie_weights needs the last hidden size ({self.hidden_sizes[-1]}) to equal the embedding size "
                f"({self.embedding_size}); untie the weights or change the sizes")
        return self

    @classmethod
    def _coerced(cls, values: dict[str, Any]) -> dict[str, Any]:
        if "hidden_sizes" in values:
            values["hidden_sizes"] = [int(h) for h in values["hidden_sizes"]]
        return values


# Model and training hyper-parameters of the reference configurations (METHOD section 9).
# "training" holds TrainConfig fields; "data" is the corpus the preset is meant for.
PRESETS: dict[str, dict[str, Any]] = {
    "ptb-small": {
        "model": {"embedding_size": 200, "hidden_sizes": [200, 200], "rnn_type": "LSTM",
                  "dropout": 0.0, "tie_weights": False, "init_range": 0.1},
        # Zaremba et al. sum the loss over the bptt steps (lr 1, clip 5); with the mean token loss
        # used here the same updates need lr x bptt and clip / bptt.
        "training": {"epochs": 13, "lr": 20.0, "lr_decay": 0.5, "decay_after_epoch": 4,
                     "clip": 0.25, "bptt": 20, "batch_size": 20},
        "data": "ptb",
    },
    # ptb-small with GRU layers: a second architecture for checking pruning criteria (docs/criteria.md).
    "ptb-small-gru": {
        "model": {"embedding_size": 200, "hidden_sizes": [200, 200], "rnn_type": "GRU",
                  "dropout": 0.0, "tie_weights": False, "init_range": 0.1},
        "training": {"epochs": 13, "lr": 20.0, "lr_decay": 0.5, "decay_after_epoch": 4,
                     "clip": 0.25, "bptt": 20, "batch_size": 20},
        "data": "ptb",
    },
    "ptb-medium": {
        "model": {"embedding_size": 650, "hidden_sizes": [650, 650], "rnn_type": "LSTM",
                  "dropout": 0.5, "tie_weights": False, "init_range": 0.05},
        "training": {"epochs": 39, "lr": 35.0, "lr_decay": 1 / 1.2, "decay_after_epoch": 6,
                     "clip": 5.0 / 35, "bptt": 35, "batch_size": 20},
        "data": "ptb",
    },
    "ptb-large": {
        "model": {"embedding_size": 1500, "hidden_sizes": [1500, 1500], "rnn_type": "LSTM",
                  "dropout": 0.65, "tie_weights": False, "init_range": 0.04},
        "training": {"epochs": 55, "lr": 35.0, "lr_decay": 1 / 1.15, "decay_after_epoch": 14,
                     "clip": 10.0 / 35, "bptt": 35, "batch_size": 20},
        "data": "ptb",
    },
    # Sized for the synthetic language: close to its oracle perplexity in about a minute. Plain SGD at
    # lr 1 stays at the unigram plateau on this language for several epochs; Adam leaves it at once
    # (sample_checkpoints/README.md has the run's figures).
    "synthetic-tiny": {
        "model": {"embedding_size": 32, "hidden_sizes": [64, 64], "rnn_type": "LSTM",
                  "dropout": 0.2, "tie_weights": False, "init_range": 0.1},
        "training": {"epochs": 8, "optimizer": "adam", "lr": 0.01, "lr_decay": 0.5, "decay_after_epoch": 4,
                     "clip": 5.0, "bptt": 20, "batch_size": 20},
        "data": "synthetic",
    },
}


def preset(name: str) -> dict[str, Any]:
    """The preset called `name`, with a clear error listing the known ones."""
    if name not in PRESETS:
        raise InvalidInputError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


class RNNLanguageModel(nn.Module):
    """Embedding, dropout, stacked single-layer recurrent modules with dropout after each, decoder."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        rnn_class = RNN_TYPES[config.rnn_type]
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.Embedding(config.vocab_size, config.embedding_size)
        input_sizes = [config.embedding_size] + list(config.hidden_sizes[:-1])
        extra = {"nonlinearity": "tanh"} if config.rnn_type == "RNN_TANH" else {}
        self.rnns = nn.ModuleList(
            rnn_class(int(d), int(h), num_layers=1, **extra) for d, h in zip(input_sizes, config.hidden_sizes))
        self.decoder = nn.Linear(config.hidden_sizes[-1], config.vocab_size)
        self.reset_parameters()
        if config.tie_weights:
            self.decoder.weight = self.encoder.weight

    def reset_parameters(self) -> None:
        # Zaremba et al. initialise every parameter uniformly in [-init_range, init_range].
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -self.config.init_range, self.config.init_range)

    @property
    def layer_names(self) -> list[str]:
        return [f"rnns.{i}.l0" for i in range(len(self.rnns))]

    def init_hidden(self, batch_size: int) -> list:
        weight = self.decoder.weight
        hidden = []
        for rnn in self.rnns:
            zeros = weight.new_zeros(1, batch_size, rnn.hidden_size)
            hidden.append((zeros, zeros.clone()) if isinstance(rnn, nn.LSTM) else zeros)
        return hidden

    def forward(self, tokens: torch.Tensor, hidden: list | None = None) -> tuple[torch.Tensor, list]:
        """tokens (L, B) int64 -> logits (L, B, V) and the new hidden state (one entry per layer)."""
        if hidden is None:
            hidden = self.init_hidden(tokens.shape[1])
        output = self.drop(self.encoder(tokens))
        new_hidden = []
        for rnn, layer_hidden in zip(self.rnns, hidden):
            output, layer_hidden = rnn(output, layer_hidden)
            output = self.drop(output)
            new_hidden.append(layer_hidden)
        return self._decode(output), new_hidden

    def _decode(self, output: torch.Tensor) -> torch.Tensor:
        """self.decoder(output), computed faster on CPU (benchmarks/bench_surgery_speed.py).

        F.linear's fused bias costs an extra pass over the (tokens x vocabulary) logits, and more
        than the product itself saves for a small hidden size. Where no gradient is needed
        (evaluation, a teacher's forward pass) the bias rides in the product instead: [h, 1] times
        [W | b]^T, with [W | b] kept until the weights change. In training: product, then bias in place.
        """
        weight, bias = self.decoder.weight, self.decoder.bias
        if bias is None:
            return torch.matmul(output, weight.t())
        if torch.is_grad_enabled() and (weight.requires_grad or bias.requires_grad or output.requires_grad):
            return torch.matmul(output, weight.t()).add_(bias)
        flat = output.reshape(-1, output.shape[-1])
        with_ones = torch.cat([flat, flat.new_ones(flat.shape[0], 1)], dim=1)
        dtype = self.__dict__.get("_inference_dtype", flat.dtype)
        logits = torch.mm(with_ones.to(dtype), self._weight_with_bias(weight, bias, dtype).t())
        return logits.to(flat.dtype).view(*output.shape[:-1], -1)

    def set_inference_precision(self, dtype: torch.dtype) -> RNNLanguageModel:
        """Precision of the decoder product in forward passes that need no gradient: torch.float32
        (the default: the weights' own dtype) or torch.bfloat16, for a frozen teacher.

        bfloat16 rounds h and [W | b] to 8 significant bits and the logits to bfloat16 (the sums
        are accumulated in float32). It is faster only on CPUs with bfloat16 units, and changes
        the distillation targets very little: benchmarks/bench_finetune_step.py measures both
        (docs/benchmarks.md). Passes with gradients always use the weights' own dtype.
        """
        if dtype not in (torch.float32, torch.bfloat16):
            raise InvalidInputError(f"inference precision must be torch.float32 or torch.bfloat16, got {dtype}")
        if dtype == torch.float32:  # the weights' own dtype
            self.__dict__.pop("_inference_dtype", None)
        else:
            self.__dict__["_inference_dtype"] = dtype  # a setting of this object, never saved with the model
        return self

    def _weight_with_bias(self, weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[W | b] of the decoder in `dtype`, rebuilt whenever either tensor is replaced or changed in place."""
        state = (weight._version, weight.data_ptr(), bias._version, bias.data_ptr(), dtype)
        cached = self.__dict__.get("_decoder_cache")  # not a buffer: never saved with the model
        if cached is None or cached[0] is not weight or cached[1] is not bias or cached[2] != state:
            with torch.no_grad():
                cached = (weight, bias, state, torch.cat([weight, bias[:, None]], dim=1).to(dtype))
            self.__dict__["_decoder_cache"] = cached
        return cached[3]

    @staticmethod
    def detach_hidden(hidden):
        """Cut the graph at batch boundaries (truncated back-propagation through time)."""
        if isinstance(hidden, torch.Tensor):
            return hidden.detach()
        return type(hidden)(RNNLanguageModel.detach_hidden(h) for h in hidden)


def _vocab_json(vocab: Any) -> Any:
    if vocab is None or isinstance(vocab, (dict, list)):
        return vocab
    if hasattr(vocab, "to_json"):
        return vocab.to_json()
    raise InvalidInputError(f"vocab must be a Vocabulary, its JSON form or None, got {type(vocab).__name__}")


def check_plain(value: Any, where: str = "checkpoint") -> None:
    """Refuse anything `torch.load(weights_only=True)` could not read back: only tensors and plain types."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise InvalidInputError(f"{where}: key {key!r} is not a str or int")
            check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
        return
    raise InvalidInputError(f"{where} holds a {type(value).__name__}; checkpoints keep only tensors and plain types")


def save_model(path: str | Path, model: RNNLanguageModel, vocab: Any, extra: dict | None = None) -> Path:
    """Write a self-describing model file that plain `torch.load(path, weights_only=True)` can read."""
    checkpoint = {"format": MODEL_FORMAT, "format_version": 1, "data_source": None}
    checkpoint.update(extra or {})
    checkpoint["model_config"] = model.config.to_dict()
    checkpoint["model_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    checkpoint["vocab"] = _vocab_json(vocab)
    check_plain(checkpoint, str(path))
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict without executing code; clear errors for missing, corrupt or unsafe files."""
    data = read_torch_file(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, found {type(data).__name__}")
    return data


def _check_state_fits(config: ModelConfig, state: dict, path: Path) -> None:
    """Check the weights' names and shapes against the model the config describes, and its size
    against the memory budget, before a parameter is allocated: the expected shapes come from the
    model built on torch's "meta" device, which holds shapes and no data."""
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in RNNLanguageModel(config).state_dict().items()}
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(f"{path}: model config and weights do not fit together: missing "
                              f"{missing[:5] or 'none'}, unexpected {unexpected[:5] or 'none'}")
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{path}: model config and weights do not fit together: {key} is {found}, "
                                  f"the config {config.hidden_sizes} needs {shape}")
        if not value.is_floating_point():
            raise CheckpointError(f"{path}: weight {key} is {value.dtype}, not floating point")
    check_load_budget(path, sum(math.prod(shape) * 4 for shape in expected.values()), "the model its config describes")


def load_model(path: str | Path) -> tuple[RNNLanguageModel, dict]:
    """Load a model file, or the model of a run directory (`analysis.runs.resolve_model_path`).
    Returns (model in eval mode, info).

    info holds everything in the checkpoint but the weights: model_config, vocab (JSON form),
    data_source and any extras, plus "path".
    """
    path = resolve_model_path(path)
    data = read_checkpoint(path)
    if "model_config" not in data or "model_state" not in data:
        raise CheckpointError(f"{path}: not a dynaprune model (no model_config / model_state); "
                              f"found keys {sorted(map(str, data))[:10]}")
    if not isinstance(data["model_config"], dict) or not isinstance(data["model_state"], dict):
        raise CheckpointError(f"{path}: not a dynaprune model (model_config / model_state are not dicts)")
    try:
        config = ModelConfig.from_dict(data["model_config"])
        config.validate()
        _check_state_fits(config, data["model_state"], path)
        model = RNNLanguageModel(config)
        model.load_state_dict(data["model_state"])
    except (TypeError, ValueError, RuntimeError, OverflowError, InvalidInputError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: model config and weights do not fit together: "
                              f"{one_line(error, 300)}") from None
    model.eval()
    info = {k: v for k, v in data.items() if k not in ("model_state", "optimizer_state")}
    info["path"] = str(path)
    return model, info
