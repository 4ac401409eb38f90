"""``tiles-all``: the thumbnail plus every tile of one pyramid level, refused above ``max_vision_tokens``."""

from __future__ import annotations

from lrs_vqa.c2f import shift_tiles
from lrs_vqa.strategies import Gathered, StrategyError, StrategyRequest, register_strategy


@register_strategy("tiles-all", in_app=False)
def gather(req: StrategyRequest) -> Gathered:
    dip, options, adapter = req.dip, req.options, req.adapter
    hooks = (*req.vision_hooks, *(req.pruner_hooks or ()))
    index = 0 if options.level is None else options.level
    if options.max_tiles is not None:  # the paper's anyres-pN baseline on our pyramid
        if options.level is not None:
            raise StrategyError("give either a level or a tile count (max tiles), not both")
        fitting = [lvl.index for lvl in dip.levels if lvl.num_tiles <= options.max_tiles]
        if not fitting:
            raise StrategyError(f"even the coarse level has more than {options.max_tiles} tiles")
        index = fitting[-1]
    if not -len(dip.levels) <= index < len(dip.levels):
        raise StrategyError(f"level {index} does not exist; this image has levels 0..{len(dip.levels) - 1}")
    level = dip.levels[index]
    estimate = (level.num_tiles + 1) * adapter.tokens_per_tile
    if estimate > options.max_vision_tokens:
        raise StrategyError(
            f"tiles-all at level {level.index} ({level.name}, {level.rows}x{level.cols} tiles) would "
            f"feed "
            f"~{estimate} vision tokens, above the limit of {options.max_vision_tokens}; "
            "pick a coarser level or raise --max-vision-tokens"
        )
    thumb = dip.thumbnail()
    tiles = list(dip.stream(dip.all_tiles(level.index)))
    seg0 = adapter.encode_tiles([thumb], newlines=False, level=-1, hooks=hooks)
    seg1 = adapter.encode_tiles(tiles, newlines=True, level=level.index, hooks=hooks)
    return Gathered([seg0, shift_tiles(seg1, 1)], [thumb, *tiles], ["thumbnail"] + ["level"] * len(tiles))
