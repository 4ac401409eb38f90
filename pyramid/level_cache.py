"""On-disk pyramid cache for rasters without random access or without overviews.

One streaming pass with libvips writes a tiled, pyramidal TIFF (all 2× levels at once) under a folder named
by the file's content key, so the 2nd..nth question on the same image reads overviews and blocks from it.
libvips writes no GeoTIFF keys; georeferencing always comes from the source itself.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pyramid.cache import content_key
from pyramid.errors import CorruptRasterError
from pyramid.source import RasterInfo

CACHE_FORMAT_VERSION = 2  # 2: padded to a power-of-two multiple


@dataclass(frozen=True)
class LevelCacheEntry:
    path: Path
    key: str
    compression: str
    built_seconds: float  # 0.0 when it was already there


def _compression(info: RasterInfo, lossless: bool) -> tuple[str, dict[str, object]]:
    if not lossless and info.dtype == "uint8" and info.count in (1, 3):
        return "jpeg", {"Q": 95}
    predictor = "float" if info.dtype.startswith("float") else "horizontal"
    return "deflate", {"predictor": predictor}


def cache_entry_path(info: RasterInfo, cache_dir: Path, lossless: bool) -> tuple[Path, str]:
    key = content_key(info.path)
    comp, _ = _compression(info, lossless)
    return cache_dir / f"{key}-{comp}" / "pyramid.tif", key


def ensure_level_cache(
    info: RasterInfo, cache_dir: Path, *, lossless: bool = False, progress: bool = False
) -> LevelCacheEntry:
    """Return the cached pyramid for ``info``, building it in one streaming pass if missing."""
    out, key = cache_entry_path(info, cache_dir, lossless)
    comp, options = _compression(info, lossless)
    meta_path = out.with_name("meta.json")
    if out.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("version") == CACHE_FORMAT_VERSION:
            return LevelCacheEntry(out, key, comp, 0.0)
    out.parent.mkdir(parents=True, exist_ok=True)

    import pyvips  # imported late: VIPS_CONCURRENCY must be set before (done in pyramid.source)

    t0 = time.perf_counter()
    tmp = out.with_name(f".pyramid.{os.getpid()}.tmp.tif")
    try:
        image = pyvips.Image.new_from_file(str(info.path), access="sequential")
        if (image.width, image.height, image.bands) != (info.width, info.height, info.count):
            raise CorruptRasterError(
                info.path,
                f"libvips sees {image.width}x{image.height}x{image.bands}, GDAL sees "
                f"{info.width}x{info.height}x{info.count}; cannot build a consistent cache",
            )
        # libvips halves with floor(): pad right/bottom (edge copies) to a multiple of the deepest factor
        # so each cache level covers exactly the image and GDAL's overview ratios are exact powers of 2.
        step = 2 ** max(0, math.ceil(math.log2(max(info.width, info.height) / 256)))
        padded_w, padded_h = -(-info.width // step) * step, -(-info.height // step) * step
        if (padded_w, padded_h) != (info.width, info.height):
            image = image.embed(0, 0, padded_w, padded_h, extend="copy")
        bar = _VipsProgress(image, f"building pyramid cache ({comp})") if progress else None
        try:
            image.tiffsave(
                str(tmp),
                tile=True,
                tile_width=512,
                tile_height=512,
                pyramid=True,
                compression=comp,
                bigtiff=True,
                **options,
            )
        finally:
            if bar is not None:
                bar.close()
        os.replace(tmp, out)
    except pyvips.Error as exc:
        first = (str(exc).strip().splitlines() or ["libvips error"])[0][:200]
        raise CorruptRasterError(info.path, f"cannot be decoded to build its cache ({first})") from None
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    meta = {
        "version": CACHE_FORMAT_VERSION,
        "source": str(info.path),
        "key": key,
        "width": info.width,
        "height": info.height,
        "bands": info.count,
        "dtype": info.dtype,
        "compression": comp,
        "seconds": round(seconds, 3),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return LevelCacheEntry(out, key, comp, seconds)


class _VipsProgress:
    """A rich progress bar fed by libvips' eval signal."""

    def __init__(self, image: object, description: str) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._task = self._progress.add_task(description, total=100)
        self._progress.start()
        image.set_progress(True)  # type: ignore[attr-defined]
        image.signal_connect("eval", self._on_eval)  # type: ignore[attr-defined]

    def _on_eval(self, _image: object, progress: object) -> None:
        self._progress.update(self._task, completed=progress.percent)  # type: ignore[attr-defined]

    def close(self) -> None:
        self._progress.stop()
