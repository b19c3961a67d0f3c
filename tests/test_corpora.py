"""Tests for analysis.lm.corpora: vocabulary, batching, text directories, PTB, corpus specs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from analysis.errors import InvalidInputError
from analysis.lm.corpora import (
    EOS,
    UNK,
    Corpus,
    Vocabulary,
    batchify,
    get_batch,
    load_corpus,
    load_text_dir,
    unigram_perplexity,
)


def write_splits(directory: Path, names: dict[str, str], texts: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, name in names.items():
        (directory / name).write_text(texts[split], encoding="utf-8")
    return directory


TEXTS = {
    "train": "the cat sat\n\nthe dog ran\n   \n",
    "valid": "the cat ran\nthe bird sat\n",
    "test": "a dog sat\n",
}


def test_vocabulary_json_round_trip_keeps_order_and_ids():
    vocab = Vocabulary(["b", "a", EOS, UNK])
    restored = Vocabulary.from_json(json.loads(json.dumps(vocab.to_json())))
    assert restored == vocab
    assert restored.itos == ["b", "a", EOS, UNK]
    assert restored.stoi == {"b": 0, "a": 1, EOS: 2, UNK: 3}
    assert len(restored) == 4
    assert restored.encode(["a", "zzz", "b"]) == [1, 3, 0]
    assert restored.decode([2, 0]) == [EOS, "b"]


def test_vocabulary_rejects_unknown_words_without_unk_and_bad_json():
    vocab = Vocabulary(["x", "y"])
    with pytest.raises(InvalidInputError, match="'q'"):
        vocab.encode(["x", "q"])
    with pytest.raises(InvalidInputError):
        Vocabulary.from_json({"itos": ["a", 3]})
    with pytest.raises(InvalidInputError):
        Vocabulary.from_json({"words": ["a"]})
    with pytest.raises(InvalidInputError, match="twice"):
        Vocabulary(["a", "a"])


def test_batchify_columns_are_contiguous_and_remainder_trimmed():
    data = torch.arange(23)
    batched = batchify(data, 4)
    assert batched.shape == (5, 4)
    assert batched.dtype == data.dtype
    # column j is the j-th contiguous chunk of the stream
    for column in range(4):
        assert torch.equal(batched[:, column], data[column * 5:(column + 1) * 5])
    with pytest.raises(InvalidInputError):
        batchify(data, 0)
    with pytest.raises(InvalidInputError):
        batchify(torch.arange(3), 4)


def test_get_batch_target_is_input_shifted_by_one():
    source = batchify(torch.arange(100), 5)          # (20, 5)
    inputs, targets = get_batch(source, 0, 7)
    assert inputs.shape == (7, 5) and targets.shape == (35,)
    assert torch.equal(targets.view(7, 5), source[1:8])
    assert torch.equal(inputs + 1, targets.view(7, 5))   # the stream is 0..99, so "next" is +1
    last_inputs, last_targets = get_batch(source, 14, 7)  # clipped at the end
    assert last_inputs.shape == (5, 5) and last_targets.shape == (25,)
    with pytest.raises(InvalidInputError):
        get_batch(source, 19, 7)


def test_text_dir_builds_vocab_from_train_and_maps_unknown_words_to_unk(tmp_path):
    directory = write_splits(tmp_path / "plain", {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"},
                             TEXTS)
    corpus = load_corpus(f"text:{directory}")
    assert corpus.source == f"text:{directory}"
    assert corpus.vocab.itos == ["the", "cat", "sat", EOS, "dog", "ran", UNK]
    assert corpus.vocab.decode(corpus.train) == "the cat sat <eos> the dog ran <eos>".split()
    assert corpus.vocab.decode(corpus.valid) == "the cat ran <eos> the <unk> sat <eos>".split()
    assert corpus.vocab.decode(corpus.test) == "<unk> dog sat <eos>".split()
    for split in ("train", "valid", "test"):
        assert corpus.split(split).dtype == torch.int64 and corpus.split(split).dim() == 1
    assert corpus.oracle_perplexity("valid") is None
    with pytest.raises(InvalidInputError, match="train, valid, test"):
        corpus.split("dev")


def test_text_dir_accepts_wikitext_and_named_patterns(tmp_path):
    wiki = write_splits(tmp_path / "wiki", {s: f"wiki.{s}.tokens" for s in TEXTS}, TEXTS)
    named = write_splits(tmp_path / "named", {s: f"mini.{s}.txt" for s in TEXTS}, TEXTS)
    a, b = load_text_dir(wiki), load_text_dir(named)
    assert a.vocab == b.vocab
    assert torch.equal(a.valid, b.valid)
    no_unk = write_splits(tmp_path / "closed", {s: f"{s}.txt" for s in TEXTS},
                          {"train": "x y\n", "valid": "y x\n", "test": "x\n"})
    assert UNK not in load_text_dir(no_unk).vocab


def test_text_dir_errors_name_the_directory(tmp_path):
    partial = write_splits(tmp_path / "partial", {"train": "train.txt", "valid": "valid.txt"}, TEXTS)
    with pytest.raises(InvalidInputError, match="no test file in .*partial"):
        load_corpus(f"text:{partial}")
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_corpus(f"text:{tmp_path / 'nowhere'}")
    empty = write_splits(tmp_path / "empty", {s: f"{s}.txt" for s in TEXTS},
                         {"train": "\n\n", "valid": "a\n", "test": "a\n"})
    with pytest.raises(InvalidInputError, match="no words"):
        load_corpus(f"text:{empty}")


def test_bad_specs_give_clear_errors(tmp_path, monkeypatch):
    for spec in ("", "wikitext", "synthetic:abc", "synthetic:1:colours=3", "text:"):
        with pytest.raises(InvalidInputError):
            load_corpus(spec)
    with pytest.raises(InvalidInputError, match="DYNAPRUNE_PTB_DIR"):
        load_corpus(f"ptb:{tmp_path}")
    monkeypatch.delenv("DYNAPRUNE_PTB_DIR", raising=False)
    with pytest.raises(InvalidInputError, match="DYNAPRUNE_PTB_DIR"):
        load_corpus("ptb", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_synthetic_spec_is_remembered_and_reproduces_the_corpus():
    corpus = load_corpus("synthetic:3:train=3000,valid=500,test=400,states=8,words=50")
    assert corpus.sizes() == {"vocab": 51, "train": 3000, "valid": 500, "test": 400}
    again = load_corpus(corpus.source)
    assert again.source == corpus.source
    assert torch.equal(again.train, corpus.train) and again.vocab == corpus.vocab
    assert load_corpus("synthetic").source == "synthetic:0"
    oracle = corpus.oracle_perplexity("test")
    assert oracle == corpus.oracle_perplexity("test")
    assert 1.0 < oracle < unigram_perplexity(corpus.train, corpus.test, len(corpus.vocab))


def test_unigram_perplexity_of_uniform_stream_is_vocab_size():
    stream = torch.arange(10).repeat(50)
    assert unigram_perplexity(stream, stream, 10) == pytest.approx(10.0)


def test_ptb_has_the_published_vocabulary_and_token_counts(ptb_dir):
    corpus = load_corpus(f"ptb:{ptb_dir}")
    assert isinstance(corpus, Corpus)
    assert len(corpus.vocab) == 10000
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (929589, 73760, 82430)
    assert corpus.vocab.eos_id is not None and corpus.vocab.unk_id is not None
    assert int((corpus.train == corpus.vocab.eos_id).sum()) == 42068
    assert int(corpus.train.max()) == len(corpus.vocab) - 1


def test_ptb_spec_without_directory_uses_the_environment(ptb_dir, monkeypatch):
    monkeypatch.setenv("DYNAPRUNE_PTB_DIR", str(ptb_dir))
    corpus = load_corpus("ptb")
    assert corpus.source == "ptb" and corpus.data_dir == ptb_dir
    assert corpus.valid.numel() == 73760
