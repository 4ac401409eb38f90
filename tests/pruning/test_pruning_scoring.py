"""Golden values for every pure scoring function, on small fixed tensors. Expected values are worked out by
hand in the comments or computed by a plain-Python reimplementation here, never by the code under test."""

from __future__ import annotations

import math

import pytest
import torch

from pruning.base import map_rows, top_k
from pruning.budget import Budget
from pruning.divprune import cosine_distance, divprune_keep, max_min_order
from pruning.fastv import fastv_keep, fastv_scores
from pruning.pyramiddrop import pdrop_scores, pyramid_profile, query_row
from pruning.random_keep import random_keep
from pruning.recycle import cluster_means, dpc_knn, recycle_split
from pruning.sparsevlm import published_shape, rater_scores, select_raters, stage_profile
from pruning.visionzip import cls_dominance, contextual_count, received_dominance, visionzip_select

# ------------------------------------------------------------------------------------------ shared


def test_top_k_breaks_ties_towards_the_lower_index() -> None:
    scores = torch.tensor([0.1, 0.5, 0.5, 0.2, 0.5])
    assert top_k(scores, 2).tolist() == [1, 2]
    assert top_k(scores, 4).tolist() == [1, 2, 3, 4]
    assert top_k(scores, 0).tolist() == []


def test_map_rows() -> None:
    assert map_rows(torch.tensor([0, 2, 5, 9]), torch.tensor([9, 2])).tolist() == [3, 1]
    with pytest.raises(ValueError, match="no longer line up"):
        map_rows(torch.tensor([0, 2, 5]), torch.tensor([3]))


# ------------------------------------------------------------------------------------------ FastV / PDrop


def test_fastv_scores_and_keep() -> None:
    row = torch.tensor([0.05, 0.1, 0.3, 0.05, 0.2, 0.1, 0.15, 0.05])
    cols = torch.tensor([2, 3, 4, 5])
    assert fastv_scores(row, cols).tolist() == pytest.approx([0.3, 0.05, 0.2, 0.1])
    assert fastv_keep(row, cols, 2).tolist() == [2, 4]
    assert fastv_keep(row, cols, 3).tolist() == [2, 4, 5]


def test_pyramiddrop_profile_and_query() -> None:
    assert pyramid_profile(3)(0.5) == (0.5, 0.25, 0.125)
    assert pyramid_profile(1)(0.3) == (0.3,)
    instruction = torch.tensor([False, False, True, True, False])
    assert query_row(4, instruction, "last") == 4
    assert query_row(4, instruction, "last_instruction") == 3
    assert query_row(4, torch.zeros(5, dtype=torch.bool), "last_instruction") == 4
    assert pdrop_scores(torch.tensor([[0.2, 0.7]])).tolist() == pytest.approx([0.2, 0.7])


# ------------------------------------------------------------------------------------------ SparseVLM


def test_select_raters_by_hand() -> None:
    # V·Tᵀ rows: v1 → (0, ln3, 0), v2 → (0, 0, ln3); softmax over text: (1/5, 3/5, 1/5), (1/5, 1/5, 3/5).
    # Mean over vision: (1/5, 2/5, 2/5) against a mean of 1/3 → text tokens 2 and 3 rate.
    vision = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.0, 0.0], [math.log(3), 0.0], [0.0, math.log(3)]])
    assert select_raters(vision, text).tolist() == [False, True, True]
    # All text tokens alike: nobody is above the mean, so everybody rates.
    assert select_raters(vision, torch.ones(3, 2)).tolist() == [True, True, True]


def test_select_raters_matches_a_plain_python_version() -> None:
    g = torch.Generator().manual_seed(3)
    vision, text = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    relevance = [0.0] * 5
    for v in vision.tolist():
        logits = [sum(a * b for a, b in zip(v, t, strict=True)) for t in text.tolist()]
        z = sum(math.exp(x) for x in logits)
        for j, x in enumerate(logits):
            relevance[j] += math.exp(x) / z / len(vision)
    mean = sum(relevance) / len(relevance)
    assert select_raters(vision, text).tolist() == [r > mean for r in relevance]


def test_rater_scores() -> None:
    att = torch.tensor([[0.2, 0.4, 0.4], [0.6, 0.2, 0.2]])
    assert rater_scores(att).tolist() == pytest.approx([0.4, 0.3, 0.3])


@pytest.mark.parametrize(
    ("n", "keep", "expected"),
    [
        (576, 300, (291, 9)),  # 276 dropped → 82 recycled → 82 // 10 + 1 = 9 clusters
        (16, 11, (10, 1)),  # 5 dropped → 1 recycled → 1 cluster
        (16, 15, (15, 0)),  # 1 dropped → 0.3 → nothing recycled
        (10, 1, (1, 0)),  # one token left: it must be a top token, not a cluster
    ],
)
def test_recycle_split(n: int, keep: int, expected: tuple[int, int]) -> None:
    assert recycle_split(n, keep, 0.3, 10) == expected


def test_dpc_knn_on_two_obvious_groups() -> None:
    # 1-D points 0, .1, .2, 10, 10.1 with knn = 2: every density is exp(-0.01/2) (tie → lower index is
    # denser), so δ = (10.1 [max], .1, .1, 9.8, .1): centres 0 and 3; members join the nearest centre.
    x = torch.tensor([[0.0], [0.1], [0.2], [10.0], [10.1]])
    centres, assign = dpc_knn(x, 2, 2)
    assert centres.tolist() == [0, 3]
    assert assign.tolist() == [0, 0, 0, 1, 1]
    assert cluster_means(x, assign, 2).flatten().tolist() == pytest.approx([0.1, 10.05])


def _dpc_reference(points: list[list[float]], clusters: int, knn: int) -> tuple[list[int], list[int]]:
    m, dim = len(points), len(points[0])
    dist = [[math.dist(a, b) / math.sqrt(dim) for b in points] for a in points]
    density = []
    for i in range(m):
        near = sorted(dist[i])[:knn]
        density.append(math.exp(-sum(d * d for d in near) / len(near)))
    biggest = max(max(row) for row in dist)
    score = []
    for i in range(m):
        denser = [
            dist[i][j] for j in range(m) if density[j] > density[i] or (density[j] == density[i] and j < i)
        ]
        score.append((min(denser) if denser else biggest) * density[i])
    ranked = sorted(range(m), key=lambda i: (-score[i], i))[:clusters]
    centres = sorted(ranked)
    assign = [min(range(clusters), key=lambda c: (dist[i][centres[c]], c)) for i in range(m)]
    for c, i in enumerate(centres):
        assign[i] = c
    return centres, assign


@pytest.mark.parametrize(("m", "clusters", "knn"), [(9, 2, 3), (12, 3, 7), (5, 5, 2), (7, 1, 7)])
def test_dpc_knn_matches_a_plain_python_version(m: int, clusters: int, knn: int) -> None:
    x = torch.randn(m, 3, generator=torch.Generator().manual_seed(m))
    centres, assign = dpc_knn(x, clusters, knn)
    ref_centres, ref_assign = _dpc_reference(x.tolist(), clusters, knn)
    assert centres.tolist() == ref_centres
    assert assign.tolist() == ref_assign


def test_sparsevlm_published_shapes() -> None:
    assert published_shape(Budget.avg(64), 576) == pytest.approx((1, 30 / 66, 17 / 66))
    # avg 100 of 576 (0.174) is nearer 128/576 (0.222) than 64/576 (0.111)
    assert published_shape(Budget.avg(100), 576) == pytest.approx((1, 110 / 303, 36 / 303))
    # 110 final tokens of 576 = the 192 entry's last stage
    assert published_shape(Budget.tokens(110), 576) == pytest.approx((1, 200 / 300, 110 / 300))
    profile, t_max = stage_profile((1.0, 0.5, 0.25), 3)
    assert profile(0.4) == pytest.approx((0.4, 0.2, 0.1))
    assert profile(t_max) == (1.0, 1.0, 1.0)
    assert stage_profile((1.0, 0.5, 0.25), 2)[0](1.0) == pytest.approx((1.0, 0.25))
    assert stage_profile((1.0, 0.5, 0.25), 1)[0](0.3) == pytest.approx((0.3,))


# ------------------------------------------------------------------------------------------ VisionZip


def test_contextual_counts_follow_the_card() -> None:
    assert [contextual_count(k, 10 / 64) for k in (64, 128, 192)] == [10, 20, 30]
    assert contextual_count(6, 10 / 64) == 1  # 0.94 rounds to 1
    assert contextual_count(2, 10 / 64) == 0
    assert contextual_count(1, 0.9) == 0  # at least one dominant token


def test_cls_and_received_dominance() -> None:
    att = torch.tensor([[[9.0, 0.1, 0.2, 0.3, 0.4]], [[9.0, 0.5, 0.6, 0.7, 0.8]]])  # (tiles, 1, CLS + 4)
    scores = cls_dominance(att, torch.tensor([0, 1, 1]), torch.tensor([3, 0, 2]))
    assert scores.tolist() == pytest.approx([0.4, 0.5, 0.7])
    # 2 queries over 8 patches; the query mean is 1..8; 2x2 merge → tokens (1+2+3+4)/4, (5+6+7+8)/4.
    rec = torch.tensor([[[0.0, 1, 2, 3, 4, 5, 6, 7], [2.0, 3, 4, 5, 6, 7, 8, 9]]])
    assert received_dominance(rec, torch.tensor([0, 0]), torch.tensor([1, 0]), merge=2).tolist() == [6.5, 2.5]
    assert received_dominance(rec, torch.tensor([0]), torch.tensor([7]), merge=1).tolist() == [8.0]


def test_visionzip_select_by_hand() -> None:
    # Dominant: tokens 1 and 3. Remaining 0, 2, 4, 5 → step 4 // 2 = 2 → targets 0 and 4. By key cosine,
    # token 2 (0.9, 0.1) joins target 0 (1, 0) and token 5 (0.2, 1) joins target 4 (0, 1):
    # target 0 → f0 + f2 = (4, 1); target 4 → f4 + f5 = (1, 6).
    dominance = torch.tensor([0.1, 0.5, 0.05, 0.3, 0.02, 0.03])
    metric = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0], [0.2, 1.0]])
    feats = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 0.0], [4.0, 4.0], [0.0, 5.0], [1.0, 1.0]])
    keep, new = visionzip_select(dominance, metric, feats, 2, 2)
    assert keep.tolist() == [0, 1, 3, 4]
    assert new.tolist() == [[4.0, 1.0], [2.0, 2.0], [4.0, 4.0], [1.0, 6.0]]
    # Several members average before being added; no contextual tokens: dominant only.
    keep, new = visionzip_select(dominance, metric, feats, 2, 1)  # target 0; 2, 4, 5 all join it
    assert keep.tolist() == [0, 1, 3]
    assert new[0].tolist() == pytest.approx([1 + 4 / 3, 1 + 6 / 3])
    keep, new = visionzip_select(dominance, metric, feats, 3, 0)
    assert keep.tolist() == [0, 1, 3]
    assert torch.equal(new, feats[[0, 1, 3]])


# ------------------------------------------------------------------------------------------ DivPrune


def _unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_max_min_diversity_by_hand() -> None:
    # Unit vectors at 0°, 10°, 90°, 180°, 105°; distance = 1 - cos(angle between).
    # Nearest-neighbour distances: 1-cos10, 1-cos10, 1-cos15, 1-cos75 (p3), 1-cos15 → first p3.
    # Min distance to {p3}: p0 2, p1 1.98, p2 1, p4 0.74 → p0. Then p1 .015, p2 1, p4 .74 → p2.
    # Then p1 .015, p4 1-cos15 = .034 → p4; last p1.
    feats = torch.tensor([_unit(a) for a in (0, 10, 90, 180, 105)])
    assert max_min_order(feats, 5).tolist() == [3, 0, 2, 4, 1]
    assert divprune_keep(feats, 3).tolist() == [0, 2, 3]
    assert divprune_keep(feats, 5).tolist() == [0, 1, 2, 3, 4]
    assert divprune_keep(feats[:1], 1).tolist() == [0]
    dist = cosine_distance(feats)
    assert float(dist[0, 3]) == pytest.approx(2.0)
    assert float(dist[0, 2]) == pytest.approx(1.0, abs=1e-6)


def test_max_min_diversity_matches_a_plain_python_version() -> None:
    feats = torch.randn(15, 4, generator=torch.Generator().manual_seed(7))
    rows = feats.tolist()

    def d(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return 1 - dot / (math.hypot(*a) * math.hypot(*b))

    nn = [min(d(rows[i], rows[j]) for j in range(15) if j != i) for i in range(15)]
    order = [max(range(15), key=lambda i: (nn[i], -i))]
    while len(order) < 6:
        rest = [i for i in range(15) if i not in order]
        order.append(max(rest, key=lambda i: (min(d(rows[i], rows[j]) for j in order), -i)))
    assert max_min_order(feats, 6).tolist() == order


# ------------------------------------------------------------------------------------------ random


def test_random_keep_is_seeded_and_uniform() -> None:
    a = random_keep(10, 4, torch.Generator().manual_seed(0))
    assert a.tolist() == random_keep(10, 4, torch.Generator().manual_seed(0)).tolist()
    assert len(set(a.tolist())) == 4 and a.tolist() == sorted(a.tolist()) and a.min() >= 0 and a.max() < 10
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(10)
    for _ in range(2000):
        counts[random_keep(10, 4, g)] += 1
    assert torch.all((counts / 2000 - 0.4).abs() < 0.05)  # each index kept ~40 % of the time
