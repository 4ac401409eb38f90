"""Pictures of a pyramid: the coarse view with tile grids and boxes drawn on it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from pyramid.dip import DynamicImagePyramid
from pyramid.levels import PixelBox

# Coarse → fine grid colours; finer grids are drawn thinner.
_GRID_COLOURS = [(255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 255, 255)]


def render_overview(
    dip: DynamicImagePyramid,
    *,
    grid_levels: int = 2,
    boxes: Iterable[tuple[PixelBox, str]] = (),
    box_colour: tuple[int, int, int] = (255, 40, 40),
) -> Image.Image:
    """The coarse level with the tile grids of the first ``grid_levels`` levels and level-0 ``boxes``."""
    coarse = dip.levels[0]
    view = Image.fromarray(dip.level_image(0).pixels)
    draw = ImageDraw.Draw(view)
    for k, level in enumerate(dip.levels[:grid_levels]):
        colour = _GRID_COLOURS[k % len(_GRID_COLOURS)]
        width = max(1, 3 - k)
        for r in range(level.rows):
            for c in range(level.cols):
                b = coarse.from_level0(level.tile_box(r, c))
                draw.rectangle([b.x0, b.y0, b.x1 - 1, b.y1 - 1], outline=colour, width=width)
    for box, label in boxes:
        b = coarse.from_level0(box)
        draw.rectangle([b.x0 - 2, b.y0 - 2, b.x1 + 1, b.y1 + 1], outline=box_colour, width=2)
        if label:
            draw.text((b.x0, max(0, b.y0 - 12)), label, fill=box_colour)
    return view


def save_overview(
    dip: DynamicImagePyramid,
    out: str | Path,
    *,
    grid_levels: int = 2,
    boxes: Sequence[tuple[PixelBox, str]] = (),
) -> Path:
    path = Path(out)
    render_overview(dip, grid_levels=grid_levels, boxes=boxes).save(path)
    return path
