"""Pixels served by DynamicImagePyramid, per layout, checked against independent reads of the source.

Expectations come from the fixture's own numpy pixels (native tiles, exact 2**k block means) or from a
direct rasterio ``Resampling.average`` read of the source pixels (coarse level, thumbnail), never from the
code under test.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pyramid.cache import ByteLRUCache
from pyramid.dip import THUMBNAIL, DynamicImagePyramid, TileKey
from pyramid.levels import Level, PixelBox
from pyramid.reader import Region, RegionReader
from tests.pyramid.rasters import Raster, make_options, no_georef_warning, read_window

LOSSLESS = dict(cache_min_pixels=1000, lossless_cache=True)


def sample_cells(lvl: Level) -> list[tuple[int, int]]:
    """First, middle and last row/col (the last ones are partial at the right/bottom edge)."""
    rows = sorted({0, lvl.rows // 2, lvl.rows - 1})
    cols = sorted({0, lvl.cols // 2, lvl.cols - 1})
    return [(r, c) for r in rows for c in cols]


def native_pixels(r: Raster, box: PixelBox) -> np.ndarray:
    return r.data[:3, box.y0 : box.y1, box.x0 : box.x1].transpose(1, 2, 0)


def block_mean(r: Raster, box: PixelBox, f: int) -> np.ndarray:
    """Exact mean of f×f level-0 blocks over ``box`` (multiples of f), rounded half up like GDAL/libvips."""
    a = r.data[:3, box.y0 : box.y1, box.x0 : box.x1].astype(np.float64)
    c, h, w = a.shape
    assert h % f == 0 and w % f == 0
    m = a.reshape(c, h // f, f, w // f, f).mean(axis=(2, 4))
    return np.floor(m + 0.5).astype(np.uint8).transpose(1, 2, 0)


def reference_path(r: Raster, tiled: Raster) -> Path:
    """The file the expectation reads: the source itself, or the same pixels as a tiled TIFF for the PNG
    (random-access reads of a PNG would decode it from the top for every window)."""
    return tiled.path if r.layout == "sequential" else r.path


# ------------------------------------------------------------------------------------ exact pixels


def test_native_tiles_exact(layout_raster: Raster, shared_cache: Path) -> None:
    with DynamicImagePyramid.open(layout_raster.path, make_options(shared_cache, **LOSSLESS)) as dip:
        native_index = len(dip.levels) - 1
        native = dip.levels[native_index]
        assert native.name == "native" and (native.width, native.height) == (
            layout_raster.width,
            layout_raster.height,
        )
        for r, c in sample_cells(native):
            tile = dip.tile(native_index, r, c)
            lb = PixelBox(
                c * 336, r * 336, min((c + 1) * 336, native.width), min((r + 1) * 336, native.height)
            )
            assert tile.key == TileKey(native_index, r, c)
            assert tile.level_name == "native"
            assert tile.level_box == lb and tile.box == lb
            assert tile.pixels.dtype == np.uint8 and tile.pixels.shape == (lb.height, lb.width, 3)
            assert tile.valid is None
            np.testing.assert_array_equal(tile.pixels, native_pixels(layout_raster, lb))


def test_native_tiles_exact_without_disk_cache(layout_raster: Raster, tmp_path: Path) -> None:
    """Below cache_min_pixels (the default 16 Mpx) every layout reads its source directly."""
    with DynamicImagePyramid.open(layout_raster.path, make_options(tmp_path)) as dip:
        n = len(dip.levels) - 1
        for r, c in [(0, 0), (dip.levels[n].rows - 1, dip.levels[n].cols - 1)]:
            tile = dip.tile(n, r, c)
            np.testing.assert_array_equal(tile.pixels, native_pixels(layout_raster, tile.box))
        assert dip.disk_cache is None
    assert not (tmp_path / "cache").exists()


def test_power_of_two_levels_are_exact_block_means(
    layout_raster: Raster, shared_cache: Path, tmp_path: Path
) -> None:
    """levels.py's contract: level pixel i is the mean of level-0 pixels [i*2**k, (i+1)*2**k) whenever the
    overview serving it is exact — the libvips cache (padded), and a COG written by ``lrs-vqa cog``.

    The fixture is 2503×1901 (odd) on purpose. A COG whose overviews GDAL built (ceil-sized, 1252×951, so
    resampled with a ratio of 2503/1252 ≠ 2) is served as stored: the tiles equal that overview's pixels.
    """
    from pyramid.cog import write_cog

    path = layout_raster.path
    gdal_built = layout_raster.layout == "cog"
    if gdal_built:
        exact = tmp_path / "exact_cog.tif"
        write_cog(path, exact, compression="deflate")
    for source, exact_means in [(path, False), (exact, True)] if gdal_built else [(path, True)]:
        with DynamicImagePyramid.open(source, make_options(shared_cache, **LOSSLESS)) as dip:
            pow2 = [(i, lv) for i, lv in enumerate(dip.levels) if lv.name.startswith("1/")]
            assert [lv.name for _, lv in pow2] == ["1/2"]
            for i, lv in pow2:
                f = int(lv.name[2:])
                assert (lv.width, lv.height) == (layout_raster.width // f, layout_raster.height // f)
                for r, c in sample_cells(lv):
                    tile = dip.tile(i, r, c)
                    lb = tile.level_box
                    assert tile.box == PixelBox(lb.x0 * f, lb.y0 * f, lb.x1 * f, lb.y1 * f)
                    if exact_means:
                        expected = block_mean(layout_raster, tile.box, f)
                    else:
                        with rasterio.open(source, overview_level=0) as ovr:
                            expected = ovr.read(window=((lb.y0, lb.y1), (lb.x0, lb.x1))).transpose(1, 2, 0)
                    diff = np.abs(tile.pixels.astype(int) - expected)
                    assert diff.max() == 0, f"{source.name} {lv.name} tile ({r}, {c}): max diff {diff.max()}"


def whole_level(ref: Path, raster: Raster, lv: Level) -> np.ndarray:
    """The whole level as one direct GDAL area-average read of the source: level pixel (X, Y) is the
    average of level-0 [X*fx, (X+1)*fx) x [Y*fy, (Y+1)*fy), which is what every tile must crop."""
    return read_window(ref, (0, 0, raster.width, raster.height), lv.width, lv.height)


@pytest.mark.parametrize("name", ["cog_tif", "tiled_tif"])
def test_coarse_tiles_are_crops_of_the_coarse_level(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Without a disk cache the coarse level is GDAL's area average of the source (via its overviews for
    the cog); each coarse tile must be exactly its level_box cut out of that level, not a resampling of
    the integer-rounded level-0 window [floor(x0*f), ceil(x1*f)), which stretches every tile slightly.
    The cog's coarse level is OpenCV's area average of the same overview: equal to GDAL's up to 1 DN."""
    raster: Raster = request.getfixturevalue(name)
    with DynamicImagePyramid.open(raster.path, make_options(tmp_path)) as dip:
        lv = dip.levels[0]
        assert lv.name == "coarse" and (lv.width, lv.height) == (1008, 766)
        expected = whole_level(raster.path, raster, lv)
        for r, c in sample_cells(lv):
            tile = dip.tile(0, r, c)
            lb = tile.level_box
            diff = np.abs(tile.pixels.astype(int) - expected[lb.y0 : lb.y1, lb.x0 : lb.x1])
            tolerance = 1 if name == "cog_tif" else 0
            assert diff.max() <= tolerance, f"coarse ({r}, {c}): max {diff.max()}, mean {diff.mean():.2f}"


def test_thumbnail_and_coarse_level_image(
    layout_raster: Raster, tiled_tif: Raster, shared_cache: Path
) -> None:
    """The thumbnail (one tile) and the whole coarse level (one read) against a direct GDAL area average.

    ``cog``: the same source overview, area-averaged by OpenCV instead of GDAL → equal up to rounding
    (1 DN; the lossless fixture takes the direct-decode path, so only the averaging differs). Cached
    layouts read the libvips pyramid cache instead, so allow two-stage averaging differences: a correctly
    registered two-stage average (exact 2×/4× cache overview, then area resampling) stays within
    mean 0.5 / max 4 DN of the direct average on this fixture; a misregistered one does not.
    """
    ref = reference_path(layout_raster, tiled_tif)
    with DynamicImagePyramid.open(layout_raster.path, make_options(shared_cache, **LOSSLESS)) as dip:
        thumb = dip.thumbnail()
        coarse = dip.level_image(0)
        for got, lv in [(thumb, dip.thumbnail_level), (coarse, dip.levels[0])]:
            assert got.pixels.shape == (lv.height, lv.width, 3)
            assert got.box == PixelBox(0, 0, layout_raster.width, layout_raster.height)
            diff = np.abs(got.pixels.astype(int) - whole_level(ref, layout_raster, lv))
            msg = f"{lv.name}: max {diff.max()}, mean {diff.mean():.2f}"
            if layout_raster.layout == "cog":
                assert diff.max() <= 1 and diff.mean() < 0.01, msg
            else:
                assert diff.mean() < 1.0 and diff.max() <= 6, msg


@pytest.mark.parametrize("name", ["tiled_tif", "rgb_png"])
def test_default_jpeg_cache_close(name: str, request: pytest.FixtureRequest, shared_cache: Path) -> None:
    """Default (lossy JPEG Q95) cache: native and power-of-two tiles within a mean of 3 DN."""
    raster: Raster = request.getfixturevalue(name)
    with DynamicImagePyramid.open(raster.path, make_options(shared_cache, cache_min_pixels=1000)) as dip:
        for i, lv in enumerate(dip.levels):
            if lv.name == "coarse":
                continue
            f = 1 if lv.is_native else int(lv.name[2:])
            for r, c in sample_cells(lv):
                tile = dip.tile(i, r, c)
                expected = native_pixels(raster, tile.box) if f == 1 else block_mean(raster, tile.box, f)
                diff = np.abs(tile.pixels.astype(int) - expected)
                assert diff.mean() < 3, f"{lv.name} ({r}, {c}): mean {diff.mean():.2f}"
                if lv.is_native and raster.layout != "sequential":
                    assert diff.max() == 0  # native tiles of TIFFs come from the source, not the cache
        assert dip.disk_cache is not None and dip.disk_cache.compression == "jpeg"


def test_level_image_is_the_union_of_its_tiles(cog_tif: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(cog_tif.path, make_options(tmp_path)) as dip:
        for index in (0, THUMBNAIL):
            whole = dip.level_image(index)
            lv = dip.level(index)
            assert whole.pixels.shape == (lv.height, lv.width, 3)
            assert whole.box == PixelBox(0, 0, cog_tif.width, cog_tif.height)
            for key in dip.all_tiles(index):
                tile = dip.tile(key.level, key.row, key.col)
                lb = tile.level_box
                np.testing.assert_array_equal(tile.pixels, whole.pixels[lb.y0 : lb.y1, lb.x0 : lb.x1])


def test_padded(cog_tif: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(cog_tif.path, make_options(tmp_path)) as dip:
        n = len(dip.levels) - 1
        tile = dip.tile(n, 5, 7)  # 151 x 221 corner tile
        assert tile.pixels.shape == (221, 151, 3)
        sq = tile.padded(336, (1, 2, 3))
        assert sq.shape == (336, 336, 3) and sq.dtype == np.uint8
        np.testing.assert_array_equal(sq[:221, :151], native_pixels(cog_tif, tile.box))
        assert (sq[221:] == [1, 2, 3]).all() and (sq[:, 151:] == [1, 2, 3]).all()
        with pytest.raises(ValueError):
            tile.padded(200)


def test_tiles_covering_keys(cog_tif: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(cog_tif.path, make_options(tmp_path)) as dip:
        n = len(dip.levels) - 1
        keys = dip.tiles_covering(n, PixelBox(300, 300, 700, 400))
        assert keys == [TileKey(n, r, c) for r in (0, 1) for c in (0, 1, 2)]
        assert dip.all_tiles(0) == [TileKey(0, r, c) for r in range(3) for c in range(3)]
        assert dip.all_tiles(THUMBNAIL) == [TileKey(THUMBNAIL, 0, 0)]


# ------------------------------------------------------------------------------------ streaming


def test_stream_request_order_and_pixels(cog_tif: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(cog_tif.path, make_options(tmp_path)) as dip:
        keys = [k for level in (*range(len(dip.levels)), THUMBNAIL) for k in dip.all_tiles(level)]
        random.Random(5).shuffle(keys)
        keys = keys[:40]
        streamed = list(dip.stream(keys))
        assert [t.key for t in streamed] == keys
        for t in streamed:
            again = dip.tile(t.key.level, t.key.row, t.key.col)
            assert t.level_box == again.level_box and t.box == again.box
            np.testing.assert_array_equal(t.pixels, again.pixels)
            if dip.level(t.key.level).is_native:
                np.testing.assert_array_equal(t.pixels, native_pixels(cog_tif, t.box))


def test_stream_early_break_does_not_hang(cog_tif: Raster, tmp_path: Path) -> None:
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with DynamicImagePyramid.open(cog_tif.path, make_options(tmp_path)) as dip:
                n = len(dip.levels) - 1
                for i, _tile in enumerate(dip.stream(dip.all_tiles(n), prefetch=8)):
                    if i == 2:
                        break
                gen = dip.stream(dip.all_tiles(n))
                first = next(gen)
                assert first.key == TileKey(n, 0, 0)
                gen.close()
                # the pyramid is still usable after an abandoned stream
                assert [t.key for t in dip.stream(dip.all_tiles(0))] == dip.all_tiles(0)
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)
        finally:
            done.set()

    t0 = time.perf_counter()
    threading.Thread(target=run, daemon=True).start()
    assert done.wait(30), "stream did not finish after an early break"
    assert not errors, errors
    assert time.perf_counter() - t0 < 30


def test_stream_workers_match_serial(cog_tif: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(cog_tif.path, make_options(tmp_path, workers=1)) as serial_dip:
        keys = [k for level in range(len(serial_dip.levels)) for k in serial_dip.all_tiles(level)]
        serial = {k: serial_dip.tile(k.level, k.row, k.col).pixels for k in keys}
    random.Random(1).shuffle(keys)
    with DynamicImagePyramid.open(cog_tif.path, make_options(tmp_path, workers=2)) as dip:
        for t in dip.stream(keys, prefetch=16):
            np.testing.assert_array_equal(t.pixels, serial[t.key])


@pytest.mark.parametrize(
    ("name", "expected_blocks"),
    [
        ("cog_tif", 5 * 4),  # 512² tiles: ceil(2503/512) x ceil(1901/512)
        ("tiled_tif", 5 * 4),
        ("striped_tif", 8),  # 1-row strips → macro blocks of 256 whole rows: ceil(1901/256)
    ],
)
def test_each_block_decoded_once(
    name: str, expected_blocks: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    raster: Raster = request.getfixturevalue(name)
    with DynamicImagePyramid.open(raster.path, make_options(tmp_path, workers=2)) as dip:
        n = len(dip.levels) - 1
        tiles = list(dip.stream(dip.all_tiles(n)))
        assert len(tiles) == 48
        stats = dip.stats
        assert stats["tiles_read"] == 48
        assert stats["blocks_decoded"] == expected_blocks
        # every native tile reads 1..4 macro blocks; all but the first read of each are cache hits
        assert stats["block_cache_hits"] > 0


def test_block_not_decoded_twice_when_a_miss_races_a_finished_decode(cog_tif: Raster) -> None:
    """Thread B misses the block cache, then thread A decodes the block, caches it and clears its in-flight
    entry before B takes the lock: B must find the block in the cache, not decode it again. Forced
    deterministically by pausing B right after its cache miss."""
    a_done = threading.Event()
    b_missed = threading.Event()

    class PausingCache(ByteLRUCache):
        def get(self, key):  # type: ignore[no-untyped-def]
            value = super().get(key)
            if value is None and threading.current_thread().name == "B":
                b_missed.set()
                a_done.wait(10)
            return value

    reader = RegionReader(cog_tif.path, [1, 2, 3], cache=PausingCache(64 * 1024 * 1024))
    try:
        box = PixelBox(0, 0, 100, 100)
        results: list[np.ndarray] = []
        b = threading.Thread(target=lambda: results.append(reader.read(box).data), name="B")
        b.start()
        assert b_missed.wait(10)
        results.append(reader.read(box).data)  # thread A (this one) decodes and caches the block
        a_done.set()
        b.join(10)
        assert len(results) == 2
        np.testing.assert_array_equal(results[0], results[1])
        assert reader.blocks_decoded == 1
    finally:
        a_done.set()
        reader.close()


def test_block_cache_accounts_real_bytes(cog_tif: Raster, tmp_path: Path) -> None:
    """The block cache is bounded in bytes: a decoded 512×512 RGB uint8 block is 786,432 bytes."""
    with DynamicImagePyramid.open(cog_tif.path, make_options(tmp_path)) as dip:
        n = len(dip.levels) - 1
        dip.tile(n, 0, 0)  # inside the first 512² block
        assert dip.stats["blocks_decoded"] == 1
        assert dip.stats["block_cache_bytes"] == 512 * 512 * 3


def test_small_block_cache_still_correct(cog_tif: Raster, tmp_path: Path) -> None:
    """A block cache smaller than one block evicts everything, and pixels stay right."""
    with DynamicImagePyramid.open(cog_tif.path, make_options(tmp_path, tile_cache_bytes=100_000)) as dip:
        n = len(dip.levels) - 1
        for t in dip.stream(dip.all_tiles(n)[:10]):
            np.testing.assert_array_equal(t.pixels, native_pixels(cog_tif, t.box))
        assert dip.stats["block_cache_bytes"] <= 100_000


# ------------------------------------------------------------------------------------ disk cache


def test_disk_cache_built_once_and_keyed_by_content(rgb_png: Raster, tmp_path: Path) -> None:
    opts = make_options(tmp_path, **LOSSLESS)
    with DynamicImagePyramid.open(rgb_png.path, opts) as dip:
        dip.tile(0, 0, 0)
        first = dip.disk_cache
        assert first is not None and first.built_seconds > 0.0
        assert first.path.is_file() and first.path.is_relative_to(tmp_path / "cache")
        assert first.compression == "deflate"
    # the cached pyramid's full resolution is the source, bit for bit (lossless), padded right/bottom by
    # edge copies to a multiple of its deepest factor so every libvips level covers the image exactly,
    # and it has 2× overviews
    with no_georef_warning(), rasterio.open(first.path) as cached:
        assert cached.count == 3
        assert cached.width >= rgb_png.width and cached.height >= rgb_png.height
        assert cached.width % 16 == 0 and cached.height % 16 == 0
        data = cached.read()
        np.testing.assert_array_equal(data[:, : rgb_png.height, : rgb_png.width], rgb_png.data)
        np.testing.assert_array_equal(data[:, rgb_png.height :, : rgb_png.width][:, :1], rgb_png.data[:, -1:])
        assert cached.overviews(1)[:2] == [2, 4]

    with DynamicImagePyramid.open(rgb_png.path, opts) as dip:  # a new pyramid object
        t = dip.tile(len(dip.levels) - 1, 1, 1)
        assert dip.disk_cache is not None
        assert dip.disk_cache.built_seconds == 0.0 and dip.disk_cache.path == first.path
        np.testing.assert_array_equal(t.pixels, native_pixels(rgb_png, t.box))

    copy = tmp_path / "renamed copy.png"
    shutil.copyfile(rgb_png.path, copy)
    with DynamicImagePyramid.open(copy, opts) as dip:
        dip.tile(0, 0, 0)
        assert dip.disk_cache is not None
        assert dip.disk_cache.built_seconds == 0.0
        assert dip.disk_cache.key == first.key and dip.disk_cache.path == first.path
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1


def test_disk_cache_respects_use_disk_cache_false(rgb_png: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(
        rgb_png.path, make_options(tmp_path, use_disk_cache=False, cache_min_pixels=1000)
    ) as dip:
        n = len(dip.levels) - 1
        t = dip.tile(n, 5, 7)
        np.testing.assert_array_equal(t.pixels, native_pixels(rgb_png, t.box))
        assert dip.disk_cache is None
        assert dip.describe()["read_paths"] == {"native": "source", "coarse": "source"}
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("name", "paths"),
    [
        ("cog_tif", {"native": "source", "coarse": "overviews"}),
        ("tiled_tif", {"native": "source", "coarse": "disk-cache"}),
        ("striped_tif", {"native": "source", "coarse": "disk-cache"}),
        ("rgb_png", {"native": "disk-cache", "coarse": "disk-cache"}),
    ],
)
def test_read_paths_by_layout(name: str, paths: dict, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    raster: Raster = request.getfixturevalue(name)
    with DynamicImagePyramid.open(raster.path, make_options(tmp_path, cache_min_pixels=1000)) as dip:
        assert dip.info.layout.value == raster.layout
        assert dip.describe()["read_paths"] == paths


# ------------------------------------------------------------------------------------ ByteLRUCache


def arr(n: int) -> np.ndarray:
    return np.zeros(n, np.uint8)


def test_lru_bounded_and_evicts_least_recently_used() -> None:
    c: ByteLRUCache[np.ndarray] = ByteLRUCache(300)
    c.put("a", arr(100))
    c.put("b", arr(100))
    c.put("c", arr(100))
    assert c.current_bytes == 300 and len(c) == 3
    assert c.get("a") is not None  # a is now the most recent; b is the LRU
    c.put("d", arr(100))
    assert c.get("b") is None
    assert all(c.get(k) is not None for k in "acd")
    assert c.current_bytes == 300
    c.put("e", arr(250))  # must evict a, c, d → only e fits with nothing else
    assert c.current_bytes == 250 and len(c) == 1 and c.get("e") is not None
    c.put("e", arr(50))  # replacing a key does not double count
    assert c.current_bytes == 50 and len(c) == 1


def test_lru_refuses_oversized_values() -> None:
    c: ByteLRUCache[np.ndarray] = ByteLRUCache(300)
    c.put("a", arr(100))
    c.put("huge", arr(301))
    assert c.get("huge") is None
    assert c.get("a") is not None and c.current_bytes == 100  # nothing evicted for it
    c0: ByteLRUCache[np.ndarray] = ByteLRUCache(0)
    c0.put("x", arr(1))
    assert len(c0) == 0 and c0.current_bytes == 0
    with pytest.raises(ValueError):
        ByteLRUCache(-1)


def test_lru_random_workload_never_exceeds_max() -> None:
    rng = random.Random(0)
    c: ByteLRUCache[np.ndarray] = ByteLRUCache(10_000)
    sizes: dict[int, int] = {}
    for _ in range(2000):
        k = rng.randrange(50)
        if rng.random() < 0.6:
            n = rng.randrange(1, 4000)
            c.put(k, arr(n))
            sizes[k] = n
        else:
            c.get(k)
        assert c.current_bytes <= 10_000
    present = [k for k in range(50) if c.get(k) is not None]
    assert c.current_bytes == sum(sizes[k] for k in present)
    assert c.hits + c.misses > 0


def test_lru_counts_region_bytes() -> None:
    """Decoded blocks are stored as reader.Region; their arrays' bytes must count against the bound."""
    c: ByteLRUCache[Region] = ByteLRUCache(1_000_000)
    c.put("r", Region(np.zeros((100, 100, 3), np.uint8), np.ones((100, 100), bool)))
    assert c.current_bytes == 100 * 100 * 3 + 100 * 100
    c.put("s", Region(np.zeros((1000, 1000, 3), np.uint8), None))  # 3 MB: larger than the whole cache
    assert c.get("s") is None


def test_lru_thread_safety() -> None:
    c: ByteLRUCache[np.ndarray] = ByteLRUCache(50_000)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(3000):
            k = rng.randrange(100)
            if rng.random() < 0.5:
                c.put(k, arr(rng.randrange(1, 3000)))
            else:
                c.get(k)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    present = [v for k in range(100) if (v := c.get(k)) is not None]
    assert c.current_bytes == sum(v.nbytes for v in present) <= 50_000
