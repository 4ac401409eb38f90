"""Write a Cloud-Optimized GeoTIFF from any raster GDAL can read, keeping its georeferencing.

Why not just ``rasterio.shutil.copy(driver="COG")``: the COG driver first writes a temporary
overview file and builds every level from it with GDAL's own resampler. That is slow here
(about 150 s for a 27,328² RGB scene, see shared/research/raster_io.md §2). Instead we:

1. stream the source once in bands of ``blocksize`` rows. Each band goes uncompressed into
   temporary tiled level-0 file, and in the same pass every overview level is built by repeated
   2× box averaging (``cv2.INTER_AREA``, which is exact for a 2× reduction) into its own
   temporary file. Nothing larger than one band of rows is held in memory;
2. describe level 0 plus the overview files as one VRT (explicit ``<Overview>`` elements);
3. let GDAL's COG driver copy that VRT with ``OVERVIEWS=FORCE_USE_EXISTING``. It then writes
   the real COG layout (IFDs first, overviews before full resolution, ``LAYOUT=COG``) and
   compresses every pixel exactly once, from lossless temporaries.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import cv2
import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.windows import Window

from pyramid.errors import (
    CorruptRasterError,
    EmptyFileError,
    NotAFileError,
    NotARasterError,
    RasterNotFoundError,
    UnsupportedRasterError,
)

__all__ = ["CogResult", "OutputExistsError", "write_cog"]

_COMPRESSIONS = ("auto", "jpeg", "deflate")
_CV2_DTYPES = frozenset({"uint8", "uint16", "int16", "float32", "float64"})  # INTER_AREA support
_CACHE_BYTES = 256 * 1024 * 1024  # GDAL block cache; rasterio.Env takes an int in BYTES


class OutputExistsError(FileExistsError):
    """The destination exists and ``overwrite`` was not given. ``str(err)`` is one line."""


@dataclass(frozen=True)
class CogResult:
    path: Path
    width: int
    height: int
    count: int  # bands in the output (an alpha turned into a mask is not counted)
    dtype: str
    compression: str  # "jpeg" | "deflate"
    overview_factors: tuple[int, ...]
    blocksize: int
    seconds: float
    crs: str | None


@dataclass(frozen=True)
class _Plan:
    """What to read from the source and how the output bands look."""

    indexes: list[int]  # source bands to read (1-based)
    lut: np.ndarray | None  # palette -> colour LUT (256, n) when the source is paletted
    colorinterp: list[ColorInterp]  # output bands
    dtype: str
    nodata: float | None  # nodata written to the output
    mask: str | None  # None | "alpha" (last read band) | "dataset" (source mask) | "nodata"
    compression: str  # "jpeg" | "deflate"

    @property
    def weighted(self) -> bool:
        """Overviews average only valid pixels (nodata / mask), like GDAL's AVERAGE."""
        return self.mask is not None or self.nodata is not None


def write_cog(
    src: str | Path,
    dst: str | Path,
    *,
    compression: str = "auto",
    quality: int = 90,
    blocksize: int = 512,
    progress: bool = False,
    overwrite: bool = False,
) -> CogResult:
    """Convert ``src`` into a Cloud-Optimized GeoTIFF at ``dst`` and describe the result.

    ``compression="auto"`` picks JPEG (YCbCr for RGB) for uint8 data with 1 or 3 colour bands,
    optionally plus an alpha band or nodata, which become an internal mask; anything else gets
    DEFLATE with a horizontal (integers) or floating-point predictor. Overviews 2, 4, 8, ... are
    box averages down to one block. Nothing is left at ``dst`` if the conversion fails.
    """
    t0 = time.perf_counter()
    src_path, dst_path = Path(src), Path(dst)
    if compression not in _COMPRESSIONS:
        raise ValueError(f"compression must be one of {_COMPRESSIONS}, got {compression!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if blocksize < 16 or blocksize % 16:
        raise ValueError(f"blocksize must be a positive multiple of 16, got {blocksize}")
    if dst_path.is_dir() or (dst_path.exists() and not overwrite):
        raise OutputExistsError(f"{dst_path}: output exists (pass overwrite=True to replace it)")

    env = rasterio.Env(
        GDAL_NUM_THREADS="ALL_CPUS", GDAL_CACHEMAX=_CACHE_BYTES, GDAL_TIFF_INTERNAL_MASK=True
    )
    with env, warnings.catch_warnings():
        # Plain images (PNG, JPEG) have no georeferencing; that is fine for a COG.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with _open_source(src_path) as ds:
            plan = _plan(ds, compression)
            factors = _overview_factors(ds.width, ds.height, blocksize)
            dst_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst_path.name}.", dir=dst_path.parent))
            try:
                files = _stream_levels(ds, plan, factors, blocksize, tmp, progress)
                vrt = tmp / "src.vrt"
                vrt.write_text(_vrt_xml(ds, plan, files))
                out = tmp / "cog.tif"
                with _stage("writing COG", progress):
                    rasterio.shutil.copy(vrt, out, **_cog_options(plan, quality, blocksize))
                os.replace(out, dst_path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            crs = ds.crs.to_string() if ds.crs else None
    return CogResult(
        path=dst_path,
        width=ds.width,
        height=ds.height,
        count=len(plan.colorinterp),
        dtype=plan.dtype,
        compression=plan.compression,
        overview_factors=tuple(factors),
        blocksize=blocksize,
        seconds=time.perf_counter() - t0,
        crs=crs,
    )


# --------------------------------------------------------------------------- source & plan


@contextmanager
def _open_source(path: Path) -> Iterator[Any]:
    if not path.exists():
        raise RasterNotFoundError(path, "no such file")
    if not path.is_file():
        raise NotAFileError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise EmptyFileError(path, "file is empty")
    try:
        ds = rasterio.open(path)
    except RasterioIOError as exc:
        raise NotARasterError(path, f"not a raster GDAL can read ({exc})") from exc
    with ds:
        yield ds


def _plan(ds: Any, compression: str) -> _Plan:
    dtype = ds.dtypes[0]
    if len(set(ds.dtypes)) != 1:
        raise UnsupportedRasterError(ds.name, f"bands have different data types {ds.dtypes}")
    if np.dtype(dtype).kind not in "uif":
        raise UnsupportedRasterError(ds.name, f"data type {dtype} is not supported")
    indexes = list(range(1, ds.count + 1))
    ci = list(ds.colorinterp)
    lut = None
    if ds.count == 1 and ci[0] == ColorInterp.palette:
        # Averaging palette indices is meaningless: expand to RGB(A) first.
        cmap = ds.colormap(1)
        lut = np.zeros((256, 4), np.uint8)
        for i, rgba in cmap.items():
            if 0 <= i < 256:
                lut[i] = rgba
        if (lut[:, 3] == 255).all():
            lut = lut[:, :3]
        ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha][
            : lut.shape[1]
        ]
        dtype = "uint8"

    alpha = len(ci) in (2, 4) and ci[-1] == ColorInterp.alpha and ColorInterp.alpha not in ci[:-1]
    colours = len(ci) - 1 if alpha else len(ci)
    nodata = None if lut is not None else ds.nodata
    jpeg_ok = dtype == "uint8" and colours in (1, 3)
    if compression == "jpeg" and not jpeg_ok:
        raise UnsupportedRasterError(
            ds.name,
            f"JPEG needs uint8 data with 1 or 3 colour bands (+ alpha); this raster has "
            f"{len(ci)} {dtype} band(s); use compression='deflate'",
        )
    comp = "jpeg" if compression == "jpeg" or (compression == "auto" and jpeg_ok) else "deflate"

    mask: str | None = None
    if comp == "jpeg" and alpha:
        mask, ci = "alpha", ci[:-1]  # like GDAL's COG driver: RGB JPEG + internal mask
    elif comp == "jpeg" and nodata is not None:
        mask, nodata = "nodata", None  # JPEG moves values, so nodata can only survive as a mask
    elif lut is None and nodata is None and not alpha and _has_dataset_mask(ds):
        mask = "dataset"
    return _Plan(indexes, lut, ci, dtype, nodata, mask, comp)


def _has_dataset_mask(ds: Any) -> bool:
    flags = ds.mask_flag_enums[0]
    return MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags


def _overview_factors(width: int, height: int, blocksize: int) -> list[int]:
    """2, 4, 8, ... until the overview fits into one block (GDAL COG driver convention)."""
    factors, f = [], 1
    while math.ceil(width / f) > blocksize or math.ceil(height / f) > blocksize:
        f *= 2
        factors.append(f)
    return factors


# --------------------------------------------------------------------------- streaming pass


class _Level:
    """One temporary, uncompressed, tiled GTiff (level 0 or an overview) being filled top-down."""

    def __init__(self, path: Path, width: int, height: int, plan: _Plan, blocksize: int) -> None:
        self.path, self.width, self.height, self.row = path, width, height, 0
        self.plan = plan
        self.carry: tuple[np.ndarray, np.ndarray | None] | None = None  # odd row for next level
        self.ds = rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=width,
            height=height,
            count=len(plan.colorinterp),
            dtype=plan.dtype,
            nodata=plan.nodata,
            tiled=True,
            blockxsize=blocksize,
            blockysize=blocksize,
            interleave="pixel",
            bigtiff="IF_SAFER",
        )

    def write(self, data: np.ndarray, valid: np.ndarray | None) -> None:
        win = Window(0, self.row, self.width, data.shape[0])
        self.ds.write(data.transpose(2, 0, 1), window=win)
        if self.plan.mask is not None and valid is not None:
            self.ds.write_mask(np.where(valid.any(axis=2), np.uint8(255), np.uint8(0)), window=win)
        self.row += data.shape[0]


def _stream_levels(
    ds: Any, plan: _Plan, factors: list[int], blocksize: int, tmp: Path, progress: bool
) -> list[Path]:
    levels = [
        _Level(
            tmp / f"l{k}.tif",
            math.ceil(ds.width / f),
            math.ceil(ds.height / f),
            plan,
            blocksize,
        )
        for k, f in enumerate([1, *factors])
    ]
    try:
        with _bar(progress, ds.height) as advance:
            for y in range(0, ds.height, blocksize):
                h = min(blocksize, ds.height - y)
                data, valid = _read_band(ds, plan, Window(0, y, ds.width, h))
                levels[0].write(data, valid)
                if len(levels) > 1:
                    if plan.weighted:
                        w = valid.astype(np.float32)  # type: ignore[union-attr]
                        carried: np.ndarray = data.astype(np.float32) * w  # premultiplied
                        _descend(levels, 1, carried, w, last=y + h == ds.height)
                    else:
                        _descend(levels, 1, data, None, last=y + h == ds.height)
                advance(h)
    finally:
        for lv in levels:
            lv.ds.close()
    for lv in levels:
        if lv.row != lv.height:  # guards the carry logic; never expected
            raise RuntimeError(f"internal error: level {lv.path.name} got {lv.row}/{lv.height}")
    return [lv.path for lv in levels]


def _read_band(ds: Any, plan: _Plan, win: Window) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows of the source as (h, w, bands) in output dtype plus a validity array or None."""
    try:
        hwc = np.empty((int(win.height), int(win.width), len(plan.indexes)), ds.dtypes[0])
        ds.read(plan.indexes, window=win, out=hwc.transpose(2, 0, 1))  # no CHW->HWC copy
        dmask = ds.read_masks(1, window=win) if plan.mask == "dataset" else None
    except RasterioError as exc:
        raise CorruptRasterError(ds.name, f"cannot decode rows at {win.row_off}: {exc}") from exc
    if plan.lut is not None:
        hwc = plan.lut[hwc[:, :, 0]]
    if plan.mask == "alpha":
        return hwc[:, :, :-1], hwc[:, :, -1:] > 0
    if plan.mask == "dataset":
        return hwc, dmask[:, :, None] > 0  # type: ignore[index]
    if plan.nodata is not None or plan.mask == "nodata":
        nd = ds.nodata
        bad = np.isnan(hwc) if math.isnan(nd) else hwc == np.asarray(nd).astype(hwc.dtype)
        valid = ~bad
        return hwc, valid.all(axis=2, keepdims=True) if plan.mask == "nodata" else valid
    return hwc, None


def _descend(
    levels: list[_Level], k: int, data: np.ndarray, w: np.ndarray | None, *, last: bool
) -> None:
    """Feed rows of level k-1 (premultiplied + weights when weighted) into level k and below."""
    prev = levels[k - 1]
    if prev.carry is not None:  # an odd row left over from the previous band
        data = np.concatenate([prev.carry[0], data])
        w = None if w is None else np.concatenate([prev.carry[1], w])  # type: ignore[list-item]
        prev.carry = None
    if data.shape[0] % 2:
        if last:  # bottom edge: duplicate the last row, so the average uses only real pixels
            data = np.concatenate([data, data[-1:]])
            w = None if w is None else np.concatenate([w, w[-1:]])
        else:
            prev.carry = (data[-1:], None if w is None else w[-1:])
            data, w = data[:-1], None if w is None else w[:-1]
    if data.shape[0]:
        data = _down2(data)
        if w is None:
            levels[k].write(data, None)
        else:
            w = _down2(w)
            levels[k].write(_unpremultiply(data, w, levels[k].plan), w > 0)
    else:  # nothing to average yet (one odd row carried); keep shapes consistent below
        data = data[:, : levels[k].width]
        w = None if w is None else w[:, : levels[k].width]
    if k + 1 < len(levels):
        _descend(levels, k + 1, data, w, last=last)


def _down2(a: np.ndarray) -> np.ndarray:
    """Exact 2×2 box average of (h even, w, c); an odd last column is averaged on its own."""
    if a.shape[1] % 2:
        a = np.concatenate([a, a[:, -1:]], axis=1)
    h, w, c = a.shape[0] // 2, a.shape[1] // 2, a.shape[2]
    work = a if a.dtype.name in _CV2_DTYPES else a.astype(np.float64)
    # cv2 drops a single channel axis and handles at most 512 channels per call.
    parts = [
        cv2.resize(work[:, :, i : i + 512], (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, -1)
        for i in range(0, c, 512)
    ]
    out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)
    return _cast(out, a.dtype)


def _unpremultiply(p: np.ndarray, w: np.ndarray, plan: _Plan) -> np.ndarray:
    fill = plan.nodata if plan.nodata is not None else 0
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(w > 0, p / np.maximum(w, 1e-30), np.float32(fill))
    return _cast(v, np.dtype(plan.dtype))


def _cast(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if a.dtype == dtype:
        return a
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(a), info.min, info.max).astype(dtype)
    return a.astype(dtype)


# --------------------------------------------------------------------------- VRT & final copy


def _vrt_xml(ds: Any, plan: _Plan, files: list[Path]) -> str:
    """Level 0 with every other level attached as explicit overviews (read by COPY_SRC_OVERVIEWS)."""

    def sources(tag: str, band: str) -> str:
        first = f"<SourceFilename>{escape(str(files[0]))}</SourceFilename>"
        ovr = "".join(
            f"<Overview><SourceFilename>{escape(str(f))}</SourceFilename>"
            f"<SourceBand>{band}</SourceBand></Overview>"
            for f in files[1:]
        )
        return f"<SimpleSource>{first}<SourceBand>{band}</SourceBand></SimpleSource>{ovr}"

    gdal_type = {"uint8": "Byte"}.get(plan.dtype, plan.dtype.capitalize())
    gdal_type = {"Uint16": "UInt16", "Uint32": "UInt32", "Uint64": "UInt64"}.get(
        gdal_type, gdal_type
    )
    parts = [f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">']
    if ds.crs:
        parts.append(f"<SRS>{escape(ds.crs.to_wkt())}</SRS>")
    if not ds.transform.is_identity:
        parts.append(
            f"<GeoTransform>{', '.join(repr(v) for v in ds.transform.to_gdal())}</GeoTransform>"
        )
    if ds.tags():
        mdi = "".join(
            f'<MDI key="{escape(k, {chr(34): "&quot;"})}">{escape(v)}</MDI>'
            for k, v in ds.tags().items()
        )
        parts.append(f"<Metadata>{mdi}</Metadata>")
    for i, ci in enumerate(plan.colorinterp, start=1):
        extra = f"<ColorInterp>{ci.name.capitalize()}</ColorInterp>"
        if plan.nodata is not None:
            extra += f"<NoDataValue>{plan.nodata!r}</NoDataValue>"
        if plan.lut is None and ds.descriptions[i - 1]:
            extra += f"<Description>{escape(ds.descriptions[i - 1])}</Description>"
        parts.append(
            f'<VRTRasterBand dataType="{gdal_type}" band="{i}">{extra}{sources("", str(i))}'
            "</VRTRasterBand>"
        )
    if plan.mask is not None:
        parts.append(
            f'<MaskBand><VRTRasterBand dataType="Byte">{sources("", "mask,1")}'
            "</VRTRasterBand></MaskBand>"
        )
    parts.append("</VRTDataset>")
    return "".join(parts)


def _cog_options(plan: _Plan, quality: int, blocksize: int) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "driver": "COG",
        "BLOCKSIZE": blocksize,
        "OVERVIEWS": "FORCE_USE_EXISTING",  # ours; never let GDAL rebuild them
        "NUM_THREADS": "ALL_CPUS",
        "BIGTIFF": "IF_SAFER",
    }
    if plan.compression == "jpeg":
        opts.update(COMPRESS="JPEG", QUALITY=quality)  # COG driver picks YCbCr for 3 bands
    else:
        opts.update(COMPRESS="DEFLATE", PREDICTOR="YES")  # YES = 2 for ints, 3 for floats
    return opts


# --------------------------------------------------------------------------- progress


@contextmanager
def _bar(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    cols = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"))
    with Progress(*cols, TimeElapsedColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task("reading + overviews", total=total)
        yield lambda n: bar.advance(task, n)


def _stage(label: str, enabled: bool) -> Any:
    """Indeterminate line for a GDAL step that reports no progress through rasterio."""
    if not enabled:
        return nullcontext()
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = Progress(
        SpinnerColumn(),
        TextColumn(label),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    bar.add_task(label, total=None)
    return bar


_ = threading  # reserved
