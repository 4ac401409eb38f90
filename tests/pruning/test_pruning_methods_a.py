"""TransPrune, STAR, PTP and VScan: golden values of their pure scoring functions (worked out by hand or
by plain-Python reimplementations here, never by the code under test), and on tiny random models of every
family: keep-all equals no pruning, budgets are met exactly in the engine's accounting, planted signals
win."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from lrs_vqa.engine.decoder import LayerView
from lrs_vqa.models.base import ModelAdapter
from lrs_vqa.tiny import FAMILIES
from pruning import Budget, ModelTarget, PrunerConfigError, describe_pruners, get_pruner
from pruning.budget import round_half_up
from pruning.transprune import (
    TransPrune,
    instruction_attention,
    layer_transition,
    ratio_profile,
    transition_variation,
    transprune_scores,
)
from pyramid.dip import DynamicImagePyramid, PyramidOptions
from tests.pruning.helpers import LLM_LAYERS, QUESTION, stock, thumbnail_prompt


def py_softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def py_norm(v: list[float]) -> float:
    return math.sqrt(sum(a * a for a in v))


def py_cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (py_norm(a) * py_norm(b))


# ------------------------------------------------------------------------------------------ fixtures


def target(adapter: ModelAdapter) -> ModelTarget:
    return ModelTarget.from_adapter(adapter)


def test_registered_with_stages_signals_defaults_and_paper() -> None:
    rows = {r.name: r for r in describe_pruners()}
    for name in ("transprune", "star", "ptp", "vscan"):
        row = rows[name]
        assert row.stages and row.signals and row.defaults and "arXiv" in row.paper


# ------------------------------------------------------------------------------------------ TransPrune


def test_transition_variation_golden() -> None:
    x = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
    y = [[2.0, 0.0], [1.0, 0.0], [-1.0, 1.0]]
    # by hand: magnitudes 2/1, 1/2, sqrt2/sqrt2; |cos| = 1, 0, 0 -> 1-|cos| = 0, 1, 1
    soft = py_softmax([0.0, 1.0, 1.0])
    expected = [soft[0] * 2.0, soft[1] * 0.5, soft[2] * 1.0]
    got = transition_variation(torch.tensor(x), torch.tensor(y))
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    # signed variant: 1 - cos = 0, 1, 1 here too except a reversed token: cos = -1 -> 2 (abs: 0)
    x2, y2 = [[1.0, 0.0], [1.0, 0.0]], [[-3.0, 0.0], [0.0, 1.0]]
    signed = py_softmax([2.0, 1.0])
    assert transition_variation(torch.tensor(x2), torch.tensor(y2), abs_cos=False).tolist() == pytest.approx(
        [signed[0] * 3.0, signed[1] * 1.0], rel=1e-6
    )
    absolute = py_softmax([0.0, 1.0])
    assert transition_variation(torch.tensor(x2), torch.tensor(y2)).tolist() == pytest.approx(
        [absolute[0] * 3.0, absolute[1] * 1.0], rel=1e-6
    )


def test_layer_transition_uses_the_residual_update() -> None:
    before = [[1.0, 0.0, 0.0], [0.5, 0.5, 1.0]]
    after = [[1.0, 2.0, 0.0], [1.0, 0.5, 0.0]]
    deltas = [[a - b for a, b in zip(r1, r0, strict=True)] for r0, r1 in zip(before, after, strict=True)]
    dirs = [1 - abs(py_cos(d, b)) for d, b in zip(deltas, before, strict=True)]
    mags = [py_norm(d) / py_norm(b) for d, b in zip(deltas, before, strict=True)]
    expected = [s * m for s, m in zip(py_softmax(dirs), mags, strict=True)]
    got = layer_transition(torch.tensor(before), torch.tensor(after))
    assert got.tolist() == pytest.approx(expected, rel=1e-5)


def test_transprune_scores_golden() -> None:
    ttv = torch.tensor([1.0, 3.0, 0.0, 4.0])  # L1: .125 .375 0 .5
    att = torch.tensor([[0.1, 0.2, 0.3, 0.2], [0.3, 0.2, 0.1, 0.2]])  # mean .2 .2 .2 .2 -> L1 .25 each
    iga = instruction_attention(att)
    assert iga.tolist() == pytest.approx([0.2, 0.2, 0.2, 0.2])
    got = transprune_scores(ttv, iga, 0.5)
    assert got.tolist() == pytest.approx([0.1875, 0.3125, 0.125, 0.375])
    assert transprune_scores(ttv, None, 0.5).tolist() == pytest.approx([0.125, 0.375, 0.0, 0.5])
    assert transprune_scores(ttv, iga, 0.0).tolist() == pytest.approx([0.25] * 4)


def test_transprune_ratio_profile_and_schedule() -> None:
    profile, t_max = ratio_profile((0.875, 0.625, 0.125), 3)
    assert t_max == pytest.approx(1 / (0.125 / 0.875))
    assert profile(0.875) == pytest.approx((0.875, 0.625, 0.125))
    assert profile(t_max) == pytest.approx((1.0, 1.0, 1.0))
    two, _ = ratio_profile((0.875, 0.625, 0.125), 2)
    assert two(0.875) == pytest.approx((0.875, 0.125))
    p = TransPrune()
    # The card's "High" setting: 576 tokens, 72 final -> 504 / 360 / 72 after layers 7, 9, 12.
    assert p.plan(Budget.tokens(72), 576, 32).steps == ((7, 504), (9, 360), (12, 72))
    assert p.ttv_layers(32) == (6, 11)
    assert p.layers(LLM_LAYERS) == (2, 3) and p.ttv_layers(LLM_LAYERS) == (1, 3)


def _view(layer: int, hidden: torch.Tensor, orig: torch.Tensor, vision: torch.Tensor) -> LayerView:
    n = hidden.shape[1]
    return LayerView(layer, hidden, orig, vision, torch.zeros(n, dtype=torch.bool), {})


def test_transprune_ttv_only_keeps_the_tokens_a_layer_turns_most() -> None:
    """Planted: 6 vision rows (1..6) of 8; before layers 1 and 2 the states of rows 2 and 5 turn by 90°, the
    others barely change; TTV alone (no attention) must keep exactly those two."""
    pruner = get_pruner("transprune:layers=2,depth_ref=none,ttv_from=0,ttv_to=1,attention=false")
    hook = pruner.hooks(2, ModelTarget("llava", llm_layers=4)).llm[0]
    assert hook.ttv_layers == (0, 1)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 8, 16, generator=g)
    vision = torch.tensor([False, True, True, True, True, True, True, False])
    orig = torch.arange(8)
    h0 = base
    h1 = base * 1.01
    turn = torch.zeros_like(base)
    turn[0, [2, 5]] = torch.roll(base[0, [2, 5]], 8, dims=-1) * 3  # a new direction, bigger
    h1 = h1 + turn
    assert hook.llm_tap_rows(_view(0, h0, orig, vision)) is None  # TTV only: nothing tapped
    assert hook.before_layer(_view(0, h0, orig, vision)) is None
    assert hook.before_layer(_view(1, h1, orig, vision)) is None
    sel = hook.before_layer(_view(2, h1 * 1.02, orig, vision))
    assert sel is not None
    assert sel.keep.tolist() == [0, 2, 5, 7]


# ---------------------------------------------------------------------------- in-LLM pruners, tiny models

LLM_SPECS = ["transprune", "transprune:attention=false"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", LLM_SPECS)
def test_in_llm_keep_all_equals_no_pruning(
    spec: str, family: str, adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    adapter = adapters[family]
    inputs = stock(adapter, image)
    n = int(inputs.vision.sum())
    plain = adapter.decoder.prefill(inputs, all_logits=True)
    for budget in (str(n), f"avg:{n}", "1.0"):
        with get_pruner(spec).attach(adapter, budget) as att:
            pruned = adapter.decoder.prefill(inputs, att.llm_hooks, all_logits=True)
        assert pruned.vision_tokens_per_layer == [n] * LLM_LAYERS
        torch.testing.assert_close(pruned.logits, plain.logits, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", LLM_SPECS)
def test_in_llm_pruners_meet_each_budget_exactly(
    spec: str, family: str, adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    adapter = adapters[family]
    inputs = stock(adapter, image)
    n = int(inputs.vision.sum())
    pruner = get_pruner(spec)
    first = pruner.layers(LLM_LAYERS)[0]
    k = max(1, n // 3)
    avg = (first * n + (LLM_LAYERS - first) * k + 1) / LLM_LAYERS
    for budget, check in (
        (str(k), lambda c: c[-1] == k),
        (f"avg:{avg!r}", lambda c: sum(c) == round(avg * LLM_LAYERS)),
        ("0.5", lambda c: c[-1] == round_half_up(n / 2)),
    ):
        hooks = pruner.hooks(budget, target(adapter))
        result = adapter.decoder.prefill(inputs, hooks.llm)
        counts = result.vision_tokens_per_layer
        assert check(counts), (budget, counts)
        assert tuple(counts) == hooks.llm[0].schedule.counts
        assert counts[:first] == [n] * first
        assert all(a >= b for a, b in itertools.pairwise(counts))
        if "attention=false" in spec:
            assert result.taps == {}  # TTV alone taps no attention


# ---------------------------------------------------------------------------- two-stage budget (STAR, VScan)


def test_first_stage_keep_and_two_stage_plan_golden() -> None:
    from pruning.two_stage import first_stage_keep, second_stage_budget, two_stage_plan

    # VScan's rule: avg 64 over 32 layers, second stage at 16 keeping 1/3 -> 64*32 / (16 + 16/3) = 96.
    assert first_stage_keep(Budget.avg(64), 576, 32, 16, 1 / 3) == 96
    assert first_stage_keep(Budget.avg(128), 576, 32, 16, 1 / 3) == 192
    # tokens k: ceil(k / share); ratio 0.1 of 576 = 58 -> ceil(58 * 2) = 116
    assert first_stage_keep(Budget.tokens(32), 576, 32, 16, 1 / 3) == 96
    assert first_stage_keep(Budget.ratio(0.1), 576, 32, 16, 0.5) == 116
    assert first_stage_keep(Budget.tokens(500), 576, 32, 16, 0.5) == 576
    # avg at or above n keeps all; an average that would be unreachable is clamped: (a*L - (L-K)) / K
    assert first_stage_keep(Budget.avg(576), 576, 32, 16, 1 / 3) == 576
    # ideal 80 / 6.02 -> 13; reachable (80 - 2) / 6 -> 13
    assert first_stage_keep(Budget.avg(10), 16, 8, 6, 0.01) == 13
    assert second_stage_budget(Budget.ratio(0.25), 40, 100) == Budget.tokens(25)
    assert second_stage_budget(Budget.ratio(0.9), 40, 100) == Budget.tokens(40)
    plan = two_stage_plan(Budget.avg(64), 576, 32, 16, 1 / 3)
    assert plan.counts == (96,) * 16 + (32,) * 16
    assert plan.avg_tokens == 64


# ------------------------------------------------------------------------------------------ STAR


def test_star_self_attention_scores_golden() -> None:
    from pruning.scores import self_attention_scores
    from pruning.star import star_stage1_keep

    att = torch.tensor([[[0.1, 0.4, 0.2, 0.3]], [[0.2, 0.1, 0.6, 0.1]]])  # (tiles, CLS row, 1 + 3 patches)
    tile, token = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 1, 2])
    scores = self_attention_scores(att, tile, token, cls=True)
    assert scores.tolist() == pytest.approx([0.4, 0.3, 0.6, 0.1])
    assert star_stage1_keep(scores, 2).tolist() == [0, 2]
    received = torch.tensor([[[0.5, 0.1, 0.4], [0.1, 0.3, 0.6]]])  # (1 tile, 2 queries, 3 patches)
    got = self_attention_scores(received, torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]), cls=False)
    assert got.tolist() == pytest.approx([0.3, 0.2, 0.5])


def test_star_stage1_keeps_the_planted_cls_favourites() -> None:
    from lrs_vqa.engine.hooks import VisionContext

    pruner = get_pruner("star:share=0.5")
    hooks = pruner.hooks(
        3, ModelTarget("llava", llm_layers=8, vision_layers=2, feature_layer=0, cls_token=True)
    )
    vision = hooks.vision[0]
    att = torch.full((1, 1, 1 + 12), 0.01)
    att[0, 0, 1 + torch.tensor([1, 4, 7, 10, 11, 3])] = torch.tensor([0.5, 0.4, 0.3, 0.2, 0.15, 0.12])
    ctx = VisionContext(0, torch.arange(12), torch.zeros(12, dtype=torch.long), (4, 4), {0: att})
    sel = vision.after_encoder(torch.randn(12, 8), None, ctx)
    assert sel is not None and sel.keep.tolist() == [1, 3, 4, 7, 10, 11]  # ceil(3 / 0.5) = 6 favourites
    assert vision.records == [(12, 6)]


TWO_STAGE_SPECS = ["star", "ptp"]


def two_stage_run(adapter: ModelAdapter, spec: str, budget: str, scene: Path, cache: Path):
    with get_pruner(spec).attach(adapter, budget) as att:
        inputs = thumbnail_prompt(adapter, scene, cache, att.vision_hooks)
        result = adapter.decoder.prefill(inputs, att.llm_hooks, all_logits=True)
        return inputs, result, att


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", TWO_STAGE_SPECS)
def test_two_stage_keep_all_equals_no_pruning(
    spec: str, family: str, adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    adapter = adapters[family]
    plain_inputs = thumbnail_prompt(adapter, scene, tmp_path)
    plain = adapter.decoder.prefill(plain_inputs, all_logits=True)
    n = int(plain_inputs.vision.sum())
    for budget in (str(n), f"avg:{n}", "1.0"):
        _, result, _ = two_stage_run(adapter, spec, budget, scene, tmp_path)
        assert result.vision_tokens_per_layer == [n] * LLM_LAYERS
        torch.testing.assert_close(result.logits, plain.logits, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", TWO_STAGE_SPECS)
def test_two_stage_pruners_meet_each_budget_exactly(
    spec: str, family: str, adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    adapter = adapters[family]
    n = int(thumbnail_prompt(adapter, scene, tmp_path).vision.sum())
    pruner = get_pruner(spec)
    layer = pruner.layers(LLM_LAYERS)[0]
    k = max(1, n // 4)
    avg = n / 2 + 0.125  # not a whole number of tokens per layer: the second stage absorbs the remainder
    for budget in (str(k), f"avg:{avg!r}", "0.3"):
        inputs, result, att = two_stage_run(adapter, spec, budget, scene, tmp_path)
        counts = result.vision_tokens_per_layer
        n1 = counts[0]
        assert int(inputs.vision.sum()) == n1
        assert counts[:layer] == [n1] * layer
        assert all(a >= b for a, b in itertools.pairwise(counts))
        assert tuple(counts) == att.llm_hooks[0].schedule.counts
        dropped = sum(seen - kept for seen, kept in att.vision_hooks[0].calls)
        if budget == str(k):
            assert counts[-1] == k
        elif budget.startswith("avg"):
            assert sum(counts) == round(avg * LLM_LAYERS)
        else:
            assert counts[-1] == round_half_up(0.3 * (n1 + dropped))
        assert n1 < n or spec == "ptp"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", [*TWO_STAGE_SPECS, "vscan"])
def test_two_stage_second_stage_alone_on_a_stock_prompt(
    spec: str, family: str, adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    adapter = adapters[family]
    pruner = get_pruner(spec)
    if spec == "vscan" and family == "qwen2_vl":  # refused by design (no in-encoder hook for Qwen-VL)
        with pytest.raises(PrunerConfigError):
            pruner.hooks("0.5", target(adapter))
        return
    inputs = stock(adapter, image)
    n = int(inputs.vision.sum())
    hooks = pruner.hooks("0.5", target(adapter))
    result = adapter.decoder.prefill(inputs, hooks.llm)
    assert result.vision_tokens_per_layer[0] == n
    assert result.vision_tokens_per_layer[-1] == round_half_up(n / 2)


def test_star_budget_through_answer(adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path) -> None:
    from lrs_vqa.answer import AskOptions, answer

    adapter = adapters["llava"]
    options = AskOptions(
        strategy="global", max_new_tokens=1, pyramid=PyramidOptions(cache_dir=tmp_path / "cache")
    )
    with get_pruner("star").attach(adapter, "avg:5") as att:
        record = answer(scene, QUESTION, model=adapter, options=options, **att_kwargs(att))
    assert record.stats.avg_vision_tokens_over_layers == 5


def att_kwargs(att) -> dict:
    return {"vision_hooks": att.vision_hooks, "llm_hooks": att.llm_hooks}


# ------------------------------------------------------------------------------------------ PTP


def test_ptp_pure_functions_golden() -> None:
    from pruning.ptp import allocate, fuse, instruction_relevance, minmax, ptp_keep, region_saliency

    assert minmax(torch.tensor([2.0, 4.0, 3.0])).tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert minmax(torch.tensor([1.0, 1.0])).tolist() == [0.0, 0.0]
    b, c = torch.tensor([0.0, 10.0, 5.0]), torch.tensor([0.3, 0.1, 0.2])
    # minmax(b) = 0, 1, .5; minmax(c) = 1, 0, .5 -> α = .25: .75*b' + .25*c'
    assert fuse(b, c, 0.25).tolist() == pytest.approx([0.25, 0.75, 0.5])
    att = torch.tensor([[0.1, 0.5, 0.2], [0.4, 0.1, 0.3]])
    assert instruction_relevance(att).tolist() == pytest.approx([0.4, 0.5, 0.3])
    part = torch.tensor([0, 0, 1, 1, 1])
    sal = region_saliency(torch.tensor([1.0, 3.0, 0.5, 0.5, 2.0]), part, 3)
    assert sal.tolist() == pytest.approx([2.0, 1.0, 0.0])
    # 6 tokens by saliency 2:1 over sizes 4, 5 -> exact 4, 2
    assert allocate([2.0, 1.0], [4, 5], 6) == [4, 2]
    # 5 tokens: exact 3.33, 1.67 -> floors 3, 1; the larger remainder (.67) gets the last one
    assert allocate([2.0, 1.0], [4, 5], 5) == [3, 2]
    # overflow: 3:1 over sizes 2, 6 for 6 tokens -> the first is full (2), the other takes 4
    assert allocate([3.0, 1.0], [2, 6], 6) == [2, 4]
    # no saliency anywhere: proportional to size; ties go to the lower index
    assert allocate([0.0, 0.0], [2, 2], 3) == [2, 1]
    # an empty partition gets nothing; the full one spills over to the one without saliency
    assert allocate([1.0, 0.0, 1.0], [3, 3, 0], 4) == [3, 1, 0]
    fused = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.2])
    assert ptp_keep(fused, part, [1, 2]).tolist() == [0, 2, 3]


def test_ptp_shares_the_budget_by_tile_saliency_and_ranks_by_the_question() -> None:
    """Planted: two tiles of 4 tokens; tile 0 is three times as salient (b), so 4 kept tokens split 3:1;
    inside each tile the question's attention (c) decides with α = 1."""
    from lrs_vqa.engine.decoder import TapResult
    from pruning.ptp import _Record, fingerprints

    pruner = get_pruner("ptp:layer=2,depth_ref=none,alpha=1.0")
    hooks = pruner.hooks(
        4, ModelTarget("llava", llm_layers=4, vision_layers=1, feature_layer=0, cls_token=True)
    )
    hook = hooks.llm[0]
    hidden = torch.randn(1, 11, 8)
    tiles, b = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.tensor([3.0] * 4 + [1.0] * 4)
    hook.records.append(_Record(tiles, b, fingerprints(hidden[0, 1:9])))
    # rows: 0 text, 1..8 vision, 9..10 question
    vision = torch.zeros(11, dtype=torch.bool)
    vision[1:9] = True
    question = torch.zeros(11, dtype=torch.bool)
    question[9:] = True
    orig = torch.arange(11)
    views = [LayerView(k, hidden, orig, vision, question, {}) for k in range(3)]
    assert hook.before_layer(views[0]) is None
    rows = hook.llm_tap_rows(views[1])
    assert rows.tolist() == [9, 10]
    probs = torch.full((2, 11), 0.01)
    probs[0, [2, 4, 7]] = torch.tensor([0.3, 0.2, 0.1])  # tile 0: rows 2, 4 > others; tile 1: row 7
    probs[1, 3] = 0.25
    taps = {1: TapResult(rows, probs)}
    assert hook.before_layer(LayerView(1, hidden, orig, vision, question, taps)) is None
    sel = hook.before_layer(LayerView(2, hidden, orig, vision, question, taps))
    assert sel is not None
    assert sel.keep.tolist() == [0, 2, 3, 4, 7, 9, 10]


@pytest.mark.parametrize("family", FAMILIES)
def test_ptp_partitions_tiles_with_newlines_through_answer(
    family: str, adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    """tiles-all: a thumbnail group and a group of tiles (OneVision adds newline markers); every tile is a
    partition and the final budget is met in the engine's accounting."""
    from lrs_vqa.answer import AskOptions, answer

    adapter = adapters[family]
    options = AskOptions(
        strategy="tiles-all", level=-1, max_new_tokens=1, pyramid=PyramidOptions(cache_dir=tmp_path / "c")
    )
    with get_pruner("ptp").attach(adapter, "9") as att:
        record = answer(scene, QUESTION, model=adapter, options=options, **att_kwargs(att))
        hook = att.llm_hooks[0]
        groups = att.vision_hooks[0].calls
        assert len(groups) == 2
        # aligned (newline markers recognised): one partition per encoded tile, thumbnail included
        assert len(hook._sal) == len(record.tiles) >= 2
        assert hook.records == []  # consumed by the prefill
    assert record.stats.vision_tokens_per_layer[-1] == 9
    newlines = record.stats.vision_tokens_into_llm - sum(n for n, _ in groups)
    assert newlines > 0 if family == "llava_onevision" else newlines == 0


# ------------------------------------------------------------------------------------------ VScan


def test_vscan_window_ids_golden() -> None:
    from pruning.vscan import window_ids

    # 4x4 grid, 2x2 windows: rows 0-1 / cols 0-1 -> window 0, cols 2-3 -> 1; rows 2-3 -> 2, 3
    assert window_ids(4, 2).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    assert window_ids(2, 4).tolist() == [0, 1, 2, 3]  # more windows than rows: one patch each
    # 3x3 grid, 2 windows per side: row/col index * 2 // 3 -> 0, 0, 1
    assert window_ids(3, 2).tolist() == [0, 0, 1, 0, 0, 1, 2, 2, 3]


def test_vscan_select_golden() -> None:
    from pruning.vscan import vscan_select

    window = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    shallow = torch.tensor([0.1, 0.9, 0.3, 0.2, 0.5, 0.0, 0.8, 0.7])
    deep = torch.tensor([0.9, 0.0, 0.1, 0.6, 0.2, 0.8, 0.3, 0.0])
    # keep 5, local 0.5 -> round(2.5) = 3 local: 1 per window (1 in w0, 6 in w1), leftover 1 best shallow
    # among the rest (7: 0.7); global 2 by deep among the rest: 0 (0.9), 5 (0.8)
    assert vscan_select(shallow, deep, window, 5, 0.5).tolist() == [0, 1, 5, 6, 7]
    # all global
    assert vscan_select(shallow, deep, window, 3, 0.0).tolist() == [0, 3, 5]
    # all local: 2 per window
    assert vscan_select(shallow, deep, window, 4, 1.0).tolist() == [1, 4, 6, 7]


def test_vscan_merge_golden() -> None:
    from pruning.vscan import merge_unselected

    states = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.2, 0.8], [0.1, 0.95]])
    keep = torch.tensor([0, 1])
    # 2 -> 0 (closer to [1,0]); 3, 4 -> 1
    expected = [[(1.0 + 0.9) / 2, (0.0 + 0.1) / 2], [(0.0 + 0.2 + 0.1) / 3, (1.0 + 0.8 + 0.95) / 3]]
    assert merge_unselected(states, keep).tolist() == [pytest.approx(r) for r in expected]
    assert merge_unselected(states, torch.arange(5)).tolist() == [pytest.approx(r) for r in states.tolist()]


@pytest.mark.parametrize("family", ["llava", "llava_onevision"])
def test_vscan_layer_attention_equals_the_engine_tap(
    family: str, adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    """The recomputed CLS row (CLIP) / mean received attention (SigLIP) equals what the engine's attention
    tap captures on the same layer of the stock tower."""
    from pruning.vscan import layer_attention

    adapter = adapters[family]
    seen: dict[str, torch.Tensor] = {}

    class Probe:
        def vision_tap_rows(self):
            return {
                0: (lambda q, k: torch.tensor([0])) if family == "llava" else (lambda q, k: torch.arange(q))
            }

        def after_encoder(self, feats, meta, ctx):
            seen["tap"] = ctx.taps[0]
            return None

        def after_projector(self, embeds, meta, ctx):
            return None

    thumbnail_prompt(adapter, scene, tmp_path, [Probe()])
    tower = adapter.model.model.vision_tower
    vm = tower.vision_model if hasattr(tower, "vision_model") else tower
    from lrs_vqa.answer import pyramid_spec_for

    with DynamicImagePyramid.open(
        scene, PyramidOptions(spec=pyramid_spec_for(adapter), cache_dir=tmp_path)
    ) as dip:
        pixels = adapter._pixels([dip.thumbnail()])
    with torch.inference_mode():
        hidden = vm.embeddings(pixels)
        if getattr(vm, "pre_layrnorm", None) is not None:
            hidden = vm.pre_layrnorm(hidden)
        ours = layer_attention(vm.encoder.layers[0], hidden, cls=family == "llava")
        chunked = layer_attention(vm.encoder.layers[0], hidden, cls=family == "llava", chunk=5)
    torch.testing.assert_close(chunked, ours, rtol=1e-5, atol=1e-7)
    tap = seen["tap"]
    expected = tap[:, 0, 1:] if family == "llava" else tap.mean(1)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


def test_vscan_refuses_qwen_with_a_one_line_config_error(adapters: dict[str, ModelAdapter]) -> None:
    with pytest.raises(PrunerConfigError, match=r"^vscan .*LLaVA family.*not qwen2_vl$"):
        get_pruner("vscan").attach(adapters["qwen2_vl"], "avg:4")


VSCAN_FAMILIES = ["llava", "llava_onevision"]


@pytest.mark.parametrize("family", VSCAN_FAMILIES)
def test_vscan_keep_all_equals_no_pruning(
    family: str, adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    adapter = adapters[family]
    plain_inputs = thumbnail_prompt(adapter, scene, tmp_path)
    plain = adapter.decoder.prefill(plain_inputs, all_logits=True)
    n = int(plain_inputs.vision.sum())
    for budget in (str(n), f"avg:{n}", "1.0"):
        _, result, att = two_stage_run(adapter, "vscan", budget, scene, tmp_path)
        assert att.vision_hooks[0].calls and all(s == k for s, k in att.vision_hooks[0].calls)
        assert result.vision_tokens_per_layer == [n] * LLM_LAYERS
        # the in-encoder path runs the tower layer by layer: equal up to float reassociation
        torch.testing.assert_close(result.logits, plain.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", VSCAN_FAMILIES)
def test_vscan_meets_each_budget_exactly(
    family: str, adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    adapter = adapters[family]
    n = int(thumbnail_prompt(adapter, scene, tmp_path).vision.sum())
    layer = get_pruner("vscan").layers(LLM_LAYERS)[0]
    for budget in ("3", "avg:4.125", "0.2"):
        inputs, result, att = two_stage_run(adapter, "vscan", budget, scene, tmp_path)
        counts = result.vision_tokens_per_layer
        n1 = counts[0]
        assert n1 < n and int(inputs.vision.sum()) == n1
        assert counts[:layer] == [n1] * layer
        assert tuple(counts) == att.llm_hooks[0].schedule.counts
        dropped = sum(seen - kept for seen, kept in att.vision_hooks[0].calls)
        if budget == "3":
            assert counts[-1] == 3
        elif budget.startswith("avg"):
            assert sum(counts) == round(4.125 * LLM_LAYERS)
        else:
            assert counts[-1] == round_half_up(0.2 * (n1 + dropped))


def test_vscan_needs_attach_for_the_encoder_layers(
    adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    adapter = adapters["llava"]
    hooks = get_pruner("vscan").hooks("3", target(adapter))
    with pytest.raises(PrunerConfigError, match="attach"):
        thumbnail_prompt(adapter, scene, tmp_path, hooks.vision)


def test_vscan_budget_through_answer(adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path) -> None:
    from lrs_vqa.answer import AskOptions, answer

    adapter = adapters["llava_onevision"]
    options = AskOptions(
        strategy="global", max_new_tokens=1, pyramid=PyramidOptions(cache_dir=tmp_path / "cache")
    )
    with get_pruner("vscan").attach(adapter, "avg:4") as att:
        record = answer(scene, QUESTION, model=adapter, options=options, **att_kwargs(att))
    assert record.stats.avg_vision_tokens_over_layers == 4


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_transprune_module_ttv_matches_an_independent_computation(
    family: str, adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    """attach() hooks the attention and FFN modules of the accumulation layers; the accumulated TTV equals
    softmax(1 − |cos(y, x)|)·‖y‖/‖x‖ over the vision rows, summed over both modules of both layers, computed
    here from the modules' own inputs/outputs; detach removes the hooks."""
    adapter = adapters[family]
    inputs = stock(adapter, image)
    n = int(inputs.vision.sum())
    layers = adapter.decoder.layers
    modules = [getattr(layers[k], name) for k in (1, 2) for name in ("self_attn", "mlp")]
    before = [len(m._forward_hooks) for m in modules]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def grab(module, args, kwargs, out):
        x = args[0] if args else kwargs["hidden_states"]
        seen.append((x[0].float().clone(), (out[0] if isinstance(out, tuple) else out)[0].float().clone()))

    handles = [m.register_forward_hook(grab, with_kwargs=True) for m in modules]
    try:
        adapter.decoder.prefill(inputs)
    finally:
        for h in handles:
            h.remove()
    vision = torch.nonzero(inputs.vision).flatten()
    expected = torch.zeros(n)
    for x, y in seen:
        xv, yv = x[vision], y[vision]
        cos = (xv * yv).sum(-1) / (xv.norm(dim=-1) * yv.norm(dim=-1))
        expected += torch.softmax(1 - cos.abs(), 0) * yv.norm(dim=-1) / xv.norm(dim=-1)
    att = get_pruner("transprune:layers=3,depth_ref=none,ttv_from=1,ttv_to=2").attach(adapter, n)
    assert [len(m._forward_hooks) for m in modules] == [b + 1 for b in before]
    hook = att.llm_hooks[0]
    assert hook.instrumented
    adapter.decoder.prefill(inputs, att.llm_hooks)
    torch.testing.assert_close(hook._acc[vision], expected, rtol=1e-4, atol=1e-6)
    att.detach()
    assert [len(m._forward_hooks) for m in modules] == before


@pytest.mark.parametrize("family", FAMILIES)
def test_transprune_module_ttv_meets_the_budget_through_attach(
    family: str, adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    adapter = adapters[family]
    inputs = stock(adapter, image)
    n = int(inputs.vision.sum())
    k = max(1, n // 4)
    with get_pruner("transprune").attach(adapter, k) as att:
        result = adapter.decoder.prefill(inputs, att.llm_hooks)
        assert att.llm_hooks[0].instrumented
    assert result.vision_tokens_per_layer[-1] == k
    assert tuple(result.vision_tokens_per_layer) == att.llm_hooks[0].schedule.counts


def test_ptp_align_by_fingerprint_golden() -> None:
    from pruning.ptp import _Record, align, fingerprints

    a, b, c, nl = ([float(i), 1.0] for i in range(4))
    g0 = _Record(torch.tensor([0, 0]), torch.tensor([0.5, 0.25]), fingerprints(torch.tensor([a, b])))
    g1 = _Record(
        torch.tensor([0, 1, 1]), torch.tensor([0.1, 0.2, 0.3]), fingerprints(torch.tensor([c, a, b]))
    )
    # LLM rows: g0's b, a newline marker, g1's c and g1's a (g0's a and g1's b were dropped on the way);
    # equal embeddings match in order: the first 'a' seen is g0's, so the LLM's 'a' takes g0's entry.
    rows = torch.tensor([b, nl, c, a])
    part, sal = align([g0, g1], fingerprints(rows))
    assert part.tolist() == [0, 0, 1, 0]
    assert sal.tolist() == pytest.approx([0.25, 0.0, 0.1, 0.5])


def test_ptp_through_the_default_c2f_strategy(
    adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    from lrs_vqa.answer import AskOptions, answer

    adapter = adapters["llava_onevision"]
    options = AskOptions(max_new_tokens=1, pyramid=PyramidOptions(cache_dir=tmp_path / "c"))
    with get_pruner("ptp").attach(adapter, "0.5") as att:
        record = answer(scene, QUESTION, model=adapter, options=options, **att_kwargs(att))
        assert len(att.llm_hooks[0]._sal) >= 2  # tiles recognised as partitions
    stats = record.stats
    assert stats.vision_tokens_per_layer[-1] == round_half_up(stats.vision_tokens_into_llm / 2)


def test_transprune_iga_rows() -> None:
    from pruning.transprune import iga_rows

    vision = torch.tensor([False, True, True, False, False, False])
    question = torch.tensor([False, False, False, True, True, False])
    assert iga_rows(vision, question, "after_image").tolist() == [3, 4, 5]
    assert iga_rows(vision, question, "instruction").tolist() == [3, 4]
    assert iga_rows(vision, torch.zeros(6, dtype=torch.bool), "instruction").tolist() == [5]


@pytest.mark.parametrize("family", FAMILIES)
def test_star_second_stage_keeps_what_fastv_keeps_at_the_same_layer(
    family: str, adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    """STAR's stage 2 is last-token attention at layer K (FastV's signal, itself checked against eager
    attention in test_pruning_models): on a prompt without stage 1 both keep the same rows."""
    adapter = adapters[family]
    inputs = stock(adapter, image)
    k = max(1, int(inputs.vision.sum()) // 3)
    star = get_pruner("star:layer=3,depth_ref=none").hooks(k, target(adapter))
    fastv = get_pruner("fastv:layer=3,depth_ref=none").hooks(k, target(adapter))
    a = adapter.decoder.prefill(inputs, star.llm)
    b = adapter.decoder.prefill(inputs, fastv.llm)
    assert torch.equal(a.kept_orig_index[3], b.kept_orig_index[3])
    assert a.vision_tokens_per_layer == b.vision_tokens_per_layer


def test_vscan_encoder_hook_keeps_the_planted_local_and_global_tokens() -> None:
    """Planted attention on a 4×4 grid (2×2 windows), 2 tiles, budget 6 tokens with share 1/2 -> stage 1
    keeps 12 of the group, 6 per tile: 3 local (⌊3/4⌋ = 0 per window, so the 3 best by shallow attention)
    and 3 global (best by deep attention among the rest); merged states replace the kept ones."""
    tgt = ModelTarget("llava", llm_layers=8, vision_layers=2, feature_layer=1, cls_token=True)
    att = get_pruner("vscan:windows=2,share=0.5,local_layer=0,vision_depth_ref=none").hooks(6, tgt).vision[0]
    assert att.encoder_drop_layers() == (0, 1)
    shallow = torch.zeros(2, 16)
    shallow[:, [5, 9, 14]] = torch.tensor([0.9, 0.8, 0.7])
    deep = torch.zeros(2, 16)
    deep[:, [5, 0, 3, 12]] = torch.tensor([1.0, 0.6, 0.5, 0.4])  # 5 is local already
    planted = {0: shallow, 1: deep}
    att._attention = lambda layer, hidden: planted[layer]  # type: ignore[method-assign]
    hidden = torch.randn(2, 17, 4)
    grid = torch.arange(16).expand(2, 16)
    assert att.inside_encoder(0, hidden, grid) is None
    sel = att.inside_encoder(1, hidden, grid)
    assert sel is not None
    assert sel.keep.tolist() == [[0, 3, 5, 9, 12, 14]] * 2
    assert sel.hidden is not None and sel.hidden.shape == (2, 6, 4)
    assert att.records == [(32, 12)]


@pytest.mark.parametrize("spec", ["transprune", "star", "ptp", "vscan"])
def test_each_pruner_through_the_answer_options(
    spec: str, adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    """The CLI's path: ``AskOptions(pruner=..., budget=...)`` attaches and detaches the pruner itself; the
    default c2f strategy hands it the final level."""
    from lrs_vqa.answer import AskOptions, answer

    adapter = adapters["llava_onevision"]
    options = AskOptions(
        max_new_tokens=1, pyramid=PyramidOptions(cache_dir=tmp_path / "c"), pruner=spec, budget="0.5"
    )
    stats = answer(scene, QUESTION, model=adapter, options=options).stats
    counts = stats.vision_tokens_per_layer
    assert counts[-1] == round_half_up(stats.vision_tokens_into_llm / 2)


def test_options_parse_from_specs_and_bad_ones_are_one_line_errors() -> None:
    p = get_pruner("transprune:ratios=90/60/10,attention=false,ttv=layer,iga_rows=instruction,alpha=1")
    assert p.config.ratios == pytest.approx((0.9, 0.6, 0.1))
    assert (p.config.attention, p.config.ttv, p.config.iga_rows) == (False, "layer", "instruction")
    assert get_pruner("star:layer=3,share=0.25,query=last_instruction").config.share == 0.25
    assert get_pruner("ptp:alpha=0.3,layer=1,depth_ref=none").config.depth_ref is None
    v = get_pruner("vscan:windows=2,merge=false,local_layer=3,vision_depth_ref=none,share=0.5")
    assert (v.config.windows, v.config.merge, v.config.vision_depth_ref) == (2, False, None)
    for bad, words in (
        ("transprune:ratios=50/90", "non-increasing"),
        ("transprune:ttv=both", "ttv must be one of module, layer"),
        ("star:share=0", "share must be in (0, 1]"),
        ("ptp:alpha=2", "alpha must be within 0..1"),
        ("vscan:query=first", "query must be one of"),
    ):
        with pytest.raises(PrunerConfigError, match=re.escape(words)) as err:
            get_pruner(bad)
        assert "\n" not in str(err.value)


def test_ptp_footprint_saliency_golden() -> None:
    from pruning.ptp import footprint_saliency

    # global view: two 10×10 tokens side by side, saliency 3 and 1
    b = torch.tensor([3.0, 1.0])
    boxes = torch.tensor([[0.0, 0, 10, 10], [10.0, 0, 20, 10]])
    feet = torch.tensor([[0.0, 0, 10, 10], [10.0, 0, 20, 10], [0.0, 0, 20, 10], [5.0, 0, 15, 10]])
    got = footprint_saliency(b, boxes, feet).tolist()
    # densities 0.03 and 0.01; the whole image averages them; a straddling tile too
    assert got == pytest.approx([0.03, 0.01, 0.02, 0.02])


def test_ptp_region_level_rates_tiles_by_the_global_view(tmp_path: Path) -> None:
    """Through the real encoder path (no planted budgets), with the shipped world model (a trained tower:
    random towers attend almost uniformly): a flat image with one red object in one tile. The region level
    rates that tile above every flat tile and gives it the largest budget — where a per-tile mean of b would
    rate every tile alike (b is normalised inside each tile)."""
    import numpy as np

    from lrs_vqa.answer import AskOptions, answer
    from lrs_vqa.models.registry import load_adapter, resolve_model
    from pruning.ptp import allocate

    img = np.full((448, 448, 3), 120, np.uint8)
    img[60:90, 60:110] = (220, 30, 30)
    path = tmp_path / "object.png"
    Image.fromarray(img).save(path)
    adapter = load_adapter(resolve_model("world"))
    options = AskOptions(
        strategy="tiles-all", level=-1, max_new_tokens=1, pyramid=PyramidOptions(cache_dir=tmp_path / "c")
    )
    with get_pruner("ptp").attach(adapter, "0.25") as att:
        record = answer(path, "What color is the car?", model=adapter, options=options, **att_kwargs(att))
        sal = att.llm_hooks[0]._sal.tolist()
    tiles = record.tiles  # thumbnail first, then the level's 4×4 tiles in raster order
    assert len(sal) == len(tiles) == 17
    hot = [i for i, t in enumerate(tiles) if i and t.pixel_box[:2] == [0, 0]]
    assert len(hot) == 1
    flat = [sal[i] for i in range(1, 17) if i != hot[0]]
    assert sal[hot[0]] > 1.2 * max(flat)
    budgets = allocate(sal, [64] * 17, 17 * 16)
    assert budgets[hot[0]] > max(budgets[i] for i in range(1, 17) if i != hot[0])
