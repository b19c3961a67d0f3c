"""Structured surgery on models dynaprune did not define: consumers found by tracing, outputs kept
where the removed units could not matter, refusals where they could."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis.errors import InvalidInputError
from analysis.pruning.generic_surgery import prune_model
from analysis.pruning.graph import trace_unit_graph
from analysis.trajectories.layers import find_recurrent_layers
from tests.foreign_models import (
    BiGRUClassifier,
    FlattensTimeAndUnits,
    ManyReadouts,
    MixesByMatmul,
    ProjectedLSTM,
    SumsOverUnits,
    TwoRecurrentModules,
    WordLanguageModel,
)

RNN_TYPES = ["LSTM", "GRU", "RNN_TANH"]


def tokens(vocab, shape, seed=3):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def word_lm(rnn_type, tie=False, layers=2):
    torch.manual_seed(0)
    return WordLanguageModel(rnn_type, ntoken=19, ninp=8, nhid=8 if tie else 10, nlayers=layers,
                             tie_weights=tie).eval()


def classifier(pool="last", layer_norm=True):
    torch.manual_seed(1)
    return BiGRUClassifier(pool=pool, layer_norm=layer_norm).eval()


def two_modules(tie=False):
    torch.manual_seed(2)
    return TwoRecurrentModules(embed=6, second=6, tie_weights=tie).eval()


def first_output(model, inputs):
    with torch.no_grad():
        result = model(*inputs)
    return result[0] if isinstance(result, tuple) else result


def state_layer_names(model):
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    return [info.name for info in find_recurrent_layers(shapes)]


CASES = {
    **{f"lm-{t}": (lambda t=t: word_lm(t), lambda: (tokens(19, (7, 3)),)) for t in RNN_TYPES},
    **{f"lm-{t}-tied": (lambda t=t: word_lm(t, tie=True), lambda: (tokens(19, (7, 3)),)) for t in RNN_TYPES},
    **{f"bigru-{pool}": (lambda pool=pool: classifier(pool), lambda: (tokens(20, (3, 6)),))
       for pool in ("last", "mean", "states")},
    "two-modules": (two_modules, lambda: (tokens(17, (5, 2)),)),
    "two-modules-tied": (lambda: two_modules(tie=True), lambda: (tokens(17, (5, 2)),)),
    "projected-lstm": (lambda: ProjectedLSTM().eval(), lambda: (tokens(15, (2, 5)),)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pruning_nothing_reproduces_outputs_exactly(case):
    build, make_inputs = CASES[case]
    model, inputs = build(), make_inputs()
    graph = trace_unit_graph(model, inputs)
    if case != "projected-lstm":  # trajectories/layers.py refuses proj_size
        assert graph.layers == state_layer_names(model)
    everything = {layer: np.arange(graph.recurrent[name].module.hidden_size)
                  for name in graph.recurrent for layer in graph.recurrent[name].all_layers}
    for plan in ({}, everything):
        pruned = prune_model(model, plan, inputs)
        assert pruned is not model
        assert torch.equal(first_output(pruned, inputs), first_output(model, inputs))


def test_a_carried_hidden_state_is_rebuilt_and_reproduced():
    model = word_lm("LSTM")
    inputs = (tokens(19, (7, 3)), model.init_hidden(3))
    pruned = prune_model(model, {}, inputs)
    assert torch.equal(first_output(pruned, inputs), first_output(model, inputs))
    small = prune_model(model, {"rnn.l0": [0, 1, 2, 5], "rnn.l1": [3, 4, 6, 9]}, inputs)
    log_probs, (h, c) = small(inputs[0], small.init_hidden(3))
    assert h.shape == (2, 3, 4) and log_probs.shape == (21, 19)


def silence(module: nn.Module, layer: int, units: list[int], consumer_columns) -> None:
    """Zero a recurrent layer's outgoing weights from `units`: its own weight_hh columns and the
    consumer's input columns (consumer_columns: list of (tensor, column indices))."""
    with torch.no_grad():
        for suffix in ("", "_reverse") if module.bidirectional else ("",):
            getattr(module, f"weight_hh_l{layer}{suffix}")[:, units] = 0.0
        for weight, columns in consumer_columns:
            weight[:, columns] = 0.0


@pytest.mark.parametrize("rnn_type", RNN_TYPES)
def test_silent_units_of_a_word_language_model_go_without_changing_outputs(rnn_type):
    model, inputs = word_lm(rnn_type, layers=3), (tokens(19, (7, 3)),)
    dead = {0: [1, 4], 1: [0, 7], 2: [2, 3]}
    for layer, units in dead.items():
        consumer = model.rnn.weight_ih_l1 if layer == 0 else model.rnn.weight_ih_l2 if layer == 1 else \
            model.decoder.weight
        silence(model.rnn, layer, units, [(consumer, units)])
    plan = {f"rnn.l{layer}": np.setdiff1d(np.arange(10), units) for layer, units in dead.items()}
    pruned = prune_model(model, plan, inputs)
    assert torch.allclose(first_output(pruned, inputs), first_output(model, inputs), atol=1e-6)
    assert pruned.rnn.hidden_size == 8 and pruned.decoder.in_features == 8
    assert model.rnn.hidden_size == 10  # the original is untouched


@pytest.mark.parametrize("pool", ["last", "mean", "states"])
def test_silent_units_of_a_bidirectional_classifier_go_without_changing_outputs(pool):
    model, inputs = classifier(pool, layer_norm=False), (tokens(20, (3, 6)),)
    H = 8
    # two dead units per direction and layer (counts must match within the module), different indices
    dead = {"l0": [1, 2], "l0_reverse": [5, 7], "l1": [0, 6], "l1_reverse": [3, 7]}
    with torch.no_grad():
        for name, units in dead.items():
            getattr(model.gru, f"weight_hh_{name}")[:, units] = 0.0
        for name in ("weight_ih_l1", "weight_ih_l1_reverse"):
            getattr(model.gru, name)[:, dead["l0"] + [H + k for k in dead["l0_reverse"]]] = 0.0
        model.head.weight[:, dead["l1"] + [H + k for k in dead["l1_reverse"]]] = 0.0
    plan = {f"gru.{name}": np.setdiff1d(np.arange(H), units) for name, units in dead.items()}
    pruned = prune_model(model, plan, inputs)
    assert torch.allclose(first_output(pruned, inputs), first_output(model, inputs), atol=1e-6)
    assert pruned.gru.hidden_size == 6 and pruned.head.in_features == 12


def test_silent_units_across_two_recurrent_modules_go_without_changing_outputs():
    model, inputs = two_modules(), (tokens(17, (5, 2)),)
    silence(model.lower, 0, [2], [(model.lower.weight_ih_l1, [2])])
    silence(model.lower, 1, [4], [(model.upper.weight_ih_l0, [4])])
    silence(model.upper, 0, [0, 5], [(model.decoder.weight, [0, 5])])
    plan = {"lower.l0": [0, 1, 3, 4, 5, 6], "lower.l1": [0, 1, 2, 3, 5, 6], "upper.l0": [1, 2, 3, 4]}
    pruned = prune_model(model, plan, inputs)
    assert torch.allclose(first_output(pruned, inputs), first_output(model, inputs), atol=1e-6)
    assert (pruned.lower.hidden_size, pruned.upper.input_size, pruned.upper.hidden_size) == (6, 6, 4)


def test_silent_cell_units_of_a_projected_lstm_go_without_changing_outputs():
    model, inputs = ProjectedLSTM().eval(), (tokens(15, (2, 5)),)
    with torch.no_grad():
        for name in ("weight_hr_l0", "weight_hr_l0_reverse", "weight_hr_l1", "weight_hr_l1_reverse"):
            getattr(model.lstm, name)[:, [3, 8]] = 0.0
    survivors = [0, 1, 2, 4, 5, 6, 7]
    plan = {name: survivors for name in ("lstm.l0", "lstm.l0_reverse", "lstm.l1", "lstm.l1_reverse")}
    pruned = prune_model(model, plan, inputs)
    assert torch.allclose(first_output(pruned, inputs), first_output(model, inputs), atol=1e-6)
    assert pruned.lstm.hidden_size == 7 and pruned.lstm.proj_size == 4 and pruned.head is not model.head


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("rnn_type", RNN_TYPES)
def test_parameter_counts_shrink_as_predicted_and_the_pruned_lm_trains(rnn_type):
    model, inputs = word_lm(rnn_type), (tokens(19, (7, 3)),)
    gates = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1}[rnn_type]
    pruned = prune_model(model, {"rnn.l0": [0, 2, 4, 6], "rnn.l1": [1, 3, 5, 7]}, inputs)
    H, D, V = 4, 8, 19
    recurrent = gates * H * (D + H) + gates * H * (H + H) + 2 * 2 * gates * H
    assert parameter_count(pruned) == V * D + recurrent + V * H + V
    pruned.train()
    log_probs, _ = pruned(*inputs)
    log_probs.sum().backward()
    assert all(p.grad is not None for p in pruned.parameters())


def test_the_bidirectional_classifier_shrinks_and_trains():
    model, inputs = classifier("mean"), (tokens(20, (3, 6)),)
    plan = {name: [0, 3, 5] for name in ("gru.l0", "gru.l0_reverse", "gru.l1", "gru.l1_reverse")}
    pruned = prune_model(model, plan, inputs)
    assert (pruned.norm.normalized_shape, pruned.head.in_features) == ((6,), 6)
    assert pruned.gru.weight_ih_l1.shape == (9, 6)
    assert parameter_count(pruned) < parameter_count(model)
    loss = nn.functional.cross_entropy(pruned.train()(*inputs), torch.tensor([0, 1, 2]))
    loss.backward()
    assert pruned.gru.weight_hh_l0.grad is not None


def test_different_counts_within_one_module_are_refused_naming_it():
    model, inputs = classifier(), (tokens(20, (3, 6)),)
    with pytest.raises(InvalidInputError, match="module `gru`.*same\\s+number"):
        prune_model(model, {"gru.l0": [0, 1, 2]}, inputs)
    with pytest.raises(InvalidInputError, match="unknown layer names"):
        prune_model(model, {"rnn.l0": [0]}, inputs)


@pytest.mark.parametrize("rnn_type", RNN_TYPES)
def test_a_tied_decoder_refuses_pruning_the_layer_that_feeds_it(rnn_type):
    model, inputs = word_lm(rnn_type, tie=True), (tokens(19, (7, 3)),)
    with pytest.raises(InvalidInputError, match="rnn.l1.*`decoder`.*tied to encoder.weight"):
        prune_model(model, {"rnn.l0": [0, 1, 2], "rnn.l1": [0, 1, 2]}, inputs)


def test_a_tied_decoder_leaves_the_other_module_prunable():
    model, inputs = two_modules(tie=True), (tokens(17, (5, 2)),)
    with pytest.raises(InvalidInputError, match="upper.l0.*`decoder`.*tied"):
        prune_model(model, {"upper.l0": [0, 1, 2]}, inputs)
    pruned = prune_model(model, {"lower.l0": [0, 1, 2, 3], "lower.l1": [2, 3, 4, 5]}, inputs)
    assert pruned.upper.input_size == 4 and pruned.decoder.weight is pruned.embedding.weight
    with pytest.warns(UserWarning, match="upper.l0"):
        skipped = prune_model(model, {"upper.l0": [0, 1, 2], "lower.l0": [0, 1, 2, 3], "lower.l1": [2, 3, 4, 5]},
                              inputs, on_blocked="skip")
    assert skipped.upper.hidden_size == 6 and skipped.lower.hidden_size == 4


@pytest.mark.parametrize("model_class, layer, named", [
    (SumsOverUnits, "gru.l0", "sum"),
    (MixesByMatmul, "lstm.l0", "matmul"),
    (FlattensTimeAndUnits, "rnn.l0", "reshape"),
])
def test_an_operation_mixing_units_is_refused_naming_it(model_class, layer, named):
    torch.manual_seed(0)
    model = model_class()
    inputs = (tokens(11, (6, 2) if model_class is MixesByMatmul else (2, 6)),)
    with pytest.raises(InvalidInputError, match=f"{layer}.*{named}.*foreign_models.py"):
        prune_model(model, {layer: [0, 1, 2]}, inputs)
    assert torch.equal(first_output(prune_model(model, {}, inputs), inputs), first_output(model, inputs))


def test_hard_coded_sizes_are_reported_when_the_pruned_model_runs():
    class HardCoded(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 5)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            output, _ = self.rnn(x)
            return self.head(output.view(-1, 5))

    with pytest.raises(InvalidInputError, match="no longer runs"):
        prune_model(HardCoded(), {"rnn.l0": [0, 1]}, (torch.randn(4, 2, 3),))


def test_many_readouts_of_one_module_are_followed_to_the_head():
    torch.manual_seed(4)
    model, inputs = ManyReadouts().eval(), (tokens(11, (5, 2)),)
    graph = trace_unit_graph(model, inputs)
    assert not graph.blocked
    assert graph.consumers["head"].layout == (("lstm.l1", 6),) * 3 + ((None, 4),)
    assert torch.equal(first_output(prune_model(model, {}, inputs), inputs), first_output(model, inputs))
    silence(model.lstm, 1, [2], [(model.head.weight, [2, 8, 14])])
    with torch.no_grad():
        model.lstm.weight_ih_l1[:, [5]] = 0.0
        model.lstm.weight_hh_l0[:, [5]] = 0.0
    pruned = prune_model(model, {"lstm.l0": [0, 1, 2, 3, 4], "lstm.l1": [0, 1, 3, 4, 5]}, inputs)
    assert pruned.head.in_features == 5 * 3 + 4
    assert torch.allclose(first_output(pruned, inputs), first_output(model, inputs), atol=1e-6)
