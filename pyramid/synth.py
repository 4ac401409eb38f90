"""Synthetic, optionally georeferenced remote-sensing scene for demos, tests and benchmarks.

The scene is a tiled RGB GeoTIFF that looks roughly like aerial imagery (water, vegetation,
fields and urban land cover, a road grid, sensor noise) with small *planted objects*: filled
rectangles of a saturated colour whose exact pixel boxes are recorded in a JSON sidecar, so
that questions such as "what colour is the ship?" have a known answer.

The image is produced one 512-row block row at a time (a 27,328² scene is 2.2 GB raw), and
every pixel is a pure function of ``seed`` and its position, so the content does not depend
on how the rows are chunked.
"""

from __future__ import annotations

import json
import operator
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.windows import Window

__all__ = ["PlantedObject", "SceneInfo", "load_scene_info", "synthesize_scene"]

_BLOCK = 512  # GeoTIFF tile size; also the unit of rendering
_CLASS_CELL = 128  # land-cover grid spacing in px (powers of two: see _linear_rows)
_CLASS_PRE = 4  # land cover: exact bicubic to 32-px knots, then bilinear (smooth, row-local)
_COARSE = 8  # the coarse land-cover octave has cells of _COARSE * _CLASS_CELL px
_TEX_CELL = 8  # texture grid spacing in px
_GAP = 4  # minimum free pixels between planted objects (keeps them apart after JPEG)
_NOISE = 4  # sensor noise (luminance) is uniform in [-_NOISE, _NOISE - 1]
_LAND_LEVELS = 254  # land-cover levels 0..253 of the colour table; 254, 255 are roads

# Land cover, ordered along the low-frequency field so that neighbours in value are plausible
# neighbours on the ground: (share of the area, dark RGB, light RGB, texture amplitude, tint).
_LAND_COVER: tuple[tuple[float, tuple[int, ...], tuple[int, ...], float, tuple[float, ...]], ...] = (
    (0.12, (22, 48, 72), (48, 86, 108), 3.0, (1.0, 1.0, 1.0)),  # water
    (0.33, (38, 70, 34), (84, 112, 58), 20.0, (0.8, 1.0, 0.6)),  # vegetation
    (0.35, (138, 124, 86), (196, 176, 126), 10.0, (1.0, 1.0, 1.0)),  # fields
    (0.20, (104, 104, 104), (166, 162, 156), 24.0, (1.0, 1.0, 1.0)),  # urban
)
_ROAD_RGB = ((92, 92, 94), (150, 148, 144))  # asphalt, concrete

# Saturated colours that stand out from every land-cover class.
_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "white": (248, 248, 248),
    "blue": (30, 70, 235),
    "yellow": (245, 215, 30),
    "orange": (250, 130, 20),
    "purple": (150, 40, 200),
    "black": (12, 12, 12),
}
# category -> (short side range, long side range), inclusive, px
_CATEGORIES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "car": ((8, 12), (14, 22)),
    "ship": ((10, 18), (24, 40)),
    "storage_tank": ((12, 30), (12, 30)),
    "airplane": ((24, 40), (24, 40)),
    "building": ((14, 32), (18, 40)),
}


@dataclass(frozen=True)
class PlantedObject:
    """A filled rectangle of a single colour planted in the scene."""

    id: int
    category: str
    color: str
    pixel_box: tuple[int, int, int, int]  # x0, y0, x1, y1 level-0 pixels, x1/y1 exclusive
    map_box: tuple[float, float, float, float] | None  # minx, miny, maxx, maxy (scene CRS)


@dataclass(frozen=True)
class SceneInfo:
    """What :func:`synthesize_scene` wrote; also stored in the JSON sidecar."""

    path: Path
    sidecar_path: Path
    width: int
    height: int
    crs: str | None
    transform: tuple[float, float, float, float, float, float]  # rasterio/affine a..f order
    seed: int
    objects: tuple[PlantedObject, ...]


def _cubic(a: np.ndarray, factor: int, start: int, stop: int, axis: int) -> np.ndarray:
    """Samples ``[start, stop)`` of ``a`` upsampled ``factor`` times along ``axis`` (float32).

    Same kernel (A = -0.75), pixel-centre alignment and edge clamping as cv2's INTER_CUBIC, but
    every output is the same fixed 4-term sum whatever slice is asked for; cv2's own cubic
    resize is not row-local (its results differ by 1 LSB at the edges of the requested rows).
    """
    pos = (np.arange(start, stop) + 0.5) / factor - 0.5
    i = np.floor(pos).astype(np.intp)
    t, u = pos - i, 1.0 - (pos - i)
    k = -0.75  # cv2's kernel parameter
    w0 = ((k * (t + 1) - 5 * k) * (t + 1) + 8 * k) * (t + 1) - 4 * k
    w1 = ((k + 2) * t - (k + 3)) * t * t + 1
    w2 = ((k + 2) * u - (k + 3)) * u * u + 1
    shape = [1] * a.ndim
    shape[axis] = -1
    out = np.zeros([*a.shape[:axis], stop - start, *a.shape[axis + 1 :]], dtype=np.float32)
    for j, w in enumerate((w0, w1, w2, 1.0 - w0 - w1 - w2)):
        taps = np.take(a, np.clip(i - 1 + j, 0, a.shape[axis] - 1), axis=axis)
        out += taps * w.astype(np.float32).reshape(shape)
    return out


def _linear_rows(grid: np.ndarray, cell: int, y0: int, y1: int, width: int) -> np.ndarray:
    """Rows ``[y0, y1)`` of integer ``grid`` upsampled ``cell`` times (bilinear), cropped to ``width``.

    cv2's INTER_LINEAR on 8/16-bit images is bit-exact fixed point and row-local, and with a
    power-of-two ``cell`` the pixel-centre mapping of a slice of grid rows (with a halo) is the
    whole grid's, so any chunking yields exactly the rows of one whole-grid resize.
    """
    g0 = max(y0 // cell - 2, 0)
    g1 = min(-(-y1 // cell) + 2, grid.shape[0])
    sub = grid[g0:g1]
    out = cv2.resize(sub, (sub.shape[1] * cell, sub.shape[0] * cell), interpolation=cv2.INTER_LINEAR)
    return out[y0 - g0 * cell : y1 - g0 * cell, :width]  # a view; callers work on it in place


def _octaves(rng: np.random.Generator, shape: tuple[int, int], factor: int, w: float) -> np.ndarray:
    """Random grid of ``shape`` plus a ``factor``-times coarser random grid upsampled onto it,
    stretched to [0, 1] (float32)."""
    ch, cw = -(-shape[0] // factor) + 1, -(-shape[1] // factor) + 1
    coarse = rng.random((ch, cw), dtype=np.float32)
    coarse = cv2.resize(coarse, (cw * factor, ch * factor), interpolation=cv2.INTER_CUBIC)
    # In place: for a 27k-px scene the texture grid alone is 47 MB of float32.
    grid = rng.random(shape, dtype=np.float32)
    grid *= (1.0 - w) / w
    grid += coarse[: shape[0], : shape[1]]
    del coarse
    grid -= grid.min()
    grid *= 1.0 / max(float(grid.max()), 1e-6)
    return grid


class _Renderer:
    """Everything needed to render any block row; all randomness is drawn up front from
    ``seed`` except the per-block-row noise, which is seeded by ``(seed, row index)``.

    A pixel is one gather from a 65,536-entry RGBX table indexed by a uint16 whose high byte is
    the land-cover level (or a road) and whose low byte is 5 bits of texture + 3 bits of noise,
    so the per-pixel work is two resizes, a few bit operations and the gather.
    """

    def __init__(
        self,
        width: int,
        height: int,
        seed: int,
        objects: tuple[PlantedObject, ...],
        shares: tuple[float, ...] | None = None,
    ):
        self.width, self.height, self.seed = width, height, seed
        # Land-cover field: a coarse octave (lakes, towns) plus detail at _CLASS_CELL, in
        # table levels x 256 (the fraction keeps the interpolation smooth); levels above
        # _LAND_LEVELS - 1 are reserved for roads.
        shape = (-(-height // _CLASS_CELL) + 1, -(-width // _CLASS_CELL) + 1)
        cover = _octaves(np.random.default_rng([seed, 1]), shape, _COARSE, 0.7)
        self.cover = cover * np.float32((_LAND_LEVELS - 1) * 256)
        # Texture (canopy, roofs, furrows) at _TEX_CELL plus a 4x coarser octave; 1 byte/cell.
        shape = (-(-height // _TEX_CELL) + 1, -(-width // _TEX_CELL) + 1)
        texture = _octaves(np.random.default_rng([seed, 2]), shape, 4, 0.5)
        self.texture = np.rint(np.multiply(texture, 255, out=texture), out=texture).astype(np.uint8)
        del texture
        self.table = _colour_table(cover * (_LAND_LEVELS - 1), shares)
        self.roads = _roads(np.random.default_rng([seed, 3]), width, height)
        self.boxes = np.array([o.pixel_box for o in objects], dtype=np.int64).reshape(-1, 4)
        rgb = [(*_COLORS[o.color], 255) for o in objects]
        self.rgbx = np.array(rgb, dtype=np.uint8).reshape(-1, 4)

    def _cover_rows(self, y0: int, y1: int) -> np.ndarray:
        """uint16 land-cover field for rows ``[y0, y1)``: bicubic in y, bicubic to 32-px knots in
        x, then cv2 bilinear (cheap per pixel); clipping before the bilinear step also keeps
        the cubic overshoot out of the road levels."""
        rows = _cubic(self.cover, _CLASS_CELL, y0, y1, axis=0)
        knots = _cubic(rows, _CLASS_PRE, 0, rows.shape[1] * _CLASS_PRE, axis=1)
        knots = np.rint(np.clip(knots, 0, (_LAND_LEVELS - 1) * 256 + 255, out=knots), out=knots)
        knots16 = knots.astype(np.uint16)
        size = (knots16.shape[1] * (_CLASS_CELL // _CLASS_PRE), y1 - y0)  # x only: rows stay put
        return cv2.resize(knots16, size, interpolation=cv2.INTER_LINEAR)[:, : self.width]

    def render(self, row: int) -> np.ndarray:
        """Block row ``row`` as a ``(rows, width, 4)`` RGBX uint8 array (pixel interleaved)."""
        y0, y1, w = row * _BLOCK, min((row + 1) * _BLOCK, self.height), self.width
        index = self._cover_rows(y0, y1)
        np.bitwise_and(index, 0xFF00, out=index)
        low = _linear_rows(self.texture, _TEX_CELL, y0, y1, w)
        np.bitwise_and(low, 0xF8, out=low)
        noise = np.random.default_rng([self.seed, 4, row]).integers(0, 256, low.shape, dtype=np.uint8)
        np.bitwise_and(noise, 7, out=noise)
        np.bitwise_or(low, noise, out=low)
        np.bitwise_or(index, low, out=index)
        for x0, x1, level in self.roads[0]:
            band = index[:, x0:x1]
            np.bitwise_or(np.bitwise_and(band, 0xFF, out=band), level << 8, out=band)
        for r0, r1, level in self.roads[1]:
            if r0 < y1 and r1 > y0:
                band = index[max(r0, y0) - y0 : min(r1, y1) - y0]
                np.bitwise_or(np.bitwise_and(band, 0xFF, out=band), level << 8, out=band)
        img = np.take(self.table, index).view(np.uint8).reshape(y1 - y0, w, 4)
        hit = (self.boxes[:, 1] < y1) & (self.boxes[:, 3] > y0)
        for (bx0, by0, bx1, by1), rgbx in zip(self.boxes[hit], self.rgbx[hit], strict=True):
            img[max(by0, y0) - y0 : min(by1, y1) - y0, bx0:bx1] = rgbx
        return img


def _colour_table(cover: np.ndarray, shares: tuple[float, ...] | None = None) -> np.ndarray:
    """The packed-RGBX uint32 lookup table, indexed ``level << 8 | texture << 3 | noise``.

    Class thresholds are quantiles of the cover grid (in level units), so every scene shows
    every class in about the planned shares (``shares``: water, vegetation, fields, urban;
    default ``_LAND_COVER``'s); colour ramps from dark to light within a class.
    """
    planned = [c[0] for c in _LAND_COVER] if shares is None else list(shares)
    if len(planned) != len(_LAND_COVER) or min(planned) < 0 or abs(sum(planned) - 1.0) > 1e-6:
        raise ValueError(f"land-cover shares must be {len(_LAND_COVER)} non-negative numbers summing to 1")
    cum = np.cumsum(planned)[:-1]
    cuts = np.concatenate([[0.0], np.quantile(cover, cum), [float(_LAND_LEVELS)]])
    level = np.arange(256, dtype=np.float64)
    tex = (np.arange(32) + 0.5) / 16.0 - 1.0  # [-1, 1]
    noise = np.arange(8) - _NOISE  # [-4, 3]
    base = np.empty((256, 3))
    amp, tint = np.empty(256), np.empty((256, 3))
    for k, (_, dark, light, a, t) in enumerate(_LAND_COVER):
        sel = (level >= cuts[k]) & (level < cuts[k + 1])
        frac = (level[sel] - cuts[k]) / max(cuts[k + 1] - cuts[k], 1.0)
        base[sel] = np.add(dark, frac[:, None] * np.subtract(light, dark))
        amp[sel], tint[sel] = a, t
    for i, rgb in enumerate(_ROAD_RGB):
        base[_LAND_LEVELS + i], amp[_LAND_LEVELS + i], tint[_LAND_LEVELS + i] = rgb, 3.0, 1.0
    rgb = (
        base[:, None, None, :]
        + (amp[:, None] * tint)[:, None, None, :] * tex[None, :, None, None]
        + noise[None, None, :, None]
    )
    table = np.full((256, 32, 8, 4), 255, dtype=np.uint8)
    table[..., :3] = np.clip(np.round(rgb), 0, 255)
    return table.reshape(-1).view(np.uint32)


def _roads(
    rng: np.random.Generator, width: int, height: int
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """Straight vertical and horizontal roads, 3-7 px wide, every 350-1100 m or so:
    (start, stop, table level) for columns and for rows."""

    def lines(extent: int) -> list[tuple[int, int, int]]:
        out, pos = [], int(rng.integers(100, 900))
        while pos < extent:
            thick, kind = int(rng.integers(3, 8)), int(rng.integers(len(_ROAD_RGB)))
            out.append((pos, min(pos + thick, extent), _LAND_LEVELS + kind))
            pos += int(rng.integers(700, 2200))
        return out

    return lines(width), lines(height)


def _place_objects(
    rng: np.random.Generator,
    region: tuple[int, int, int, int],
    n: int,
    required: bool,
) -> list[tuple[str, str, tuple[int, int, int, int]]]:
    """Rejection-sample ``n`` non-overlapping boxes (``_GAP`` px apart) inside ``region``.

    When ``required`` is false (default count) stop quietly once the region is full.
    """
    rx0, ry0, rx1, ry1 = region
    placed = np.empty((n, 4), dtype=np.int64)
    out: list[tuple[str, str, tuple[int, int, int, int]]] = []
    names, colours = list(_CATEGORIES), list(_COLORS)
    for _ in range(n):
        category = names[int(rng.integers(len(names)))]
        colour = colours[int(rng.integers(len(colours)))]
        (s0, s1), (l0, l1) = _CATEGORIES[category]
        short, long_ = int(rng.integers(s0, s1 + 1)), int(rng.integers(l0, l1 + 1))
        bw, bh = (short, long_) if rng.random() < 0.5 else (long_, short)
        bw, bh = min(bw, rx1 - rx0), min(bh, ry1 - ry0)
        for _attempt in range(200):
            x0 = int(rng.integers(rx0, rx1 - bw + 1))
            y0 = int(rng.integers(ry0, ry1 - bh + 1))
            box = (x0, y0, x0 + bw, y0 + bh)
            p = placed[: len(out)]
            clash = (
                (p[:, 0] < box[2] + _GAP)
                & (box[0] < p[:, 2] + _GAP)
                & (p[:, 1] < box[3] + _GAP)
                & (box[1] < p[:, 3] + _GAP)
            )
            if not clash.any():
                placed[len(out)] = box
                out.append((category, colour, box))
                break
        else:
            if required:
                raise ValueError(f"could not place {n} non-overlapping objects in {region}")
            break
    return out


def _map_box(t: Affine, box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    xs, ys = zip(*(t @ (x, y) for x in (box[0], box[2]) for y in (box[1], box[3])), strict=True)
    return (float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)))


def _profile(width: int, height: int, compress: str) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "tiled": True,
        "blockxsize": _BLOCK,
        "blockysize": _BLOCK,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "2",
    }
    if compress == "jpeg":
        profile.update(compress="JPEG", JPEG_QUALITY=90, photometric="YCBCR")
    elif compress == "deflate":
        profile.update(compress="DEFLATE", PREDICTOR=2, photometric="RGB")
    elif compress == "none":
        profile.update(compress="NONE", photometric="RGB")
    else:
        raise ValueError(f"compress must be 'jpeg', 'deflate' or 'none', not {compress!r}")
    return profile


def synthesize_scene(
    out: str | Path,
    size: int | tuple[int, int],
    *,
    seed: int = 0,
    georeferenced: bool = True,
    crs: str = "EPSG:32633",
    pixel_size: float = 0.5,
    origin: tuple[float, float] = (500000.0, 5000000.0),
    n_objects: int | None = None,
    objects_in: tuple[int, int, int, int] | None = None,
    compress: str = "jpeg",
    progress: bool = False,
) -> SceneInfo:
    """Write a synthetic scene to ``out`` (tiled GeoTIFF) plus its JSON sidecar (``.json`` suffix).

    ``size`` is N (square) or (width, height). The transform is north-up with ``pixel_size``
    and upper-left corner ``origin``; with ``georeferenced=False`` neither CRS nor transform is
    written. ``n_objects`` defaults to about one per megapixel of the placement region
    (``objects_in``, an x0, y0, x1, y1 pixel box, or the whole image), clamped to [3, 2000].
    """
    width, height = (size, size) if isinstance(size, int | np.integer) else size
    width, height = operator.index(width), operator.index(height)
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be > 0, got {pixel_size}")
    path = Path(out).resolve()
    sidecar = path.with_suffix(".json")
    if sidecar == path:
        raise ValueError(f"{out}: the image must not have a .json suffix")
    profile = _profile(width, height, compress)

    region = objects_in if objects_in is not None else (0, 0, width, height)
    rx0, ry0, rx1, ry1 = (int(v) for v in region)
    if not (0 <= rx0 < rx1 <= width and 0 <= ry0 < ry1 <= height):
        raise ValueError(f"objects_in {region} is not a box inside the {width}x{height} image")
    required = n_objects is not None
    fits = min(rx1 - rx0, ry1 - ry0) >= 8  # the smallest object side
    if n_objects is None:  # as many as fit, up to the default
        n_objects = min(max(round((rx1 - rx0) * (ry1 - ry0) / 1e6), 3), 2000) if fits else 0
    elif n_objects < 0:
        raise ValueError(f"n_objects must be >= 0, got {n_objects}")
    elif n_objects and not fits:
        raise ValueError(f"{region} is too small for an object (8 px minimum)")
    placed = _place_objects(np.random.default_rng([seed, 5]), (rx0, ry0, rx1, ry1), n_objects, required)

    transform = Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1])
    crs_name: str | None = None
    if georeferenced:
        crs_obj = CRS.from_user_input(crs)
        crs_name = crs_obj.to_string()
        profile.update(crs=crs_obj, transform=transform)
    else:
        transform = Affine.identity()
    objects = tuple(
        PlantedObject(i, cat, col, box, _map_box(transform, box) if georeferenced else None)
        for i, (cat, col, box) in enumerate(placed)
    )

    renderer = _Renderer(width, height, seed, objects)
    sidecar.unlink(missing_ok=True)  # a sidecar only ever describes a complete image
    _write(path, profile, renderer, progress)
    info = SceneInfo(
        path=path,
        sidecar_path=sidecar,
        width=width,
        height=height,
        crs=crs_name,
        transform=(transform.a, transform.b, transform.c, transform.d, transform.e, transform.f),
        seed=seed,
        objects=objects,
    )
    sidecar.write_text(_dumps(_to_json(info)))
    return info


def _write(path: Path, profile: dict[str, Any], renderer: _Renderer, progress: bool) -> None:
    """Stream block rows into the GeoTIFF; the next row is rendered in a worker thread while
    GDAL encodes the current one (numpy, cv2 and GDAL all release the GIL)."""
    n_rows = -(-renderer.height // _BLOCK)
    with ExitStack() as stack:
        # A small block cache bounds memory: the default (5% of RAM) could hold GBs of tiles.
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=64 * 2**20))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # GDAL's, for georeferenced=False
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        advance: Callable[[], None] = lambda: None  # noqa: E731
        if progress:
            from rich.console import Console
            from rich.progress import Progress

            bar = stack.enter_context(Progress(console=Console(stderr=True)))
            advance = partial(bar.advance, bar.add_task(f"synthesizing {path.name}", total=n_rows))
        try:
            with rasterio.open(path, "w", **profile) as dst:
                pending = pool.submit(renderer.render, 0)
                for row in range(n_rows):
                    img = pending.result()
                    if row + 1 < n_rows:
                        pending = pool.submit(renderer.render, row + 1)
                    # Strided (3, rows, width) view of RGBX: rasterio hands the strides to GDAL.
                    window = Window(0, row * _BLOCK, img.shape[1], img.shape[0])
                    dst.write(img.transpose(2, 0, 1)[:3], window=window)
                    del img
                    advance()
        except BaseException:
            path.unlink(missing_ok=True)  # never leave a truncated scene behind
            raise


def _to_json(info: SceneInfo) -> dict[str, Any]:
    return {
        "format": "lrs-vqa synthetic scene",
        "version": 1,
        "path": info.path.name,  # relative to the sidecar, so the pair can be moved together
        "sidecar_path": info.sidecar_path.name,
        "width": info.width,
        "height": info.height,
        "crs": info.crs,
        "transform": list(info.transform),
        "seed": info.seed,
        "objects": [
            {
                "id": o.id,
                "category": o.category,
                "color": o.color,
                "pixel_box": list(o.pixel_box),
                "map_box": None if o.map_box is None else list(o.map_box),
            }
            for o in info.objects
        ],
    }


def _dumps(d: dict[str, Any]) -> str:
    """JSON with one line per field and per object: readable, and diff-friendly."""
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items() if k != "objects"]
    objects = "".join(f"\n  {json.dumps(o)}," for o in d["objects"]).rstrip(",")
    lines.append(f' "objects": [{objects}\n ]' if objects else ' "objects": []')
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _ints4(v: Any) -> tuple[int, int, int, int]:
    a, b, c, d = (int(x) for x in v)
    return (a, b, c, d)


def _floats4(v: Any) -> tuple[float, float, float, float]:
    a, b, c, d = (float(x) for x in v)
    return (a, b, c, d)


def load_scene_info(sidecar: str | Path) -> SceneInfo:
    """Read a sidecar written by :func:`synthesize_scene` back into a :class:`SceneInfo`."""
    sidecar = Path(sidecar).resolve()
    try:
        d = json.loads(sidecar.read_text())
        objects = tuple(
            PlantedObject(
                id=int(o["id"]),
                category=str(o["category"]),
                color=str(o["color"]),
                pixel_box=_ints4(o["pixel_box"]),
                map_box=None if o["map_box"] is None else _floats4(o["map_box"]),
            )
            for o in d["objects"]
        )
        a, b, c, e, f, g = (float(x) for x in d["transform"])
        return SceneInfo(
            path=sidecar.parent / str(d["path"]),
            sidecar_path=sidecar,
            width=int(d["width"]),
            height=int(d["height"]),
            crs=None if d["crs"] is None else str(d["crs"]),
            transform=(a, b, c, e, f, g),
            seed=int(d["seed"]),
            objects=objects,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{sidecar}: not a synthetic-scene sidecar ({err!r})") from err
