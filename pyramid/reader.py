"""Region reads from one raster file (or one of its overviews) with per-thread handles and a block cache.

Native-resolution reads are assembled from whole, block-aligned "macro blocks" (a TIFF tile, or a band of
strips for striped files) kept in a byte-bounded LRU, so neighbouring tiles never decode a block twice.
Blocks that are one whole TIFF tile decode into buffers the LRU hands back when it evicts them (a fresh
786 KB array per block costs ~200 first-touch page faults, a third of the decode); a read pins the blocks
it copies from, so a buffer is reused only once nobody reads it.
Scaled reads (coarse level, thumbnail) are GDAL average-decimated reads, which use overviews when present.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
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


class BlockBuffers:
    """Reusable block-sized arrays: ``take`` one for a decode; the block cache's eviction returns it through
    its ``Lease`` once no read has it pinned. Keeps at most ``keep`` idle buffers.

    Past ``cap`` buffers, ``take`` first asks ``reclaim`` to evict the cache's oldest unpinned block of this
    pool and reuses its buffer: fresh memory costs ~0.55 ms of page faults per 786 KB block on a VM (60 % of
    its decode), so a stream should not fault in the whole cache bound when a few block rows suffice."""

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: np.dtype,
        keep: int = 16,
        cap: int | None = None,
        reclaim: Callable[[], bool] | None = None,
    ) -> None:
        self.shape = shape
        self.dtype = dtype
        self.keep = keep
        self.cap = cap
        self.reclaim = reclaim
        self.allocated = 0
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.reused = 0  # takes served by a recycled buffer (the tests' evidence that recycling happens)

    def take(self) -> Lease:
        """A buffer, pinned once for the caller that decodes into it."""
        for reclaimed in (False, True):
            with self._lock:
                if self._free:
                    self.reused += 1
                    return Lease(self, self._free.pop())
                if reclaimed or self.reclaim is None or self.cap is None or self.allocated < self.cap:
                    self.allocated += 1
                    break
            if not self.reclaim():  # every old block is pinned: a fresh buffer after all
                with self._lock:
                    self.allocated += 1
                break
        return Lease(self, np.empty(self.shape, self.dtype))

    def owns_idle(self, region: Region) -> bool:
        """Whether ``region`` is an unpinned block of this pool (its buffer would come back if evicted)."""
        lease = region.lease
        return lease is not None and lease.pool is self and lease.pins == 0

    @staticmethod
    def idle(region: Region) -> bool:
        """Whether evicting ``region`` now costs no reader anything (no pin on it)."""
        return region.lease is None or region.lease.pins == 0


class Lease:
    """One pooled buffer's state: pins by reads copying from it, and whether the cache has let it go."""

    __slots__ = ("buf", "evicted", "pins", "pool", "returned")

    def __init__(self, pool: BlockBuffers, buf: np.ndarray) -> None:
        self.pool = pool
        self.buf = buf
        self.pins = 1
        self.evicted = False
        self.returned = False

    def pin(self) -> bool:
        """Pin for a read; False if the buffer was handed back already (then load the block anew)."""
        with self.pool._lock:
            if self.returned:
                return False
            self.pins += 1
            return True

    def unpin(self) -> None:
        with self.pool._lock:
            self.pins -= 1
            self._maybe_return()

    def evict(self) -> None:
        with self.pool._lock:
            self.evicted = True
            self._maybe_return()

    def _maybe_return(self) -> None:  # under the pool's lock
        if self.evicted and self.pins == 0 and not self.returned:
            self.returned = True
            if len(self.pool._free) < self.pool.keep:
                self.pool._free.append(self.buf)


def _unreferenced_count() -> int:
    # sys.getrefcount of an array that only a list holds, read as ``TileBuffers.take`` reads it: 2 on CPython.
    ring = [np.empty(0)]
    return sys.getrefcount(ring[0])


_UNREFERENCED = _unreferenced_count()


class TileBuffers:
    """Arrays of one tile shape for the stream's tiles, reused once nothing outside this ring refers to them.

    A tile a caller keeps (its array, a view of it, a tensor made from it) holds a reference, so its buffer
    is never handed out again while it lives; one the caller dropped is reused warm instead of a fresh
    allocation (first-touch page faults cost ~10x the copy into it). The ring forgets its oldest buffer
    when all ``size`` are held."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, size: int = 64) -> None:
        self.shape = shape
        self.dtype = dtype
        self.size = size
        self._ring: list[np.ndarray] = []
        self._next = 0
        self._lock = threading.Lock()
        self.reused = 0

    def take(self) -> np.ndarray:
        with self._lock:
            n = len(self._ring)
            for i in range(n):
                j = (self._next + i) % n
                if sys.getrefcount(self._ring[j]) == _UNREFERENCED:
                    self._next = j + 1
                    self.reused += 1
                    return self._ring[j]
            buf = np.empty(self.shape, self.dtype)
            if n < self.size:
                self._ring.append(buf)
            else:
                self._ring[self._next % n] = buf
                self._next += 1
            return buf


@dataclass(frozen=True)
class Region:
    """Pixels of one read: ``data`` (h, w, bands) in the source dtype, ``valid`` (h, w) bool or None.

    ``lease``: set on a cached block whose ``data`` is a pooled buffer; read it only while pinned."""

    data: np.ndarray
    valid: np.ndarray | None
    lease: Lease | None = field(default=None, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (self.valid.nbytes if self.valid is not None else 0)


def release_evicted(region: Region) -> None:
    """The block cache's ``on_evict``: a pooled block's buffer goes back once no read has it pinned."""
    if region.lease is not None:
        region.lease.evict()


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
        self.buffers: BlockBuffers | None = None
        if (
            self.direct is not None
            and (self.macro_rows, self.macro_cols) == (self.direct.tile_height, self.direct.tile_width)
            and [i - 1 for i in indexes] == list(range(src.count))
        ):  # a macro block is one TIFF tile with every band in order: decode straight into a pooled buffer
            # Three block rows: a row-major stream's current two plus the one it just left.
            across = math.ceil(self.width / self.macro_cols)
            self.buffers = BlockBuffers(
                self.direct.tile_shape, self.dtype, cap=max(32, 3 * across), reclaim=self._reclaim_block
            )
        self.block_bytes = self.macro_rows * self.macro_cols * len(indexes) * self.dtype.itemsize
        self.tile_buffers: TileBuffers | None = None  # made by the first pooled read_many
        self._inflight: dict[Hashable, Future[Region]] = {}
        self._lock = threading.Lock()
        self.blocks_decoded = 0

    def _reclaim_block(self) -> bool:
        buffers = self.buffers
        return buffers is not None and self.cache.evict_oldest(buffers.owns_idle, buffers.idle)

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
        if self.buffers is not None and (w, h) == (self.macro_cols, self.macro_rows):
            lease = self.buffers.take()
            try:
                self.direct.decode_into(bi, bj, lease.buf)  # type: ignore[union-attr]
            except Exception as exc:  # a codec error in a damaged tile
                raise self._fail(f"block ({x0}, {y0}, {w}x{h})", exc) from None
            self.blocks_decoded += 1
            return Region(lease.buf, self._validity(lease.buf, None), lease)
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

    def _block(self, bi: int, bj: int) -> tuple[Region, bool]:
        """The block, from the cache or decoded once however many threads ask; ``True`` when it comes pinned
        for the caller (the thread that decoded it)."""
        key = (self.label, bi, bj)
        hit = self.cache.get(key)
        if hit is not None:
            return hit, False
        with self._lock:
            hit = self.cache.get(key)  # a decode may have finished between the first look and the lock
            if hit is not None:
                return hit, False
            fut = self._inflight.get(key)
            owner = fut is None
            if owner:
                fut = Future()
                self._inflight[key] = fut
        assert fut is not None
        if not owner:  # another thread is decoding this block: wait instead of decoding it twice
            return fut.result(), False
        try:
            region = self._load_block(bi, bj)
            self.cache.put(key, region)
            fut.set_result(region)
            return region, True
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _acquire(self, bi: int, bj: int) -> Region:
        """The block, pinned if pooled: ``_release`` it once its pixels are copied or viewed no more."""
        for _ in range(4):
            region, pinned = self._block(bi, bj)
            if pinned or region.lease is None or region.lease.pin():
                return region
            # Evicted and handed back between the lookup and the pin: the cache no longer has it.
        region = self._load_block(bi, bj)  # a cache far too small for its readers: a private copy
        return Region(region.data.copy(), region.valid) if region.lease is not None else region

    @staticmethod
    def _release(region: Region) -> None:
        if region.lease is not None:
            region.lease.unpin()

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

    def warm(self, blocks: list[tuple[int, int]]) -> None:
        """Decode blocks into the cache ahead of need (the stream's prefetch)."""
        for bi, bj in blocks:
            region, pinned = self._block(bi, bj)
            if pinned:
                self._release(region)

    def read(self, box: PixelBox) -> Region:
        """Pixels of ``box`` (clipped to the raster) at this raster's own resolution, in a new array."""
        return self.read_many([box])[0]

    def read_many(self, boxes: list[PixelBox], tile_size: int | None = None) -> list[Region]:
        """Pixels of each box (clipped to the raster), every block looked up once for the batch.

        Blocks are taken column by column; each is copied into every box it overlaps at once, then unpinned,
        so a block is pinned only while it is copied. No result aliases the block cache, whose buffers are
        reused. ``tile_size``: boxes of exactly that square size get their array from ``tile_buffers``
        (reused once the caller drops it)."""
        if tile_size is not None and self.tile_buffers is None:
            with self._lock:
                if self.tile_buffers is None:
                    self.tile_buffers = TileBuffers((tile_size, tile_size, len(self.indexes)), self.dtype)
        ring = self.tile_buffers if tile_size is not None else None
        clipped = [box.clip(self.width, self.height) for box in boxes]
        datas: list[np.ndarray] = []
        valids: list[np.ndarray | None] = [None] * len(clipped)
        users: dict[tuple[int, int], list[int]] = {}
        for i, box in enumerate(clipped):
            pooled = ring is not None and (box.height, box.width) == ring.shape[:2]
            shape = (box.height, box.width, len(self.indexes))
            datas.append(ring.take() if pooled else np.empty(shape, self.dtype))  # type: ignore[union-attr]
            for bij in self.blocks_for(box):
                users.setdefault(bij, []).append(i)
        for bi, bj in sorted(users, key=lambda b: (b[1], b[0])):
            block = self._acquire(bi, bj)
            try:
                self._scatter(block, bi, bj, [(clipped[i], datas[i], valids, i) for i in users[bi, bj]])
            finally:
                self._release(block)
        return [Region(d, v) for d, v in zip(datas, valids, strict=True)]

    def _scatter(
        self,
        block: Region,
        bi: int,
        bj: int,
        targets: list[tuple[PixelBox, np.ndarray, list[np.ndarray | None], int]],
    ) -> None:
        """Copy block (``bi``, ``bj``) into each target box's array (and validity, created on first need)."""
        by0, bx0 = bi * self.macro_rows, bj * self.macro_cols
        for box, data, valids, i in targets:
            ys, ye = max(box.y0, by0), min(box.y1, by0 + self.macro_rows)
            xs, xe = max(box.x0, bx0), min(box.x1, bx0 + self.macro_cols)
            dst = (slice(ys - box.y0, ye - box.y0), slice(xs - box.x0, xe - box.x0))
            srcs = (slice(ys - by0, ye - by0), slice(xs - bx0, xe - bx0))
            data[dst] = block.data[srcs]
            if block.valid is not None:
                if valids[i] is None:
                    valids[i] = np.ones(data.shape[:2], bool)
                valids[i][dst] = block.valid[srcs]  # type: ignore[index]

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
