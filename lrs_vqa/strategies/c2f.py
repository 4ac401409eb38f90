"""``c2f``: the coarse-to-fine loop (``lrs_vqa.c2f``, its mode from ``lrs_vqa.c2f_modes``): zoom level by
level into the tiles a region scorer (``rfm.scorers``) points at, read only those, prune, answer. The default.

With a token pruner the pruner replaces the loop's own final prune: its vision-side hooks compress the final
level, or, for a pruner that acts only before the LLM, its budget is shared between the thumbnail and the
final tiles (:func:`prune_views`), so the tokens into the LLM total the budget either way."""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from lrs_vqa.c2f import C2FResult, make_loop, shift_tiles
from lrs_vqa.engine.hooks import VisionHook
from lrs_vqa.models.base import ModelAdapter
from lrs_vqa.options import AskOptions
from lrs_vqa.strategies import Gathered, StrategyError, StrategyRequest, register_strategy
from pruning.budget import Budget, BudgetKind
from pruning.registry import get_pruner
from rfm.base import RegionScorer
from rfm.scorers import ScorerUnavailableError, UnknownScorerError, build_scorer


@register_strategy("c2f", coarse_to_fine=True)
def gather(req: StrategyRequest) -> Gathered:
    scorer = region_scorer(req.adapter, req.options)
    pruner_hooks = () if req.split_views else req.pruner_hooks
    loop = make_loop(req.adapter, scorer, req.options.c2f, req.vision_hooks, pruner_hooks)
    result = loop.run(req.dip, req.question)
    if req.split_views:
        prune_views(req.adapter, result, req.options, req.vision_hooks)
    return Gathered(result.segments, result.tiles, result.roles, c2f=result)


def region_scorer(adapter: ModelAdapter, options: AskOptions) -> RegionScorer:
    """The scorer the c2f loop asks (``rfm.scorers``): the trained RFM that came with the model, or the
    attention one."""
    if options.rfm is not None:
        if options.scorer not in ("rfm", "auto"):
            raise StrategyError(f"--rfm is read by --scorer rfm, not --scorer {options.scorer}")
        return trained_rfm_scorer(adapter, options.rfm)
    try:
        return build_scorer(options.scorer, adapter, options.scorer_layers)
    except (UnknownScorerError, ScorerUnavailableError) as exc:
        raise StrategyError(str(exc)) from None


_LOADED: weakref.WeakKeyDictionary[ModelAdapter, dict[str, RegionScorer]] = weakref.WeakKeyDictionary()


def trained_rfm_scorer(adapter: ModelAdapter, folder: str) -> RegionScorer:
    """An RFM from ``lrs-vqa train-rfm`` for this adapter, loaded once per (adapter, folder)."""
    from lrs_vqa.models.rfm_checkpoint import load_rfm
    from rfm.module import RFMScorer

    loaded = _LOADED.setdefault(adapter, {})
    if str(folder) not in loaded:
        loaded[str(folder)] = RFMScorer(load_rfm(folder, adapter))
    return loaded[str(folder)]


def split_budget(budget: str, sizes: Sequence[int]) -> list[str]:
    """One budget over several encoded groups (``sizes`` tokens each) → one budget per group: a token
    count (or an average, the same thing before the LLM) is shared in proportion to the group sizes, at least
    one token each; a ratio applies to every group."""
    parsed = Budget.parse(budget)
    if parsed.kind is BudgetKind.RATIO:
        return [budget] * len(sizes)
    total, n = int(parsed.value), sum(sizes)
    if total < len(sizes):
        raise StrategyError(f"budget {budget} is below one token per view ({len(sizes)} views)")
    if total > n:
        raise StrategyError(f"budget {budget} is larger than the {n} vision tokens the views have")
    shares = [max(1, round(total * k / n)) for k in sizes[:-1]]
    return [str(v) for v in (*shares, total - sum(shares))]


def prune_views(
    adapter: ModelAdapter, result: C2FResult, options: AskOptions, vision_hooks: Sequence[VisionHook]
) -> None:
    """Re-encode the thumbnail and the final tiles the loop picked, each with the pruner attached at its
    share of the budget, so the vision tokens into the LLM total the budget."""
    thumb_seg, final_seg = result.segments[0], result.segments[-1]
    real = final_seg.meta.tile >= 0
    tile_ids = sorted(set(final_seg.meta.tile[real].tolist()))
    first = tile_ids[0]
    tiles = result.tiles[first : tile_ids[-1] + 1]  # one level's tiles, contiguous in the loop's list
    level = int(final_seg.meta.level[real][0])
    sizes = [len(adapter.present_rows(thumb_seg)), int(real.sum())]
    shares = split_budget(options.budget or "", sizes)
    segments = []
    for share, (group, lvl, newlines) in zip(
        shares, (([result.tiles[0]], -1, False), (tiles, level, True)), strict=True
    ):
        with get_pruner(options.pruner or "").attach(adapter, share) as att:
            hooks = (*vision_hooks, *att.vision_hooks)
            segments.append(adapter.encode_tiles(group, newlines=newlines, level=lvl, hooks=hooks))
            result.tokens_encoded += segments[-1].tokens_encoded
            result.images_encoded += segments[-1].images_encoded
    result.segments = [segments[0], *result.segments[1:-1], shift_tiles(segments[1], first)]
