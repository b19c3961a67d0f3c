"""The library's one progress callback type: what training reports through it, and the terminal bar."""
import sys

from analysis.lm.model import ModelConfig
from analysis.lm.training import TrainConfig, train_language_model
from analysis.utils.progress import ProgressUpdate, TerminalProgress


def test_training_reports_every_batch_of_every_epoch(tmp_path, corpus):
    heard = []
    config = TrainConfig(epochs=2, bptt=5, batch_size=4, max_batches_per_epoch=3, max_eval_batches=1, record_every=0,
                         log_interval=2)
    train_language_model(tmp_path / "run", corpus=corpus, train_config=config,
                         model_config=ModelConfig(vocab_size=len(corpus.vocab), embedding_size=4, hidden_sizes=[5]),
                         progress=heard.append, evaluate_test=False, log=None)
    assert [(u.task, u.done, u.total) for u in heard] == [(f"epoch {e}/2", b, 3) for e in (1, 2) for b in (1, 2, 3)]
    assert heard[0].detail == "" and heard[1].detail.startswith("ppl ")


def test_the_terminal_bar_draws_nothing_off_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    bar = TerminalProgress()
    bar(ProgressUpdate("rnns.0.l0", 1, 2))
    bar(ProgressUpdate("rnns.0.l0", 2, 2))
    assert capsys.readouterr().err == ""
