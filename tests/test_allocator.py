from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A fresh process fine-tunes a 2 x 100 student of a 2 x 200 teacher with a 10,000-word vocabulary,
# as in benchmarks/bench_finetune_step.py, and prints the page faults of each step after the first.
DISTILLATION_STEPS = """
import json, resource, sys, tempfile
from pathlib import Path
import numpy as np, torch
import analysis.utils.allocator as allocator
from analysis.lm.corpora import Corpus, Vocabulary
from analysis.lm.model import ModelConfig, RNNLanguageModel
from analysis.pruning.surgery import prune_units
from analysis.lm.training import TrainConfig, train_language_model

if sys.argv[1] == "untuned":
    allocator._applied = False  # as if it had been tried and had failed: malloc keeps its defaults
torch.set_num_threads(1)
vocab = 10_000
tokens = torch.randint(0, vocab, (20 * 20 * 12 + 50,), generator=torch.Generator().manual_seed(0))
corpus = Corpus(source="random", vocab=Vocabulary(f"w{i}" for i in range(vocab)), train=tokens,
                valid=tokens[:500], test=tokens[:500])
torch.manual_seed(0)
teacher = RNNLanguageModel(ModelConfig(vocab_size=vocab, embedding_size=200, hidden_sizes=[200, 200]))
student = prune_units(teacher, {name: np.arange(0, 200, 2) for name in teacher.layer_names})
faults = []
def count(context):
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
config = TrainConfig(epochs=1, lr=1.0, bptt=20, batch_size=20, max_batches_per_epoch=12, max_eval_batches=1,
                     record_every=0)
with tempfile.TemporaryDirectory() as work:
    train_language_model(Path(work) / "run", corpus=corpus, train_config=config, initial_model=student, teacher=teacher,
                         extra_loss=count, progress=False, evaluate_test=False, log=None)
print(json.dumps(np.diff(faults[1:]).tolist()))
"""


def step_faults(mode: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", DISTILLATION_STEPS, mode], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the tuning applies to glibc's malloc only")
@pytest.mark.slow  # fine-tunes in two subprocesses
def test_distillation_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    tuned = sorted(step_faults("tuned"))
    untuned = sorted(step_faults("untuned"))
    # 3 of the step's buffers are 400 x 10,000 float32 (16 MB, 3,900 pages each)
    assert tuned[len(tuned) // 2] < 500, tuned
    assert untuned[len(untuned) // 2] > 3_900, untuned  # what the tuning is for (glibc's defaults)


def test_it_is_a_no_op_that_says_so_where_malloc_is_not_glibc(monkeypatch):
    import analysis.utils.allocator as allocator
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(platform, "libc_ver", lambda *args, **kwargs: ("musl", "1.2"))
    assert allocator.reuse_freed_memory() is False
