"""``global``: the global thumbnail only (one tile, long side = the encoder's input size)."""

from __future__ import annotations

from lrs_vqa.strategies import Gathered, StrategyRequest, register_strategy


@register_strategy("global")
def gather(req: StrategyRequest) -> Gathered:
    thumb = req.dip.thumbnail()
    hooks = (*req.vision_hooks, *(req.pruner_hooks or ()))
    seg = req.adapter.encode_tiles([thumb], newlines=False, level=-1, hooks=hooks)
    return Gathered([seg], [thumb], ["thumbnail"])
