"""The Dynamic Image Pyramid: levels, tiles and a prefetching tile stream over one raster file.

Read paths, chosen once per file from its layout (see ``pyramid.source.Layout``):

====================  ==========================================  ===============================
layout                native-resolution tiles                     coarse levels / thumbnail
====================  ==========================================  ===============================
cog                   source blocks                               source overviews
tiled (no overviews)  source blocks                               on-disk pyramid cache
striped               source strip bands                          on-disk pyramid cache
sequential (PNG/JPG)  on-disk pyramid cache                       on-disk pyramid cache
====================  ==========================================  ===============================

Images of at most ``cache_min_pixels`` never get a disk cache: reading them whole is cheap.
Remote rasters (URLs, ``/vsi…/`` paths; ``pyramid.remote``) are read through GDAL by byte ranges, with no
direct decode and no disk cache; a remote file that is not a COG is refused above ``cache_min_pixels``
(its coarse level would need every byte of it).
Power-of-two levels are read from an overview of exactly that factor when one exists (block cache,
no resampling); otherwise, and for the coarse level and the thumbnail, by GDAL area averaging.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.enums import ColorInterp

from pyramid.cache import ByteLRUCache, default_cache_dir
from pyramid.errors import RemoteLayoutError
from pyramid.geometry import Georef, TileGeometry
from pyramid.level_cache import LevelCacheEntry, ensure_level_cache
from pyramid.levels import Level, PixelBox, PyramidSpec, plan_levels, plan_thumbnail
from pyramid.radiometry import BandPlan, Stretch, choose_bands, compute_stretch
from pyramid.reader import Region, RegionReader, release_evicted
from pyramid.remote import RemoteOptions, TransferCounter, download, is_location, locate
from pyramid.source import DEFAULT_MAX_PIXELS, Layout, RasterInfo, inspect_raster
from pyramid.stac import is_stac_item, resolve_stac

_CV_AREA_DTYPES = frozenset({"uint8", "uint16", "int16", "float32", "float64"})

THUMBNAIL = -1  # level index of the global thumbnail
_MAX_WHOLE_LEVEL_PIXELS = 64 * 1024 * 1024
_MAX_KEPT_LEVEL_PIXELS = 4 * 1024 * 1024  # resampled levels this small are read whole and kept (12 MB RGB)
# Stream tasks: a run of up to this many tiles of one row is one task (per-tile task overhead was ~1/4 of
# native streaming), and a few blocks per decode task keep both threads busy without a task per block.
_RUN_TILES = 16
_WARM_BLOCKS = 4


@dataclass(frozen=True, order=True)
class TileKey:
    level: int
    row: int
    col: int


@dataclass(frozen=True)
class Tile:
    """One tile: uint8 RGB pixels (partial at the right/bottom edge), where it lies, and its validity."""

    key: TileKey
    level_name: str
    level_box: PixelBox  # in level pixels
    geometry: TileGeometry  # level-0 pixel box, native-CRS box and WGS84 polygon
    pixels: np.ndarray = field(repr=False)  # (h, w, 3) uint8
    valid: np.ndarray | None = field(default=None, repr=False)  # (h, w) bool, None = all valid

    @property
    def box(self) -> PixelBox:
        return self.geometry.pixel_box

    def padded(self, size: int, fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
        """The tile as ``size × size`` with ``fill`` at the bottom/right (the reference's padding)."""
        h, w = self.pixels.shape[:2]
        if h > size or w > size:
            raise ValueError(f"tile {h}x{w} does not fit in {size}x{size}")
        out = np.empty((size, size, 3), np.uint8)
        out[...] = np.asarray(fill, np.uint8)
        out[:h, :w] = self.pixels
        return out


@dataclass(frozen=True)
class PyramidOptions:
    spec: PyramidSpec = field(default_factory=PyramidSpec)
    bands: tuple[int, ...] | None = None  # 1-based R,G,B (or one gray band); None = automatic
    percentiles: tuple[float, float] = (2.0, 98.0)
    cache_dir: str | Path | None = None  # None = $LRS_VQA_CACHE_DIR or ~/.cache/lrs-vqa/pyramids
    use_disk_cache: bool = True
    lossless_cache: bool = False
    cache_min_pixels: int = 4096 * 4096
    tile_cache_bytes: int = 256 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int = 2
    direct_decode: bool = True  # tifffile + libjpeg-turbo for tiled TIFFs; False = GDAL only
    progress: bool = False
    remote: RemoteOptions = field(default_factory=RemoteOptions)  # timeouts, retries, cache of URLs
    stac_asset: str | None = None  # a STAC item's asset to open; None = by role visual/data, then GeoTIFF
    download_to: str | None = None  # a folder: a remote non-COG is copied there and read locally


class DynamicImagePyramid:
    """Open with :meth:`open`; use as a context manager so file handles are closed."""

    def __init__(
        self, info: RasterInfo, options: PyramidOptions, transfers: TransferCounter | None = None
    ) -> None:
        self.info = info
        self.options = options
        self.transfers = transfers  # remote sources: bytes and requests since open (or the last lend)
        self._remote = options.remote if info.remote else None
        self.refusal = _remote_refusal(info, options)
        self.levels: tuple[Level, ...] = plan_levels(info.width, info.height, options.spec)
        self.thumbnail_level: Level = plan_thumbnail(info.width, info.height, options.spec)
        self.bands: BandPlan = choose_bands(
            str(info.path),
            info.count,
            tuple(ColorInterp[name] for name in info.colorinterp),
            options.bands,
        )
        self.georef: Georef | None = Georef(Affine(*info.transform), info.crs) if info.georeferenced else None
        self.block_cache: ByteLRUCache[Region] = ByteLRUCache(options.tile_cache_bytes, release_evicted)
        self.disk_cache: LevelCacheEntry | None = None
        self._readers: dict[tuple[str, int | None], RegionReader] = {}
        self._stretch: Stretch | None = None
        self._lock = threading.RLock()
        self._scaled_levels: dict[int, Region] = {}
        self._executor: ThreadPoolExecutor | None = None
        self.tiles_read = 0

    @classmethod
    def open(
        cls, path: str | Path, options: PyramidOptions | None = None, *, strict: bool = True
    ) -> DynamicImagePyramid:
        """``path``: a local file, a URL (http(s), s3, gs, az), a GDAL ``/vsi…/`` path, or a STAC item
        (``.json``, local or a URL) whose raster asset is opened. ``strict=False`` opens a remote non-COG
        for description only (``inspect``); its pixels stay refused."""
        options = options or PyramidOptions()
        stac = None
        if is_stac_item(path):
            resolved = resolve_stac(path, options.stac_asset, options.remote)
            path, stac = resolved.href, resolved.describe()
        transfers = None
        if is_location(path) and locate(path).remote:
            transfers = TransferCounter(locate(path))  # before the header is read: inspect counts too
        info = inspect_raster(path, max_pixels=options.max_pixels, remote=options.remote, stac=stac)
        if transfers is not None:
            transfers.file_size = info.file_size
        if options.download_to is not None and _remote_refusal(info, options) is not None:
            # The user's opt-in for a remote non-COG: a local copy, then the local read paths.
            local = download(locate(str(path)), options.download_to, options.remote)
            if transfers is not None:
                transfers.downloaded_to = str(local)
            info = inspect_raster(local, max_pixels=options.max_pixels, stac=stac)
        dip = cls(info, options, transfers)
        if strict and dip.refusal is not None:
            dip.close()
            raise dip.refusal
        return dip

    def __enter__(self) -> DynamicImagePyramid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        self.block_cache.clear()

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.options.workers, thread_name_prefix="dip", initializer=_mark_pool_thread
                )
            return self._executor

    def _read_blocks(self, reader: RegionReader, box: PixelBox) -> Region:
        """``reader.read(box)``, its blocks decoded on the stream's threads first when they are several and
        fit the cache together: a coarse level from an overview decodes ~2x faster on 2 cores."""
        blocks = reader.blocks_for(box)
        cap = reader.buffers.cap if reader.buffers is not None else None
        fits = len(blocks) * reader.block_bytes <= self.block_cache.max_bytes // 2
        fan_out = self.options.workers > 1 and len(blocks) > 2 and not getattr(_POOL_THREAD, "on", False)
        if fan_out and fits and (cap is None or len(blocks) <= cap):  # never from a pool thread: deadlock
            pool = self._pool()
            chunks = [blocks[i :: self.options.workers] for i in range(self.options.workers)]
            for future in [pool.submit(reader.warm, chunk) for chunk in chunks]:
                future.result()
        return reader.read(box)

    # -- read-path selection ------------------------------------------------------------------------
    @property
    def _big(self) -> bool:
        # libvips knows nothing of nodata and would average it into valid pixels: such files are read
        # from the source, where GDAL's averaging honours nodata.
        return self.info.pixels > self.options.cache_min_pixels and self.info.nodata is None

    @property
    def coarse_from_cache(self) -> bool:
        return (
            self.options.use_disk_cache
            and not self.info.remote
            and self._big
            and not self.info.overview_factors
        )

    @property
    def native_from_cache(self) -> bool:
        return (
            self.options.use_disk_cache
            and not self.info.remote
            and self._big
            and self.info.layout == Layout.SEQUENTIAL
        )

    def _cache_path(self) -> Path:
        with self._lock:
            if self.disk_cache is None:
                self.disk_cache = ensure_level_cache(
                    self.info,
                    Path(self.options.cache_dir) if self.options.cache_dir else default_cache_dir(),
                    lossless=self.options.lossless_cache,
                    progress=self.options.progress,
                )
            return self.disk_cache.path

    def _reader(self, path: Path | str, overview_level: int | None) -> RegionReader:
        key = (str(path), overview_level)
        with self._lock:
            reader = self._readers.get(key)
            if reader is None:
                from_source = path == self.info.open_path
                indexes = self.bands.read_indexes + (
                    [self.bands.alpha] if self.bands.alpha is not None else []
                )
                reader = RegionReader(
                    path,
                    indexes,
                    cache=self.block_cache,
                    overview_level=overview_level,
                    alpha=self.bands.alpha,
                    nodata=self.info.nodata,
                    internal_mask=from_source and self.info.has_mask,
                    direct_decode=self.options.direct_decode,
                    label=f"{'src' if from_source else 'cache'}:{overview_level}",
                    remote=self._remote if from_source else None,
                )
                self._readers[key] = reader
            return reader

    def _native_reader(self) -> RegionReader:
        path = self._cache_path() if self.native_from_cache else self.info.open_path
        return self._reader(path, None)

    def _scaled_backing(self) -> Path | str:
        return self._cache_path() if self.coarse_from_cache else self.info.open_path

    def _overviews(self, path: Path | str) -> tuple[list[int], int, int]:
        """Overview factors and full size of ``path``: the header's for the source, so reading an overview
        needs no reader of the full-resolution level; the disk cache's from its own reader."""
        if path == self.info.open_path:
            return list(self.info.overview_factors), self.info.width, self.info.height
        base = self._reader(path, None)
        return base.overview_factors(), base.width, base.height

    def _overview_reader(self, factor: int) -> RegionReader | None:
        path = self._scaled_backing()
        factors, _, _ = self._overviews(path)
        if factor not in factors:
            return None
        return self._reader(path, factors.index(factor))

    # -- pixels -----------------------------------------------------------------------------------------
    def _block_reader(self, level: Level) -> RegionReader | None:
        """The reader that serves this level straight from blocks (native or an exact overview), if any."""
        if level.is_native:
            return self._native_reader()
        factor = level.factor_x
        if factor == level.factor_y and factor.is_integer():
            ovr = self._overview_reader(int(factor))
            if ovr is not None and ovr.width >= level.width and ovr.height >= level.height:
                return ovr
        return None

    def _area_from_overview(self, level: Level, level_box: PixelBox) -> Region | None:
        """Area-average a whole-pixel window of the finest overview at least as coarse as needed.

        Serves the coarse level of a COG about 2x faster than GDAL's ``average`` read: the overview's
        blocks go through the direct decoder and OpenCV's INTER_AREA does the (exact box) averaging.
        Only when the window falls on whole overview pixels and no mask is involved; None otherwise.
        """
        if self.info.dtype not in _CV_AREA_DTYPES:
            return None
        path = self._scaled_backing()
        all_factors, full_width, full_height = self._overviews(path)
        factors = [f for f in all_factors if f <= min(level.factor_x, level.factor_y)]
        if not factors:
            return None
        ovr = self._reader(path, all_factors.index(max(factors)))
        if ovr.direct is None:  # GDAL would decode the blocks anyway: its own averaging is as good
            return None
        sx, sy = full_width / ovr.width, full_height / ovr.height
        edges = (
            level_box.x0 * level.factor_x / sx,
            level_box.y0 * level.factor_y / sy,
            level_box.x1 * level.factor_x / sx,
            level_box.y1 * level.factor_y / sy,
        )
        if any(abs(v - round(v)) > 1e-6 for v in edges):
            return None
        box = PixelBox(*(round(v) for v in edges))
        if box.x1 > ovr.width or box.y1 > ovr.height or box.area == 0:
            return None
        region = self._read_blocks(ovr, box)
        if region.valid is not None:
            return None
        import cv2  # ~100 ms to import: paid by the first resampled read, not by open or inspect

        data = cv2.resize(region.data, (level_box.width, level_box.height), interpolation=cv2.INTER_AREA)
        return Region(data.reshape(level_box.height, level_box.width, -1), None)

    def _whole_scaled_level(self, level: Level) -> Region | None:
        """A small resampled level (coarse, thumbnail) read once and kept: its tiles are then slices of
        one averaging, so the level image is exactly the union of its tiles whichever path averaged it."""
        if level.width * level.height > _MAX_KEPT_LEVEL_PIXELS:
            return None
        with self._lock:
            region = self._scaled_levels.get(level.index)
            if region is None:
                full = PixelBox(0, 0, level.width, level.height)
                region = self._area_from_overview(level, full) or self._reader(
                    self._scaled_backing(), None
                ).read_scaled(
                    (0, 0, level.width * level.factor_x, level.height * level.factor_y),
                    level.width,
                    level.height,
                )
                region.data.flags.writeable = False  # shared by every tile sliced from it
                self._scaled_levels[level.index] = region
            return region

    def _read_level_source(self, level: Level, level_box: PixelBox) -> Region:
        reader = self._block_reader(level)
        if reader is not None:
            return self._read_blocks(reader, level_box)
        whole = self._whole_scaled_level(level)
        if whole is not None:
            rows, cols = slice(level_box.y0, level_box.y1), slice(level_box.x0, level_box.x1)
            return Region(
                whole.data[rows, cols].copy(),  # tiles own their pixels; the kept level stays read-only
                None if whole.valid is None else whole.valid[rows, cols].copy(),
            )
        window = (
            level_box.x0 * level.factor_x,
            level_box.y0 * level.factor_y,
            level_box.width * level.factor_x,
            level_box.height * level.factor_y,
        )
        return self._reader(self._scaled_backing(), None).read_scaled(
            window, level_box.width, level_box.height
        )

    @property
    def stretch(self) -> Stretch:
        """uint8 passthrough, or per-band percentiles computed once from the coarse level."""
        if self._stretch is not None:  # every read asks: no lock once it is set (it never changes after)
            return self._stretch
        with self._lock:
            if self._stretch is None:
                if self.info.dtype == "uint8":
                    self._stretch = Stretch("uint8")
                else:
                    coarse = self.levels[0]
                    if coarse.width * coarse.height > _MAX_WHOLE_LEVEL_PIXELS:
                        coarse = self.thumbnail_level
                    region = self._read_level_source(coarse, PixelBox(0, 0, coarse.width, coarse.height))
                    rgb = region.data[..., self.bands.rgb_positions]
                    self._stretch = compute_stretch(
                        self.info.dtype, rgb, region.valid, self.options.percentiles
                    )
            return self._stretch

    def read_level_region(self, level: Level, level_box: PixelBox) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 RGB pixels of ``level_box`` (level pixels) and its validity mask (None = all valid)."""
        if self.refusal is not None:
            raise self.refusal
        level_box = level_box.clip(level.width, level.height)
        return self._finish(self._read_level_source(level, level_box))

    def _finish(self, region: Region) -> tuple[np.ndarray, np.ndarray | None]:
        """A read's uint8 RGB pixels and validity (None = all valid)."""
        positions = self.bands.rgb_positions
        # Plain RGB needs no band gather: the fancy-index copy cost ~30% of native streaming.
        plain = positions == [0, 1, 2] and region.data.shape[-1] == 3
        rgb = self.stretch.apply(region.data if plain else region.data[..., positions])
        if region.valid is not None:
            if region.valid.all():
                return rgb, None
            rgb = rgb.copy() if not rgb.flags.writeable or rgb.base is not None else rgb
            rgb[~region.valid] = 0
        return rgb, region.valid

    def level(self, index: int) -> Level:
        return self.thumbnail_level if index == THUMBNAIL else self.levels[index]

    def geometry(self, level0_box: PixelBox) -> TileGeometry:
        return self.georef.tile_geometry(level0_box) if self.georef else TileGeometry(level0_box)

    def tile(self, level: int, row: int, col: int) -> Tile:
        return self.tiles([TileKey(level, row, col)])[0]

    def tiles(self, keys: list[TileKey]) -> list[Tile]:
        """The tiles of ``keys``. When they are all of one level served from blocks, each block is read and
        pinned once for the batch: the stream's unit of work, so per-tile Python stays small."""
        if not keys:
            return []
        if self.refusal is not None:
            raise self.refusal
        first = keys[0].level
        if any(k.level != first for k in keys):
            return [tile for key in keys for tile in self.tiles([key])]
        level = self.level(first)
        index = level.index if first != THUMBNAIL else THUMBNAIL
        if index != first:  # a negative index other than THUMBNAIL counts from native: name it by its index
            keys = [TileKey(index, k.row, k.col) for k in keys]
        boxes = [level.tile_level_box(k.row, k.col) for k in keys]
        reader = self._block_reader(level) if index != THUMBNAIL else None
        if reader is not None:
            reads = [self._finish(r) for r in reader.read_many(boxes, level.tile_size)]
        else:
            reads = [self.read_level_region(level, b) for b in boxes]
        with self._lock:
            self.tiles_read += len(keys)
        name = level.name
        return [
            Tile(k, name, box, self.geometry(level.to_level0(box)), pixels, valid)
            for k, box, (pixels, valid) in zip(keys, boxes, reads, strict=True)
        ]

    def read_resampled(
        self, box: tuple[float, float, float, float], out_width: int, out_height: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Level-0 box ``(x0, y0, x1, y1)`` (fractional) resampled to ``out_width × out_height`` (bilinear,
        pixel centres), read from the coarsest level that still has the needed resolution. Counts as one
        tile read. For grids that are not the pyramid's own (the released code's upsampled levels)."""
        x0, y0, x1, y1 = box
        if out_width < 1 or out_height < 1 or x1 <= x0 or y1 <= y0:
            raise ValueError(f"empty resampled read {box} -> {out_width}x{out_height}")
        step_x, step_y = (x1 - x0) / out_width, (y1 - y0) / out_height  # level-0 px per output px
        level = next(
            (lv for lv in self.levels if lv.factor_x <= step_x + 1e-9 and lv.factor_y <= step_y + 1e-9),
            self.levels[-1],
        )
        fx, fy = level.factor_x, level.factor_y
        read = PixelBox(
            max(0, math.floor(x0 / fx) - 1),
            max(0, math.floor(y0 / fy) - 1),
            min(level.width, math.ceil(x1 / fx) + 1),
            min(level.height, math.ceil(y1 / fy) + 1),
        )
        pixels, valid = self.read_level_region(level, read)
        import cv2

        # Output pixel centre u + 0.5 lies at level-0 x0 + (u + 0.5)·step_x, i.e. at array column
        # (x0 + (u + 0.5)·step_x) / fx − read.x0 − 0.5.
        matrix = np.array(
            [
                [step_x / fx, 0.0, (x0 + 0.5 * step_x) / fx - read.x0 - 0.5],
                [0.0, step_y / fy, (y0 + 0.5 * step_y) / fy - read.y0 - 0.5],
            ]
        )
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        out = cv2.warpAffine(
            pixels, matrix, (out_width, out_height), flags=flags, borderMode=cv2.BORDER_REPLICATE
        )
        out_valid = None
        if valid is not None:
            warped = cv2.warpAffine(
                valid.astype(np.uint8),
                matrix,
                (out_width, out_height),
                flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
            out_valid = None if warped.all() else warped.astype(bool)
        with self._lock:
            self.tiles_read += 1
        return out, out_valid

    def thumbnail(self) -> Tile:
        """The global view: the whole image with long side ``spec.thumbnail_size`` (one tile)."""
        return self.tile(THUMBNAIL, 0, 0)

    def level_image(self, level: int) -> Tile:
        """A whole level as one array (coarse levels only: refused above 64 Mpx)."""
        lvl = self.level(level)
        if lvl.width * lvl.height > _MAX_WHOLE_LEVEL_PIXELS:
            raise ValueError(
                f"level {lvl.name} is {lvl.width}x{lvl.height}; read it tile by tile with stream()"
            )
        box = PixelBox(0, 0, lvl.width, lvl.height)
        pixels, valid = self.read_level_region(lvl, box)
        return Tile(TileKey(level, 0, 0), lvl.name, box, self.geometry(lvl.to_level0(box)), pixels, valid)

    def tiles_covering(self, level: int, level0_box: PixelBox) -> list[TileKey]:
        lvl = self.level(level)
        return [TileKey(level, r, c) for r, c in lvl.tiles_covering(level0_box)]

    def all_tiles(self, level: int) -> list[TileKey]:
        lvl = self.level(level)
        return [TileKey(level, r, c) for r in range(lvl.rows) for c in range(lvl.cols)]

    # -- streaming ----------------------------------------------------------------------------------------
    def stream(self, keys: Iterable[TileKey], *, prefetch: int = 8) -> Iterator[Tile]:
        """Yield the requested tiles in request order, decoding ahead on ``options.workers`` threads.

        Consecutive keys of one level and tile row form a run (at most ``_RUN_TILES``): one task reads them
        all (``tiles``). Their blocks are decoded first, by tasks of a few blocks each, queued one run ahead
        of the run that needs them, so a thread seldom waits on the other's decode. At least ``prefetch``
        tiles, and two runs, are read ahead of the consumer."""
        executor = self._pool()
        pending: deque[Future[list[Tile]]] = deque()
        warming: deque[Future[None]] = deque()
        queued_blocks: set[tuple[int, int, int]] = set()
        held: list[
            list[TileKey]
        ] = []  # the newest run: its task waits until the next run's blocks are queued
        in_flight = 0  # tiles queued or held and not yet yielded

        def warm(run: list[TileKey]) -> None:
            level = self.level(run[0].level)
            reader = self._block_reader(level) if run[0].level != THUMBNAIL else None
            if reader is None:
                return
            blocks: list[tuple[int, int]] = []
            for key in run:
                for bi, bj in reader.blocks_for(level.tile_level_box(key.row, key.col)):
                    if (key.level, bi, bj) not in queued_blocks:
                        queued_blocks.add((key.level, bi, bj))
                        blocks.append((bi, bj))
            blocks.sort()
            for i in range(0, len(blocks), _WARM_BLOCKS):
                warming.append(executor.submit(reader.warm, blocks[i : i + _WARM_BLOCKS]))

        def submit(run: list[TileKey] | None) -> None:
            # Queue this run's blocks, then the previous run's task: its blocks are then decoded (or being
            # decoded) by the time a thread picks it up.
            if run is not None:
                warm(run)
            if held:
                prev = held.pop()
                pending.append(executor.submit(self.tiles, prev))
            if run is not None:
                held.append(run)

        runs = _runs(keys)
        exhausted = False

        def fill() -> None:
            nonlocal in_flight, exhausted
            while not exhausted and (in_flight < prefetch or len(pending) + len(held) < 3):
                run = next(runs, None)
                if run is None:
                    exhausted = True
                    submit(None)
                    return
                submit(run)
                in_flight += len(run)

        try:
            fill()
            while pending:
                tiles = pending.popleft().result()
                while warming and warming[0].done():
                    warming.popleft().result()  # surfaces decode errors
                for tile in tiles:
                    in_flight -= 1
                    fill()
                    yield tile
                if not pending:
                    fill()
        finally:
            for fut in (*pending, *warming):  # a consumer that stops early must not leave reads running
                fut.cancel()

    # -- reporting ----------------------------------------------------------------------------------------
    def remote_report(self) -> dict[str, object] | None:
        """Remote sources: bytes fetched and requests made (since open, or the last lend), file size."""
        return self.transfers.report() if self.transfers is not None else None

    def describe(self) -> dict[str, object]:
        read_paths = {
            "native": "disk-cache" if self.native_from_cache else "source",
            "coarse": (
                "disk-cache"
                if self.coarse_from_cache
                else ("overviews" if self.info.overview_factors else "source")
            ),
        }
        if self.refusal is not None:
            read_paths = {"native": "refused", "coarse": "refused", "why": self.refusal.reason}
        remote = self.remote_report()
        return {
            **self.info.describe(),
            "bands_rgb": list(self.bands.rgb),
            "alpha_band": self.bands.alpha,
            "read_paths": read_paths,
            "levels": [lvl.describe() for lvl in self.levels],
            "thumbnail": self.thumbnail_level.describe(),
            **({"remote": remote} if remote is not None else {}),
        }

    @property
    def stats(self) -> dict[str, int]:
        return {
            "tiles_read": self.tiles_read,
            "blocks_decoded": sum(r.blocks_decoded for r in self._readers.values()),
            "block_cache_hits": self.block_cache.hits,
            "block_cache_bytes": self.block_cache.current_bytes,
        }


_POOL_THREAD = threading.local()


def _mark_pool_thread() -> None:
    _POOL_THREAD.on = True


def _runs(keys: Iterable[TileKey]) -> Iterator[list[TileKey]]:
    """Consecutive keys of one level and tile row, at most ``_RUN_TILES`` at a time."""
    run: list[TileKey] = []
    for key in keys:
        if run and (key.level != run[0].level or key.row != run[0].row or len(run) >= _RUN_TILES):
            yield run
            run = []
        run.append(key)
    if run:
        yield run


def _remote_refusal(info: RasterInfo, options: PyramidOptions) -> RemoteLayoutError | None:
    """Why a remote raster cannot be read by ranges, or None. Small images are read whole (cheap)."""
    if not info.remote or info.layout == Layout.COG or info.pixels <= options.cache_min_pixels:
        return None
    why = {
        Layout.TILED: "tiled but without internal overviews",
        Layout.STRIPED: "striped (no tiles, no overviews)",
        Layout.SEQUENTIAL: f"a {info.driver} (no random access)",
    }[info.layout]
    return RemoteLayoutError(
        info.path,
        f"not a Cloud-Optimized GeoTIFF ({why}): its coarse level would need all "
        f"{info.file_size / 2**20:.0f} MB; convert it with `lrs-vqa cog` where it is stored, "
        "or pass --download-to DIR to read a local copy",
    )
