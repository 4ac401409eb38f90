"""``anyres``: the model's own fixed-grid processing of the coarse level (long side ~3 tiles), like the
paper's anyres-pX baselines: whatever the checkpoint's processor does with that image."""

from __future__ import annotations

from PIL import Image

from lrs_vqa.strategies import Gathered, StrategyRequest, register_strategy


@register_strategy("anyres", own_processing=True)
def gather(req: StrategyRequest) -> Gathered:
    req.dip.thumbnail()  # read, unused: the records count it (tiles_read), as they always have
    coarse = req.dip.level_image(0)
    image = Image.fromarray(coarse.pixels)
    prompt, _ = req.adapter.stock_prompt(image, req.question, image_box=coarse.box)
    return Gathered([], [coarse], ["overview"], prompt)
