"""Tests for analysis.lm.synthetic_language: determinism, sampling statistics and the exact oracle."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from analysis.errors import InvalidInputError
from analysis.lm.corpora import load_synthetic, unigram_perplexity
from analysis.lm.synthetic_language import END_STATE, SyntheticLanguage, hmm_token_log_probs


def brute_force_log_likelihood(start, transition, emission, tokens) -> float:
    """Sum over every hidden state path of p(path, tokens)."""
    n_states = len(start)
    total = 0.0
    for path in itertools.product(range(n_states), repeat=len(tokens)):
        probability = start[path[0]] * emission[path[0], tokens[0]]
        for previous, state, token in zip(path, path[1:], tokens[1:]):
            probability *= transition[previous, state] * emission[state, token]
        total += probability
    return math.log(total)


def random_hmm(rng, n_states, n_tokens):
    start = rng.dirichlet(np.ones(n_states))
    transition = rng.dirichlet(np.ones(n_states), size=n_states)
    emission = rng.dirichlet(np.ones(n_tokens), size=n_states)
    return start, transition, emission


def test_forward_algorithm_matches_path_enumeration_on_a_random_hmm():
    rng = np.random.default_rng(7)
    start, transition, emission = random_hmm(rng, 3, 4)
    for _ in range(5):
        tokens = rng.integers(0, 4, size=5)
        log_probs = hmm_token_log_probs(start, transition, emission, tokens)
        expected = brute_force_log_likelihood(start, transition, emission, tokens)
        assert log_probs.sum() == pytest.approx(expected, rel=1e-12)
        # the per-token terms are the conditional probabilities of each prefix
        for t in range(1, 6):
            assert log_probs[:t].sum() == pytest.approx(
                brute_force_log_likelihood(start, transition, emission, tokens[:t]), rel=1e-12)


def test_language_log_likelihood_matches_path_enumeration():
    language = SyntheticLanguage(seed=5, n_states=3, vocab_size=4)
    tokens = language.sample(5, np.random.default_rng(0))
    expected = brute_force_log_likelihood(language.start, language.transition, language.emission, tokens)
    assert language.log_likelihood(tokens) == pytest.approx(expected, rel=1e-12)
    expected_first = brute_force_log_likelihood(language.start, language.transition, language.emission, tokens[:1])
    expected_rest = expected - expected_first
    assert language.perplexity(tokens) == pytest.approx(math.exp(-expected_rest / 4), rel=1e-12)


def test_language_is_a_valid_hmm_with_sentences():
    language = SyntheticLanguage(seed=1)
    assert len(language.words) == 400 and len(set(language.words)) == 400
    assert all(word.isalpha() and word.islower() for word in language.words)
    assert language.tokens[language.eos_id] == "<eos>"
    np.testing.assert_allclose(language.transition.sum(axis=1), 1.0)
    np.testing.assert_allclose(language.emission.sum(axis=1), 1.0)
    assert language.emission[END_STATE, language.eos_id] == 1.0
    assert language.emission[1:, language.eos_id].max() == 0.0      # only the sentence end says <eos>
    assert (language.emission[1:, :-1] > 0).any(axis=0).all()        # every word can be said


def test_sampling_is_deterministic_per_seed_and_follows_the_chain():
    language = SyntheticLanguage(seed=2, n_states=12, vocab_size=80)
    a = language.sample(5000, np.random.default_rng(3))
    b = SyntheticLanguage(seed=2, n_states=12, vocab_size=80).sample(5000, np.random.default_rng(3))
    assert a.dtype == np.int64 and len(a) == 5000
    assert np.array_equal(a, b)
    assert not np.array_equal(a, language.sample(5000, np.random.default_rng(4)))
    assert SyntheticLanguage(seed=9, n_states=12, vocab_size=80).words != language.words
    # sentence lengths agree with the chain's expectation
    sentences = np.flatnonzero(a == language.eos_id)
    assert len(sentences) / len(a) == pytest.approx(1 / language.mean_sentence_length, rel=0.15)
    # every sampled token is possible: a finite likelihood
    assert np.isfinite(language.log_likelihood(a))


def test_sampled_word_frequencies_match_the_stationary_distribution():
    language = SyntheticLanguage(seed=4, n_states=6, vocab_size=20)
    tokens = language.sample(60_000, np.random.default_rng(0))
    eigenvalues, eigenvectors = np.linalg.eig(language.transition.T)
    stationary = np.real(eigenvectors[:, np.argmax(np.real(eigenvalues))])
    stationary /= stationary.sum()
    expected = stationary @ language.emission
    observed = np.bincount(tokens, minlength=len(language.tokens)) / len(tokens)
    np.testing.assert_allclose(observed, expected, atol=0.01)


def test_corpus_oracle_is_finite_cached_and_below_unigram(monkeypatch):
    corpus = load_synthetic(0, train=40_000, valid=8_000, test=8_000)
    assert corpus.source == "synthetic:0:train=40000,valid=8000,test=8000"
    assert len(corpus.vocab) == 401 and corpus.vocab.itos[-1] == "<eos>"
    oracles = {}
    for split in ("valid", "test"):
        oracles[split] = oracle = corpus.oracle_perplexity(split)
        assert math.isfinite(oracle) and oracle > 1.0
        assert oracle < 0.6 * unigram_perplexity(corpus.train, corpus.split(split), len(corpus.vocab))
    # asked again, each split's oracle comes from the cache: the forward algorithm does not run again
    monkeypatch.setattr(corpus.language, "token_log_probs", lambda tokens: pytest.fail("the oracle was recomputed"))
    assert {split: corpus.oracle_perplexity(split) for split in oracles} == oracles
    # the splits are different draws of the same language
    assert not torch.equal(corpus.valid, corpus.test)
    other = load_synthetic(1, train=2_000, valid=500, test=500)
    assert other.vocab != corpus.vocab


def test_bad_arguments_are_rejected():
    with pytest.raises(InvalidInputError):
        SyntheticLanguage(seed=-1)
    with pytest.raises(InvalidInputError):
        SyntheticLanguage(n_states=1)
    with pytest.raises(InvalidInputError):
        SyntheticLanguage(vocab_size=0)
    language = SyntheticLanguage(seed=0, n_states=4, vocab_size=10)
    with pytest.raises(InvalidInputError):
        language.log_likelihood([0, 11])
    with pytest.raises(InvalidInputError):
        language.perplexity([0])
    with pytest.raises(InvalidInputError):
        load_synthetic(0, valid=1)


def test_impossible_token_has_zero_probability():
    language = SyntheticLanguage(seed=0, n_states=4, vocab_size=10)
    # <eos> right after <eos> is impossible: a sentence has at least one word
    log_probs = language.token_log_probs([language.eos_id])
    assert log_probs[0] == -np.inf
