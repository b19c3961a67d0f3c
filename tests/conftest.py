"""Shared test settings, paths and fixtures."""
import os
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_SAMPLES = REPO_ROOT / "sample_checkpoints"
# The corpus most unit tests train and prune on: a second of work per epoch at most.
SMALL_CORPUS = "synthetic:0:train=3000,valid=600,test=600,words=30,states=6"
# The corpus of the sample built when the embedded one is missing.
TINY_SAMPLE_DATA = "synthetic:0:train=6000,valid=1500,test=500,states=8,words=60"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests' models and matrices are small: they run fastest on one thread, above all while
    background jobs started by other tests share the cores."""
    before = torch.get_num_threads()
    with threadpool_limits(limits=1):
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(before)


def build_tiny_sample(run_dir: Path) -> None:
    """A small trained model with its trajectory in `run_dir`, laid out like an embedded sample."""
    from analysis.lm.corpora import load_corpus
    from analysis.lm.model import ModelConfig
    from analysis.lm.training import TrainConfig, train_language_model

    corpus = load_corpus(TINY_SAMPLE_DATA)
    config = ModelConfig(vocab_size=len(corpus.vocab), embedding_size=8, hidden_sizes=[12, 10])
    training = TrainConfig(epochs=3, lr=1.0, bptt=10, batch_size=10, max_batches_per_epoch=12, record_every=3,
                           log_interval=100)
    with threadpool_limits(limits=1):
        train_language_model(run_dir, corpus=corpus, model_config=config, train_config=training, progress=False,
                             evaluate_test=False, log=None)


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> Path:
    """A samples folder with a "synthetic" run (model, metrics, trajectory): the embedded
    sample_checkpoints when present, otherwise one built here (a few seconds of training)."""
    embedded = EMBEDDED_SAMPLES / "synthetic"
    if (embedded / "best.pt").is_file() and (embedded / "trajectory").is_dir():
        return EMBEDDED_SAMPLES
    root = tmp_path_factory.mktemp("samples")
    build_tiny_sample(root / "synthetic")
    return root


@pytest.fixture
def synthetic_sample(samples) -> Path:
    """The synthetic sample's run directory."""
    return samples / "synthetic"


@pytest.fixture
def jobs_home(tmp_path, monkeypatch) -> Path:
    """A fresh DYNAPRUNE_HOME (where background jobs live) under tmp_path, default job limit."""
    home = tmp_path / "home"
    monkeypatch.setenv("DYNAPRUNE_HOME", str(home))
    monkeypatch.delenv("DYNAPRUNE_MAX_JOBS", raising=False)
    # One thread per command: the jobs run side by side with the test on a small machine.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return home


@pytest.fixture
def ptb_dir() -> Path:
    """Mikolov's PTB directory from DYNAPRUNE_PTB_DIR; the test is skipped when it is not set."""
    directory = os.environ.get("DYNAPRUNE_PTB_DIR")
    if not directory:
        pytest.skip("DYNAPRUNE_PTB_DIR is not set; point it at Mikolov's ptb.{train,valid,test}.txt")
    return Path(directory)


@pytest.fixture(scope="module")
def corpus():
    """SMALL_CORPUS, loaded once per module (a module may override it with its own)."""
    from analysis.lm.corpora import load_corpus

    return load_corpus(SMALL_CORPUS)


# Hypothesis property tests (tests/test_hardening.py): few examples by default, so `make test` stays
# quick; HYPOTHESIS_PROFILE=thorough runs many more.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("default", max_examples=25, deadline=None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    settings.register_profile("thorough", max_examples=500, deadline=None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
except ImportError:  # hypothesis is in the test extra; without it only the property tests are skipped
    pass


@pytest.fixture
def env(samples, jobs_home, tmp_path, monkeypatch) -> Path:
    """The dashboard's settings for one test: the samples, its own runs folder and jobs home, one
    thread, and no reference runs unless the test adds some (under tmp_path/reference-runs)."""
    monkeypatch.setenv("DYNAPRUNE_SAMPLES_DIR", str(samples))
    monkeypatch.setenv("DYNAPRUNE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("DYNAPRUNE_DASHBOARD_THREADS", "1")
    monkeypatch.setenv("DYNAPRUNE_REFERENCE_DIR", str(tmp_path / "reference-runs"))
    return tmp_path
