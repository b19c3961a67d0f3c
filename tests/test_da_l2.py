"""Discrimination-aware L2: unit importances, the penalty and its refresh schedule."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import analysis.pruning.da_l2 as da_l2
from analysis.errors import InvalidInputError
from analysis.lm.model import GATES_PER_UNIT, ModelConfig, RNNLanguageModel
from analysis.pruning.da_l2 import DiscriminationAwareL2, da_l2_penalty, unit_penalty_coefficients
from analysis.pruning.importance import unit_importances


def tiny_model(rnn_type="LSTM", hidden_sizes=(7, 5), vocab=30, seed=0, **kwargs) -> RNNLanguageModel:
    torch.manual_seed(seed)
    return RNNLanguageModel(ModelConfig(vocab_size=vocab, embedding_size=6, hidden_sizes=list(hidden_sizes),
                                        rnn_type=rnn_type, init_range=0.5, **kwargs))


def silence_unit(model: RNNLanguageModel, layer: int, unit: int) -> None:
    """Zero every weight that reads the unit's output: its own recurrent column and its consumer's column."""
    with torch.no_grad():
        model.rnns[layer].weight_hh_l0[:, unit] = 0.0
        consumer = model.rnns[layer + 1].weight_ih_l0 if layer + 1 < len(model.rnns) else model.decoder.weight
        consumer[:, unit] = 0.0


def unit_vector_norms(model: RNNLanguageModel) -> dict[str, np.ndarray]:
    """||w_k||^2 per unit, built the slow way from METHOD section 2's definition of w_k."""
    gates = GATES_PER_UNIT[model.config.rnn_type]
    norms = {}
    for name, rnn in zip(model.layer_names, model.rnns):
        H = rnn.hidden_size
        w_ih, w_hh = rnn.weight_ih_l0.detach().double(), rnn.weight_hh_l0.detach().double()
        norms[name] = np.array([
            float(sum((torch.cat([w_ih[g * H + k], w_hh[g * H + k]]) ** 2).sum() for g in range(gates)))
            for k in range(H)])
    return norms


@pytest.mark.parametrize("rnn_type,layer", [("LSTM", 0), ("LSTM", 1), ("GRU", 0), ("RNN_TANH", 1)])
def test_a_unit_whose_output_never_reaches_the_loss_scores_zero_and_gets_the_full_penalty(corpus, rnn_type, layer):
    model = tiny_model(rnn_type, vocab=len(corpus.vocab))
    silence_unit(model, layer, unit=3)
    scores = unit_importances(model, corpus.train, max_batches=3, batch_size=4, bptt=6)
    name = model.layer_names[layer]
    assert set(scores) == set(model.layer_names)
    assert scores[name][3] == 0.0
    assert scores[name].max() == pytest.approx(1.0) and (scores[name] >= 0).all()
    others = np.delete(scores[name], 3)
    assert (others > 0).all(), "units that feed the loss must score above zero"
    coefficients = unit_penalty_coefficients(model, scores)[name].numpy()
    H, gates = model.rnns[layer].hidden_size, GATES_PER_UNIT[rnn_type]
    assert np.all(coefficients[[g * H + 3 for g in range(gates)]] == 1.0)
    top = int(np.argmax(scores[name]))
    assert np.allclose(coefficients[[g * H + top for g in range(gates)]], 0.0, atol=1e-7)


def test_measuring_importances_leaves_the_model_as_it_was(corpus):
    model = tiny_model(vocab=len(corpus.vocab), dropout=0.3)
    before = copy.deepcopy(model.state_dict())
    model.train()
    unit_importances(model, corpus.train, max_batches=2, batch_size=4, bptt=6)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_importances_from_a_stream_equal_those_from_the_same_batches(corpus):
    from analysis.lm.corpora import batchify, get_batch

    model = tiny_model(vocab=len(corpus.vocab))
    source = batchify(corpus.train, 4)
    batches = [get_batch(source, start, 6) for start in range(0, 18, 6)]
    from_stream = unit_importances(model, corpus.train, max_batches=3, batch_size=4, bptt=6)
    from_batches = unit_importances(model, batches, max_batches=3)
    for name in model.layer_names:
        np.testing.assert_allclose(from_stream[name], from_batches[name], rtol=1e-10)


def test_the_penalty_vanishes_when_every_unit_is_important():
    model = tiny_model()
    ones = {name: np.ones(rnn.hidden_size) for name, rnn in zip(model.layer_names, model.rnns)}
    assert da_l2_penalty(model, ones, lam=0.3).item() == 0.0


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU", "RNN_TANH"])
def test_plain_l2_is_lambda_times_the_sum_of_squared_recurrent_weight_rows(rnn_type):
    model = tiny_model(rnn_type)
    expected = sum(float((rnn.weight_ih_l0.detach() ** 2).sum() + (rnn.weight_hh_l0.detach() ** 2).sum())
                   for rnn in model.rnns)
    assert da_l2_penalty(model, None, lam=0.01).item() == pytest.approx(0.01 * expected, rel=1e-5)
    zeros = {name: np.zeros(rnn.hidden_size) for name, rnn in zip(model.layer_names, model.rnns)}
    assert da_l2_penalty(model, zeros, lam=0.01).item() == pytest.approx(0.01 * expected, rel=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 0.5])
def test_the_penalty_weighs_each_unit_vector_by_one_minus_its_importance(gamma):
    model = tiny_model("GRU")
    rng = np.random.default_rng(1)
    scores = {name: rng.uniform(0, 1, rnn.hidden_size) for name, rnn in zip(model.layer_names, model.rnns)}
    norms = unit_vector_norms(model)
    expected = 0.05 * sum(float(((1 - scores[name]) ** gamma * norms[name]).sum()) for name in norms)
    assert da_l2_penalty(model, scores, lam=0.05, gamma=gamma).item() == pytest.approx(expected, rel=1e-5)


def test_the_penalty_gradient_is_two_lambda_times_the_coefficient_times_the_weights():
    model = tiny_model()
    rng = np.random.default_rng(2)
    scores = {name: rng.uniform(0, 1, rnn.hidden_size) for name, rnn in zip(model.layer_names, model.rnns)}
    lam = 0.2
    da_l2_penalty(model, scores, lam).backward()
    for name, rnn in zip(model.layer_names, model.rnns):
        row_coefficient = torch.as_tensor(np.tile(1 - scores[name], 4), dtype=torch.float32)[:, None]
        torch.testing.assert_close(rnn.weight_ih_l0.grad, 2 * lam * row_coefficient * rnn.weight_ih_l0.detach())
        torch.testing.assert_close(rnn.weight_hh_l0.grad, 2 * lam * row_coefficient * rnn.weight_hh_l0.detach())
        assert rnn.bias_ih_l0.grad is None and rnn.bias_hh_l0.grad is None
    assert model.decoder.weight.grad is None and model.encoder.weight.grad is None


def test_bad_importances_are_refused_naming_the_layer():
    model = tiny_model()
    with pytest.raises(InvalidInputError, match="rnns.1.l0"):
        da_l2_penalty(model, {"rnns.1.l0": np.zeros(3)}, lam=0.1)
    with pytest.raises(InvalidInputError, match="rnns.0.l0.*\\[0, 1\\]"):
        da_l2_penalty(model, {"rnns.0.l0": np.full(7, 1.5)}, lam=0.1)
    with pytest.raises(InvalidInputError, match="unknown layer"):
        da_l2_penalty(model, {"decoder": np.zeros(7)}, lam=0.1)
    with pytest.raises(InvalidInputError, match="lambda"):
        da_l2_penalty(model, None, lam=-1.0)


def test_importances_are_refreshed_on_schedule_and_reloaded_from_the_store(corpus, tmp_path, monkeypatch):
    measured = []
    real = da_l2.unit_importances

    def counting(model, *args, **kwargs):
        measured.append(model.rnns[0].weight_hh_l0.detach().clone())
        return real(model, *args, **kwargs)

    monkeypatch.setattr(da_l2, "unit_importances", counting)
    model = tiny_model(vocab=len(corpus.vocab))
    store = tmp_path / "importances.json"
    regularizer = DiscriminationAwareL2(lam=0.1, calibration_tokens=corpus.train, calibration_batches=2, batch_size=4,
                                        bptt=6, refresh_every=2, store_path=store)
    for epoch in (1, 2, 3, 4, 5):
        regularizer.on_epoch_start(model, epoch)
        with torch.no_grad():  # the weights move between epochs, so a refresh changes the scores
            model.rnns[0].weight_hh_l0.mul_(0.9).add_(0.05)
    assert len(measured) == 3 and regularizer.measured_at_epoch_ == 5
    saved = regularizer.importances_
    # a resumed run in the middle of epoch 5 reads the scores measured at its start
    again = DiscriminationAwareL2(lam=0.1, calibration_tokens=corpus.train, calibration_batches=2, batch_size=4,
                                  bptt=6, refresh_every=2, store_path=store)
    again.on_epoch_start(model, 6)
    assert len(measured) == 3
    for name in saved:
        np.testing.assert_array_equal(again.importances_[name], saved[name])
    plain = DiscriminationAwareL2(lam=0.1, plain=True)
    plain.on_epoch_start(model, 1)
    assert len(measured) == 3 and plain.importances_ is None
