"""Bands and radiometry: which source bands become R, G, B, and how non-8-bit data becomes uint8.

16-bit and float data are linearly stretched between per-band percentiles computed once per image from
a coarse level (masked pixels excluded) — never truncated to a high byte the way PIL does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from rasterio.enums import ColorInterp

from pyramid.errors import UnsupportedRasterError

SUPPORTED_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"})


@dataclass(frozen=True)
class BandPlan:
    """1-based source band indexes read for R, G, B, and the alpha band if any."""

    rgb: tuple[int, int, int]
    alpha: int | None = None

    @property
    def read_indexes(self) -> list[int]:
        """Distinct bands to read, in order; ``rgb_positions`` maps R, G, B into this list."""
        return list(dict.fromkeys(self.rgb))

    @cached_property
    def rgb_positions(self) -> list[int]:
        """Where R, G, B sit in ``read_indexes`` (every read needs it: computed once; do not mutate)."""
        idx = self.read_indexes
        return [idx.index(b) for b in self.rgb]


def choose_bands(
    path: str,
    count: int,
    colorinterp: tuple[ColorInterp, ...],
    requested: tuple[int, ...] | None = None,
) -> BandPlan:
    """Pick R, G, B by explicit request, else by colour interpretation, else the first three bands.

    RGBN data marked RGB+alpha is a known trap: an explicit request always wins, and band 4 is treated as
    alpha only when it is *declared* alpha.
    """
    if count < 1:
        raise UnsupportedRasterError(path, "the raster has no bands")
    if colorinterp and colorinterp[0] == ColorInterp.palette:
        raise UnsupportedRasterError(
            path, "paletted (colour-mapped) rasters are not supported; expand to RGB first"
        )
    alpha = next((i + 1 for i, ci in enumerate(colorinterp) if ci == ColorInterp.alpha), None)
    if requested is not None:
        if len(requested) not in (1, 3) or any(not 1 <= b <= count for b in requested):
            raise UnsupportedRasterError(
                path, f"band selection {list(requested)} must be 1 or 3 indexes in 1..{count}"
            )
        rgb = (requested[0],) * 3 if len(requested) == 1 else tuple(requested)
        return BandPlan(rgb, alpha if alpha not in rgb else None)  # type: ignore[arg-type]
    if count < 3 or (count == 3 and alpha is not None):
        return BandPlan((1, 1, 1), alpha if alpha != 1 else None)
    by_ci = {ci: i + 1 for i, ci in enumerate(colorinterp)}
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(ci in by_ci for ci in wanted):
        return BandPlan(tuple(by_ci[ci] for ci in wanted), alpha)  # type: ignore[arg-type]
    return BandPlan((1, 2, 3), alpha if alpha not in (1, 2, 3) else None)


@dataclass(frozen=True)
class Stretch:
    """Linear per-band map ``[low, high] → [0, 255]`` with clipping; identity for uint8 sources."""

    dtype: str
    low: tuple[float, float, float] = (0.0, 0.0, 0.0)
    high: tuple[float, float, float] = (255.0, 255.0, 255.0)

    @property
    def is_identity(self) -> bool:
        return self.dtype == "uint8"

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) source dtype → (h, w, 3) uint8."""
        if self.is_identity:
            return rgb if rgb.dtype == np.uint8 else rgb.astype(np.uint8)
        out = np.empty(rgb.shape, np.uint8)
        if rgb.dtype == np.uint16:
            # A 65,536-entry LUT per band is ~5x faster than float arithmetic (raster_io.md §4).
            for b in range(3):
                np.take(self._lut(b), rgb[..., b], out=out[..., b])
            return out
        for b in range(3):
            band = rgb[..., b].astype(np.float32)
            scaled = (band - self.low[b]) * (255.0 / (self.high[b] - self.low[b]))
            np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255, out=scaled)
            out[..., b] = np.rint(scaled)
        return out

    def _lut(self, band: int) -> np.ndarray:
        values = np.arange(65536, dtype=np.float32)
        scaled = (values - self.low[band]) * (255.0 / (self.high[band] - self.low[band]))
        return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)

    def describe(self) -> dict[str, object]:
        if self.is_identity:
            return {"kind": "identity"}
        return {"kind": "linear", "low": list(self.low), "high": list(self.high)}


def _percentiles_uint16(values: np.ndarray, q: tuple[float, float]) -> tuple[float, float]:
    hist = np.bincount(values, minlength=65536)
    cdf = np.cumsum(hist)
    total = cdf[-1]
    lo = int(np.searchsorted(cdf, total * q[0] / 100.0, side="left"))
    hi = int(np.searchsorted(cdf, total * q[1] / 100.0, side="left"))
    return float(lo), float(hi)


def compute_stretch(
    dtype: str,
    rgb: np.ndarray,
    valid: np.ndarray | None,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> Stretch:
    """Per-band percentiles from a coarse-level sample ``rgb`` (h, w, 3) in the source dtype."""
    if dtype == "uint8":
        return Stretch(dtype)
    lows: list[float] = []
    highs: list[float] = []
    for b in range(3):
        band = rgb[..., b]
        values = band[valid] if valid is not None else band.ravel()
        if np.issubdtype(values.dtype, np.floating):
            values = values[np.isfinite(values)]
        if values.size == 0:
            lo, hi = 0.0, 1.0
        elif values.dtype == np.uint16:
            lo, hi = _percentiles_uint16(values, percentiles)
        else:
            lo, hi = (float(v) for v in np.percentile(values, percentiles))
        if hi <= lo:  # constant band: keep it visible instead of dividing by zero
            hi = lo + 1.0
        lows.append(lo)
        highs.append(hi)
    return Stretch(dtype, tuple(lows), tuple(highs))  # type: ignore[arg-type]
