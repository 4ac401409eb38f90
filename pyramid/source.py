"""Open a raster once, validate it, and classify its layout so every read can take the cheap path."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from pyramid.errors import (
    CorruptRasterError,
    EmptyFileError,
    NotAFileError,
    NotARasterError,
    RasterInputError,
    RasterNotFoundError,
    RasterTooLargeError,
    UnsupportedRasterError,
)
from pyramid.gdal_vsi import vsi_size
from pyramid.radiometry import SUPPORTED_DTYPES
from pyramid.remote import RasterLocation, RemoteOptions, classify_open_error, gdal_env, is_location, locate

# GDAL reads these once per process, before its first I/O. setdefault keeps a user's own choice.
os.environ.setdefault("GDAL_CACHEMAX", "64")  # MB as an env string; our block cache does the caching
os.environ.setdefault("VIPS_CONCURRENCY", "2")
# Remote rasters report bytes and requests from GDAL's own counters; on for every network read (a remote
# read outside our rasterio.Env would otherwise go uncounted). Local files are not affected.
os.environ.setdefault("CPL_VSIL_NETWORK_STATS_ENABLED", "YES")

#: Default ceiling on width × height (decompression-bomb guard): 4 Gpx, ~4.5x the largest LRS-VQA image.
DEFAULT_MAX_PIXELS = 4 * 1024**3

_SEQUENTIAL_DRIVERS = frozenset({"PNG", "JPEG", "GIF", "WEBP"})
_MAGIC = {
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"II+\x00": "BigTIFF",
    b"MM\x00+": "BigTIFF",
    b"\x89PNG": "PNG",
    b"\xff\xd8\xff": "JPEG",
}
_open_lock = threading.Lock()


class Layout(StrEnum):
    """How pixels are laid out on disk, which decides the cheap read path."""

    COG = "cog"  # tiled with internal overviews: coarse levels from overviews, tiles from blocks
    TILED = "tiled"  # tiled, no overviews: tiles from blocks, coarse levels from the disk cache
    STRIPED = "striped"  # row strips: tiles from strip bands, coarse levels from the disk cache
    SEQUENTIAL = "sequential"  # no random access (PNG/JPEG): everything from the disk cache


@dataclass(frozen=True)
class RasterInfo:
    path: Path | str  # a local Path, or a URL / GDAL path with its secrets masked (see gdal_path)
    driver: str
    width: int
    height: int
    count: int
    dtype: str
    crs: str | None
    transform: tuple[float, float, float, float, float, float]
    georeferenced: bool
    nodata: float | None
    colorinterp: tuple[str, ...]
    block_shape: tuple[int, int]  # rows, cols
    overview_factors: tuple[int, ...]
    compression: str | None
    has_mask: bool
    layout: Layout
    file_size: int
    gdal_path: str | None = None  # what rasterio opens, when it is not ``path`` (URLs, /vsi… paths)
    remote: bool = False  # read over the network, by ranges
    stac: dict[str, object] | None = None  # the STAC item this raster is an asset of

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def open_path(self) -> Path | str:
        return self.gdal_path if self.gdal_path is not None else self.path

    def describe(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "driver": self.driver,
            "width": self.width,
            "height": self.height,
            "bands": self.count,
            "dtype": self.dtype,
            "crs": self.crs,
            "transform": list(self.transform) if self.georeferenced else None,
            "georeferenced": self.georeferenced,
            "nodata": self.nodata,
            "colorinterp": list(self.colorinterp),
            "block_shape": list(self.block_shape),
            "overviews": list(self.overview_factors),
            "compression": self.compression,
            "has_mask": self.has_mask,
            "layout": self.layout.value,
            "file_size": self.file_size,
            **({"remote": True} if self.remote else {}),
            **({"stac": self.stac} if self.stac is not None else {}),
        }


@contextlib.contextmanager
def quiet_georef() -> Iterator[None]:
    """Silence rasterio's NotGeoreferencedWarning: pixel-space images are a normal case for us.

    ``catch_warnings`` mutates process state, so opens are serialised; they are rare (one per thread).
    """
    with _open_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def open_dataset(path: str | Path, **kwargs: object) -> rasterio.DatasetReader:
    """``rasterio.open`` without georeferencing warnings and with our typed errors. A URL or ``/vsi…/``
    path is opened as given (``Path()`` would fold ``http://`` into ``http:/``); the caller applies the
    remote GDAL options around it (``pyramid.remote.gdal_env``)."""
    virtual = is_location(path)
    try:
        with quiet_georef():
            return rasterio.open(path if virtual else Path(path), sharing=False, **kwargs)
    except RasterioIOError as exc:
        if virtual:
            raise classify_open_error(locate(str(path)), _first_line(exc)) from None
        raise _classify_open_failure(Path(path), exc) from None


def _sniff(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(4)
    return next((fmt for magic, fmt in _MAGIC.items() if head.startswith(magic)), None)


def _classify_open_failure(path: Path, exc: Exception) -> RasterInputError:
    fmt = _sniff(path)
    if fmt is not None:
        return CorruptRasterError(path, f"{fmt} header cannot be read ({_first_line(exc)})")
    return NotARasterError(path, "not a raster format GDAL can read")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def check_path(path: str | Path) -> Path:
    """Existence, regular file, non-empty: the checks that need no decoder."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise RasterNotFoundError(p, "no such file") from None
    except OSError as exc:
        raise NotAFileError(p, f"cannot be accessed ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise NotAFileError(p, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise NotAFileError(p, "is not a regular file")
    if st.st_size == 0:
        raise EmptyFileError(p, "file is empty (0 bytes)")
    return p


def _check_tiff_complete(path: Path, size: int) -> None:
    """A truncated TIFF opens fine in GDAL and fails mid-read; catch it from the offsets table."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                offsets = page.dataoffsets  # type: ignore[union-attr]
                counts = page.databytecounts  # type: ignore[union-attr]
                expected = math.prod(page.chunked)  # type: ignore[union-attr]
                if len(offsets) != expected:
                    raise CorruptRasterError(
                        path,
                        f"TIFF header declares {page.imagewidth}x{page.imagelength} px "  # type: ignore[union-attr]
                        f"but holds {len(offsets)} of the {expected} strips/tiles that needs",
                    )
                if offsets and max(o + c for o, c in zip(offsets, counts, strict=False)) > size:
                    raise CorruptRasterError(path, "TIFF is truncated: pixel data ends past the file")
    except RasterInputError:
        raise
    except Exception as exc:  # tifffile's errors are varied; any of them means a broken header
        raise CorruptRasterError(path, f"TIFF structure is invalid ({_first_line(exc)})") from None


def _check_stream_complete(path: Path, fmt: str, size: int) -> None:
    with open(path, "rb") as f:
        f.seek(max(0, size - 16))
        tail = f.read()
    if fmt == "PNG" and b"IEND" not in tail:
        raise CorruptRasterError(path, "PNG is truncated: no IEND chunk at the end")
    if fmt == "JPEG" and not tail.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise CorruptRasterError(path, "JPEG is truncated: no end-of-image marker")


def _layout(src: rasterio.DatasetReader, overviews: list[int]) -> Layout:
    if src.driver in _SEQUENTIAL_DRIVERS:
        return Layout.SEQUENTIAL
    block_rows, block_cols = src.block_shapes[0]
    if block_cols >= src.width and src.width > block_cols // 2:
        return Layout.STRIPED if src.height > block_rows else Layout.TILED
    return Layout.COG if overviews else Layout.TILED


def inspect_raster(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    remote: RemoteOptions | None = None,
    stac: dict[str, object] | None = None,
) -> RasterInfo:
    """Validate ``path`` (a local file, a URL or a GDAL ``/vsi…/`` path) and describe it. Cheap: reads
    headers and offsets, never pixels (for a remote file: a few range requests)."""
    if is_location(path):
        return _inspect_virtual(locate(path), max_pixels, remote, stac)
    p = check_path(path)
    size = p.stat().st_size
    src = open_dataset(p)
    try:
        fmt = _sniff(p)
        check: Callable[[rasterio.DatasetReader], None] | None = None
        if fmt in ("TIFF", "BigTIFF"):
            check = lambda _src: _check_tiff_complete(p, size)  # noqa: E731
        elif fmt in ("PNG", "JPEG"):
            check = lambda _src: _check_stream_complete(p, fmt, size)  # noqa: E731
        return _describe(src, p, size, max_pixels, check, path=p, stac=stac)
    finally:
        src.close()


def _inspect_virtual(
    location: RasterLocation, max_pixels: int, remote: RemoteOptions | None, stac: dict[str, object] | None
) -> RasterInfo:
    with gdal_env(location, remote):
        try:
            with quiet_georef():
                src = rasterio.open(location.gdal_path, sharing=False)
        except RasterioIOError as exc:
            raise classify_open_error(location, _first_line(exc)) from None
        try:
            size = vsi_size(location.gdal_path) or 0
            check = functools.partial(_check_blocks_within, location.display, size) if size else None
            return _describe(
                src,
                location.display,
                size,
                max_pixels,
                check,
                path=location.display,
                gdal_path=location.gdal_path,
                remote=location.remote,
                stac=stac,
            )
        finally:
            src.close()


def _check_blocks_within(where: str, size: int, src: rasterio.DatasetReader) -> None:
    """A truncated remote TIFF: its last block (at full resolution and in each overview) ends past the file.
    GDAL reports block offsets in its ``TIFF`` metadata domain, from the header it already fetched."""
    if src.driver not in ("GTiff", "COG"):
        return
    datasets = [src] + [
        rasterio.open(src.name, sharing=False, overview_level=i) for i in range(len(src.overviews(1)))
    ]
    try:
        for ds in datasets:
            rows, cols = ds.block_shapes[0]
            last = (math.ceil(ds.width / cols) - 1, math.ceil(ds.height / rows) - 1)
            offset = ds.get_tag_item(f"BLOCK_OFFSET_{last[0]}_{last[1]}", "TIFF", bidx=ds.count)
            length = ds.get_tag_item(f"BLOCK_SIZE_{last[0]}_{last[1]}", "TIFF", bidx=ds.count)
            if offset and length and int(offset) + int(length) > size:
                raise CorruptRasterError(where, "TIFF is truncated: pixel data ends past the remote file")
    finally:
        for ds in datasets[1:]:
            ds.close()


def _describe(
    src: rasterio.DatasetReader,
    where: Path | str,
    size: int,
    max_pixels: int,
    check: Callable[[rasterio.DatasetReader], None] | None,
    **extra: object,
) -> RasterInfo:
    width, height, count = src.width, src.height, src.count
    if width <= 0 or height <= 0 or count <= 0:
        raise CorruptRasterError(where, f"declares an empty raster ({width}x{height}x{count})")
    if width * height > max_pixels:
        raise RasterTooLargeError(
            where,
            f"declares {width}x{height} = {width * height:,} px, above the limit of "
            f"{max_pixels:,} px (raise max_pixels if this is genuine)",
        )
    if count > 1024:
        raise RasterTooLargeError(where, f"declares {count} bands, above the limit of 1024")
    dtype = src.dtypes[0]
    if dtype not in SUPPORTED_DTYPES:
        raise UnsupportedRasterError(where, f"data type {dtype} is not supported")
    if len(set(src.dtypes)) > 1:
        raise UnsupportedRasterError(where, f"bands have mixed data types {sorted(set(src.dtypes))}")
    if check is not None:
        check(src)
    overviews = src.overviews(1)
    georeferenced = src.crs is not None or not src.transform.is_identity
    flags = src.mask_flag_enums
    has_mask = any(MaskFlags.all_valid not in f for f in flags)
    epsg = src.crs.to_epsg() if src.crs else None
    crs = f"EPSG:{epsg}" if epsg else (src.crs.to_wkt() if src.crs else None)
    return RasterInfo(
        driver=src.driver,
        width=width,
        height=height,
        count=count,
        dtype=dtype,
        crs=crs,
        transform=tuple(src.transform)[:6],  # type: ignore[arg-type]
        georeferenced=georeferenced,
        nodata=src.nodata,
        colorinterp=tuple(ci.name for ci in src.colorinterp),
        block_shape=tuple(src.block_shapes[0]),  # type: ignore[arg-type]
        overview_factors=tuple(overviews),
        compression=src.compression.value if src.compression else None,
        has_mask=has_mask,
        layout=_layout(src, overviews),
        file_size=size,
        **extra,  # type: ignore[arg-type]
    )
