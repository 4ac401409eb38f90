"""The deep-zoom tile endpoint: Deep Zoom (DZI) tiles of the images a browser session asked about, read from
the Dynamic Image Pyramid and served by the demo's own FastAPI app.

An image is reachable only through an unguessable token issued to the session that asked about it (an
upload, a bundled example, a file under ``--allow-dir``): no URL names a file, so no URL can reach one.
Anything wrong in a request (unknown token, level or index out of range, a malformed name) is a bare 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI, Response
from fastapi.staticfiles import StaticFiles

from pyramid.dip import DynamicImagePyramid, PyramidOptions
from pyramid.levels import Level, PixelBox

log = logging.getLogger("lrs_vqa.app.tiles")

STATIC_DIR = Path(__file__).resolve().parent / "static"
PREFIX = "lrs"  # every URL of the viewer starts with it (relative to the page, so a proxy prefix works)
TILE_SIZE = 256
JPEG_QUALITY = 85
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TILE_NAME = re.compile(r"(\d{1,7})_(\d{1,7})\.jpg")
# Tiles of a token never change: the browser may keep them. Overlays change with each answer.
_IMMUTABLE = {"Cache-Control": "private, max-age=86400, immutable"}
_REVALIDATE = {"Cache-Control": "private, no-cache"}
_NOT_FOUND = Response(status_code=404, content=b"not found", media_type="text/plain")


@dataclass(frozen=True)
class DeepZoomGrid:
    """Deep Zoom's level plan over a ``width × height`` image: level ``max_level`` is native, each level
    below halves it, level 0 is one pixel. Tile ``(col, row)`` of a level covers a level-0 box."""

    width: int
    height: int
    tile_size: int = TILE_SIZE

    @property
    def max_level(self) -> int:
        return max(0, math.ceil(math.log2(max(self.width, self.height))))

    def factor(self, level: int) -> int:
        """Level-0 pixels per pixel of ``level``."""
        return 2 ** (self.max_level - level)

    def level0_box(self, level: int, col: int, row: int) -> PixelBox | None:
        """The level-0 box of a tile, or None when the level or index is out of range."""
        if not 0 <= level <= self.max_level or col < 0 or row < 0:
            return None
        span = self.tile_size * self.factor(level)
        x0, y0 = col * span, row * span
        if x0 >= self.width or y0 >= self.height:
            return None
        return PixelBox(x0, y0, min(self.width, x0 + span), min(self.height, y0 + span))

    def descriptor(self) -> str:
        """The ``.dzi`` XML that OpenSeadragon (and every Deep Zoom client) reads."""
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="jpg" Overlap="0" '
            f'TileSize="{self.tile_size}"><Size Width="{self.width}" Height="{self.height}"/></Image>\n'
        )


def source_level(dip: DynamicImagePyramid, box: PixelBox, factor: int) -> Level:
    """The coarsest pyramid level with at least the resolution a Deep Zoom level of ``factor`` needs (and
    a non-empty window over ``box``: power-of-two levels drop an edge sliver narrower than their factor)."""
    for level in dip.levels:  # coarse → native
        if max(level.factor_x, level.factor_y) <= factor + 1e-9 and level.from_level0(box).area > 0:
            return level
    return dip.levels[-1]


def read_tile(dip: DynamicImagePyramid, grid: DeepZoomGrid, level: int, col: int, row: int) -> np.ndarray:
    """uint8 RGB pixels of a Deep Zoom tile: a power-of-two pyramid level as stored, any other level
    area-averaged from the next finer pyramid level. Raises IndexError when out of range."""
    box = grid.level0_box(level, col, row)
    if box is None:
        raise IndexError(f"no tile {level}/{col}_{row}")
    factor = grid.factor(level)
    src = source_level(dip, box, factor)
    pixels, _ = dip.read_level_region(src, src.from_level0(box))
    if src.factor_x == src.factor_y == factor:
        return pixels  # exact: the pyramid's own pixels (an edge tile may be a pixel narrower)
    size = (max(1, math.ceil(box.width / factor)), max(1, math.ceil(box.height / factor)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def encode_jpeg(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    bgr = np.ascontiguousarray(pixels[..., ::-1])
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


@dataclass
class _Slot:
    dip: DynamicImagePyramid
    users: int = 0


class ViewerPyramids:
    """Open pyramids of the viewed images, at most ``max_open`` idle ones kept (least recently used
    closed first). Each gets ``tile_cache_bytes / max_open`` of block cache, so all of them together stay
    within the budget; a pyramid in use is never closed under its reader."""

    def __init__(self, tile_cache_bytes: int, max_open: int) -> None:
        if max_open < 1:
            raise ValueError("max_open must be at least 1")
        self.options = PyramidOptions(tile_cache_bytes=max(1, tile_cache_bytes // max_open))
        self.max_open = max_open
        self._slots: OrderedDict[Path | str, _Slot] = OrderedDict()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lend(self, image: Path | str) -> Iterator[DynamicImagePyramid]:
        with self._lock:
            slot = self._slots.get(image)
            if slot is None:
                slot = self._slots[image] = _Slot(DynamicImagePyramid.open(image, self.options))
            slot.users += 1
            self._slots.move_to_end(image)
            self._evict()
        try:
            yield slot.dip
        finally:
            with self._lock:
                slot.users -= 1
                self._evict()

    def _evict(self) -> None:
        idle = [key for key, s in self._slots.items() if s.users == 0]  # least recently used first
        for key in idle[: max(0, len(self._slots) - self.max_open)]:
            self._slots.pop(key).dip.close()

    @property
    def cache_bytes(self) -> int:
        with self._lock:
            return sum(s.dip.block_cache.current_bytes for s in self._slots.values())

    def close(self) -> None:
        with self._lock:
            for slot in self._slots.values():
                slot.dip.close()
            self._slots.clear()


@dataclass(frozen=True)
class ViewEntry:
    """What one token opens: the image, its grid, and the latest answer's overlay and heatmap."""

    image: Path | str
    grid: DeepZoomGrid
    overlay: dict[str, Any] = field(default_factory=dict)
    heatmap: Path | None = None


class TileService:
    """Tokens → images, and the tiles, overlays and heatmaps behind them. Reads run on a small pool of
    threads of its own: however many requests wait, only ``workers`` tiles are decoded at a time."""

    def __init__(self, tile_cache_bytes: int, max_open: int = 4, workers: int = 4, max_tokens: int = 256):
        self.pyramids = ViewerPyramids(tile_cache_bytes, max_open)
        self.max_tokens = max_tokens
        self._entries: OrderedDict[str, ViewEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="lrs-tiles")

    # -- tokens ---------------------------------------------------------------------------------------
    def register(self, image: Path | str, width: int, height: int) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._entries[token] = ViewEntry(image, DeepZoomGrid(width, height))
            while len(self._entries) > self.max_tokens:
                self._entries.popitem(last=False)
        return token

    def attach(self, token: str, overlay: dict[str, Any], heatmap: Path | None) -> None:
        with self._lock:
            entry = self._entries.get(token)
            if entry is not None:
                self._entries[token] = replace(entry, overlay=overlay, heatmap=heatmap)

    def entry(self, token: str) -> ViewEntry | None:
        if not _TOKEN.fullmatch(token):
            return None
        with self._lock:
            return self._entries.get(token)

    # -- tiles ------------------------------------------------------------------------------------------
    def tile_jpeg(self, token: str, level: int, col: int, row: int) -> bytes | None:
        """A tile's JPEG, or None when there is no such tile (or the image cannot be read any more)."""
        entry = self.entry(token)
        if entry is None or entry.grid.level0_box(level, col, row) is None:
            return None
        try:
            with self.pyramids.lend(entry.image) as dip:
                return encode_jpeg(read_tile(dip, entry.grid, level, col, row))
        except Exception:  # a deleted upload, a corrupt block: the browser gets a bare 404, the log the why
            log.warning("tile %s/%s_%s of %s unavailable", level, col, row, entry.image, exc_info=True)
            return None

    async def tile_response(self, token: str, level: str, name: str) -> Response:
        m = _TILE_NAME.fullmatch(name)
        if m is None or not level.isdigit() or len(level) > 3:
            return _NOT_FOUND
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(
            self._executor, self.tile_jpeg, token, int(level), int(m[1]), int(m[2])
        )
        if data is None:
            return _NOT_FOUND
        return Response(content=data, media_type="image/jpeg", headers=_IMMUTABLE)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.pyramids.close()

    # -- routes -------------------------------------------------------------------------------------------
    def mount(self, app: FastAPI) -> None:
        """The viewer's routes and static files on the demo's own app (same origin, same process)."""
        app.mount(f"/{PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="lrs-static")

        @app.get(f"/{PREFIX}/dzi/{{token}}.dzi", include_in_schema=False)
        def descriptor(token: str) -> Response:
            entry = self.entry(token)
            if entry is None:
                return _NOT_FOUND
            return Response(entry.grid.descriptor(), media_type="application/xml", headers=_IMMUTABLE)

        @app.get(f"/{PREFIX}/dzi/{{token}}_files/{{level}}/{{name}}", include_in_schema=False)
        async def tile(token: str, level: str, name: str) -> Response:
            return await self.tile_response(token, level, name)

        @app.get(f"/{PREFIX}/view/{{token}}/overlay.json", include_in_schema=False)
        def overlay(token: str) -> Response:
            entry = self.entry(token)
            if entry is None:
                return _NOT_FOUND
            return Response(json.dumps(entry.overlay), media_type="application/json", headers=_REVALIDATE)

        @app.get(f"/{PREFIX}/view/{{token}}/heatmap.png", include_in_schema=False)
        def heatmap(token: str) -> Response:
            entry = self.entry(token)
            if entry is None or entry.heatmap is None or not entry.heatmap.is_file():
                return _NOT_FOUND
            return Response(entry.heatmap.read_bytes(), media_type="image/png", headers=_REVALIDATE)
