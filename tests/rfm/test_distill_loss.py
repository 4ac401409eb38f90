"""The RFM distillation loss (rfm/distill.py) on hand-made logits: each term equals a by-hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from rfm.distill import box_loss, box_target, distill_terms


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def kl(t: list[float], s: list[float]) -> float:
    p, q = softmax(t), softmax(s)
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_each_term_by_hand() -> None:
    # one layer pair, two heads, five positions; the image is positions 2..4
    t = torch.tensor([[1.0, 0.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, 3.0, 1.0]])
    s = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0], [2.0, -1.0, 0.5, 0.5, 0.0]])
    terms = distill_terms([t], [s], slice(2, 5), skip=())
    tl, sl = t.tolist(), s.tolist()
    full = sum(kl(a, b) for a, b in zip(tl, sl, strict=True)) / 2
    img = sum(kl([x / 2 for x in a[2:]], [x / 2 for x in b[2:]]) for a, b in zip(tl, sl, strict=True)) / 2
    mse = (
        sum(
            sum((x / 2 - y / 2) ** 2 for x, y in zip(b[2:], a[2:], strict=True)) / 3
            for a, b in zip(tl, sl, strict=True)
        )
        / 2
    )
    assert float(terms.kl_full) == pytest.approx(full, rel=1e-6)
    assert float(terms.kl_image) == pytest.approx(img, rel=1e-6)
    assert float(terms.mse_image) == pytest.approx(mse, rel=1e-6)
    assert float(terms.loss) == pytest.approx((full + img + mse) / 3, rel=1e-6)
    # equal logits: every term is zero
    same = distill_terms([t], [t.clone()], slice(2, 5), skip=())
    assert float(same.loss) == pytest.approx(0.0, abs=1e-7)


def test_skipped_positions_and_the_teacher_is_detached() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(2, 6, generator=g, requires_grad=True) for _ in range(4)]
    student = [torch.randn(2, 6, generator=g, requires_grad=True) for _ in range(4)]
    all_pairs = distill_terms(teacher, student, slice(3, 6), skip=())
    card = distill_terms(teacher, student, slice(3, 6))  # skips list positions 1 and 2
    only = distill_terms([teacher[0], teacher[3]], [student[0], student[3]], slice(3, 6), skip=())
    assert float(card.loss.detach()) == pytest.approx(float(only.loss.detach()))
    assert float(card.loss.detach()) != pytest.approx(float(all_pairs.loss.detach()))
    card.loss.backward()
    assert all(t.grad is None for t in teacher)
    assert student[0].grad is not None and student[1].grad is None  # a skipped pair gets no gradient


def test_box_target_and_loss() -> None:
    # three 10×10 tokens in a row and a newline marker; the box covers the 2nd fully and half the 3rd
    tokens = torch.tensor([[0.0, 0, 10, 10], [10.0, 0, 20, 10], [20.0, 0, 30, 10], [float("nan")] * 4])
    target = box_target(tokens, torch.tensor([[10.0, 0, 25, 10]]))
    assert target.tolist() == pytest.approx([0.0, 2 / 3, 1 / 3, 0.0])
    logits = torch.tensor([[0.0, 1.0, 0.0, -1.0]])
    want = -(2 / 3 * math.log(softmax([0, 1, 0, -1])[1]) + 1 / 3 * math.log(softmax([0, 1, 0, -1])[2]))
    assert float(box_loss(logits, target)) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="empty"):
        box_loss(logits, box_target(tokens, torch.tensor([[100.0, 100, 110, 110]])))
