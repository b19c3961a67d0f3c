"""The distillation term of fine-tuning: the chunked KL and fused loss against the generic ones."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from analysis.errors import InvalidInputError
from analysis.lm.model import ModelConfig, RNNLanguageModel
from analysis.lm.training import TrainConfig, train_language_model
from analysis.pruning.distillation import LOSS_CHUNK_ROWS, distillation_kl, distillation_loss


def tiny_model(rnn_type="LSTM", hidden_sizes=(7, 5), vocab=30, seed=0, **kwargs) -> RNNLanguageModel:
    torch.manual_seed(seed)
    return RNNLanguageModel(ModelConfig(vocab_size=vocab, embedding_size=6, hidden_sizes=list(hidden_sizes),
                                        rnn_type=rnn_type, init_range=0.5, **kwargs))


def test_distillation_kl_matches_the_generic_kl_and_its_gradient():
    torch.manual_seed(3)
    for tau in (1.0, 2.0, 0.7):
        student = (3 * torch.randn(12, 40, dtype=torch.float64)).requires_grad_()
        teacher = 3 * torch.randn(12, 40, dtype=torch.float64)
        reference = F.kl_div(F.log_softmax(student / tau, -1), F.log_softmax(teacher / tau, -1), log_target=True,
                             reduction="batchmean")
        value = distillation_kl(student, teacher, tau)
        assert value.item() == pytest.approx(reference.item(), rel=1e-10)
        expected_grad, = torch.autograd.grad(reference, student)
        grad, = torch.autograd.grad(value, student)
        torch.testing.assert_close(grad, expected_grad)
    assert torch.autograd.gradcheck(lambda z: distillation_kl(z, teacher[:3, :5], 2.0),
                                    (torch.randn(3, 5, dtype=torch.float64, requires_grad=True),))


def test_the_fused_fine_tuning_loss_equals_cross_entropy_plus_the_distillation_term():
    torch.manual_seed(4)
    rows = LOSS_CHUNK_ROWS * 2 + 5  # two full chunks and a partial one
    for tau in (1.0, 2.0, 0.7):
        for alpha in (0.0, 0.3, 1.0):
            student = (3 * torch.randn(rows, 40, dtype=torch.float64)).requires_grad_()
            teacher = 3 * torch.randn(rows, 40, dtype=torch.float64)
            targets = torch.randint(0, 40, (rows,))
            cross_entropy = F.cross_entropy(student, targets)
            kl = F.kl_div(F.log_softmax(student / tau, -1), F.log_softmax(teacher / tau, -1), log_target=True,
                          reduction="batchmean")
            reference = (1 - alpha) * cross_entropy + alpha * tau * tau * kl
            result = distillation_loss(student, teacher, targets, alpha, tau)
            assert result.loss.item() == pytest.approx(reference.item(), rel=1e-10)
            assert result.cross_entropy.item() == pytest.approx(cross_entropy.item(), rel=1e-10)
            assert result.kl.item() == pytest.approx(kl.item(), rel=1e-9, abs=1e-12)
            assert not result.cross_entropy.requires_grad and not result.kl.requires_grad
            expected_grad, = torch.autograd.grad(reference, student)
            grad, = torch.autograd.grad(result.loss, student)
            torch.testing.assert_close(grad, expected_grad)
    targets = torch.randint(0, 5, (3,))
    assert torch.autograd.gradcheck(lambda z: distillation_loss(z, teacher[:3, :5], targets, 0.4, 2.0).loss,
                                    (torch.randn(3, 5, dtype=torch.float64, requires_grad=True),))


def test_the_fused_loss_refuses_mismatched_shapes_and_parameters():
    student, teacher, targets = torch.randn(6, 9), torch.randn(6, 9), torch.zeros(6, dtype=torch.long)
    with pytest.raises(InvalidInputError, match="do not match"):
        distillation_loss(student, torch.randn(6, 8), targets, 0.5, 2.0)
    with pytest.raises(InvalidInputError, match="targets"):
        distillation_loss(student, teacher, targets[:5], 0.5, 2.0)
    with pytest.raises(InvalidInputError, match="alpha"):
        distillation_loss(student, teacher, targets, 1.5, 2.0)
    with pytest.raises(InvalidInputError, match="temperature"):
        distillation_loss(student, teacher, targets, 0.5, 0.0)


def test_the_distillation_term_is_zero_when_the_student_is_the_teacher():
    logits = 4 * torch.randn(20, 50)
    student = logits.clone().requires_grad_()
    value = distillation_kl(student, logits, 2.0)
    assert abs(value.item()) < 1e-6
    grad, = torch.autograd.grad(value, student)
    assert grad.abs().max().item() < 1e-8


@pytest.mark.slow  # trains a model
def test_fine_tuning_toward_an_identical_teacher_with_only_the_distillation_term_changes_nothing(corpus, tmp_path):
    model = tiny_model(hidden_sizes=(6, 5), vocab=len(corpus.vocab))
    config = TrainConfig(epochs=1, optimizer="sgd", lr=1.0, clip=0, bptt=5, batch_size=4, max_batches_per_epoch=5,
                         max_eval_batches=2, record_every=0, distill_alpha=1.0, distill_temperature=2.0)
    result = train_language_model(tmp_path / "run", corpus=corpus, train_config=config, initial_model=model,
                                  teacher=model, progress=False, log=None, evaluate_test=False)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[key], value, atol=1e-6, rtol=0)
    moved = train_language_model(tmp_path / "ce", corpus=corpus,
                                 train_config=TrainConfig(**{**config.to_dict(), "distill_alpha": 0.0}),
                                 initial_model=model, teacher=model, progress=False, log=None, evaluate_test=False)
    assert not torch.allclose(moved.model.decoder.weight, model.decoder.weight, atol=1e-4)
