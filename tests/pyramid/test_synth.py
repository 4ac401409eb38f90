"""Tests for the synthetic scene generator (pyramid.synth): checks values, not just that it runs."""

from __future__ import annotations

import itertools
import json
import shutil
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from pyramid.synth import (
    _COLORS,
    _ROAD_RGB,
    PlantedObject,
    SceneInfo,
    _cubic,
    _linear_rows,
    _Renderer,
    load_scene_info,
    synthesize_scene,
)

GEOTIFF_TAGS = (33550, 33922, 34264, 34735)  # ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeys


def read(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # only for non-georeferenced files
        with rasterio.open(path) as src:
            return src.read()


def overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def check_objects(info: SceneInfo, region: tuple[int, int, int, int]) -> None:
    rx0, ry0, rx1, ry1 = region
    for o in info.objects:
        x0, y0, x1, y1 = o.pixel_box
        assert rx0 <= x0 < x1 <= rx1 and ry0 <= y0 < y1 <= ry1, o
        assert min(x1 - x0, y1 - y0) >= 8 and max(x1 - x0, y1 - y0) <= 40, o
        assert o.color in _COLORS
    for a, b in itertools.combinations(info.objects, 2):
        assert not overlaps(a.pixel_box, b.pixel_box), (a, b)
    assert [o.id for o in info.objects] == list(range(len(info.objects)))


def test_georeferenced_jpeg_layout(tmp_path: Path) -> None:
    info = synthesize_scene(tmp_path / "scene.tif", (700, 500), seed=1)
    assert (info.width, info.height, info.seed) == (700, 500, 1)
    assert info.crs == "EPSG:32633"
    assert info.transform == (0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0)
    assert info.path == (tmp_path / "scene.tif").resolve()
    assert info.sidecar_path == (tmp_path / "scene.json").resolve()
    with rasterio.open(info.path) as src:
        assert (src.width, src.height, src.count) == (700, 500, 3)
        assert src.dtypes == ("uint8", "uint8", "uint8")
        assert src.block_shapes == [(512, 512)] * 3
        assert src.profile["tiled"] is True
        assert src.compression.name == "jpeg"
        assert src.photometric.name == "ycbcr"
        assert src.crs == CRS.from_epsg(32633)
        assert src.transform == Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0)
    assert len(info.objects) == 3  # default: 1 per megapixel, at least 3
    check_objects(info, (0, 0, 700, 500))


def test_custom_georeference_and_map_boxes(tmp_path: Path) -> None:
    info = synthesize_scene(
        tmp_path / "s.tif",
        (2000, 300),
        crs="EPSG:3857",
        pixel_size=2.0,
        origin=(1000.0, 2000.0),
        n_objects=12,
        compress="deflate",
    )
    with rasterio.open(info.path) as src:
        assert src.crs == CRS.from_epsg(3857)
        assert src.transform == Affine(2.0, 0.0, 1000.0, 0.0, -2.0, 2000.0)
        assert src.compression.name == "deflate"
        assert src.block_shapes == [(512, 512)] * 3
        t = src.transform
    assert info.crs == "EPSG:3857"
    assert len(info.objects) == 12
    for o in info.objects:
        x0, y0, x1, y1 = o.pixel_box
        assert o.map_box == (1000.0 + 2 * x0, 2000.0 - 2 * y1, 1000.0 + 2 * x1, 2000.0 - 2 * y0)
        # Same thing through the file's own transform: upper-left and lower-right corners.
        assert o.map_box == pytest.approx((*(t @ (x0, y1)), *(t @ (x1, y0))))


def test_not_georeferenced(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGeoreferencedWarning)
        info = synthesize_scene(tmp_path / "plain.tif", (300, 200), georeferenced=False)
    assert info.crs is None
    assert info.transform == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert all(o.map_box is None for o in info.objects)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(info.path) as src:
            assert src.crs is None
            assert src.transform.is_identity
            assert (src.width, src.height, src.count) == (300, 200, 3)
    with tifffile.TiffFile(info.path) as tif:
        tags = tif.pages[0].tags
        assert not [t for t in GEOTIFF_TAGS if t in tags]
        assert (tif.pages[0].tilewidth, tif.pages[0].tilelength) == (512, 512)


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = synthesize_scene(tmp_path / "a.tif", (700, 500), seed=7, compress="deflate")
    b = synthesize_scene(tmp_path / "b.tif", (700, 500), seed=7, compress="deflate")
    c = synthesize_scene(tmp_path / "c.tif", (700, 500), seed=8, compress="deflate")
    pa, pb, pc = read(a.path), read(b.path), read(c.path)
    assert np.array_equal(pa, pb)
    assert a.objects == b.objects
    assert np.mean(pa != pc) > 0.5
    assert a.objects != c.objects


def test_objects_have_exact_colour_lossless(tmp_path: Path) -> None:
    info = synthesize_scene(tmp_path / "s.tif", 1024, seed=2, n_objects=80, compress="deflate")
    check_objects(info, (0, 0, 1024, 1024))
    img = read(info.path)
    categories = set()
    for o in info.objects:
        x0, y0, x1, y1 = o.pixel_box
        patch = img[:, y0:y1, x0:x1].reshape(3, -1).T
        assert (patch == _COLORS[o.color]).all(), o
        categories.add(o.category)
    assert {"car", "ship", "storage_tank", "airplane", "building"} <= categories


def test_objects_keep_colour_through_jpeg(tmp_path: Path) -> None:
    info = synthesize_scene(tmp_path / "s.tif", 1024, seed=3, n_objects=80)
    img = read(info.path).astype(np.int16)
    names = list(_COLORS)
    palette = np.array([_COLORS[n] for n in names])
    for o in info.objects:
        x0, y0, x1, y1 = o.pixel_box
        inner = img[:, y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].reshape(3, -1).T  # 2 px from the edge
        median = np.median(inner, axis=0)
        assert names[int(np.argmin(((palette - median) ** 2).sum(1)))] == o.color, o
        assert np.abs(inner - _COLORS[o.color]).mean() < 25, o


def test_objects_in_region(tmp_path: Path) -> None:
    region = (100, 50, 400, 300)
    info = synthesize_scene(tmp_path / "s.tif", (2000, 300), n_objects=25, objects_in=region)
    assert len(info.objects) == 25
    check_objects(info, region)
    # Default count follows the region's area (at least 3), and always fits.
    small = synthesize_scene(tmp_path / "t.tif", (700, 500), objects_in=(10, 10, 60, 60))
    assert 1 <= len(small.objects) <= 3
    check_objects(small, (10, 10, 60, 60))


def test_background_land_cover_roads_and_noise(tmp_path: Path) -> None:
    info = synthesize_scene(tmp_path / "s.tif", 2048, seed=4, n_objects=0, compress="deflate")
    assert info.objects == ()
    img = read(info.path).astype(np.int16)
    r, g, b = img
    water = (b > r + 15) & (b > g)
    vegetation = (g > r + 10) & (g > b + 10)
    fields = (r > b + 30) & (g > b + 20)
    grey = (np.abs(r - g) < 12) & (np.abs(g - b) < 12) & (r > 60)
    for share in (water.mean(), vegetation.mean(), fields.mean(), grey.mean()):
        assert share > 0.03
    assert img.std() > 20  # not flat
    # Roads: straight grey lines; every pixel of a vertical road column is the road colour
    # (+-3 texture, -4..3 noise) unless a horizontal road crosses it.
    vertical, horizontal = _Renderer(2048, 2048, 4, ()).roads
    assert vertical and horizontal
    rows = np.ones(2048, dtype=bool)
    for r0, r1, _ in horizontal:
        rows[r0:r1] = False
    for x0, x1, level in vertical:
        want = np.array(_ROAD_RGB[level - 254])[:, None, None]
        assert np.abs(img[:, rows, x0:x1] - want).max() <= 7
    # Sensor noise: on smooth water, horizontal neighbours differ by a few levels at most.
    step = np.abs(np.diff(b, axis=1))[water[:, 1:] & water[:, :-1]]
    assert 0 < step.mean() < 5 and step.max() <= 12


def test_fields_are_chunk_invariant() -> None:
    # The smooth fields are resampled per block row; any chunking must give identical rows.
    renderer = _Renderer(700, 1100, 3, ())
    grid = np.random.default_rng(0).integers(0, 255, (140, 90), dtype=np.uint8)
    whole_cover = renderer._cover_rows(0, 1100)
    whole_tex = _linear_rows(grid, 8, 0, 1100, 700)
    assert whole_cover.shape == whole_tex.shape == (1100, 700)
    for cuts in ((0, 512, 1024, 1100), (0, 300, 301, 777, 1100)):
        spans = list(itertools.pairwise(cuts))
        assert np.array_equal(np.concatenate([renderer._cover_rows(a, b) for a, b in spans]), whole_cover)
        assert np.array_equal(np.concatenate([_linear_rows(grid, 8, a, b, 700) for a, b in spans]), whole_tex)
    # ...and follow cv2's bicubic resize of the whole grid: exactly for the separable cubic
    # helper, and to ~1% (bilinear between 32-px cubic knots, clipped to the land levels) overall.
    ref = cv2.resize(renderer.cover, None, fx=128, fy=128, interpolation=cv2.INTER_CUBIC)[:1100, :700]
    exact = _cubic(_cubic(renderer.cover, 128, 0, 1100, axis=0), 128, 0, 700, axis=1)
    assert np.abs(exact - ref).max() < 0.1
    ref = np.clip(ref, 0, 254 * 256 - 1)
    assert np.abs(whole_cover - ref).max() < 0.02 * 65536
    assert np.abs(whole_cover - ref).mean() < 0.003 * 65536


def test_block_rows_are_pure_and_match_file(tmp_path: Path) -> None:
    info = synthesize_scene(tmp_path / "s.tif", (600, 1300), seed=5, compress="none")
    renderer = _Renderer(600, 1300, 5, info.objects)
    rows = [renderer.render(r)[..., :3] for r in (2, 0, 1)]  # out of order
    rebuilt = np.concatenate([rows[1], rows[2], rows[0]]).transpose(2, 0, 1)
    assert np.array_equal(rebuilt, read(info.path))


def test_sidecar_round_trip_and_relocation(tmp_path: Path) -> None:
    info = synthesize_scene(tmp_path / "s.tif", (700, 500), seed=9, n_objects=5)
    assert info.sidecar_path.is_file()
    raw = json.loads(info.sidecar_path.read_text())
    assert raw["width"] == 700 and len(raw["objects"]) == 5
    assert load_scene_info(info.sidecar_path) == info
    assert all(isinstance(o, PlantedObject) for o in load_scene_info(info.sidecar_path).objects)
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in (info.path, info.sidecar_path):
        shutil.copy(p, moved / p.name)
    again = load_scene_info(moved / "s.json")
    assert again.path == (moved / "s.tif").resolve() and again.path.is_file()
    assert again.objects == info.objects and again.transform == info.transform


def test_sidecar_round_trip_not_georeferenced(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGeoreferencedWarning)
        info = synthesize_scene(tmp_path / "s.tif", (300, 200), georeferenced=False, progress=True)
    assert load_scene_info(info.sidecar_path) == info


def test_bad_arguments(tmp_path: Path) -> None:
    out = tmp_path / "x.tif"
    with pytest.raises(ValueError, match="compress"):
        synthesize_scene(out, 100, compress="lzw")
    with pytest.raises(ValueError, match="objects_in"):
        synthesize_scene(out, 100, objects_in=(50, 50, 150, 90))
    with pytest.raises(ValueError, match="size"):
        synthesize_scene(out, (0, 10))
    with pytest.raises(ValueError, match="too small"):
        synthesize_scene(out, 100, objects_in=(0, 0, 50, 5), n_objects=1)
    with pytest.raises(TypeError):
        synthesize_scene(out, (10.5, 10))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="could not place"):
        synthesize_scene(out, 100, n_objects=500)
    assert not out.exists()
    bad = tmp_path / "bad.json"
    bad.write_text('{"width": 3}')
    with pytest.raises(ValueError, match="sidecar"):
        load_scene_info(bad)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "s.tif"
    synthesize_scene(out, (600, 1300))  # an older, complete scene under the same name
    calls = []

    def render(self: _Renderer, row: int) -> np.ndarray:
        calls.append(row)
        if row == 2:
            raise RuntimeError("boom")
        return original(self, row)

    original = _Renderer.render
    monkeypatch.setattr(_Renderer, "render", render)
    with pytest.raises(RuntimeError, match="boom"):
        synthesize_scene(out, (600, 1300), seed=1)
    assert 2 in calls
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_tiny_images(tmp_path: Path) -> None:
    for size in ((1, 1), (5, 700), (8, 8)):
        info = synthesize_scene(tmp_path / "t.tif", size, compress="deflate")
        assert read(info.path).shape == (3, size[1], size[0])
        assert len(info.objects) == (1 if size == (8, 8) else 0)  # as many as fit
        check_objects(info, (0, 0, *size))


@pytest.mark.slow
def test_large_scene(tmp_path: Path) -> None:
    start = time.perf_counter()
    info = synthesize_scene(tmp_path / "big.tif", 4096, seed=11)
    elapsed = time.perf_counter() - start
    assert len(info.objects) == 17  # round(16.8 Mpx / 1 Mpx)
    check_objects(info, (0, 0, 4096, 4096))
    with rasterio.open(info.path) as src:
        assert (src.width, src.height) == (4096, 4096)
        assert src.block_shapes == [(512, 512)] * 3
        o = info.objects[0]
        x0, y0, x1, y1 = o.pixel_box
        win = rasterio.windows.Window(x0 + 2, y0 + 2, x1 - x0 - 4, y1 - y0 - 4)
        patch = src.read(window=win).reshape(3, -1).T.astype(int)
    assert np.abs(np.median(patch, axis=0) - _COLORS[o.color]).max() < 30
    assert elapsed < 30  # ~1 s on 2 cores; generous for loaded CI machines
