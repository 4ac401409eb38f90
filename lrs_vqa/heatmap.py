"""A picture of where the question points: coarse-level token scores over the coarse view, with the tiles
the loop zoomed into outlined level by level."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lrs_vqa.c2f import LevelStep
from pyramid.dip import DynamicImagePyramid
from rfm.base import TokenScores

# A perceptually ordered dark-to-bright ramp (black → purple → orange → pale yellow), as in "inferno".
_RAMP = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)
_OUTLINES = [(0, 255, 255), (0, 255, 0), (255, 255, 255), (255, 0, 255)]  # per zoom step


def colorize(values: np.ndarray) -> np.ndarray:
    """(h, w) values in [0, 1] → (h, w, 3) uint8 through the ramp."""
    x = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    t = (x - lo)[..., None]
    return (_RAMP[lo] * (1 - t) + _RAMP[hi] * t).astype(np.uint8)


def score_density(
    scores: TokenScores, width: int, height: int, factor_x: float, factor_y: float
) -> np.ndarray:
    """Each token's score spread evenly over its box, in coarse-level pixels (newline markers skipped)."""
    density = np.zeros((height, width), np.float64)
    real = ~scores.meta.newline
    for box, s in zip(scores.meta.boxes[real].tolist(), scores.scores[real].tolist(), strict=True):
        x0, y0 = int(box[0] / factor_x), int(box[1] / factor_y)
        x1 = max(x0 + 1, min(width, round(box[2] / factor_x)))
        y1 = max(y0 + 1, min(height, round(box[3] / factor_y)))
        density[y0:y1, x0:x1] += s / ((x1 - x0) * (y1 - y0))
    return density


def render_heatmap(
    dip: DynamicImagePyramid, scores: TokenScores, steps: Sequence[LevelStep], alpha: float = 0.6
) -> Image.Image:
    coarse = dip.levels[0]
    base = dip.level_image(0).pixels.astype(np.float32)
    density = score_density(scores, coarse.width, coarse.height, coarse.factor_x, coarse.factor_y)
    peak = density.max()
    heat = colorize(density / peak if peak > 0 else density).astype(np.float32)
    blended = (base * (1 - alpha) + heat * alpha).astype(np.uint8)
    image = Image.fromarray(blended)
    draw = ImageDraw.Draw(image)
    for depth, step in enumerate(s for s in steps if s.reads_next):
        level = dip.level(step.level + 1) if not step.next_boxes else None
        for i, key in enumerate(step.next_tiles):
            b = step.next_boxes[i] if level is None else level.tile_box(key.row, key.col)
            rect = (
                b.x0 / coarse.factor_x,
                b.y0 / coarse.factor_y,
                b.x1 / coarse.factor_x - 1,
                b.y1 / coarse.factor_y - 1,
            )
            draw.rectangle(rect, outline=_OUTLINES[depth % len(_OUTLINES)], width=1 if depth else 2)
    return image


def write_heatmap(image: Image.Image, path: str | Path) -> Path:
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp.png")
    image.save(tmp)
    tmp.replace(out)  # never leave a half-written picture behind
    return out
