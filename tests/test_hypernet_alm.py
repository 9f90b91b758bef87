"""ALM self-distillation for the ZeTT hypernetwork (``transplant hypernet train`` with
``objective: alm``): the loss from a sampled softmax's token log-probs is the loss from full
logits, it is zero when the predicted rows are the base's own, its gradient reaches only the
hypernetwork, and a run trains, resumes exactly and exports a hypernetwork ``zett`` applies."""

from __future__ import annotations

import pytest
import torch

from transplant.training.alm import (
    align_chunks, alm_distill_loss, alm_distill_loss_from_logprobs, boundary_logprobs, token_logprobs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def spans(ends: list[int]) -> list[tuple[int, int]]:
    """(start, end) byte offsets of tokens that follow each other; a leading 0 is the prefix."""
    return [(0, 0) if end == 0 else (before, end) for before, end in zip([0, *ends], ends)]


@pytest.mark.parametrize("debias", [False, True], ids=["plain", "debiased"])
def test_token_logprobs_give_the_loss_and_gradients_of_full_logits(debias: bool) -> None:
    """The hypernetwork's student scores its candidates in its own order (positives first):
    log-probs taken from the permuted logits must give what the logits themselves give."""
    torch.manual_seed(0)
    teacher_ends = [[0, 2, 4, 6, 9, 10, 12], [0, 3, 4, 7, 8, 11, 12]]
    student_ends = [[0, 1, 4, 6, 8, 10, 12], [0, 3, 5, 7, 8, 12, 0]]
    alignment = align_chunks([spans(e) for e in teacher_ends], [spans(e) for e in student_ends])
    assert int(alignment.num_chunks.sum()) >= 4
    vocab = 11
    logits = (3 * torch.randn(2, 7, vocab)).requires_grad_()
    teacher_logits = 3 * torch.randn(2, 7, 13)
    targets, teacher_targets = torch.randint(0, vocab, (2, 7)), torch.randint(0, 13, (2, 7))
    boundary, teacher_boundary = torch.rand(vocab) < 0.4, torch.arange(13) == 5  # rare: some chunks merge
    kwargs = {"temperature": 2.0, "teacher_boundary_tokens": teacher_boundary if debias else None}

    full = alm_distill_loss(logits, targets, teacher_logits, teacher_targets, alignment,
                            student_boundary_tokens=boundary if debias else None, **kwargs)
    (expected,) = torch.autograd.grad(full.loss, logits)

    order = torch.randperm(vocab)  # candidate k is token order[k]
    candidates = logits[..., order]
    local = torch.argsort(order)[targets]
    bound = boundary_logprobs(candidates, boundary[order]) if debias else None
    sampled = alm_distill_loss_from_logprobs(token_logprobs(candidates, local), teacher_logits, teacher_targets,
                                             alignment, student_boundary_logp=bound, **kwargs)
    (got,) = torch.autograd.grad(sampled.loss, logits)

    assert full.loss.item() > 0 and int(sampled.num_chunks) == int(full.num_chunks)
    assert (int(full.num_chunks) < 8) == debias  # debiasing merged some of the 8 chunks
    assert sampled.loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-9) and got.abs().sum() > 0
