"""Tests of analysis.pruning.preview: sizes, zero-shot perplexity and its curve for a pruning plan."""
import math

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from analysis.dynamics.selection import select_units
from analysis.errors import InvalidInputError
from analysis.lm.corpora import load_synthetic
from analysis.lm.model import ModelConfig, RNNLanguageModel
from analysis.pruning.preview import (
    count_parameters_for,
    limit_threads,
    load_validation_tokens,
    model_perplexity,
    plan_footprint,
    zero_shot_curve,
    zero_shot_perplexity,
)
from analysis.pruning.surgery import count_parameters, prune_units

SMALL_SYNTHETIC = "synthetic:0:train=2000,valid=1500,test=100,states=4,words=30"


@pytest.fixture(scope="module")
def corpus():
    return load_synthetic(0, train=2000, valid=1500, test=100, states=4, words=30)


@pytest.fixture()
def model(corpus):
    torch.manual_seed(0)
    return RNNLanguageModel(ModelConfig(vocab_size=len(corpus.vocab), embedding_size=6, hidden_sizes=[9, 7])).eval()


def random_distances(H, seed):
    D = np.random.default_rng(seed).uniform(0.5, 2.0, size=(H, H))
    D = np.triu(D, 1)
    return D + D.T


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("tie", [False, True])
def test_parameter_counts_match_a_built_model(rnn_type, tie):
    config = ModelConfig(vocab_size=50, embedding_size=8, hidden_sizes=[11, 8], rnn_type=rnn_type, tie_weights=tie)
    assert count_parameters_for(config) == count_parameters(RNNLanguageModel(config))


def test_footprint_matches_the_pruned_model(model):
    plan = select_units({"rnns.0.l0": random_distances(9, 0), "rnns.1.l0": random_distances(7, 1)},
                        ratio={"rnns.0.l0": 0.5, "rnns.1.l0": 0.3}, criterion="dynamics")
    footprint = plan_footprint(model.config, plan)
    pruned = prune_units(model, plan)
    assert footprint.hidden_before == [9, 7] and footprint.hidden_after == pruned.config.hidden_sizes
    assert footprint.params_before == count_parameters(model)
    assert footprint.params_after == count_parameters(pruned)
    assert footprint.bytes_after == 4 * footprint.params_after["total"]
    assert footprint.units_removed == 16 - sum(pruned.config.hidden_sizes)
    assert 0 < footprint.total_reduction < 1
    frame = footprint.to_frame()
    assert frame.loc[frame["quantity"] == "hidden units", "after"].item() == sum(footprint.hidden_after)


def test_footprint_accepts_kept_indices_and_rejects_unknown_layers(model):
    footprint = plan_footprint(model.config, {"rnns.1.l0": [0, 2]}, dtype="float16")
    assert footprint.hidden_after == [9, 2]
    assert footprint.bytes_before == 2 * footprint.params_before["total"]
    with pytest.raises(InvalidInputError, match="rnns.5.l0"):
        plan_footprint(model.config, {"rnns.5.l0": [0]})
    with pytest.raises(InvalidInputError):
        plan_footprint(model.config, {"rnns.0.l0": []})


def test_zero_shot_perplexity_leaves_the_model_alone(model, corpus):
    tokens = corpus.valid
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unpruned = model_perplexity(model, tokens)
    assert unpruned == pytest.approx(zero_shot_perplexity(model, {"rnns.0.l0": list(range(9))}, tokens))
    pruned = zero_shot_perplexity(model, {"rnns.0.l0": [0, 1, 2], "rnns.1.l0": [3, 4]}, tokens)
    assert math.isfinite(pruned) and pruned != pytest.approx(unpruned)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pruning_units_with_silent_outputs_keeps_the_perplexity(model, corpus):
    with torch.no_grad():
        model.decoder.weight[:, [1, 4]] = 0.0  # units 1 and 4 of the last layer feed nothing
    tokens = corpus.valid[:700]
    kept = [0, 2, 3, 5, 6]
    assert zero_shot_perplexity(model, {"rnns.1.l0": kept}, tokens) == pytest.approx(model_perplexity(model, tokens),
                                                                                    rel=1e-5)


def test_validation_tokens_are_a_capped_prefix_with_its_oracle(corpus):
    data = load_validation_tokens(SMALL_SYNTHETIC, corpus.vocab.to_json(), max_tokens=400)
    assert data.capped and data.total_tokens == 1500
    assert torch.equal(data.tokens, corpus.valid[:400])
    # the oracle of the prefix itself: its tokens after the first, each scored given all before it
    log_probs = corpus.language.token_log_probs(corpus.valid.numpy())[1:400]
    assert data.oracle_perplexity == pytest.approx(math.exp(-log_probs.mean()), rel=1e-9)
    assert data.oracle_perplexity != pytest.approx(corpus.oracle_perplexity("valid"))
    whole = load_validation_tokens(SMALL_SYNTHETIC, None, max_tokens=None)
    assert not whole.capped and whole.oracle_perplexity == pytest.approx(corpus.oracle_perplexity("valid"))


@pytest.mark.parametrize("source, vocab, message", [
    (None, None, "does not record"),
    ("ptb:/nonexistent/ptb", None, "cannot load"),
    ("synthetic:1:train=2000,valid=500,test=100,states=4,words=30", {"itos": ["a", "b"]}, "different vocabulary"),
])
def test_validation_tokens_explain_what_is_wrong(source, vocab, message, monkeypatch):
    monkeypatch.delenv("DYNAPRUNE_PTB_DIR", raising=False)
    with pytest.raises(InvalidInputError, match=message):
        load_validation_tokens(source, vocab)


def test_zero_shot_curve_covers_every_criterion_and_ratio(model, corpus):
    distances = {"rnns.0.l0": random_distances(9, 2), "rnns.1.l0": random_distances(7, 3)}
    importance = {"rnns.0.l0": np.arange(9.0), "rnns.1.l0": np.arange(7.0)}
    tokens = corpus.valid[:700]
    curve = zero_shot_curve(model, distances, importance, tokens, ratios=[0.0, 0.3, 0.6])
    assert len(curve) == 12 and set(curve["criterion"]) == {"dynamics-greedy", "dynamics", "magnitude", "random"}
    at_zero = curve[curve["ratio"] == 0.0]["perplexity"]
    assert np.allclose(at_zero, model_perplexity(model, tokens))
    for _, rows in curve.groupby("criterion"):
        assert rows.sort_values("ratio")["params_total"].is_monotonic_decreasing
    # magnitude at 0.6 prunes round(0.6 H) units of least importance in each layer: the lowest indices here
    pruned = prune_units(model, {"rnns.0.l0": [5, 6, 7, 8], "rnns.1.l0": [4, 5, 6]})
    row = curve[(curve["criterion"] == "magnitude") & (curve["ratio"] == 0.6)].iloc[0]
    assert row["perplexity"] == pytest.approx(model_perplexity(pruned, tokens))
    assert row["params_total"] == count_parameters(pruned)["total"]
    with pytest.raises(InvalidInputError):
        zero_shot_curve(model, distances, importance, tokens, criteria=["size"])


def test_limit_threads_caps_torch_and_blas_threads():
    before = torch.get_num_threads()
    with threadpool_limits(limits=2):  # undoes the session's one thread; restored on exit
        torch.set_num_threads(2)
        try:
            assert torch.get_num_threads() == 2 and any(pool["num_threads"] > 1 for pool in threadpool_info())
            limit_threads(1)
            assert torch.get_num_threads() == 1
            assert all(pool["num_threads"] == 1 for pool in threadpool_info())
        finally:
            torch.set_num_threads(before)
    with pytest.raises(InvalidInputError):
        limit_threads(0)
