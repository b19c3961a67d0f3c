"""Structured surgery: smaller matrices, same outputs where the removed units could not matter."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from analysis.errors import InvalidInputError
from analysis.lm.model import GATES_PER_UNIT, ModelConfig, RNNLanguageModel, load_model, save_model
from analysis.pruning.surgery import count_parameters, prune_units

RNN_TYPES = ["LSTM", "GRU", "RNN_TANH"]




def tiny_model(rnn_type="LSTM", hidden_sizes=(6, 5), **kwargs) -> RNNLanguageModel:
    torch.manual_seed(0)
    return RNNLanguageModel(ModelConfig(vocab_size=13, embedding_size=4, hidden_sizes=list(hidden_sizes),
                                        rnn_type=rnn_type, **kwargs)).eval()


def outputs(model, seed=3):
    tokens = torch.randint(0, 13, (9, 2), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(tokens)[0]


def silence_units(model: RNNLanguageModel, layer: int, units: list[int]) -> None:
    """Zero every outgoing weight of `units`: recurrent columns and the consumer's input columns."""
    with torch.no_grad():
        model.rnns[layer].weight_hh_l0[:, units] = 0.0
        if layer + 1 < len(model.rnns):
            model.rnns[layer + 1].weight_ih_l0[:, units] = 0.0
        else:
            model.decoder.weight[:, units] = 0.0


def predicted_parameters(rnn_type, vocab, embedding, hidden_sizes) -> dict[str, int]:
    gates = GATES_PER_UNIT[rnn_type]
    inputs = [embedding] + list(hidden_sizes[:-1])
    recurrent = sum(gates * h * (d + h) + 2 * gates * h for d, h in zip(inputs, hidden_sizes))
    return {"recurrent": recurrent, "total": vocab * embedding + recurrent + vocab * hidden_sizes[-1] + vocab}


@pytest.mark.parametrize("rnn_type", RNN_TYPES)
def test_pruning_nothing_reproduces_outputs_exactly(rnn_type):
    model = tiny_model(rnn_type)
    everything = {name: np.arange(rnn.hidden_size) for name, rnn in zip(model.layer_names, model.rnns)}
    for plan in (everything, {}):
        pruned = prune_units(model, plan)
        assert pruned is not model
        assert torch.equal(outputs(pruned), outputs(model))


@pytest.mark.parametrize("rnn_type", RNN_TYPES)
@pytest.mark.parametrize("hidden_sizes", [(6,), (6, 5), (6, 5, 4)])
def test_pruning_units_without_outgoing_weights_keeps_outputs(rnn_type, hidden_sizes):
    model = tiny_model(rnn_type, hidden_sizes)
    removed = {0: [1, 4], len(hidden_sizes) - 1: [0, 3]}
    for layer, units in removed.items():
        silence_units(model, layer, units)
    plan = {f"rnns.{layer}.l0": [k for k in range(hidden_sizes[layer]) if k not in units]
            for layer, units in removed.items()}
    pruned = prune_units(model, plan)
    torch.testing.assert_close(outputs(pruned), outputs(model), rtol=1e-5, atol=1e-6)
    # and a unit that does feed forward changes the outputs when removed
    damaged = prune_units(model, {"rnns.0.l0": [0, 1, 3, 4, 5]})
    assert not torch.allclose(outputs(damaged), outputs(model), atol=1e-6)


@pytest.mark.parametrize("rnn_type", RNN_TYPES)
def test_pruned_matrices_sizes_and_parameter_counts_shrink_as_predicted(rnn_type):
    model = tiny_model(rnn_type)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    assert count_parameters(model) == predicted_parameters(rnn_type, 13, 4, [6, 5])
    pruned = prune_units(model, SimpleNamespace(kept={"rnns.0.l0": np.array([0, 2, 5]),
                                                      "rnns.1.l0": np.array([1, 2])}))
    gates = GATES_PER_UNIT[rnn_type]
    assert pruned.config.hidden_sizes == [3, 2]
    assert [rnn.hidden_size for rnn in pruned.rnns] == [3, 2]
    assert pruned.rnns[0].weight_hh_l0.shape == (gates * 3, 3)
    assert pruned.rnns[1].weight_ih_l0.shape == (gates * 2, 3)
    assert pruned.decoder.weight.shape == (13, 2)
    assert count_parameters(pruned) == predicted_parameters(rnn_type, 13, 4, [3, 2])
    # the kept rows are the original ones: unit 2 of layer 0, gate g, sits at row g*3 + 1
    for gate in range(gates):
        assert torch.equal(pruned.rnns[0].weight_ih_l0[gate * 3 + 1], model.rnns[0].weight_ih_l0[gate * 6 + 2])
    assert all(torch.equal(p, before[name]) for name, p in model.state_dict().items()), "input model changed"


def test_pruned_model_saves_and_reloads(tmp_path):
    pruned = prune_units(tiny_model(), {"rnns.1.l0": [0, 4]})
    path = save_model(tmp_path / "pruned.pt", pruned, None, {"data_source": "synthetic:0"})
    assert torch.load(path, weights_only=True)["model_config"]["hidden_sizes"] == [6, 2]
    reloaded, _ = load_model(path)
    assert torch.equal(outputs(reloaded), outputs(pruned))
    again = prune_units(reloaded, {"rnns.0.l0": [5]})  # a pruned model can be pruned further
    assert again.config.hidden_sizes == [1, 2]


def test_tied_model_can_prune_inner_layers_only():
    model = tiny_model(hidden_sizes=(6, 4), tie_weights=True)
    pruned = prune_units(model, {"rnns.0.l0": [0, 1, 2]})
    assert pruned.decoder.weight is pruned.encoder.weight
    assert pruned.config.hidden_sizes == [3, 4]
    with pytest.raises(InvalidInputError, match="tied"):
        prune_units(model, {"rnns.1.l0": [0, 1]})


@pytest.mark.parametrize("plan, message", [
    ({"rnns.7.l0": [0]}, "unknown layer"),
    ({"decoder": [0]}, "unknown layer"),
    ({"rnns.0.l0": [0, 6]}, "out of range"),
    ({"rnns.0.l0": [-1, 2]}, "out of range"),
    ({"rnns.0.l0": [1, 1, 2]}, "duplicate"),
    ({"rnns.0.l0": []}, "zero units"),
    ({"rnns.0.l0": [0.5]}, "integers"),
    ({"rnns.0.l0": [[0, 1]]}, "1-D"),
])
def test_bad_plans_are_refused_with_the_layer_named(plan, message):
    with pytest.raises(InvalidInputError, match=message):
        prune_units(tiny_model(), plan)


def test_a_plan_must_be_a_mapping():
    with pytest.raises(InvalidInputError, match="PruningPlan"):
        prune_units(tiny_model(), [1, 2, 3])
