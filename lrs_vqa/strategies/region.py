"""``region``: the thumbnail plus every native tile over given level-0 boxes (``AskOptions.region``).

Ask about a known place at full resolution (``--box x0,y0,x1,y1``); with a benchmark's ground-truth box it is
the oracle that bounds what any tile selection can reach."""

from __future__ import annotations

from lrs_vqa.c2f import shift_tiles
from lrs_vqa.strategies import Gathered, StrategyError, StrategyRequest, register_strategy
from pyramid.levels import PixelBox


@register_strategy("region", in_app=False)
def gather(req: StrategyRequest) -> Gathered:
    dip, options, adapter = req.dip, req.options, req.adapter
    hooks = (*req.vision_hooks, *(req.pruner_hooks or ()))
    if not options.region:
        raise StrategyError(
            "the region strategy needs at least one box (--box x0,y0,x1,y1 in level-0 pixels)"
        )
    native = dip.levels[-1]
    keys = set()
    for x0, y0, x1, y1 in options.region:
        if not (x0 < x1 and y0 < y1):
            raise StrategyError(f"box {[x0, y0, x1, y1]} is empty; give x0,y0,x1,y1 with x0 < x1 and y0 < y1")
        found = dip.tiles_covering(native.index, PixelBox(x0, y0, x1, y1))
        if not found:
            raise StrategyError(
                f"box {[x0, y0, x1, y1]} lies outside the {native.width}x{native.height} image"
            )
        keys.update(found)
    if (len(keys) + 1) * adapter.tokens_per_tile > options.max_vision_tokens:
        raise StrategyError(f"the region covers {len(keys)} native tiles, above --max-vision-tokens")
    thumb = dip.thumbnail()
    tiles = list(dip.stream(sorted(keys, key=lambda k: (k.row, k.col))))
    seg0 = adapter.encode_tiles([thumb], newlines=False, level=-1, hooks=hooks)
    seg1 = adapter.encode_tiles(tiles, newlines=True, level=native.index, hooks=hooks)
    return Gathered([seg0, shift_tiles(seg1, 1)], [thumb, *tiles], ["thumbnail"] + ["region"] * len(tiles))
