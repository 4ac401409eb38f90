"""The deep-zoom viewer: the Deep Zoom grid over the pyramid, the tile endpoint on the demo's own app (tokens,
bad requests, 200 concurrent requests within the cache budget), the overlay of a world example with its
ground truth, and the viewer in a real browser (Debian chromium driven by Playwright)."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import io
import json
import math
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from PIL import Image  # noqa: E402

from app.config import ServeConfig  # noqa: E402
from app.examples import EXAMPLES, ensure_examples  # noqa: E402
from app.server import Served  # noqa: E402
from app.tiles import DeepZoomGrid, read_tile  # noqa: E402
from pyramid.dip import DynamicImagePyramid  # noqa: E402
from pyramid.levels import PixelBox  # noqa: E402
from tests.app.served import CHROMIUM, CHROMIUM_ARGS, ask_args, launched, write_scene  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CACHE_BYTES = 32 * 2**20  # the viewer's block-cache budget in these tests


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("viewer")


@pytest.fixture(scope="module")
def scene(workdir: Path) -> Path:
    return write_scene(workdir)


@pytest.fixture(scope="module")
def running(workdir: Path, scene: Path, tiny_checkpoint) -> Iterator[tuple[str, ServeConfig, Served]]:
    model = tiny_checkpoint("llava_onevision", 5)
    with launched(workdir, scene, model, tile_cache_bytes=CACHE_BYTES) as served:
        yield served


def ask(url: str, config: ServeConfig, tmp: Path, example: str | None = None, path: str = "") -> tuple:
    question = next((e.question for e in EXAMPLES if e.name == example), EXAMPLES[0].question)
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp))
    return client.predict(*ask_args(config, example=example, path=path, question=question), api_name="/ask")


def overlay_of(url: str, viewer_html: str) -> tuple[str, dict]:
    """The token and overlay JSON named by the viewer's container."""
    m = re.search(r'data-overlay="(lrs/view/([A-Za-z0-9_-]+)/overlay\.json[^"]*)"', viewer_html)
    assert m, viewer_html
    with urllib.request.urlopen(url + m[1].replace("&amp;", "&")) as r:
        return m[2], json.loads(r.read())


def get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_deep_zoom_grid_reads_the_pyramid(scene: Path) -> None:
    with DynamicImagePyramid.open(scene) as dip:
        grid = DeepZoomGrid(dip.info.width, dip.info.height)
        assert grid.max_level == math.ceil(math.log2(1300)) == 11
        assert grid.level0_box(0, 0, 0) == PixelBox(0, 0, 1300, 900)  # one pixel of the whole image
        assert grid.level0_box(11, 5, 3) == PixelBox(1280, 768, 1300, 900)  # a partial edge tile
        for bad in [(12, 0, 0), (11, 6, 0), (11, 0, 4), (-1, 0, 0), (11, -1, 0)]:
            assert grid.level0_box(*bad) is None
        native = dip.levels[-1]
        expected, _ = dip.read_level_region(native, PixelBox(256, 512, 512, 768))
        assert np.array_equal(read_tile(dip, grid, 11, 1, 2), expected)  # native tiles: the file's pixels
        for level in range(grid.max_level + 1):  # every level: the size Deep Zoom expects
            f = grid.factor(level)
            tile = read_tile(dip, grid, level, 0, 0)
            assert tile.shape[:2] == (min(256, math.ceil(900 / f)), min(256, math.ceil(1300 / f)))
        with pytest.raises(IndexError):
            read_tile(dip, grid, 11, 6, 0)


def test_tile_endpoint_tokens_headers_and_bad_requests(
    running: tuple[str, ServeConfig, Served], scene: Path, tmp_path: Path
) -> None:
    url, config, _ = running
    out = ask(url, config, tmp_path, path=scene.name)
    token, overlay = overlay_of(url, out[7])
    assert overlay["width"] == 1300 and overlay["height"] == 900 and overlay["tiles"]
    rec = json.loads(Path(out[6]).read_text())
    assert len(overlay["tiles"]) == sum(t["role"] != "thumbnail" for t in rec["tiles"])
    assert any(t["evidence"] for t in overlay["tiles"]) and overlay["heatmap"]
    assert all(t["wgs84_bbox"] is not None for t in overlay["tiles"])  # the scene is georeferenced

    status, body, headers = get(url + overlay["dzi"])
    assert status == 200 and b'Width="1300" Height="900"' in body and b'TileSize="256"' in body
    status, body, headers = get(f"{url}lrs/dzi/{token}_files/11/1_2.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert "max-age" in headers["cache-control"]
    with DynamicImagePyramid.open(scene) as dip:
        expected, _ = dip.read_level_region(dip.levels[-1], PixelBox(256, 512, 512, 768))
    got = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), np.float32)
    assert got.shape == expected.shape and np.abs(got - expected).mean() < 6  # JPEG of the native pixels
    status, body, _ = get(url + overlay["heatmap"])
    assert status == 200 and body.startswith(b"\x89PNG")

    other = "A" * 32
    for bad in [
        f"lrs/dzi/{token}_files/12/0_0.jpg",  # below native
        f"lrs/dzi/{token}_files/11/6_0.jpg",  # past the right edge
        f"lrs/dzi/{token}_files/11/0_-1.jpg",
        f"lrs/dzi/{token}_files/x/0_0.jpg",
        f"lrs/dzi/{token}_files/11/0_0.png",
        f"lrs/dzi/{token}_files/11/99999999999_0.jpg",
        f"lrs/dzi/{other}_files/0/0_0.jpg",  # a token never issued
        f"lrs/dzi/{other}.dzi",
        f"lrs/view/{other}/overlay.json",
        "lrs/dzi/..%2F..%2Fetc%2Fpasswd_files/0/0_0.jpg",  # path tricks name no file: there is none
        "lrs/dzi/%2e%2e_files/0/0_0.jpg",
        "lrs/static/..%2F..%2Fserver.py",
        f"lrs/static/../tiles.py?{token}",
    ]:
        status, body, _ = get(url + bad)
        assert status == 404, (bad, status)
        assert b"Traceback" not in body and str(scene.parent).encode() not in body


def test_world_example_overlay_has_the_ground_truth(
    running: tuple[str, ServeConfig, Served], tmp_path: Path
) -> None:
    url, config, _ = running
    example = EXAMPLES[0]
    out = ask(url, config, tmp_path, example=example.name)
    _, overlay = overlay_of(url, out[7])
    assert overlay["truth_answer"] == example.ground_truth
    (truth,) = overlay["truth"]
    x0, y0, x1, y1 = truth["box"]
    assert 0 <= x0 < x1 <= overlay["width"] and 0 <= y0 < y1 <= overlay["height"]
    assert truth["label"].startswith(example.ground_truth) and truth["wgs84_bbox"] is not None


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def test_200_concurrent_tile_requests_stay_within_the_cache(
    running: tuple[str, ServeConfig, Served], scene: Path, tmp_path: Path
) -> None:
    url, config, served = running
    token, overlay = overlay_of(url, ask(url, config, tmp_path, example=EXAMPLES[0].name)[7])
    grid = DeepZoomGrid(overlay["width"], overlay["height"])
    urls = []
    for level in range(grid.max_level - 3, grid.max_level + 1):  # the four finest levels, every tile
        n = math.ceil(grid.width / (256 * grid.factor(level)))
        m = math.ceil(grid.height / (256 * grid.factor(level)))
        urls += [f"{url}lrs/dzi/{token}_files/{level}/{c}_{r}.jpg" for c in range(n) for r in range(m)]
    urls = (urls * (200 // len(urls) + 1))[:200]
    get(urls[0])  # the pyramid is open: what follows is the requests' own cost
    before = _rss()
    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(get, urls))
    grown = _rss() - before
    assert [s for s, _, _ in results] == [200] * 200
    assert all(body[:2] == b"\xff\xd8" for _, body, _ in results)  # JPEG
    assert served.tiles.pyramids.cache_bytes <= CACHE_BYTES
    assert grown < CACHE_BYTES + 64 * 2**20, f"RSS grew by {grown / 2**20:.0f} MB"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_browser_deep_zoom_to_the_native_tiles(
    running: tuple[str, ServeConfig, Served], tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    url, config, _ = running
    example = EXAMPLES[0]  # the page starts on it: a 2048 px world scene
    tile_requests: list[tuple[str, int]] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.on(
                "response",
                lambda r: tile_requests.append((r.url, r.status)) if "/lrs/dzi/" in r.url else None,
            )
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text(f"Upload limit: {config.max_upload_mb} MB").wait_for(timeout=30_000)
            page.locator("#ask").click()
            page.locator("#status").get_by_text("done").wait_for(timeout=120_000)
            page.wait_for_function(
                "() => { const s = window.lrsViewer && window.lrsViewer.current;"
                " return s && s.cfg.tiles.length && s.viewer.world.getItemCount() >= 1"
                " && s.viewer.world.getItemAt(0).getFullyLoaded(); }",
                timeout=60_000,
            )
            cfg = page.evaluate("() => window.lrsViewer.current.cfg")
            token = cfg["dzi"].split("/")[-1].removesuffix(".dzi")
            grid = DeepZoomGrid(cfg["width"], cfg["height"])
            assert cfg["truth"] and cfg["truth_answer"] == example.ground_truth
            canvas = page.locator(".lrs-viewer-canvas")

            # the heatmap layer changes the picture
            heat = page.locator("input[data-layer=heatmap]")
            before = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), np.float32)
            heat.check()
            page.wait_for_function(
                "() => { const h = window.lrsViewer.current.heatmap; return h && h.getFullyLoaded(); }",
                timeout=30_000,
            )
            page.wait_for_timeout(500)
            after = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), np.float32)
            assert np.abs(after - before).mean() > 5, "toggling the heatmap changed nothing"
            heat.uncheck()
            page.locator("input[data-layer=truth]").check()  # where the answer was
            page.locator(".lrs-truth").first.wait_for(state="visible", timeout=10_000)
            page.locator("input[data-layer=truth]").uncheck()
            page.locator(".lrs-truth").first.wait_for(state="hidden", timeout=10_000)

            # zoom to the deepest tile read, at least two screen pixels per native pixel
            page.locator("button[data-action=deepest]").click()
            page.evaluate(
                "() => { const v = window.lrsViewer.current.viewer.viewport;"
                " if (v.viewportToImageZoom(v.getZoom(true)) < 2)"
                " v.zoomTo(v.imageToViewportZoom(2), null, true); }"
            )
            page.wait_for_function(
                f"() => (window.lrsViewer.current.loadedLevels[{grid.max_level}] || 0) > 0"
                " && window.lrsViewer.current.viewer.world.getItemAt(0).getFullyLoaded()",
                timeout=60_000,
            )
            page.wait_for_timeout(1500)  # the zoom animation settles
            native = [u for u, s in tile_requests if f"{token}_files/{grid.max_level}/" in u and s == 200]
            assert native, "no native-level tile was requested"
            page.locator("input[data-layer=tiles]").uncheck()  # the pixels alone
            page.wait_for_timeout(300)
            shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), np.float32)
            x0, y0, x1, y1 = page.evaluate("() => window.lrsViewer.visibleImageRect()")
            image = ensure_examples(config.examples_dir)[example.name]  # generated at start: a lookup
            _assert_shows_native_pixels(shot, (x0, y0, x1, y1), grid, image)

            page.locator("input[data-layer=tiles]").check()
            box = canvas.bounding_box()
            canvas.click(position={"x": box["width"] / 2, "y": box["height"] / 2})
            info = page.locator(".lrs-viewer-info")
            info.get_by_text("pixel box").wait_for(timeout=10_000)
            assert "level" in info.inner_text() and "WGS84" in info.inner_text()
            shot_path = tmp_path / "viewer.png"
            page.locator("#viewer").screenshot(path=str(shot_path))  # at native, the clicked tile described
            page.locator("button[data-action=home]").click()
            page.wait_for_timeout(1500)
            bad = page.request.get(f"{url}lrs/dzi/{token}_files/{grid.max_level + 1}/0_0.jpg")
            assert bad.status == 404
        finally:
            browser.close()
    if os.environ.get("LRS_VQA_UPDATE_SCREENSHOT"):
        picture = Image.open(shot_path).convert("RGB")
        picture.thumbnail((900, 900))
        picture.save(REPO / "docs" / "viewer.png", optimize=True)  # RGB: a palette loses the level colours


def _assert_shows_native_pixels(
    shot: np.ndarray, rect: tuple[float, float, float, float], grid: DeepZoomGrid, image: Path
) -> None:
    """The screenshot shows the image's own native pixels where the viewer says it looks."""
    x0, y0, x1, y1 = rect
    h, w = shot.shape[:2]
    ix0, iy0 = max(0, math.ceil(x0)), max(0, math.ceil(y0))
    ix1, iy1 = min(grid.width, math.floor(x1)), min(grid.height, math.floor(y1))
    assert ix1 - ix0 > 32 and iy1 - iy0 > 32, rect

    def sx(v: float) -> int:
        return round((v - x0) / (x1 - x0) * w)

    def sy(v: float) -> int:
        return round((v - y0) / (y1 - y0) * h)

    seen = shot[sy(iy0) : sy(iy1), sx(ix0) : sx(ix1)].astype(np.uint8)
    with DynamicImagePyramid.open(image) as dip:
        truth, _ = dip.read_level_region(dip.levels[-1], PixelBox(ix0, iy0, ix1, iy1))
    a = np.asarray(Image.fromarray(seen).convert("L").resize((48, 48)), np.float32)
    b = np.asarray(Image.fromarray(truth).convert("L").resize((48, 48)), np.float32)
    diff = np.abs(a - b).mean()
    assert diff < 15, diff  # a blank or wrong picture is far off
    if b.std() > 10:  # textured enough for the pattern to be compared, not only the brightness
        corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert corr > 0.8, corr
