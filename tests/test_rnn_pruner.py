"""RNNPruner driven from a plain training loop on a model dynaprune did not define."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from analysis.errors import InvalidInputError
from analysis.pruning.pruner import RNNPruner, stage_ratio
from tests.foreign_models import BiGRUClassifier, TwoRecurrentModules


def synthetic_batches(count, batch=16, steps=6, vocab=20, seed=0):
    """Sequences whose class is the first token mod 3: learnable from the reverse direction's last state."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        tokens = torch.randint(0, vocab, (batch, steps), generator=generator)
        yield tokens, tokens[:, 0] % 3


def test_stage_ratios_remove_the_same_fraction_of_what_is_left():
    assert stage_ratio(0.5, 0, 3) == 0.0
    assert stage_ratio(0.5, 3, 3) == pytest.approx(0.5)
    left = [1 - stage_ratio(0.5, s, 3) for s in range(4)]
    assert left[1] / left[0] == pytest.approx(left[2] / left[1]) == pytest.approx(left[3] / left[2])


def test_a_complete_pruning_run_on_a_bidirectional_gru_classifier(tmp_path):
    torch.manual_seed(0)
    model = BiGRUClassifier(pool="states", hidden=8)
    calibration = next(synthetic_batches(1, seed=99))
    pruner = RNNPruner(model, (calibration[0],), tmp_path, ratio=0.5, stages=3, lam=1e-3, refresh_every=4,
                       importance_loss=lambda m: F.cross_entropy(m(calibration[0]), calibration[1]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step, (x, y) in enumerate(synthetic_batches(8)):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.record(step)
    sizes, losses = [], []
    for stage in range(3):
        student = pruner.step()
        sizes.append(student.gru.hidden_size)
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
        for step, (x, y) in enumerate(synthetic_batches(8, seed=stage + 1)):
            optimizer.zero_grad()
            logits = student(x)
            loss = pruner.regularize(student, pruner.distillation_loss(logits, pruner.teacher_logits(x), y))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            pruner.record(step)
    assert sizes == [6, 5, 4]                      # 8 - round(8 * r_s), r_s = 1 - 0.5^{s/3}: 0.21, 0.37, 0.5
    assert pruner.model is student and pruner.teacher.gru.hidden_size == 5
    assert student.head.in_features == 8 and student.norm.normalized_shape == (8,)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[-8:-5])   # the last student still learns
    assert model.gru.hidden_size == 8 and all(p.requires_grad for p in model.parameters())
    with pytest.raises(InvalidInputError, match="all 3 stages"):
        pruner.step()


def test_a_module_feeding_a_tied_decoder_is_left_whole_with_a_warning(tmp_path):
    torch.manual_seed(0)
    model = TwoRecurrentModules(tie_weights=True)
    tokens = torch.randint(0, 17, (5, 2))
    with pytest.warns(UserWarning, match="`upper` is left whole.*tied"):
        pruner = RNNPruner(model, (tokens,), tmp_path, ratio=0.5, stages=1, criterion="magnitude", lam=0.0)
    for step in range(3):
        pruner.record(step)
    student = pruner.step()
    assert (student.lower.hidden_size, student.upper.hidden_size, student.upper.input_size) == (3, 6, 3)
    assert pruner.regularize(student, torch.tensor(1.0)) == 1.0


def test_too_short_a_trajectory_is_refused_with_advice(tmp_path):
    torch.manual_seed(0)
    model = BiGRUClassifier()
    pruner = RNNPruner(model, (torch.randint(0, 20, (2, 6)),), tmp_path, lam=0.0)
    pruner.record(0)
    with pytest.raises(InvalidInputError, match="at least 3 recorded snapshots"):
        pruner.step()


def test_the_penalty_is_at_most_plain_l2_and_important_units_are_spared(tmp_path):
    torch.manual_seed(0)
    model = BiGRUClassifier(pool="mean")
    x, y = next(synthetic_batches(1))
    plain = RNNPruner(model, (x,), tmp_path / "plain", lam=1.0)
    aware = RNNPruner(model, (x,), tmp_path / "aware", lam=1.0,
                      importance_loss=lambda m: F.cross_entropy(m(x), y))
    squares = sum(p.pow(2).sum() for name, p in model.gru.named_parameters() if name.startswith("weight"))
    assert plain.penalty(model).item() == pytest.approx(squares.item(), rel=1e-5)
    assert 0 < aware.penalty(model).item() < squares.item()
    aware.penalty(model).backward()
    assert model.gru.weight_hh_l0.grad is not None
