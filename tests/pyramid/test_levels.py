"""Level plan (pyramid.levels): names, sizes, grids, box mappings. Pure geometry, no pixels.

Expected values are written out by hand from the rules in the module docstring (power-of-two levels are
``floor(W / 2**k)`` down to the last one with a long side >= 1008, then a coarse level with a long side of
exactly 1008 if that level is still larger; tile grids are ``ceil(size / 336)``), checked against the
sizes of the reference's worked example (shared/research/lrs_vqa_reference.md §2.2).
"""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from pyramid.levels import Level, PixelBox, PyramidSpec, plan_levels, plan_thumbnail

# (W, H) → [(name, width, height, rows, cols), ...] coarse → native, all written out by hand.
EXPECTED: dict[tuple[int, int], list[tuple[str, int, int, int, int]]] = {
    (1024, 1024): [("coarse", 1008, 1008, 3, 3), ("native", 1024, 1024, 4, 4)],
    (4000, 4000): [("coarse", 1008, 1008, 3, 3), ("1/2", 2000, 2000, 6, 6), ("native", 4000, 4000, 12, 12)],
    (8000, 6000): [
        ("coarse", 1008, 756, 3, 3),
        ("1/4", 2000, 1500, 5, 6),
        ("1/2", 4000, 3000, 9, 12),
        ("native", 8000, 6000, 18, 24),
    ],
    (16384, 16384): [
        ("coarse", 1008, 1008, 3, 3),
        ("1/16", 1024, 1024, 4, 4),
        ("1/8", 2048, 2048, 7, 7),
        ("1/4", 4096, 4096, 13, 13),
        ("1/2", 8192, 8192, 25, 25),
        ("native", 16384, 16384, 49, 49),
    ],
    (27328, 27328): [
        ("coarse", 1008, 1008, 3, 3),
        ("1/16", 1708, 1708, 6, 6),
        ("1/8", 3416, 3416, 11, 11),
        ("1/4", 6832, 6832, 21, 21),
        ("1/2", 13664, 13664, 41, 41),
        ("native", 27328, 27328, 82, 82),
    ],
    (27328, 10000): [
        ("coarse", 1008, 369, 2, 3),  # 10000 * 1008 / 27328 = 368.85
        ("1/16", 1708, 625, 2, 6),
        ("1/8", 3416, 1250, 4, 11),
        ("1/4", 6832, 2500, 8, 21),
        ("1/2", 13664, 5000, 15, 41),
        ("native", 27328, 10000, 30, 82),
    ],
    (27328, 1024): [
        ("coarse", 1008, 38, 1, 3),  # 1024 * 1008 / 27328 = 37.77
        ("1/16", 1708, 64, 1, 6),
        ("1/8", 3416, 128, 1, 11),
        ("1/4", 6832, 256, 1, 21),
        ("1/2", 13664, 512, 2, 41),
        ("native", 27328, 1024, 4, 82),
    ],
    (500, 300): [("native", 500, 300, 1, 2)],
    # Portrait: the long side is the height.
    (6000, 8000): [
        ("coarse", 756, 1008, 3, 3),
        ("1/4", 1500, 2000, 6, 5),
        ("1/2", 3000, 4000, 12, 9),
        ("native", 6000, 8000, 24, 18),
    ],
    # Odd sizes: power-of-two levels floor, never round.
    (2503, 1901): [("coarse", 1008, 766, 3, 3), ("1/2", 1251, 950, 3, 4), ("native", 2503, 1901, 6, 8)],
    # A power-of-two level that lands exactly on 1008 is the coarsest: no extra coarse level.
    (2016, 1000): [("1/2", 1008, 500, 2, 3), ("native", 2016, 1000, 3, 6)],
    (1008, 1008): [("native", 1008, 1008, 3, 3)],
    (1009, 5): [("coarse", 1008, 5, 1, 3), ("native", 1009, 5, 1, 4)],
    (1, 1): [("native", 1, 1, 1, 1)],
}


def _summary(levels: tuple[Level, ...]) -> list[tuple[str, int, int, int, int]]:
    return [(lv.name, lv.width, lv.height, lv.rows, lv.cols) for lv in levels]


@pytest.mark.parametrize(("size", "expected"), list(EXPECTED.items()), ids=lambda v: str(v))
def test_plan_levels_worked_examples(size: tuple[int, int], expected: list[tuple]) -> None:
    w, h = size
    levels = plan_levels(w, h)
    assert _summary(levels) == expected
    assert [lv.index for lv in levels] == list(range(len(expected)))
    for lv in levels:
        assert (lv.source_width, lv.source_height, lv.tile_size) == (w, h, 336)
        assert lv.num_tiles == lv.rows * lv.cols
        assert lv.rows == math.ceil(lv.height / 336) and lv.cols == math.ceil(lv.width / 336)
        if lv.name == "coarse":
            assert max(lv.width, lv.height) == 1008
            assert lv.factor_x == pytest.approx(w / lv.width) and lv.factor_y == pytest.approx(h / lv.height)
            assert not lv.is_native
        elif lv.name == "native":
            assert (lv.factor_x, lv.factor_y) == (1.0, 1.0) and lv.is_native
        else:
            f = int(lv.name.split("/")[1])
            assert (lv.width, lv.height) == (w // f, h // f)
            assert (lv.factor_x, lv.factor_y) == (float(f), float(f))
    # coarse → native: strictly growing, the last one is the image itself
    widths = [lv.width for lv in levels]
    assert widths == sorted(widths) and len(set(widths)) == len(widths)
    assert levels[-1].is_native and (levels[-1].width, levels[-1].height) == (w, h)


@pytest.mark.parametrize("size", [(1024, 1024), (4000, 4000), (8000, 6000), (27328, 10000), (300, 500)])
def test_plan_thumbnail(size: tuple[int, int]) -> None:
    w, h = size
    th = plan_thumbnail(w, h)
    scale = 336 / max(w, h)
    assert (th.width, th.height) == (round(w * scale), round(h * scale))
    assert max(th.width, th.height) == 336
    assert (th.rows, th.cols) == (1, 1)
    assert th.name == "thumbnail" and th.index == -1
    assert th.tile_level_box(0, 0) == PixelBox(0, 0, th.width, th.height)
    assert th.tile_box(0, 0) == PixelBox(0, 0, w, h)


def test_single_native_level_for_small_images() -> None:
    for w, h in [(1008, 700), (500, 300), (14, 14), (1008, 1)]:
        levels = plan_levels(w, h)
        assert len(levels) == 1 and levels[0].name == "native" and levels[0].is_native


def test_custom_spec() -> None:
    spec = PyramidSpec(tile_size=224, coarse_long_side=672, thumbnail_size=224)
    levels = plan_levels(3000, 2000, spec)
    # 3000/2 = 1500, /4 = 750 >= 672, /8 = 375 < 672 → pow2 [1, 2, 4]; coarse 672 x round(448.0)
    assert _summary(levels) == [
        ("coarse", 672, 448, 2, 3),
        ("1/4", 750, 500, 3, 4),
        ("1/2", 1500, 1000, 5, 7),
        ("native", 3000, 2000, 9, 14),
    ]
    th = plan_thumbnail(3000, 2000, spec)
    assert (th.width, th.height, th.rows, th.cols) == (224, 149, 1, 1)


@pytest.mark.parametrize(
    "kw",
    [dict(tile_size=13), dict(thumbnail_size=10), dict(tile_size=512, coarse_long_side=500)],
)
def test_spec_validation(kw: dict) -> None:
    with pytest.raises(ValueError):
        PyramidSpec(**kw)


@pytest.mark.parametrize("size", [(0, 10), (10, 0), (-5, 5)])
def test_plan_levels_rejects_empty(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        plan_levels(*size)


# ------------------------------------------------------------------------------------------ tile boxes


def test_tile_level_box_edges_are_partial() -> None:
    levels = plan_levels(2503, 1901)
    native = levels[-1]
    assert native.tile_level_box(0, 0) == PixelBox(0, 0, 336, 336)
    assert native.tile_level_box(2, 3) == PixelBox(1008, 672, 1344, 1008)
    # last col: 2503 - 7*336 = 151 wide; last row: 1901 - 5*336 = 221 high
    assert native.tile_level_box(5, 7) == PixelBox(2352, 1680, 2503, 1901)
    assert native.tile_level_box(5, 7).width == 151 and native.tile_level_box(5, 7).height == 221
    half = levels[1]  # 1251 x 950, 3 x 4
    assert half.tile_level_box(2, 3) == PixelBox(1008, 672, 1251, 950)
    assert half.tile_box(2, 3) == PixelBox(2016, 1344, 2502, 1900)  # the odd remainder is dropped
    for lv in levels:
        # the grid covers the level exactly, without overlap
        area = sum(lv.tile_level_box(r, c).area for r in range(lv.rows) for c in range(lv.cols))
        assert area == lv.width * lv.height
        for r, c in [(lv.rows, 0), (0, lv.cols), (-1, 0), (0, -1)]:
            with pytest.raises(IndexError):
                lv.tile_level_box(r, c)


def test_coarse_tile_boxes_cover_the_image() -> None:
    coarse = plan_levels(2503, 1901)[0]
    fx, fy = Fraction(2503, 1008), Fraction(1901, 766)  # exact arithmetic for the expectation
    for r, c in itertools.product(range(coarse.rows), range(coarse.cols)):
        lb = coarse.tile_level_box(r, c)
        b0 = coarse.tile_box(r, c)
        assert b0 == PixelBox(
            math.floor(lb.x0 * fx), math.floor(lb.y0 * fy), math.ceil(lb.x1 * fx), math.ceil(lb.y1 * fy)
        )
    assert coarse.tile_box(coarse.rows - 1, coarse.cols - 1).x1 == 2503
    assert coarse.tile_box(coarse.rows - 1, coarse.cols - 1).y1 == 1901


@pytest.mark.parametrize("size", [(2503, 1901), (8000, 6000), (27328, 10000), (4097, 4097)])
def test_power_of_two_round_trips(size: tuple[int, int]) -> None:
    rng = random.Random(7)
    for lv in plan_levels(*size):
        if lv.name == "coarse":
            continue
        f = int(lv.factor_x)
        for _ in range(200):
            x0, x1 = sorted(rng.randint(0, lv.width) for _ in range(2))
            y0, y1 = sorted(rng.randint(0, lv.height) for _ in range(2))
            b = PixelBox(x0, y0, x1, y1)
            b0 = lv.to_level0(b)
            assert b0 == PixelBox(x0 * f, y0 * f, x1 * f, y1 * f)  # exact, never clipped inside the level
            assert lv.from_level0(b0) == b
        # any level-0 box: from_level0 gives the smallest covering level box
        for _ in range(200):
            x0, x1 = sorted(rng.randint(0, lv.source_width) for _ in range(2))
            y0, y1 = sorted(rng.randint(0, lv.source_height) for _ in range(2))
            b0 = PixelBox(x0, y0, x1, y1)
            lb = lv.from_level0(b0)
            assert lb == PixelBox(x0 // f, y0 // f, min(lv.width, -(-x1 // f)), min(lv.height, -(-y1 // f)))


def test_coarse_round_trip_covers() -> None:
    rng = random.Random(3)
    for size in [(2503, 1901), (27328, 10000), (1024, 1024)]:
        coarse = plan_levels(*size)[0]
        assert coarse.name == "coarse"
        for _ in range(300):
            x0, x1 = sorted(rng.randint(0, coarse.width) for _ in range(2))
            y0, y1 = sorted(rng.randint(0, coarse.height) for _ in range(2))
            b = PixelBox(x0, y0, x1, y1)
            back = coarse.from_level0(coarse.to_level0(b))
            # never loses pixels, grows by at most one level pixel per side
            assert back.x0 <= b.x0 and back.y0 <= b.y0 and back.x1 >= b.x1 and back.y1 >= b.y1
            assert b.x0 - back.x0 <= 1 and b.y0 - back.y0 <= 1 and back.x1 - b.x1 <= 1 and back.y1 - b.y1 <= 1


def _brute_force_cover(lv: Level, box: PixelBox) -> list[tuple[int, int]]:
    return [
        (r, c)
        for r in range(lv.rows)
        for c in range(lv.cols)
        if lv.tile_box(r, c).intersects(box) and box.area > 0
    ]


@pytest.mark.parametrize("size", [(2503, 1901), (8000, 6000), (1024, 1024), (27328, 1024)])
def test_tiles_covering_matches_brute_force(size: tuple[int, int]) -> None:
    rng = random.Random(11)
    w, h = size
    levels = plan_levels(w, h)
    boxes = [
        PixelBox(0, 0, w, h),
        PixelBox(0, 0, 1, 1),
        PixelBox(w - 1, h - 1, w, h),
        PixelBox(335, 335, 337, 337),
        PixelBox(336, 336, 672, 672),
        PixelBox(-500, -500, 10, 10),  # partly outside
        PixelBox(w + 5, 0, w + 50, 10),  # fully outside
    ]
    while len(boxes) < 150:
        x0, x1 = sorted(rng.randint(-50, w + 50) for _ in range(2))
        y0, y1 = sorted(rng.randint(-50, h + 50) for _ in range(2))
        if x0 < x1 and y0 < y1:  # empty query boxes: see test_tiles_covering_empty_box
            boxes.append(PixelBox(x0, y0, x1, y1))
    for lv in [*levels, plan_thumbnail(w, h)]:
        for b in boxes:
            got = lv.tiles_covering(b)
            assert got == _brute_force_cover(lv, b), (lv.name, b)


@pytest.mark.parametrize("size", [(2503, 1901), (1024, 1024)])
def test_tiles_covering_empty_box(size: tuple[int, int]) -> None:
    """A zero-width or zero-height level-0 box covers no pixel, so no tile, on every level."""
    w, h = size
    empties = [PixelBox(10, 10, 10, 500), PixelBox(10, 10, 500, 10), PixelBox(1001, 3, 1001, 3)]
    for lv in [*plan_levels(w, h), plan_thumbnail(w, h)]:
        for b in empties:
            assert lv.tiles_covering(b) == [], (lv.name, b)


def test_tiles_covering_known_answer() -> None:
    native = plan_levels(2503, 1901)[-1]
    assert native.tiles_covering(PixelBox(300, 300, 700, 400)) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    assert native.tiles_covering(PixelBox(336, 0, 672, 336)) == [(0, 1)]
    assert native.tiles_covering(PixelBox(2500, 1900, 9999, 9999)) == [(5, 7)]
    assert native.tiles_covering(PixelBox(3000, 0, 4000, 10)) == []


# ------------------------------------------------------------------------------------------ PixelBox


def test_pixelbox_basics() -> None:
    b = PixelBox(10, 20, 30, 60)
    assert (b.width, b.height, b.area) == (20, 40, 800)
    assert b.as_list() == [10, 20, 30, 60]
    assert PixelBox(5, 5, 5, 5).area == 0  # empty boxes are allowed
    for bad in [(10, 0, 9, 5), (0, 10, 5, 9)]:
        with pytest.raises(ValueError):
            PixelBox(*bad)
    assert b.clip(25, 50) == PixelBox(10, 20, 25, 50)
    assert PixelBox(-5, -5, 5, 5).clip(100, 100) == PixelBox(0, 0, 5, 5)
    assert PixelBox(200, 200, 300, 300).clip(100, 100).area == 0
    assert b.intersects(PixelBox(29, 59, 40, 70))
    assert not b.intersects(PixelBox(30, 20, 40, 60))  # touching edges do not intersect (x1 exclusive)
    assert not b.intersects(PixelBox(10, 60, 30, 70))
    with pytest.raises(AttributeError):
        b.x0 = 3  # type: ignore[misc]  # frozen
    assert sorted([PixelBox(1, 0, 2, 2), PixelBox(0, 5, 1, 6)])[0] == PixelBox(0, 5, 1, 6)


def test_empty_pixelbox_intersects_nothing() -> None:
    """Boxes are half-open, so a zero-width box is the empty set and cannot intersect anything."""
    b = PixelBox(10, 20, 30, 60)
    assert not PixelBox(15, 25, 15, 50).intersects(b)
    assert not b.intersects(PixelBox(15, 25, 15, 50))
    assert not PixelBox(15, 25, 20, 25).intersects(b)


def test_describe() -> None:
    levels = plan_levels(2503, 1901)
    assert levels[0].describe() == {
        "index": 0,
        "name": "coarse",
        "width": 1008,
        "height": 766,
        "factor": round(2503 / 1008, 6),
        "grid": [3, 3],
        "tiles": 9,
    }
    assert levels[-1].describe()["factor"] == 1.0
