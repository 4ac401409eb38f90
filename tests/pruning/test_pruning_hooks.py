"""Hook plumbing without a model: LayerViews and attention taps built by hand (test doubles), so planted
attention patterns decide what the LLM-side hooks keep."""

from __future__ import annotations

import torch

from lrs_vqa.engine.decoder import LayerView, Selection, TapResult
from pruning import Budget, ModelTarget, get_pruner

# A 12-row prompt: 2 system rows, 8 vision rows (2..9), a question row (10) and the last prompt row (11).
N_ROWS, VISION = 12, list(range(2, 10))
TARGET = ModelTarget(family="llava", llm_layers=4)


def view(layer: int, rows: torch.Tensor | None = None, taps: dict | None = None) -> LayerView:
    rows = torch.arange(N_ROWS) if rows is None else rows
    vision = torch.zeros(N_ROWS, dtype=torch.bool)
    vision[VISION] = True
    instruction = torch.zeros(N_ROWS, dtype=torch.bool)
    instruction[10] = True
    hidden = torch.arange(len(rows) * 3, dtype=torch.float32).reshape(1, len(rows), 3)
    return LayerView(layer, hidden, rows, vision[rows], instruction[rows], taps if taps is not None else {})


def planted_row(weights: dict[int, float], n: int = N_ROWS) -> torch.Tensor:
    """An attention row (sums to 1) with the given mass on the given key columns, the rest uniform."""
    rest = (1.0 - sum(weights.values())) / (n - len(weights))
    row = torch.full((n,), rest)
    for col, w in weights.items():
        row[col] = w
    return row


def run(hook, planted: torch.Tensor, layer: int) -> Selection | None:
    """Drive the hook like DecoderLoop: layer 0 .. layer-1 without drops, the tap of layer-1, then layer."""
    taps: dict[int, TapResult] = {}
    for k in range(layer):
        v = view(k, taps=taps)
        assert hook.before_layer(v) is None
        rows = hook.llm_tap_rows(v)
        if rows is not None:
            taps[k] = TapResult(rows, planted[rows])
    return hook.before_layer(view(layer, taps=taps))


def test_fastv_keeps_the_planted_tokens() -> None:
    hook = get_pruner("fastv:layer=2,depth_ref=none").hooks(Budget.tokens(3), TARGET).llm[0]
    # The last row (11) looks hard at vision rows 7, 3 and 8; row 10 (not the last) at 2 and 4.
    probs = torch.stack([planted_row({2: 0.4, 4: 0.4})] * 11 + [planted_row({7: 0.3, 3: 0.25, 8: 0.2})])
    selection = run(hook, probs, 2)
    assert selection is not None
    assert selection.keep.tolist() == [0, 1, 3, 7, 8, 10, 11]
    assert selection.hidden is None


def test_fastv_taps_only_the_last_row_of_the_layer_before() -> None:
    hook = get_pruner("fastv:layer=2,depth_ref=none").hooks(Budget.tokens(3), TARGET).llm[0]
    assert hook.before_layer(view(0)) is None
    assert hook.llm_tap_rows(view(0)) is None
    assert hook.llm_tap_rows(view(1)).tolist() == [11]
    assert hook.llm_tap_rows(view(2)) is None


def test_tap_rows_shared_with_other_hooks_and_rows_dropped_meanwhile() -> None:
    # Another hook asked for rows 10 and 11 at layer 1, and before layer 2 something else already dropped
    # vision row 3: our hook must still read its own query row and the right columns.
    hook = get_pruner("fastv:layer=2,depth_ref=none").hooks(Budget.tokens(2), TARGET).llm[0]
    hook.before_layer(view(0))
    hook.llm_tap_rows(view(1))
    probs = torch.stack([planted_row({5: 0.9}), planted_row({3: 0.5, 9: 0.3, 6: 0.1})])
    taps = {1: TapResult(torch.tensor([10, 11]), probs)}
    rows = torch.tensor([0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11])  # row 3 gone
    selection = hook.before_layer(view(2, rows=rows, taps=taps))
    assert selection is not None
    assert rows[selection.keep].tolist() == [0, 1, 6, 9, 10, 11]


def test_average_budget_trim_reuses_the_stage_scores() -> None:
    # 8 vision rows, 4 layers, drop before layer 1: 8 + 3k = 4·avg. avg 4.5 → 18 = 8 + 10 → k = 3.33:
    # layer 1 keeps 4, layers 2-3 keep 3 (a trim at layer 2, ranked by the layer-0 scores).
    hook = get_pruner("fastv:layer=1,depth_ref=none").hooks(Budget.avg(4.5), TARGET).llm[0]
    probs = torch.stack([planted_row({9: 0.3, 2: 0.2, 5: 0.15, 6: 0.1})] * N_ROWS)
    taps = {0: TapResult(torch.tensor([11]), probs[[11]])}
    assert hook.before_layer(view(0)) is None
    hook.llm_tap_rows(view(0))
    first = hook.before_layer(view(1, taps=taps))
    assert first is not None and first.keep.tolist() == [0, 1, 2, 5, 6, 9, 10, 11]
    rows = first.keep
    trim = hook.before_layer(view(2, rows=rows, taps=taps))
    assert trim is not None and rows[trim.keep].tolist() == [0, 1, 2, 5, 9, 10, 11]
    assert hook.before_layer(view(3, rows=rows[trim.keep], taps=taps)) is None
    assert hook.schedule.counts == (8, 4, 3, 3)


def test_detached_hooks_do_nothing() -> None:
    hook = get_pruner("fastv:layer=2,depth_ref=none").hooks(Budget.tokens(3), TARGET).llm[0]
    hook.deactivate()
    probs = torch.stack([planted_row({7: 0.5})] * N_ROWS)
    assert run(hook, probs, 2) is None


def test_random_llm_stage_is_seeded_and_uniform_in_size() -> None:
    def keep(seed: int) -> list[int]:
        hook = get_pruner(f"random:layer=2,depth_ref=none,seed={seed}").hooks(Budget.tokens(3), TARGET).llm[0]
        selection = run(hook, torch.zeros(N_ROWS, N_ROWS), 2)
        assert selection is not None
        return selection.keep.tolist()

    a = keep(0)
    assert a == keep(0)
    assert len([r for r in a if r in VISION]) == 3
    assert {0, 1, 10, 11} <= set(a)
    assert any(keep(s) != a for s in range(1, 6))


# ------------------------------------------------------------------------------------------ SparseVLM


def sparse_view(layer: int, hidden: torch.Tensor, taps: dict | None = None) -> LayerView:
    """32 rows: system 0-1, vision 2-25, question 26-30, last prompt row 31."""
    vision = torch.zeros(32, dtype=torch.bool)
    vision[2:26] = True
    instruction = torch.zeros(32, dtype=torch.bool)
    instruction[26:31] = True
    return LayerView(layer, hidden, torch.arange(32), vision, instruction, taps or {})


def test_sparsevlm_raters_rank_and_recycle_into_a_cluster_token() -> None:
    hidden = torch.randn(1, 32, 6, generator=torch.Generator().manual_seed(0))
    hook = get_pruner("sparsevlm:layers=1,depth_ref=none").hooks(Budget.tokens(12), TARGET).llm[0]
    assert hook.before_layer(sparse_view(0, hidden)) is None
    raters = hook.llm_tap_rows(sparse_view(0, hidden))
    # Independently: softmax over the question rows of vision·textᵀ, mean over vision, above the mean.
    relevance = torch.softmax(hidden[0, 2:26] @ hidden[0, 26:31].T, dim=-1).mean(0)
    assert raters.tolist() == (26 + torch.nonzero(relevance > relevance.mean()).flatten()).tolist()
    # Planted: every rater pays vision row v an attention growing with v → rows 15..25 are the top 11;
    # 24 → 12 tokens drops 12, recycles the best 30 % of 13 dropped (rows 14, 13, 12) into 1 cluster.
    row = torch.zeros(32)
    row[2:26] = torch.arange(1, 25, dtype=torch.float32)
    row /= row.sum()
    taps = {0: TapResult(raters, row.expand(len(raters), -1).clone())}
    selection = hook.before_layer(sparse_view(1, hidden, taps))
    assert selection is not None and selection.hidden is not None
    keep = selection.keep.tolist()
    centre = [r for r in keep if 2 <= r < 15]
    assert len(centre) == 1 and centre[0] in (12, 13, 14)
    assert keep == sorted([0, 1, *range(15, 26), centre[0], *range(26, 32)])
    merged = selection.hidden[0, keep.index(centre[0])]
    torch.testing.assert_close(merged, hidden[0, 12:15].mean(0))
    others = [i for i, r in enumerate(keep) if r != centre[0]]
    torch.testing.assert_close(selection.hidden[0, others], hidden[0, [r for r in keep if r != centre[0]]])


def test_sparsevlm_without_recycling_keeps_the_top_tokens() -> None:
    hidden = torch.randn(1, 32, 6, generator=torch.Generator().manual_seed(0))
    pruner = get_pruner("sparsevlm:layers=1,depth_ref=none,recycle=false")
    hook = pruner.hooks(Budget.tokens(12), TARGET).llm[0]
    hook.before_layer(sparse_view(0, hidden))
    raters = hook.llm_tap_rows(sparse_view(0, hidden))
    row = torch.zeros(32)
    row[2:26] = torch.arange(1, 25, dtype=torch.float32) / 300
    selection = hook.before_layer(sparse_view(1, hidden, {0: TapResult(raters, row.expand(len(raters), -1))}))
    assert selection is not None and selection.hidden is None
    assert selection.keep.tolist() == [0, 1, *range(14, 26), *range(26, 32)]


# ------------------------------------------------------------------------------------------ VisionZip


def test_visionzip_hook_reads_the_cls_row_of_each_tile() -> None:
    from lrs_vqa.engine.hooks import VisionContext

    target = ModelTarget(family="llava", llm_layers=4, vision_layers=2, feature_layer=0, cls_token=True)
    hook = get_pruner("visionzip:contextual_share=0.25").hooks(Budget.tokens(4), target).vision[0]
    rows = hook.vision_tap_rows()
    assert list(rows) == [0] and rows[0](5, 5).tolist() == [0]  # the CLS row of the feature layer
    # Six surviving tokens of two 2x2 tiles; planted CLS attention gives them .1 .5 .05 | .3 .15 .2.
    att = torch.tensor([[[0.1, 0.1, 0.5, 0.2, 0.05]], [[0.0, 0.3, 0.0, 0.15, 0.2]]])
    ctx = VisionContext(
        0, torch.tensor([0, 1, 3, 0, 2, 3]), torch.tensor([0, 0, 0, 1, 1, 1]), (2, 2), {0: att}
    )
    feats = torch.tensor([[1.0, 0], [2, 0], [3, 0], [4, 0], [5, 0], [6, 0]])
    assert hook.after_projector(feats, None, ctx) is None  # acts after the encoder only
    selection = hook.after_encoder(feats, None, ctx)
    # k = 4 → 1 contextual, 3 dominant (tokens 1, 3, 5); the one target (token 0) absorbs 2 and 4.
    assert selection is not None
    assert selection.keep.tolist() == [0, 1, 3, 5]
    assert selection.hidden.tolist() == [[1 + 4.0, 0], [2.0, 0], [4.0, 0], [6.0, 0]]
    assert hook.calls == [(6, 4)]
