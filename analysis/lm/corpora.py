"""Word-level corpora for language models: Penn Treebank, any train/valid/test text directory, and a
seeded synthetic hidden-Markov language whose exact (oracle) perplexity is known.

    corpus = load_corpus("ptb:/path/to/ptb")        # or "ptb" with DYNAPRUNE_PTB_DIR set
    corpus = load_corpus("text:/path/to/wikitext-2")
    corpus = load_corpus("synthetic:0")              # regenerated from the seed, never stored
    train = batchify(corpus.train, 20)               # (n_steps, 20)
    inputs, targets = get_batch(train, 0, 35)

Token streams follow pytorch/examples word_language_model: words split on whitespace, "<eos>"
appended at each line end, the vocabulary built from the training split in first-occurrence order.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from analysis.errors import InvalidInputError

if TYPE_CHECKING:
    from analysis.lm.synthetic_language import SyntheticLanguage

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
PTB_ENV_VAR = "DYNAPRUNE_PTB_DIR"
PTB_FILES = {split: f"ptb.{split}.txt" for split in SPLITS}

# Defaults of the synthetic language; a spec like "synthetic:3:train=50000,states=16" overrides them.
SYNTHETIC_DEFAULTS = {"train": 200_000, "valid": 20_000, "test": 20_000, "states": 32, "words": 400}


class Vocabulary:
    """Word <-> id mapping. `itos[i]` is the word with id i; `stoi` is its inverse."""

    def __init__(self, itos: Iterable[str] = ()):
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        for word in itos:
            if word in self.stoi:
                raise InvalidInputError(f"vocabulary lists the word {word!r} twice; every word must be unique")
            self.add(word)

    def add(self, word: str) -> int:
        """Return the id of `word`, giving it the next free id if it is new."""
        index = self.stoi.get(word)
        if index is None:
            index = len(self.itos)
            self.itos.append(word)
            self.stoi[word] = index
        return index

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words)"

    @property
    def unk_id(self) -> int | None:
        return self.stoi.get(UNK)

    @property
    def eos_id(self) -> int | None:
        return self.stoi.get(EOS)

    def encode(self, words: list[str]) -> list[int]:
        """Ids of `words`; unknown words become "<unk>" if the vocabulary has it, else an error."""
        unk = self.unk_id
        ids = [self.stoi.get(word, unk) for word in words]
        if unk is None and None in ids:
            unknown = sorted({word for word, index in zip(words, ids) if index is None})
            shown = ", ".join(repr(word) for word in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise InvalidInputError(
                f"{len(unknown)} word(s) are not in the vocabulary and it has no {UNK} token: {shown}; "
                f"use words from the training corpus")
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        try:
            return [self.itos[int(index)] for index in ids]
        except IndexError:
            raise InvalidInputError(f"token id out of range for a vocabulary of {len(self)} words") from None

    def to_json(self) -> dict:
        return {"itos": list(self.itos)}

    @classmethod
    def from_json(cls, d: dict) -> Vocabulary:
        itos = d.get("itos") if isinstance(d, dict) else None
        if not isinstance(itos, list) or not all(isinstance(word, str) for word in itos):
            raise InvalidInputError("vocabulary JSON must be an object {\"itos\": [word, ...]} with string words; "
                                    "the checkpoint's vocabulary entry is damaged")
        return cls(itos)


@dataclass(eq=False)
class Corpus:
    """Three 1-D int64 token streams sharing one vocabulary, plus where they came from."""

    source: str
    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    data_dir: Path | None = None
    language: SyntheticLanguage | None = field(default=None, repr=False)
    _oracle_cache: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    def split(self, name: str) -> torch.Tensor:
        if name not in SPLITS:
            raise InvalidInputError(f"unknown corpus split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def oracle_perplexity(self, split: str) -> float | None:
        """Perplexity of `split` under the true generating model; None for natural corpora.

        Computed once per split with the forward algorithm and cached. It scores every token after
        the first given all earlier ones, the same tokens a language model is scored on.
        """
        tokens = self.split(split)
        if self.language is None:
            return None
        if split not in self._oracle_cache:
            self._oracle_cache[split] = self.language.perplexity(tokens.numpy())
        return self._oracle_cache[split]

    def sizes(self) -> dict[str, int]:
        return {"vocab": len(self.vocab), **{name: int(self.split(name).numel()) for name in SPLITS}}

    def check_vocabulary(self, model: str, vocab_size: int | None, vocab_json=None,
                         remedy: str = "pass --data with the model's own corpus") -> None:
        """InvalidInputError unless this corpus has the vocabulary the `model` (a name for messages)
        was trained with: `vocab_size` words and, where the model recorded them (`vocab_json`), the
        same words with the same ids."""
        if vocab_size is not None and int(vocab_size) != len(self.vocab):
            raise InvalidInputError(f"{model} has a {vocab_size}-word vocabulary but corpus {self.source} has "
                                    f"{len(self.vocab)} words; {remedy}")
        if vocab_json is not None and Vocabulary.from_json(vocab_json) != self.vocab:
            raise InvalidInputError(f"corpus {self.source} has a different vocabulary from the one {model} was "
                                    f"trained with; {remedy}")


def load_corpus(spec: str, *, cache_dir: str | os.PathLike | None = None, download: bool = False) -> Corpus:
    """Load a corpus from a spec string.

    "ptb:<dir>"      Mikolov's Penn Treebank files ptb.{train,valid,test}.txt in <dir>.
    "ptb"            the directory in $DYNAPRUNE_PTB_DIR; else a verified copy in `cache_dir` (the
                     directory holding the PTB files; default the per-user cache), downloaded first
                     if `download` is true.
    "text:<dir>"     train/valid/test files: train.txt, <name>.train.txt or wiki.train.tokens.
    "synthetic[:<seed>[:key=value,...]]"   the seeded hidden-Markov language (keys: train, valid,
                     test token counts, states, words).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInputError("corpus spec is empty; use ptb:<dir>, ptb, text:<dir> or synthetic:<seed>")
    spec = spec.strip()
    kind, _, argument = spec.partition(":")
    if kind == "ptb":
        directory = Path(argument).expanduser() if argument else _default_ptb_dir(cache_dir, download)
        return load_ptb(directory, source=spec)
    if kind == "text":
        if not argument:
            raise InvalidInputError("text corpus spec needs a directory: text:<dir>")
        return load_text_dir(Path(argument).expanduser(), source=spec)
    if kind == "synthetic":
        return load_synthetic(**_parse_synthetic_spec(argument))
    raise InvalidInputError(
        f"unknown corpus spec {spec!r}; use ptb:<dir>, ptb (with {PTB_ENV_VAR} set), text:<dir> or synthetic:<seed>")


def load_ptb(directory: str | os.PathLike, *, source: str | None = None) -> Corpus:
    directory = Path(directory)
    missing = [name for name in PTB_FILES.values() if not (directory / name).is_file()]
    if missing:
        raise InvalidInputError(
            f"Penn Treebank files not found in {directory}: missing {', '.join(missing)}. Set {PTB_ENV_VAR} to a "
            f"directory holding ptb.train.txt, ptb.valid.txt and ptb.test.txt, pass --data ptb:<dir>, or allow "
            f"downloading a verified copy (download=True)")
    paths = {split: directory / name for split, name in PTB_FILES.items()}
    return _corpus_from_files(paths, source=source or f"ptb:{directory}", directory=directory)


def load_text_dir(directory: str | os.PathLike, *, source: str | None = None) -> Corpus:
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInputError(f"text corpus directory {directory} does not exist or is not a directory")
    paths = {split: _find_split_file(directory, split) for split in SPLITS}
    return _corpus_from_files(paths, source=source or f"text:{directory}", directory=directory)


def load_synthetic(seed: int = 0, *, train: int = SYNTHETIC_DEFAULTS["train"], valid: int = SYNTHETIC_DEFAULTS["valid"],
                   test: int = SYNTHETIC_DEFAULTS["test"], states: int = SYNTHETIC_DEFAULTS["states"],
                   words: int = SYNTHETIC_DEFAULTS["words"]) -> Corpus:
    """Sample the three splits of the synthetic language for `seed` (each split its own random stream)."""
    from analysis.lm.synthetic_language import SyntheticLanguage

    sizes = {"train": train, "valid": valid, "test": test}
    for name, size in sizes.items():
        if int(size) < 2:
            raise InvalidInputError(f"synthetic corpus {name} split needs at least 2 tokens, got {size}")
    language = SyntheticLanguage(seed, n_states=states, vocab_size=words)
    streams = np.random.SeedSequence([int(seed), 1]).spawn(len(SPLITS))
    tensors = {name: torch.from_numpy(language.sample(int(sizes[name]), np.random.default_rng(stream)))
               for name, stream in zip(SPLITS, streams)}
    settings = {"train": train, "valid": valid, "test": test, "states": states, "words": words}
    extras = ",".join(f"{key}={value}" for key, value in settings.items() if value != SYNTHETIC_DEFAULTS[key])
    source = f"synthetic:{seed}" + (f":{extras}" if extras else "")
    return Corpus(source=source, vocab=Vocabulary(language.tokens), language=language, **tensors)


def unigram_perplexity(train: torch.Tensor, evaluated: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of `evaluated` under add-one-smoothed unigram frequencies of `train`: the no-context baseline."""
    counts = np.bincount(np.asarray(train).ravel(), minlength=vocab_size).astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(np.exp(-log_probs[np.asarray(evaluated).ravel()].mean()))


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a 1-D stream into `batch_size` contiguous columns: (n_steps, batch_size); the remainder is trimmed."""
    if data.dim() != 1:
        raise InvalidInputError(f"batchify needs a 1-D token stream, got shape {tuple(data.shape)}")
    if int(batch_size) < 1:
        raise InvalidInputError(f"batch size must be at least 1, got {batch_size}")
    n_steps = data.numel() // batch_size
    if n_steps < 1:
        raise InvalidInputError(f"a stream of {data.numel()} tokens is shorter than the batch size {batch_size}")
    return data[: n_steps * batch_size].view(batch_size, n_steps).t().contiguous()


def get_batch(source: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows i..i+L-1 as input (L, B) and the rows one step later, flattened (L*B,), as target."""
    if int(bptt) < 1:
        raise InvalidInputError(f"bptt must be at least 1, got {bptt}")
    if not 0 <= i < len(source) - 1:
        raise InvalidInputError(
            f"batch start {i} is outside a source of {len(source)} steps (need 0 <= i < {len(source) - 1})")
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


def read_lines(path: Path) -> list[list[str]]:
    """Whitespace-split words of each non-empty line, each followed by "<eos>"."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{path} is not UTF-8 text ({error}); corpus files must be UTF-8") from None
    except OSError as error:
        raise InvalidInputError(f"cannot read corpus file {path}: {error}") from None
    return [words + [EOS] for words in (line.split() for line in text.splitlines()) if words]


def _corpus_from_files(paths: dict[str, Path], *, source: str, directory: Path) -> Corpus:
    lines = {split: read_lines(path) for split, path in paths.items()}
    vocab = Vocabulary()
    for line in lines["train"]:
        for word in line:
            vocab.add(word)
    if not len(vocab):
        raise InvalidInputError(f"training file {paths['train']} holds no words")
    for split in ("valid", "test"):
        if any(word not in vocab for line in lines[split] for word in line):
            vocab.add(UNK)
            break
    tensors = {}
    for split in SPLITS:
        ids = vocab.encode([word for line in lines[split] for word in line])
        if not ids:
            raise InvalidInputError(f"{split} file {paths[split]} holds no words")
        tensors[split] = torch.tensor(ids, dtype=torch.int64)
    return Corpus(source=source, vocab=vocab, data_dir=directory, **tensors)


def _find_split_file(directory: Path, split: str) -> Path:
    for name in (f"{split}.txt", f"wiki.{split}.tokens"):
        if (directory / name).is_file():
            return directory / name
    matches = sorted(p for pattern in (f"*.{split}.txt", f"*.{split}.tokens")
                     for p in directory.glob(pattern) if p.is_file())
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidInputError(
            f"{directory} holds several {split} files ({', '.join(p.name for p in matches)}); keep one per split")
    raise InvalidInputError(
        f"no {split} file in {directory}; expected {split}.txt, <name>.{split}.txt or wiki.{split}.tokens")


def _default_ptb_dir(cache_dir: str | os.PathLike | None, download: bool) -> Path:
    from analysis.lm import download as downloads

    env_dir = os.environ.get(PTB_ENV_VAR)
    if env_dir:
        return Path(env_dir).expanduser()
    cached = Path(cache_dir) if cache_dir is not None else downloads.default_ptb_cache_dir()
    if downloads.ptb_files_verified(cached):
        return cached
    if download:
        return downloads.download_ptb(cached)
    raise InvalidInputError(
        f"no Penn Treebank directory given: set {PTB_ENV_VAR} to a directory holding ptb.train.txt, ptb.valid.txt "
        f"and ptb.test.txt, pass --data ptb:<dir>, or allow downloading a verified copy into {cached} (download=True)")


def _parse_synthetic_spec(argument: str) -> dict:
    seed_text, _, options = argument.partition(":")
    settings: dict[str, int] = {}
    try:
        settings["seed"] = int(seed_text) if seed_text else 0
        for item in filter(None, options.split(",")):
            key, equals, value = item.partition("=")
            if not equals or key not in SYNTHETIC_DEFAULTS:
                raise InvalidInputError(f"unknown synthetic option {item!r}; keys are {', '.join(SYNTHETIC_DEFAULTS)}")
            settings[key] = int(value)
    except InvalidInputError:
        raise
    except ValueError:
        raise InvalidInputError(
            f"bad synthetic spec 'synthetic:{argument}': use synthetic:<integer seed>[:train=N,valid=N,...]") from None
    return settings
