"""The distillation term of fine-tuning (METHOD section 8).

`distillation_kl(student_logits, teacher_logits, tau)` is KL(softmax(z_t / tau) || softmax(z_s / tau))
averaged over tokens; `distillation_loss(student_logits, teacher_logits, targets, alpha, tau)` is the
whole fine-tuning loss (1 - alpha) CE + alpha tau^2 KL. Both are written by hand and work through
the logits a few rows at a time, so every pass over a chunk runs in cache and no (tokens x
vocabulary) temporary is allocated besides the gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from analysis.errors import InvalidInputError

# Rows per chunk of the fused loss: a chunk's few (rows x vocabulary) buffers stay in the CPU's
# cache (16 x 10,000 floats = 640 KB each) while every pass over them runs.
LOSS_CHUNK_ROWS = 16


class _ChunkedDistillationLoss(torch.autograd.Function):
    """w_ce * CE(z_s, y) + w_kl * KL(softmax(z_t / tau) || softmax(z_s / tau)), both averaged over
    the N rows, computed chunk by chunk with its gradient in z_s:

        dL/dz_s = (w_ce * (softmax(z_s) - onehot(y)) + (w_kl / tau) * (q - p)) / N

    Per row, with m the row maximum and unnormalised e_t = exp((z_t - m_t) / tau) (sum S_t),
    e_s = exp((z_s - m_s) / tau) (sum S_s) and e_1 = exp(z_s - m_s) (sum S_1; e_s squared when
    tau = 2, e_s itself when tau = 1):
        CE = m_s + log S_1 - z_s[y]
        KL = e_t . (z_t - z_s) / (tau S_t) - (m_t / tau + log S_t) + (m_s / tau + log S_s)
    The gradient is written straight into one (N, V) tensor, the only one that outlives the
    forward pass; the rest works on a few reused chunk buffers, about 16 passes over the logits
    in all (every pass costs the same whether or not the data are in cache, so passes are what
    is counted). Returns (loss, CE, KL); only the loss carries a gradient.
    """

    @staticmethod
    def forward(ctx, student, teacher, targets, w_ce, w_kl, tau):
        n_rows, vocab = student.shape
        inverse_tau = 1.0 / tau
        gradient = torch.empty_like(student)
        rows = min(LOSS_CHUNK_ROWS, n_rows)
        teacher_buffer, student_buffer, scratch_buffer = (student.new_empty(rows, vocab) for _ in range(3))
        ce_total = torch.zeros((), dtype=torch.float64, device=student.device)
        kl_total = torch.zeros((), dtype=torch.float64, device=student.device)
        for begin in range(0, n_rows, rows):
            end = min(begin + rows, n_rows)
            z_s, z_t, grad = student[begin:end], teacher[begin:end], gradient[begin:end]
            e_t, e_s = teacher_buffer[: end - begin], student_buffer[: end - begin]
            teacher_max = z_t.amax(dim=1, keepdim=True)
            torch.add(teacher_max.mul(-inverse_tau), z_t, alpha=inverse_tau, out=e_t).exp_()
            teacher_sum = e_t.sum(dim=1, keepdim=True)
            student_max = z_s.amax(dim=1, keepdim=True)
            torch.add(student_max.mul(-inverse_tau), z_s, alpha=inverse_tau, out=e_s).exp_()
            student_sum = e_s.sum(dim=1, keepdim=True)
            scratch = scratch_buffer[: end - begin]
            weighted = torch.sub(z_t, z_s, out=scratch).mul_(e_t).sum(dim=1, keepdim=True) / teacher_sum
            kl = (weighted.sum() * inverse_tau - (teacher_max.sum() * inverse_tau + teacher_sum.log().sum())
                  + (student_max.sum() * inverse_tau + student_sum.log().sum()))
            kl_total += kl.double()
            kl_scale = w_kl * inverse_tau / n_rows
            if targets is not None:  # the cross-entropy is reported even when its weight is 0
                if tau == 1.0:
                    e_1, sum_1 = e_s, student_sum
                else:
                    e_1 = torch.mul(e_s, e_s, out=grad) if tau == 2.0 else torch.sub(z_s, student_max, out=grad).exp_()
                    sum_1 = e_1.sum(dim=1, keepdim=True)
                chunk_targets = targets[begin:end].unsqueeze(1)
                ce_total += (student_max.sum() + sum_1.log().sum() - z_s.gather(1, chunk_targets).sum()).double()
                torch.mul(e_1, (w_ce / n_rows) / sum_1, out=grad)
                grad.addcmul_(e_s, kl_scale / student_sum)
                grad.scatter_add_(1, chunk_targets, grad.new_full(chunk_targets.shape, -w_ce / n_rows))
            else:
                torch.mul(e_s, kl_scale / student_sum, out=grad)
            grad.addcmul_(e_t, -kl_scale / teacher_sum)
        ce_mean, kl_mean = (ce_total / n_rows).to(student.dtype), (kl_total / n_rows).to(student.dtype)
        ctx.save_for_backward(gradient)
        ctx.mark_non_differentiable(ce_mean, kl_mean)
        return w_ce * ce_mean + w_kl * kl_mean, ce_mean, kl_mean

    @staticmethod
    def backward(ctx, grad_loss, grad_ce, grad_kl):
        (gradient,) = ctx.saved_tensors
        if grad_loss.device.type == "cpu" and grad_loss.item() == 1.0:
            return gradient, None, None, None, None, None  # loss.backward(): no copy of the logits' size
        return gradient * grad_loss, None, None, None, None, None


@dataclass(frozen=True)
class DistillationLoss:
    """The fine-tuning loss of METHOD section 8 and its two parts (the parts carry no gradient)."""

    loss: torch.Tensor
    cross_entropy: torch.Tensor
    kl: torch.Tensor


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float):
    if not tau > 0 or not math.isfinite(tau):
        raise InvalidInputError(f"the distillation temperature must be a positive number, got {tau!r}")
    if student_logits.numel() != teacher_logits.numel() or student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise InvalidInputError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                                f"{tuple(teacher_logits.shape)} do not match")
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.detach().reshape(-1, vocab).to(student.dtype)
    return student.contiguous(), teacher.contiguous()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      alpha: float, tau: float) -> DistillationLoss:
    """(1 - alpha) CE(student, targets) + alpha tau^2 KL(softmax(teacher / tau) || softmax(student / tau)).

    Logits are (N, V) (or viewable so), targets (N,) class indices; means over the N tokens. Equal
    to F.cross_entropy plus alpha tau^2 times `distillation_kl`, with the same gradient, in one pass
    over the logits chunk by chunk: on a ptb-small batch (700 x 10,000) about a third of the time
    of the two separate terms (benchmarks/bench_finetune_step.py prints both).
    """
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"the distillation weight alpha must lie in [0, 1], got {alpha!r}")
    student, teacher = _check_logits(student_logits, teacher_logits, tau)
    targets = targets.reshape(-1)
    if targets.shape[0] != student.shape[0]:
        raise InvalidInputError(f"{targets.shape[0]} targets for {student.shape[0]} rows of logits")
    loss, cross_entropy, kl = _ChunkedDistillationLoss.apply(student, teacher, targets, 1.0 - alpha,
                                                             alpha * tau * tau, float(tau))
    return DistillationLoss(loss, cross_entropy, kl)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over tokens of KL(softmax(teacher / tau) || softmax(student / tau)).

    Both logits are (N, V) (or anything viewable so); the teacher's get no gradient. Equal to
    F.kl_div(log_softmax(student / tau), log_softmax(teacher / tau), log_target=True,
    reduction="batchmean") with the same gradient, in less time. The distillation loss of METHOD
    section 8 is alpha * tau^2 times this.
    """
    student, teacher = _check_logits(student_logits, teacher_logits, tau)
    loss, _, _ = _ChunkedDistillationLoss.apply(student, teacher, None, 0.0, 1.0, float(tau))
    return loss
