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
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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

BLOCK = 512  # GeoTIFF tile size; also the unit of rendering
_CLASS_CELL = 128  # land-cover grid spacing in px (a power of two: see _field_rows)
_COARSE = 8  # the coarse land-cover octave has cells of _COARSE * _CLASS_CELL px
_TEX_CELL = 8  # texture grid spacing in px
_GAP = 4  # minimum free pixels between planted objects (keeps them apart after JPEG)
_NOISE = 4  # sensor noise is uniform in [-_NOISE, _NOISE - 1]

# Land cover, ordered along the low-frequency field so that neighbours in value are plausible
# neighbours on the ground: (share of the area, dark RGB, light RGB, texture amplitude, tint).
_LAND_COVER: tuple[tuple[float, tuple[int, ...], tuple[int, ...], float, tuple[float, ...]], ...]
_LAND_COVER = (
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


def _field_rows(grid: np.ndarray, cell: int, y0: int, y1: int, width: int) -> np.ndarray:
    """Rows ``[y0, y1)`` of ``grid`` upsampled ``cell`` times (bicubic), cropped to ``width``.

    Only the grid rows around the slice are resized, with a halo wider than the 4-tap kernel;
    because ``cell`` is a power of two, cv2's pixel-centre mapping is the same for every
    slice, so any chunking yields exactly the rows of one whole-grid resize.
    """
    g0 = max(y0 // cell - 3, 0)
    g1 = min(-(-y1 // cell) + 3, grid.shape[0])
    sub = grid[g0:g1]
    rows = cv2.resize(sub, (sub.shape[1], sub.shape[0] * cell), interpolation=cv2.INTER_CUBIC)
    rows = rows[y0 - g0 * cell : y1 - g0 * cell]
    out = cv2.resize(rows, (rows.shape[1] * cell, y1 - y0), interpolation=cv2.INTER_CUBIC)
    out = out[:, :width]
    if out.dtype != np.uint8:  # float grids: clip the cubic overshoot, then quantise once
        out = np.clip(out, 0, 255, out=out).astype(np.uint8)
    return out


def _stretch(a: np.ndarray) -> np.ndarray:
    """Scale to [0, 255] (float32)."""
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) * np.float32(255.0 / max(hi - lo, 1e-6))).astype(np.float32)


def _octaves(rng: np.random.Generator, shape: tuple[int, int], factor: int, w: float) -> np.ndarray:
    """Random grid of ``shape`` plus a ``factor``-times coarser random grid upsampled onto it."""
    ch, cw = -(-shape[0] // factor) + 1, -(-shape[1] // factor) + 1
    coarse = rng.random((ch, cw), dtype=np.float32)
    coarse = cv2.resize(coarse, (cw * factor, ch * factor), interpolation=cv2.INTER_CUBIC)
    fine = rng.random(shape, dtype=np.float32)
    return _stretch(w * coarse[: shape[0], : shape[1]] + (1.0 - w) * fine)


class _Renderer:
    """Everything needed to render any block row; all randomness is drawn up front from
    ``seed`` except the per-block-row noise, which is seeded by ``(seed, row index)``."""

    def __init__(self, width: int, height: int, seed: int, objects: tuple[PlantedObject, ...]):
        self.width, self.height, self.seed = width, height, seed
        rng = np.random.default_rng([seed, 1])
        # Land-cover field: a coarse octave (lakes, towns) plus detail at _CLASS_CELL.
        shape = (-(-height // _CLASS_CELL) + 1, -(-width // _CLASS_CELL) + 1)
        self.cover = _octaves(rng, shape, _COARSE, 0.7)
        # Texture (canopy, roofs, furrows) at _TEX_CELL plus a 4x coarser octave; 1 byte/cell.
        shape = (-(-height // _TEX_CELL) + 1, -(-width // _TEX_CELL) + 1)
        self.texture = _octaves(np.random.default_rng([seed, 2]), shape, 4, 0.5).astype(np.uint8)
        self.table = self._colour_table(self.cover)
        self.roads = _roads(np.random.default_rng([seed, 3]), width, height)
        self.boxes = np.array([o.pixel_box for o in objects], dtype=np.int64).reshape(-1, 4)
        rgb = [(*_COLORS[o.color], 255) for o in objects]
        self.rgbx = np.array(rgb, dtype=np.uint8).reshape(-1, 4)

    @staticmethod
    def _colour_table(cover: np.ndarray) -> np.ndarray:
        """RGBX lookup (packed uint32) indexed by ``cover << 8 | texture``: one gather per pixel.

        Class thresholds are quantiles of the cover grid, so every scene has every class in
        about the planned shares. The noise bias is folded in here so that adding unsigned
        noise in [0, 2*_NOISE) gives zero-mean noise.
        """
        shares = np.cumsum([c[0] for c in _LAND_COVER])[:-1]
        cuts = np.concatenate([[0.0], np.quantile(cover, shares), [256.0]])
        level = np.arange(256, dtype=np.float32)
        cls = np.clip(np.searchsorted(cuts, level, side="right") - 1, 0, len(_LAND_COVER) - 1)
        tex = (np.arange(256, dtype=np.float32) - 127.5) / 127.5
        table = np.empty((256, 256, 4), dtype=np.uint8)
        for k, (_, dark, light, amp, tint) in enumerate(_LAND_COVER):
            sel = cls == k
            frac = (level[sel] - cuts[k]) / max(cuts[k + 1] - cuts[k], 1.0)
            base = np.asarray(dark) + frac[:, None] * (np.asarray(light) - np.asarray(dark))
            rgb = base[:, None, :] + tex[None, :, None] * amp * np.asarray(tint)
            table[sel, :, :3] = np.clip(np.round(rgb) - _NOISE, 0, 255)
        table[..., 3] = 255
        return table.reshape(-1).view(np.uint32)

    def render(self, row: int) -> np.ndarray:
        """Block row ``row`` as a ``(rows, width, 4)`` RGBX uint8 array (pixel interleaved)."""
        y0, y1, w = row * BLOCK, min((row + 1) * BLOCK, self.height), self.width
        cover = _field_rows(self.cover, _CLASS_CELL, y0, y1, w)
        texture = _field_rows(self.texture, _TEX_CELL, y0, y1, w)
        # Little-endian (texture, cover) byte pairs are the uint16 index cover << 8 | texture.
        index = cv2.merge([texture, cover]).view(np.uint16)[..., 0]
        img = np.take(self.table, index).view(np.uint8).reshape(y1 - y0, w, 4)
        for x0, x1, rgb in self.roads[0]:
            img[:, x0:x1, :3] = rgb
        for r0, r1, rgb in self.roads[1]:
            if r0 < y1 and r1 > y0:
                img[max(r0, y0) - y0 : min(r1, y1) - y0, :, :3] = rgb
        noise = np.random.default_rng([self.seed, 4, row]).integers(
            0, 256, img.shape, dtype=np.uint8
        )
        np.bitwise_and(noise, 2 * _NOISE - 1, out=noise)
        flat = img.reshape(y1 - y0, -1)
        cv2.add(flat, noise.reshape(flat.shape), dst=flat)  # saturating
        hit = (self.boxes[:, 1] < y1) & (self.boxes[:, 3] > y0)
        for (bx0, by0, bx1, by1), rgbx in zip(self.boxes[hit], self.rgbx[hit], strict=True):
            img[max(by0, y0) - y0 : min(by1, y1) - y0, bx0:bx1] = rgbx
        return img


_Road = tuple[int, int, tuple[int, int, int]]


def _roads(rng: np.random.Generator, width: int, height: int) -> tuple[list[_Road], list[_Road]]:
    """Straight vertical and horizontal roads, a few px wide, every 0.5-2 km or so."""

    def lines(extent: int) -> list[_Road]:
        out, pos = [], int(rng.integers(100, 900))
        while pos < extent:
            thick = int(rng.integers(3, 8))
            rgb = _ROAD_RGB[int(rng.integers(0, 2))]
            out.append((pos, min(pos + thick, extent), tuple(v - _NOISE for v in rgb)))
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
    xs, ys = zip(*(t * (x, y) for x in (box[0], box[2]) for y in (box[1], box[3])), strict=True)
    return (float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)))


def _profile(width: int, height: int, compress: str) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
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
    """Write a synthetic scene to ``out`` (tiled GeoTIFF) and its sidecar ``out.with_suffix('.json')``.

    ``size`` is N (square) or (width, height). The transform is north-up with ``pixel_size``
    and upper-left corner ``origin``; with ``georeferenced=False`` neither CRS nor transform is
    written. ``n_objects`` defaults to about one per megapixel of the placement region
    (``objects_in``, an x0, y0, x1, y1 pixel box, or the whole image), clamped to [3, 2000].
    """
    width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    path = Path(out).resolve()
    sidecar = path.with_suffix(".json")
    if sidecar == path:
        raise ValueError(f"{out}: the image must not have a .json suffix")
    profile = _profile(width, height, compress)

    region = objects_in if objects_in is not None else (0, 0, width, height)
    rx0, ry0, rx1, ry1 = (int(v) for v in region)
    if not (0 <= rx0 < rx1 <= width and 0 <= ry0 < ry1 <= height):
        raise ValueError(f"objects_in {region} is not a box inside the {width}x{height} image")
    if min(rx1 - rx0, ry1 - ry0) < 8:
        raise ValueError(f"objects_in {region} is too small for an object (8 px minimum)")
    required = n_objects is not None
    if n_objects is None:
        n_objects = min(max(round((rx1 - rx0) * (ry1 - ry0) / 1e6), 3), 2000)
    elif n_objects < 0:
        raise ValueError(f"n_objects must be >= 0, got {n_objects}")
    placed = _place_objects(
        np.random.default_rng([seed, 5]), (rx0, ry0, rx1, ry1), n_objects, required
    )

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
    _write(path, profile, renderer, progress)
    info = SceneInfo(
        path=path,
        sidecar_path=sidecar,
        width=width,
        height=height,
        crs=crs_name,
        transform=tuple(float(v) for v in transform[:6]),  # type: ignore[arg-type]
        seed=seed,
        objects=objects,
    )
    sidecar.write_text(json.dumps(_to_json(info), indent=1) + "\n")
    return info


def _write(path: Path, profile: dict[str, Any], renderer: _Renderer, progress: bool) -> None:
    """Stream block rows into the GeoTIFF; the next row is rendered in a worker thread while
    GDAL encodes the current one (numpy, cv2 and GDAL all release the GIL)."""
    n_rows = -(-renderer.height // BLOCK)
    advance: Callable[[], None] = lambda: None  # noqa: E731
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        task = bar.add_task(f"synthesizing {path.name}", total=n_rows)
        advance = lambda: bar.advance(task)  # noqa: E731
    # A small block cache bounds memory: the default (5% of RAM) could hold a gigabyte of tiles.
    with (
        rasterio.Env(GDAL_CACHEMAX=192),
        warnings.catch_warnings(),
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if bar is not None:
            bar.start()
        try:
            with rasterio.open(path, "w", **profile) as dst:
                pending = pool.submit(renderer.render, 0)
                for row in range(n_rows):
                    img = pending.result()
                    if row + 1 < n_rows:
                        pending = pool.submit(renderer.render, row + 1)
                    y0 = row * BLOCK
                    # Strided (3, rows, width) view of RGBX: rasterio hands the strides to GDAL.
                    dst.write(img.transpose(2, 0, 1)[:3], window=Window(0, y0, *img.shape[1::-1]))
                    del img
                    advance()
        finally:
            if bar is not None:
                bar.stop()


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
                pixel_box=tuple(int(v) for v in o["pixel_box"]),  # type: ignore[arg-type]
                map_box=None if o["map_box"] is None else tuple(float(v) for v in o["map_box"]),  # type: ignore[arg-type]
            )
            for o in d["objects"]
        )
        return SceneInfo(
            path=sidecar.parent / d["path"],
            sidecar_path=sidecar,
            width=int(d["width"]),
            height=int(d["height"]),
            crs=d["crs"],
            transform=tuple(float(v) for v in d["transform"]),  # type: ignore[arg-type]
            seed=int(d["seed"]),
            objects=objects,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{sidecar}: not a synthetic-scene sidecar ({e!r})") from e
