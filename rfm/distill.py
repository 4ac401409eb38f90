"""The Region Focus Module's training loss: attention distillation from the frozen host
(``../shared/research/lrs_vqa_reference.md`` §4.4, implemented from that description).

Teacher and student give *raw* attention logits ``q·k/√d`` of one query — the position just before the
answer — over the whole sequence, with no causal mask, per head. Student layer ``k+1`` is paired with teacher
layer ``llm_layer_list[k]``; list positions in ``skip`` (the card: 1 and 2) take no part. Per pair and head
the loss has three terms:

1. ``KL(softmax(T) ‖ softmax(S))`` over the full sequence;
2. the same KL over the local-image logits only, both divided by the temperature (2);
3. ``MSE(S_img / 2, T_img / 2)``;

and the distillation loss is the mean of all terms. The teacher is detached. The paper adds the host's LM
loss; here the host is frozen, so that term is zero and left out. ``--target boxes`` (ours, beyond the
paper) replaces or joins the teacher on the image part with a distribution from ground-truth boxes:
:func:`box_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lrs_vqa.engine.tokens import box_overlaps

TEMPERATURE = 2.0
SKIP_POSITIONS = (1, 2)  # list positions the released loss leaves out


@dataclass(frozen=True)
class DistillTerms:
    """The mean of each term over layer pairs and heads, and their mean (the loss)."""

    kl_full: torch.Tensor
    kl_image: torch.Tensor
    mse_image: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        return (self.kl_full + self.kl_image + self.mse_image) / 3


def _kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) ‖ softmax(student)) per row (last dim), as ``F.kl_div(log S, T)`` summed."""
    return F.kl_div(F.log_softmax(student, -1), F.softmax(teacher, -1), reduction="none").sum(-1)


def distill_terms(
    teacher: Sequence[torch.Tensor],
    student: Sequence[torch.Tensor],
    image: slice | torch.Tensor,
    *,
    skip: Sequence[int] = SKIP_POSITIONS,
    temperature: float = TEMPERATURE,
) -> DistillTerms:
    """The three terms for layer pairs ``teacher[k]`` / ``student[k]`` — each (heads, L) raw logits of the
    query row over every position — with the local-image keys at ``image``. Pairs at list positions in
    ``skip`` are left out (unless that would leave none)."""
    if len(teacher) != len(student) or not teacher:
        raise ValueError(f"need as many student as teacher layers (got {len(student)} and {len(teacher)})")
    pairs = [k for k in range(len(teacher)) if k not in skip] or list(range(len(teacher)))
    kl_full, kl_img, mse = [], [], []
    for k in pairs:
        t, s = teacher[k].detach().float(), student[k].float()
        if t.shape != s.shape:
            raise ValueError(f"layer pair {k}: teacher {tuple(t.shape)} vs student {tuple(s.shape)}")
        kl_full.append(_kl(t, s))
        ti, si = t[..., image] / temperature, s[..., image] / temperature
        kl_img.append(_kl(ti, si))
        mse.append(((si - ti) ** 2).mean(-1))
    return DistillTerms(torch.cat(kl_full).mean(), torch.cat(kl_img).mean(), torch.cat(mse).mean())


def box_target(token_boxes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(n,) target distribution over the local tokens from ground-truth boxes: each token's share is the
    area it overlaps the boxes (level-0 pixels), normalised; tokens without a box (newline markers: NaN)
    get none. All zeros if no token meets a box."""
    overlap = torch.nan_to_num(box_overlaps(token_boxes, boxes), nan=0.0).sum(1)
    total = overlap.sum()
    return overlap / total if total > 0 else overlap


def box_loss(student_image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student's local-token distribution (``student_image``: (heads, n) raw logits)
    against a box target (n,), averaged over heads: ``−Σ target · log softmax(S)``."""
    if float(target.sum()) <= 0:
        raise ValueError("the box target is empty: no local token meets a ground-truth box")
    return -(target[None] * F.log_softmax(student_image.float(), -1)).sum(-1).mean()
