"""Region reads from one raster file (or one of its overviews) with per-thread handles and a block cache.

Native-resolution reads are assembled from whole, block-aligned "macro blocks" (a TIFF tile, or a band of
strips for striped files) kept in a byte-bounded LRU, so neighbouring tiles never decode a block twice.
Scaled reads (coarse level, thumbnail) are GDAL average-decimated reads, which use overviews when present.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from pyramid.cache import ByteLRUCache
from pyramid.errors import CorruptRasterError, RasterInputError
from pyramid.levels import PixelBox
from pyramid.remote import RemoteOptions, classify_open_error, locate
from pyramid.source import open_dataset
from pyramid.tiff_direct import DirectTiles, open_direct

# Macro blocks are at least this many pixels on a side so tiny TIFF tiles or 1-row strips are not read
# one GDAL call at a time.
_MIN_MACRO = 256


@dataclass(frozen=True)
class Region:
    """Pixels of one read: ``data`` (h, w, bands) in the source dtype, ``valid`` (h, w) bool or None."""

    data: np.ndarray
    valid: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (self.valid.nbytes if self.valid is not None else 0)


def gdal_options(remote: RemoteOptions | None) -> contextlib.AbstractContextManager[object]:
    """The GDAL options of a remote source around one open or read; nothing for a local file."""
    return rasterio.Env(**remote.gdal_config()) if remote is not None else contextlib.nullcontext()


class DatasetPool:
    """One rasterio handle per thread: GDAL datasets must not be shared across threads.

    ``path`` is a local Path or a GDAL virtual path (str); ``remote`` holds the options for the latter."""

    def __init__(
        self, path: Path | str, overview_level: int | None = None, remote: RemoteOptions | None = None
    ) -> None:
        self.path = path
        self.overview_level = overview_level
        self.remote = remote
        self._local = threading.local()
        self._all: list[rasterio.DatasetReader] = []
        self._lock = threading.Lock()

    def get(self) -> rasterio.DatasetReader:
        src = getattr(self._local, "src", None)
        if src is None:
            kwargs = {} if self.overview_level is None else {"overview_level": self.overview_level}
            with gdal_options(self.remote):
                src = open_dataset(self.path, **kwargs)
            self._local.src = src
            with self._lock:
                self._all.append(src)
        return src

    def close(self) -> None:
        with self._lock:
            for src in self._all:
                src.close()
            self._all.clear()
        self._local = threading.local()


class RegionReader:
    """Reads pixel regions of one raster (level 0 or one overview) for a fixed list of bands.

    ``indexes`` are the 1-based bands to read; ``alpha`` (one of them or None) and ``nodata`` decide
    validity; ``internal_mask`` also consults GDAL's per-dataset mask (e.g. a JPEG COG's mask band).
    ``remote``: the source is a remote GDAL path read with these options (no direct decode).
    """

    def __init__(
        self,
        path: Path | str,
        indexes: list[int],
        *,
        cache: ByteLRUCache,
        overview_level: int | None = None,
        alpha: int | None = None,
        nodata: float | None = None,
        internal_mask: bool = False,
        direct_decode: bool = True,
        label: str = "",
        remote: RemoteOptions | None = None,
    ) -> None:
        self.path = path
        self.remote = remote
        self.indexes = indexes
        self.alpha = alpha
        self.nodata = nodata
        self.cache = cache
        self.label = label or f"{path}#{overview_level}"
        self.pool = DatasetPool(path, overview_level, remote)
        src = self.pool.get()
        self.width, self.height = src.width, src.height
        self.dtype = np.dtype(src.dtypes[0])
        with gdal_options(remote):  # mask flags may look for a sidecar: a request, for a remote file
            self.internal_mask = internal_mask and not any(
                MaskFlags.all_valid in f or MaskFlags.alpha in f or MaskFlags.nodata in f
                for f in src.mask_flag_enums
            )
        block_rows, block_cols = src.block_shapes[0]
        self.macro_rows = block_rows * math.ceil(_MIN_MACRO / block_rows)
        # Strips span the width: a macro block is then a band of whole rows.
        self.macro_cols = (
            self.width if block_cols >= self.width else block_cols * math.ceil(_MIN_MACRO / block_cols)
        )
        self.direct: DirectTiles | None = None
        if direct_decode and remote is None and not self.internal_mask and block_cols < self.width:
            self.direct = open_direct(
                Path(path),
                0 if overview_level is None else overview_level + 1,
                self.width,
                self.height,
                self.dtype,
                src.count,
            )
        self._inflight: dict[Hashable, Future[Region]] = {}
        self._lock = threading.Lock()
        self.blocks_decoded = 0

    # -- validity ---------------------------------------------------------------------------------
    def _validity(self, data: np.ndarray, gdal_mask: np.ndarray | None) -> np.ndarray | None:
        valid: np.ndarray | None = None
        if self.alpha is not None:
            valid = data[..., self.indexes.index(self.alpha)] > 0
        if self.nodata is not None:
            colour = [i for i, b in enumerate(self.indexes) if b != self.alpha]
            bands = data[..., colour]
            if np.isnan(self.nodata):
                nd = np.isnan(bands).all(axis=-1)
            else:
                nd = (bands == np.asarray(self.nodata, dtype=bands.dtype)).all(axis=-1)
            valid = ~nd if valid is None else valid & ~nd
        if gdal_mask is not None:
            valid = gdal_mask if valid is None else valid & gdal_mask
        return valid

    def _fail(self, what: str, exc: Exception) -> RasterInputError:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        if self.remote is not None:  # a network failure or a short read, more often than a bad codec
            return classify_open_error(locate(str(self.path)), f"reading {what}: {first}")
        return CorruptRasterError(self.path, f"pixel data cannot be decoded at {what} ({first})")

    # -- native reads through macro blocks ----------------------------------------------------------
    def _load_block(self, bi: int, bj: int) -> Region:
        x0, y0 = bj * self.macro_cols, bi * self.macro_rows
        w = min(self.macro_cols, self.width - x0)
        h = min(self.macro_rows, self.height - y0)
        window = Window(x0, y0, w, h)
        if self.direct is not None:
            try:
                data = self.direct.read(x0, y0, w, h, [i - 1 for i in self.indexes])
            except Exception as exc:  # a codec error in a damaged tile
                raise self._fail(f"block ({x0}, {y0}, {w}x{h})", exc) from None
            self.blocks_decoded += 1
            return Region(data, self._validity(data, None))
        src = self.pool.get()
        data = np.empty((h, w, len(self.indexes)), self.dtype)
        try:
            with gdal_options(self.remote):
                # Reading into a transposed view writes pixel-interleaved output with no extra copy.
                src.read(self.indexes, window=window, out=data.transpose(2, 0, 1))
                gmask = src.dataset_mask(window=window) > 0 if self.internal_mask else None
        except RasterioError as exc:
            raise self._fail(f"block ({x0}, {y0}, {w}x{h})", exc) from None
        self.blocks_decoded += 1
        return Region(data, self._validity(data, gmask))

    def _block(self, bi: int, bj: int) -> Region:
        key = (self.label, bi, bj)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        with self._lock:
            hit = self.cache.get(key)  # a decode may have finished between the first look and the lock
            if hit is not None:
                return hit
            fut = self._inflight.get(key)
            owner = fut is None
            if owner:
                fut = Future()
                self._inflight[key] = fut
        assert fut is not None
        if not owner:  # another thread is decoding this block: wait instead of decoding it twice
            return fut.result()
        try:
            region = self._load_block(bi, bj)
            self.cache.put(key, region)
            fut.set_result(region)
            return region
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def blocks_for(self, box: PixelBox) -> list[tuple[int, int]]:
        """The macro blocks a ``read(box)`` touches, row-major."""
        box = box.clip(self.width, self.height)
        if box.area == 0:
            return []
        return [
            (bi, bj)
            for bi in range(box.y0 // self.macro_rows, (box.y1 - 1) // self.macro_rows + 1)
            for bj in range(box.x0 // self.macro_cols, (box.x1 - 1) // self.macro_cols + 1)
        ]

    def warm(self, bi: int, bj: int) -> None:
        """Decode a block into the cache ahead of need (the stream's prefetch)."""
        self._block(bi, bj)

    def read(self, box: PixelBox) -> Region:
        """Pixels of ``box`` (clipped to the raster) at this raster's own resolution."""
        box = box.clip(self.width, self.height)
        data = np.empty((box.height, box.width, len(self.indexes)), self.dtype)
        valid: np.ndarray | None = None
        if box.area == 0:
            return Region(data, None)
        for bi in range(box.y0 // self.macro_rows, (box.y1 - 1) // self.macro_rows + 1):
            for bj in range(box.x0 // self.macro_cols, (box.x1 - 1) // self.macro_cols + 1):
                block = self._block(bi, bj)
                bx0, by0 = bj * self.macro_cols, bi * self.macro_rows
                xs, xe = max(box.x0, bx0), min(box.x1, bx0 + block.data.shape[1])
                ys, ye = max(box.y0, by0), min(box.y1, by0 + block.data.shape[0])
                dst = (slice(ys - box.y0, ye - box.y0), slice(xs - box.x0, xe - box.x0))
                srcs = (slice(ys - by0, ye - by0), slice(xs - bx0, xe - bx0))
                data[dst] = block.data[srcs]
                if block.valid is not None:
                    if valid is None:
                        valid = np.ones(data.shape[:2], bool)
                    valid[dst] = block.valid[srcs]
        return Region(data, valid)

    # -- scaled reads ---------------------------------------------------------------------------------
    def read_scaled(
        self, window_xywh: tuple[float, float, float, float], out_width: int, out_height: int
    ) -> Region:
        """The (fractional) window ``x, y, w, h`` of this raster resampled to ``out_width × out_height``
        with area averaging. Fractional, so a tile's window is exactly its footprint, not a rounded one."""
        src = self.pool.get()
        window = Window(*window_xywh)
        try:
            with gdal_options(self.remote):
                chw = src.read(
                    self.indexes,
                    window=window,
                    out_shape=(len(self.indexes), out_height, out_width),
                    resampling=Resampling.average,
                )
                gmask = (
                    src.dataset_mask(window=window, out_shape=(out_height, out_width)) > 0
                    if self.internal_mask
                    else None
                )
        except RasterioError as exc:
            raise self._fail(f"scaled window {[round(v, 2) for v in window_xywh]}", exc) from None
        data = np.ascontiguousarray(chw.transpose(1, 2, 0))
        return Region(data, self._validity(data, gmask))

    def overview_factors(self) -> list[int]:
        """The source's overview factors (GDAL may read more of a remote header to list them)."""
        with gdal_options(self.remote):
            return list(self.pool.get().overviews(1))

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()
        self.pool.close()
