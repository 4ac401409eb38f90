"""Raster helpers of the pyramid tests (the fixtures that use them are in ``tests/pyramid/conftest.py``):
the :class:`Raster` a fixture returns carries the pixels it wrote, so tests compute their expectations with
numpy or direct rasterio reads and never through the code under test."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from pyramid.dip import PyramidOptions

CRS = "EPSG:32633"
TRANSFORM = from_origin(500000.0, 5000000.0, 0.5, 0.5)
# Odd sizes on purpose: power-of-two levels drop a remainder column/row and edge tiles are partial.
W, H = 2503, 1901
# Smaller images for the radiometry fixtures (still above 1008 px, so a coarse level exists).
SW, SH = 1500, 1100
NODATA = -9999.0


@dataclass(frozen=True)
class Raster:
    path: Path
    data: np.ndarray  # (bands, h, w) exactly as written
    layout: str | None = None
    crs: str | None = None
    transform: Affine | None = None
    nodata: float | None = None

    @property
    def width(self) -> int:
        return int(self.data.shape[2])

    @property
    def height(self) -> int:
        return int(self.data.shape[1])

    @property
    def count(self) -> int:
        return int(self.data.shape[0])


def smooth(bands: int, h: int, w: int, seed: int, hi: float = 255.0) -> np.ndarray:
    """(bands, h, w) float32 in [0, hi]: smooth blobs plus some noise, like imagery; fixed seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((h // 40 + 2, w // 40 + 2, bands), dtype=np.float32)
    a = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, bands)
    a += rng.normal(0.0, 0.01, a.shape).astype(np.float32)
    return (np.clip(a, 0.0, 1.0) * hi).transpose(2, 0, 1)


@contextlib.contextmanager
def no_georef_warning() -> Iterator[None]:
    """For writing/reading non-georeferenced files in the tests themselves (pytest makes it an error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def write_tiff(path: Path, data: np.ndarray, *, georef: bool = True, **kw: object) -> Path:
    """A GeoTIFF (or plain TIFF with ``georef=False``) via rasterio; ``colorinterp`` before the pixels."""
    ci = kw.pop("colorinterp", None)
    overviews = kw.pop("overviews", None)
    profile: dict[str, object] = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
    )
    if georef:
        profile.update(crs=CRS, transform=TRANSFORM)
    profile.update(kw)
    with no_georef_warning():
        with rasterio.open(path, "w", **profile) as dst:
            if ci is not None:
                dst.colorinterp = ci
            dst.write(data)
        if overviews:
            with rasterio.open(path, "r+") as dst:
                dst.build_overviews(list(overviews), Resampling.average)
    return path


def read_window(
    path: Path, box0: tuple[int, int, int, int], out_w: int, out_h: int, indexes: list[int] | None = None
) -> np.ndarray:
    """Independent expectation: rasterio average-resampled read of level-0 ``box0`` → (h, w, bands)."""
    from rasterio.windows import Window

    x0, y0, x1, y1 = box0
    with no_georef_warning(), rasterio.open(path) as src:
        idx = indexes or list(range(1, src.count + 1))
        a = src.read(
            idx,
            window=Window(x0, y0, x1 - x0, y1 - y0),
            out_shape=(len(idx), out_h, out_w),
            resampling=Resampling.average,
        )
    return a.transpose(1, 2, 0)


def make_options(tmp_path: Path, **kw: object) -> PyramidOptions:
    """PyramidOptions whose disk cache lives under ``tmp_path / "cache"`` (never the user's home)."""
    kw.setdefault("cache_dir", tmp_path / "cache")
    return PyramidOptions(**kw)  # type: ignore[arg-type]
