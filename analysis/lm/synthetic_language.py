"""A seeded synthetic language: a hidden Markov model over made-up words, whose exact perplexity on any
token stream is known (forward algorithm), so a trained language model can be compared with the truth.

    language = SyntheticLanguage(seed=0)
    tokens = language.sample(20_000, np.random.default_rng(1))    # int64 ids into language.tokens
    language.perplexity(tokens)                                   # the oracle a model cannot beat

Structure: state 0 is the sentence end; it emits "<eos>" and nothing else, and from it the chain
re-enters the sentence-start distribution. Every other state moves to a few successors (sparse
transitions) or ends the sentence, and emits words with Zipf-like probabilities from its own subset
of the vocabulary; subsets overlap, so a word alone does not reveal its state. A token stream is
one long run of the chain, so sentences follow each other exactly as the chain generates them.
"""
from __future__ import annotations

import math

import numpy as np

from analysis.errors import InvalidInputError

EOS = "<eos>"
END_STATE = 0

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "dr", "gr", "kr", "pl", "sh", "st", "tr", "ch", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "io")
_CODAS = ("", "", "", "n", "r", "s", "l", "m", "k", "t")

# Shape of the language: how many successors a state has, how much probability leaks to every
# state (keeps the chain irreducible), the per-state chance of ending the sentence, and the Zipf
# exponent of emissions. Chosen so sentences average about 10 words and context matters.
_SUCCESSORS = 4
_TRANSITION_LEAK = 0.03
_END_PROBABILITY = (0.06, 0.16)
_ZIPF_EXPONENT = 1.1
_SENTENCE_STARTS = 4


class SyntheticLanguage:
    """The hidden Markov language for `seed`; everything is built deterministically from the seed.

    Attributes: `words` (the made-up words), `tokens` (words + ["<eos>"], the id order), `eos_id`,
    `start` (S,), `transition` (S, S) and `emission` (S, len(tokens)) probabilities.
    """

    def __init__(self, seed: int = 0, n_states: int = 32, vocab_size: int = 400):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InvalidInputError(f"synthetic language seed must be a non-negative integer, got {seed!r}")
        if not 2 <= int(n_states) <= 4096:
            raise InvalidInputError(
                f"synthetic language needs 2 to 4096 hidden states (one is the sentence end), got {n_states}")
        if not 1 <= int(vocab_size) <= 50_000:
            raise InvalidInputError(f"synthetic language vocabulary must hold 1 to 50000 words, got {vocab_size}")
        self.seed, self.n_states, self.vocab_size = int(seed), int(n_states), int(vocab_size)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0]))
        self.words = _make_words(self.vocab_size, rng)
        self.tokens = self.words + [EOS]
        self.eos_id = self.vocab_size
        self.transition = _make_transition(self.n_states, rng)
        self.start = self.transition[END_STATE].copy()
        self.emission = _make_emission(self.n_states, self.vocab_size, rng)
        self._transition_sampler = _RowSampler(self.transition)
        self._emission_sampler = _RowSampler(self.emission)

    def __repr__(self) -> str:
        return f"SyntheticLanguage(seed={self.seed}, n_states={self.n_states}, vocab_size={self.vocab_size})"

    @property
    def mean_sentence_length(self) -> float:
        """Expected tokens per sentence, "<eos>" included (absorbing-chain expectation)."""
        inner = self.transition[1:, 1:]
        visits = np.linalg.solve(np.eye(len(inner)) - inner.T, self.start[1:])
        return float(visits.sum()) + 1.0

    def sample(self, n_tokens: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The first `n_tokens` ids of a run of the chain that starts at a sentence start.

        Sentences are independent given the sentence end, so whole sentences are drawn side by side
        (vectorised over sentences, one step per word position) and concatenated in order.
        """
        if int(n_tokens) < 0:
            raise InvalidInputError(f"number of tokens to sample must be non-negative, got {n_tokens}")
        rng = rng if rng is not None else np.random.default_rng()
        pieces, total = [], 0
        while total < n_tokens:
            batch = max(16, int(1.1 * (n_tokens - total) / self.mean_sentence_length) + 1)
            piece = self._sample_sentences(batch, rng)
            pieces.append(piece)
            total += len(piece)
        stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        return stream[: int(n_tokens)].astype(np.int64)

    def token_log_probs(self, token_ids) -> np.ndarray:
        """log p(x_t | x_<t) for every token of a stream that starts at a sentence start."""
        return hmm_token_log_probs(self.start, self.transition, self.emission, token_ids)

    def log_likelihood(self, token_ids) -> float:
        """log p(x_0, ..., x_{N-1}) of a stream that starts at a sentence start."""
        return float(self.token_log_probs(token_ids).sum())

    def perplexity(self, token_ids) -> float:
        """exp of the mean negative log-probability of every token after the first, given all before it;
        the first token is skipped because a language model reading the stream never predicts it."""
        log_probs = self.token_log_probs(token_ids)
        if len(log_probs) < 2:
            raise InvalidInputError("perplexity needs a stream of at least 2 tokens")
        return float(math.exp(-log_probs[1:].mean()))

    def _sample_sentences(self, n_sentences: int, rng: np.random.Generator) -> np.ndarray:
        states = rng.choice(self.n_states, size=n_sentences, p=self.start)
        rows = np.arange(n_sentences)
        columns = []
        while rows.size:
            column = np.full(n_sentences, -1, dtype=np.int64)
            column[rows] = self._emission_sampler.draw(states, rng)
            columns.append(column)
            going_on = states != END_STATE
            rows, states = rows[going_on], states[going_on]
            states = self._transition_sampler.draw(states, rng)
        grid = np.stack(columns, axis=1)          # (sentence, position), -1 after the sentence's end
        return grid[grid >= 0]


def hmm_token_log_probs(start: np.ndarray, transition: np.ndarray, emission: np.ndarray, token_ids) -> np.ndarray:
    """Forward algorithm, normalised each step: log p(x_t | x_<t) for t = 0..N-1.

    `start` is the state distribution for the first token, `transition[i, j]` = p(j | i) and
    `emission[i, w]` = p(w | i). A token impossible under the model gets -inf, as do all after it.
    """
    tokens = np.asarray(token_ids)
    if tokens.ndim != 1 or (tokens.size and not np.issubdtype(tokens.dtype, np.integer)):
        raise InvalidInputError(f"token ids must be a 1-D integer array, got shape {tokens.shape} dtype {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= emission.shape[1]):
        raise InvalidInputError(f"token ids must lie in [0, {emission.shape[1]}), got {tokens.min()}..{tokens.max()}")
    log_probs = np.full(len(tokens), -np.inf)
    prior = np.asarray(start, dtype=np.float64)
    emission_by_token = np.ascontiguousarray(np.asarray(emission, dtype=np.float64).T)   # rows are tokens
    transition = np.asarray(transition, dtype=np.float64)
    for t, token in enumerate(tokens.tolist()):
        joint = prior * emission_by_token[token]
        evidence = joint.sum()
        if not evidence > 0.0:
            break
        log_probs[t] = math.log(evidence)
        prior = (joint / evidence) @ transition
    return log_probs


class _RowSampler:
    """Draws one column per requested row of a row-stochastic matrix with a single searchsorted:
    row r's cumulative distribution is shifted by r, so all rows live in one increasing array."""

    def __init__(self, probabilities: np.ndarray):
        n_rows, self.n_columns = probabilities.shape
        cumulative = np.minimum(np.cumsum(probabilities, axis=1), 1.0)
        cumulative[:, -1] = 1.0
        self.flat = (cumulative + np.arange(n_rows)[:, None]).ravel()
        # r + u can round up to r + 1; such draws fall back to the row's last possible column.
        self.last_possible = np.array([np.flatnonzero(row > 0)[-1] for row in probabilities])

    def draw(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        positions = np.searchsorted(self.flat, rows + rng.random(len(rows)), side="right")
        return np.minimum(positions - rows * self.n_columns, self.last_possible[rows])


def _make_words(count: int, rng: np.random.Generator) -> list[str]:
    words: list[str] = []
    seen = {EOS, "<unk>"}
    while len(words) < count:
        n_syllables = rng.choice((1, 2, 3), p=(0.3, 0.5, 0.2))
        word = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                       for _ in range(n_syllables)) + _CODAS[rng.integers(len(_CODAS))]
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _make_transition(n_states: int, rng: np.random.Generator) -> np.ndarray:
    n_emitting = n_states - 1
    emitting = np.arange(1, n_states)
    transition = np.zeros((n_states, n_states))
    starts = rng.choice(emitting, size=min(_SENTENCE_STARTS, n_emitting), replace=False)
    transition[END_STATE, starts] = rng.dirichlet(np.ones(len(starts)))
    transition[END_STATE, emitting] = ((1 - _TRANSITION_LEAK) * transition[END_STATE, emitting]
                                       + _TRANSITION_LEAK / n_emitting)
    for state in emitting:
        successors = rng.choice(emitting, size=min(_SUCCESSORS, n_emitting), replace=False)
        row = np.zeros(n_states)
        row[successors] = rng.dirichlet(np.full(len(successors), 0.7))
        row[emitting] = (1 - _TRANSITION_LEAK) * row[emitting] + _TRANSITION_LEAK / n_emitting
        end_probability = rng.uniform(*_END_PROBABILITY)
        transition[state] = (1 - end_probability) * row
        transition[state, END_STATE] = end_probability
    return transition / transition.sum(axis=1, keepdims=True)


def _make_emission(n_states: int, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    n_emitting = n_states - 1
    emission = np.zeros((n_states, vocab_size + 1))
    emission[END_STATE, vocab_size] = 1.0
    owners = rng.permutation(vocab_size)          # each word belongs to at least one state
    n_shared = min(vocab_size, max(1, 2 * vocab_size // n_emitting))
    for index, state in enumerate(range(1, n_states)):
        own = owners[index::n_emitting]
        shared = rng.choice(vocab_size, size=n_shared, replace=False)
        subset = rng.permutation(np.union1d(own, shared))
        emission[state, subset] = 1.0 / np.arange(1, len(subset) + 1) ** _ZIPF_EXPONENT
    return emission / emission.sum(axis=1, keepdims=True)
