"""The fast streaming path (issue 15): tiles read in runs from pinned, pooled blocks, decoded into reused
buffers. Pixels must equal an independent decode bit for bit, and no buffer a caller still holds may ever
be written again, however small the block cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pyramid.dip import THUMBNAIL, DynamicImagePyramid, TileKey
from pyramid.reader import TileBuffers
from tests.pyramid.rasters import Raster, make_options, write_tiff

BLOCK_BYTES = 512 * 512 * 3


@pytest.fixture(scope="module")
def jpeg_cog(tmp_path_factory: pytest.TempPathFactory, rgb_data: np.ndarray) -> Raster:
    """Tiled 512 JPEG (YCbCr): the path that decodes straight into pooled block buffers."""
    path = tmp_path_factory.mktemp("jpeg") / "jpeg.tif"
    write_tiff(
        path,
        rgb_data,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="jpeg",
        photometric="YCBCR",
        overviews=(2, 4),
    )
    return Raster(path, tifffile.imread(path).transpose(2, 0, 1), "cog")  # libjpeg-turbo's own pixels


def expected(r: Raster, box: object) -> np.ndarray:
    return r.data[:, box.y0 : box.y1, box.x0 : box.x1].transpose(1, 2, 0)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["jpeg_cog", "cog_tif"])
def test_streamed_tiles_equal_an_independent_decode(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    r: Raster = request.getfixturevalue(name)
    with DynamicImagePyramid.open(r.path, make_options(tmp_path)) as dip:
        native = len(dip.levels) - 1
        reader = dip._native_reader()
        assert reader.buffers is not None  # the pooled path is the one under test
        if name == "jpeg_cog":
            assert reader.direct is not None and reader.direct.jpeg is not None
        tiles = list(dip.stream(dip.all_tiles(native)))
        assert [t.key for t in tiles] == dip.all_tiles(native)
        for t in tiles:
            np.testing.assert_array_equal(t.pixels, expected(r, t.box))
            again = dip.tile(t.key.level, t.key.row, t.key.col)
            np.testing.assert_array_equal(again.pixels, t.pixels)


def test_held_tiles_are_never_overwritten(jpeg_cog: Raster, tmp_path: Path) -> None:
    """A cache of 3 blocks evicts and recycles block buffers all the time and the tile ring is far smaller
    than the tiles held: every held tile must still hold its own pixels at the end, in its own memory."""
    cache = 3 * BLOCK_BYTES
    options = make_options(tmp_path, tile_cache_bytes=cache, workers=2)
    with DynamicImagePyramid.open(jpeg_cog.path, options) as dip:
        native = len(dip.levels) - 1
        keys = dip.all_tiles(native) * 2  # twice over: the second pass decodes every block again
        held = []
        for t in dip.stream(keys, prefetch=4):
            held.append(t)
            assert dip.stats["block_cache_bytes"] <= cache
        reader = dip._native_reader()
        assert reader.buffers is not None and reader.buffers.reused > 0  # block buffers were recycled
        for t in held:
            np.testing.assert_array_equal(t.pixels, expected(jpeg_cog, t.box))
        addresses = [t.pixels.__array_interface__["data"][0] for t in held]
        assert len(set(addresses)) == len(held)  # all alive at once: no two share a buffer


def test_dropped_tiles_are_reused_and_views_keep_theirs(jpeg_cog: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(jpeg_cog.path, make_options(tmp_path)) as dip:
        native = len(dip.levels) - 1
        full = [k for k in dip.all_tiles(native) if dip.tiles([k])[0].pixels.shape[:2] == (336, 336)]
        kept_view = dip.tile(native, full[0].row, full[0].col).pixels[10:20, 10:20]  # only a view survives
        want = kept_view.copy()
        for _ in range(3):
            for t in dip.stream(full):
                np.testing.assert_array_equal(t.pixels, expected(jpeg_cog, t.box))
        ring = dip._native_reader().tile_buffers
        assert ring is not None and ring.reused > 0
        np.testing.assert_array_equal(kept_view, want)


def test_tile_buffers_hand_out_only_unreferenced_arrays() -> None:
    ring = TileBuffers((4, 4, 3), np.dtype(np.uint8), size=2)
    a = ring.take()
    b = ring.take()
    assert a is not b
    view = a[1:]
    del a
    c = ring.take()  # a is referenced by its view, b by this frame: neither may come back
    assert not np.shares_memory(c, view) and not np.shares_memory(c, b)
    del b
    assert not np.shares_memory(ring.take(), view)


def test_mixed_levels_and_rows_stream_in_order(jpeg_cog: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(jpeg_cog.path, make_options(tmp_path)) as dip:
        keys = [TileKey(lv, r, c) for lv in (len(dip.levels) - 1, 1) for r, c in ((0, 0), (0, 1), (1, 0))]
        keys += [TileKey(THUMBNAIL, 0, 0), TileKey(-2, 0, 1)]  # below THUMBNAIL: counted from native
        streamed = list(dip.stream(keys))
        assert [(t.key.row, t.key.col) for t in streamed] == [(k.row, k.col) for k in keys]
        assert streamed[-2].key.level == THUMBNAIL and streamed[-1].key.level == len(dip.levels) - 2
        for t, k in zip(streamed, keys, strict=True):
            np.testing.assert_array_equal(t.pixels, dip.tile(k.level, k.row, k.col).pixels)


def test_open_and_describe_import_no_resampler_or_projection(jpeg_cog: Raster) -> None:
    """Cold start: opening a pyramid (what ``lrs-vqa inspect`` does) loads no cv2, pyproj or shapely."""
    code = (
        "import sys, json\n"
        "from pyramid.dip import DynamicImagePyramid\n"
        f"with DynamicImagePyramid.open({str(jpeg_cog.path)!r}) as dip:\n"
        "    dip.describe(); dip.tile(len(dip.levels) - 1, 0, 0)\n"
        "print(json.dumps([m for m in ('cv2', 'pyproj', 'shapely') if m in sys.modules]))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
