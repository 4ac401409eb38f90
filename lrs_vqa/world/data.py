"""Training samples for the world model, made the way inference sees a scene.

A scene is rendered in memory (:func:`pyramid.world.render_world`) and laid out as the Dynamic Image
Pyramid lays out a file — the same level plan (:func:`pyramid.levels.plan_levels`), power-of-two levels by
2×2 area averaging, the coarse level and the thumbnail by area resampling, partial edge tiles — so a
sample's tiles are :class:`pyramid.dip.Tile` objects like the ones the engine encodes. A sample is the
thumbnail plus tiles of one level (the target's tiles among others), the question and its answer, and for
every tile token its object category and colour (from the known masks: dense auxiliary targets).

Scene seeds: training draws them at or above ``TRAIN_SEED_BASE`` (2**32); the in-training hold-out uses
``HOLDOUT_SEED_BASE`` (2**31) up; ``lrs-vqa world-bench`` uses seeds below 2**31, so the splits never share
a scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lrs_vqa.world.questions import QUESTION_CATEGORIES, SUFFIX, WorldQuestion, questions_for
from pyramid.dip import THUMBNAIL, Tile, TileKey
from pyramid.geometry import TileGeometry
from pyramid.levels import Level, PixelBox, PyramidSpec, plan_levels, plan_thumbnail
from pyramid.world import CATEGORIES, COLORS, WorldScene, render_world

TRAIN_SEED_BASE = 2**32
HOLDOUT_SEED_BASE = 2**31
IGNORE = -100
# How often each question category is drawn (counts are rarer: one cluster per scene at most).
CATEGORY_WEIGHTS = (
    ("object color", 0.22),
    ("object category", 0.28),
    ("object presence", 0.22),
    ("count", 0.12),
    ("rural or urban", 0.16),
)
assert {c for c, _ in CATEGORY_WEIGHTS} == set(QUESTION_CATEGORIES)


class MemoryPyramid:
    """A rendered scene as the DIP would serve it: levels coarse → native, thumbnail, tiles, and the
    object-id map for labels."""

    def __init__(self, scene: WorldScene, rgb: np.ndarray, ids: np.ndarray, spec: PyramidSpec):
        self.scene, self.ids, self.spec = scene, ids, spec
        h, w = rgb.shape[:2]
        self.levels: tuple[Level, ...] = plan_levels(w, h, spec)
        self.thumb_level = plan_thumbnail(w, h, spec)
        images: dict[int, np.ndarray] = {}
        current = rgb
        for lvl in reversed(self.levels):  # native first, then each power of two from the previous one
            exact = lvl.factor_x == lvl.factor_y == 2 ** round(np.log2(lvl.factor_x))
            image = (
                rgb
                if lvl.is_native
                else cv2.resize(current, (lvl.width, lvl.height), interpolation=cv2.INTER_AREA)
            )
            if exact:
                current = image
            images[lvl.index] = image
        coarse = images[0]
        tl = self.thumb_level
        self.thumb_pixels = cv2.resize(coarse, (tl.width, tl.height), interpolation=cv2.INTER_AREA)
        self.images = images

    def tile(self, level: int, row: int, col: int) -> Tile:
        lvl = self.levels[level]
        lb = lvl.tile_level_box(row, col)
        pixels = self.images[level][lb.y0 : lb.y1, lb.x0 : lb.x1]
        return Tile(TileKey(level, row, col), lvl.name, lb, TileGeometry(lvl.to_level0(lb)), pixels)

    def thumbnail(self) -> Tile:
        tl = self.thumb_level
        box = PixelBox(0, 0, tl.width, tl.height)
        return Tile(
            TileKey(THUMBNAIL, 0, 0), tl.name, box, TileGeometry(tl.to_level0(box)), self.thumb_pixels
        )

    def tiles_over(self, level: int, box: PixelBox) -> list[tuple[int, int]]:
        return self.levels[level].tiles_covering(box)

    def patch_labels(self, tile: Tile, grid: int) -> tuple[np.ndarray, np.ndarray]:
        """Per token (grid × grid over the tile padded to the tile size): object category (0 = none,
        1 + index in CATEGORIES) and colour (0 = none, 1 + index in COLORS) of the object covering the
        largest share of the token's pixels, if it covers at least a fifth of them."""
        t = self.spec.tile_size
        lb, b0 = tile.level_box, tile.box
        crop = self.ids[b0.y0 : b0.y1, b0.x0 : b0.x1]
        cat = np.zeros(grid * grid, np.int64)
        col = np.zeros(grid * grid, np.int64)
        present = np.unique(crop)
        best = np.full(grid * grid, 0.2, np.float32)
        for oid in present[present > 0]:
            frac = cv2.resize(
                (crop == oid).astype(np.float32), (lb.width, lb.height), interpolation=cv2.INTER_AREA
            )
            padded = np.zeros((t, t), np.float32)
            padded[: lb.height, : lb.width] = frac
            p = t // grid
            cover = padded[: grid * p, : grid * p].reshape(grid, p, grid, p).mean(axis=(1, 3)).reshape(-1)
            obj = self.scene.objects[int(oid) - 1]
            win = cover >= best
            best = np.where(win, cover, best)
            cat[win] = 1 + CATEGORIES.index(obj.category)
            col[win] = 1 + COLORS.index(obj.color)
        return cat, col


@dataclass(frozen=True)
class WorldSample:
    tiles: tuple[Tile, ...]  # thumbnail first, then one level's tiles in raster order
    level: int
    question: WorldQuestion
    prompt: str  # question + SUFFIX, as asked at inference
    category_labels: np.ndarray  # (tiles, grid²) int64, IGNORE for the thumbnail
    color_labels: np.ndarray
    keep: np.ndarray  # (tiles, grid²) bool: tokens that survive the random drop (thumbnail: all)
    target: np.ndarray  # (tiles, grid²) bool: tokens over the objects that hold the answer


@dataclass(frozen=True)
class SampleOptions:
    tile_size: int = 112
    grid: int = 8  # tokens per tile side
    min_size: int = 640
    max_size: int = 2688
    max_extra_tiles: int = 3
    native_share: float = 0.6  # tiles from the native level; then the next one; then any coarser one
    drop_share: float = 0.5  # samples whose tile tokens are randomly thinned (robustness to pruning)
    max_drop: float = 0.8
    question_weights: tuple[tuple[str, float], ...] = CATEGORY_WEIGHTS


def _choose_question(
    questions: list[WorldQuestion], rng: np.random.Generator, weights: tuple[tuple[str, float], ...]
) -> WorldQuestion:
    share = dict(weights)
    cats = [c for c in share if share[c] > 0 and any(q.category == c for q in questions)]
    if not cats:  # the scene asks none of the weighted categories: any of its questions
        return questions[int(rng.integers(len(questions)))]
    p = np.array([share[c] for c in cats])
    cat = cats[int(rng.choice(len(cats), p=p / p.sum()))]
    pool = [q for q in questions if q.category == cat]
    return pool[int(rng.integers(len(pool)))]


def _choose_level(n_levels: int, rng: np.random.Generator, opt: SampleOptions) -> int:
    u = rng.random()
    if n_levels == 1 or u < opt.native_share:
        return n_levels - 1
    if n_levels == 2 or u < opt.native_share + (1 - opt.native_share) / 2:
        return n_levels - 2
    return int(rng.integers(0, n_levels - 2))


def samples_from_scene(
    pyr: MemoryPyramid, n: int, rng: np.random.Generator, opt: SampleOptions
) -> list[WorldSample]:
    """``n`` samples about one scene (questions drawn with replacement, weighted by category)."""
    questions = questions_for(pyr.scene, rng)
    out = []
    for _ in range(n):
        q = _choose_question(questions, rng, opt.question_weights)
        level = _choose_level(len(pyr.levels), rng, opt)
        lvl = pyr.levels[level]
        keys: set[tuple[int, int]] = set()
        boxes = [PixelBox(*pyr.scene.objects[oid].pixel_box) for oid in q.targets]
        for b in boxes:
            keys.update(pyr.tiles_over(level, b))
        extra = int(rng.integers(0 if keys else 1, max(opt.max_extra_tiles, 1) + 1))
        for _ in range(extra):
            keys.add((int(rng.integers(lvl.rows)), int(rng.integers(lvl.cols))))
        tiles = [pyr.tile(level, r, c) for r, c in sorted(keys)]
        g = opt.grid
        cats, cols, keeps = [np.full(g * g, IGNORE)], [np.full(g * g, IGNORE)], [np.ones(g * g, bool)]
        hits = [np.zeros(g * g, bool)]
        drop = rng.random() < opt.drop_share
        share = rng.uniform(0, opt.max_drop) if drop else 0.0
        for tile in tiles:
            cat, col = pyr.patch_labels(tile, g)
            cats.append(cat)
            cols.append(col)
            hit = np.zeros(g * g, bool)
            for b in boxes:
                hit |= _overlaps(tile, b, g, opt.tile_size)
            keep = rng.random(g * g) >= share
            keep |= hit if boxes else cat > 0  # a pruner that works keeps the answer's tokens
            keeps.append(keep)
            hits.append(hit)
        out.append(
            WorldSample(
                (pyr.thumbnail(), *tiles),
                level,
                q,
                q.text + SUFFIX,
                np.stack(cats),
                np.stack(cols),
                np.stack(keeps),
                np.stack(hits),
            )
        )
    return out


def _overlaps(tile: Tile, box: PixelBox, g: int, t: int) -> np.ndarray:
    """Tokens of ``tile`` whose level-0 footprint meets ``box`` (a pruner that works keeps them)."""
    lb, b0 = tile.level_box, tile.box
    sx, sy = b0.width / max(lb.width, 1), b0.height / max(lb.height, 1)
    edges = np.arange(g + 1) * (t / g)
    x0, x1 = b0.x0 + edges[:-1] * sx, b0.x0 + edges[1:] * sx
    y0, y1 = b0.y0 + edges[:-1] * sy, b0.y0 + edges[1:] * sy
    hit = ((y0 < box.y1) & (y1 > box.y0))[:, None] & ((x0 < box.x1) & (x1 > box.x0))[None, :]
    return hit.reshape(-1)


def scene_samples(seed: int, n: int, opt: SampleOptions, rng: np.random.Generator) -> list[WorldSample]:
    """Render the scene of ``seed`` (its size drawn from ``rng``) and draw ``n`` samples from it."""
    size = int(rng.integers(opt.min_size, opt.max_size + 1))
    aspect = rng.uniform(0.7, 1.0)
    w, h = (size, max(int(size * aspect), 64)) if rng.random() < 0.5 else (max(int(size * aspect), 64), size)
    scene, rgb, ids = render_world((w, h), seed)
    spec = PyramidSpec(
        tile_size=opt.tile_size, coarse_long_side=3 * opt.tile_size, thumbnail_size=opt.tile_size
    )
    return samples_from_scene(MemoryPyramid(scene, rgb, ids, spec), n, rng, opt)
