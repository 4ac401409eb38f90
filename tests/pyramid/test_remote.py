"""Remote rasters over loopback HTTP: range reads (asserted from the server's own log of bytes sent), pixels
equal to the local file's, one-line typed errors for bad servers and files, and STAC items as input."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lrs_vqa.cli import main
from pyramid.cog import write_cog
from pyramid.dip import DynamicImagePyramid, PyramidOptions
from pyramid.errors import (
    CorruptRasterError,
    NotARasterError,
    RasterInputError,
    RasterNotFoundError,
    RemoteAccessError,
    RemoteLayoutError,
    RemoteRasterError,
    StacItemError,
)
from pyramid.gdal_vsi import clear_cache
from pyramid.levels import PixelBox
from pyramid.remote import RemoteOptions, locate, redact
from pyramid.source import inspect_raster
from pyramid.synth import synthesize_scene
from tests.pyramid.range_server import RangeServer, serve

# 16k wide, half as tall: writes and converts in ~7 s on 2 busy cores (16k x 16k takes ~15 s). At 8k x 8k the
# coarse level alone is 2 % of the file and GDAL's sequential read-ahead pushes a zoom past 5 %.
SIZE = (16384, 8192)
FAST = RemoteOptions(timeout_s=5, connect_timeout_s=2, max_retry=0)  # error cases must end quickly


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    synthesize_scene(root / "plain.tif", SIZE, seed=3)  # tiled, no overviews: not a COG
    write_cog(root / "plain.tif", root / "scene.tif")
    data = (root / "scene.tif").read_bytes()
    (root / "truncated.tif").write_bytes(data[: len(data) * 3 // 5])
    (root / "notes.tif").write_text("these are notes, not a raster\n" * 50)
    return root


@pytest.fixture(scope="module")
def server(served: Path) -> Iterator[RangeServer]:
    with serve(served) as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh(server: RangeServer) -> Iterator[None]:
    """Every test starts with a well-behaved server, an empty log and nothing cached by GDAL's /vsicurl/
    (it caches per URL across opens: a second test would otherwise read from memory)."""
    clear_cache()
    server.mode = "ok"
    server.log.reset()
    yield
    clear_cache()


def test_url_mapping_and_redaction() -> None:
    assert locate("https://h/a/b.tif").gdal_path == "/vsicurl/https://h/a/b.tif"
    assert locate("s3://bucket/k/x.tif").gdal_path == "/vsis3/bucket/k/x.tif"
    assert locate("gs://bucket/x.tif").gdal_path == "/vsigs/bucket/x.tif"
    assert locate("az://container/x.tif").gdal_path == "/vsiaz/container/x.tif"
    assert locate("/vsis3/bucket/x.tif").remote and not locate("/vsimem/x.tif").remote
    assert not locate("scene.tif").remote and locate("scene.tif").gdal_path == "scene.tif"
    shown = redact("https://user:pw@h/x.tif?X-Amz-Signature=abc&X-Amz-Credential=key")
    assert "pw" not in shown and "abc" not in shown and "key" not in shown and shown.startswith("https://")
    assert redact("/vsicurl/https://h/x.tif?sig=s3cret") == "/vsicurl/https://h/x.tif?sig=***"


def test_inspect_reads_the_header_only(server: RangeServer, served: Path, capsys) -> None:
    local = inspect_raster(served / "scene.tif")
    url = server.url("scene.tif")
    remote = inspect_raster(url)
    assert remote.path == url  # not folded into "http:/..."
    assert (remote.width, remote.height) == SIZE
    assert (remote.overview_factors, remote.layout) == (local.overview_factors, "cog")
    assert remote.file_size == local.file_size and remote.remote
    assert server.log.bytes_sent < 0.01 * local.file_size

    clear_cache()
    server.log.reset()
    assert main(["inspect", url, "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["path"] == url and desc["layout"] == "cog"
    # Our counters are GDAL's; the server's own log is the ground truth.
    assert desc["remote"]["bytes_fetched"] == server.log.bytes_sent
    assert desc["remote"]["requests"] == server.log.requests
    assert desc["remote"]["file_size"] == local.file_size


def test_coarse_and_zoom_fetch_under_5_percent_and_match_local_pixels(
    server: RangeServer, served: Path
) -> None:
    size = (served / "scene.tif").stat().st_size
    zoom = PixelBox(8064, 4032, 8064 + 672, 4032 + 672)  # 2x2 native tiles in the middle
    with DynamicImagePyramid.open(server.url("scene.tif")) as dip:
        coarse = dip.level_image(0)
        thumb = dip.thumbnail()
        native = len(dip.levels) - 1
        keys = dip.tiles_covering(native, zoom)
        tiles = list(dip.stream(keys))
        report = dip.remote_report()
        assert dip.describe()["read_paths"] == {"native": "source", "coarse": "overviews"}
    assert len(keys) == 4
    print(f"coarse + thumbnail + 4 native tiles: {server.log.bytes_sent} of {size} bytes")
    assert server.log.bytes_sent < 0.05 * size, f"{server.log.bytes_sent} of {size} bytes"
    assert report is not None
    assert (report["bytes_fetched"], report["requests"]) == (server.log.bytes_sent, server.log.requests)
    # The local file through the same decoder (GDAL; the direct path's libjpeg-turbo differs by ~0.5 DN).
    with DynamicImagePyramid.open(served / "scene.tif", PyramidOptions(direct_decode=False)) as local:
        assert np.array_equal(coarse.pixels, local.level_image(0).pixels)
        assert np.array_equal(thumb.pixels, local.thumbnail().pixels)
        for tile, ref in zip(tiles, local.stream(keys), strict=True):
            assert tile.key == ref.key and tile.box == ref.box
            assert np.array_equal(tile.pixels, ref.pixels)
            assert tile.geometry.native_box == ref.geometry.native_box


def test_vsicurl_path_is_accepted(server: RangeServer) -> None:
    info = inspect_raster("/vsicurl/" + server.url("scene.tif"))
    assert (info.width, info.height) == SIZE and info.remote


def _one_line_error(location: str, expected: type[Exception], match: str) -> RasterInputError:
    t0 = time.perf_counter()
    options = PyramidOptions(remote=FAST)
    with pytest.raises(expected, match=match) as caught, DynamicImagePyramid.open(location, options) as dip:
        dip.level_image(0)
        dip.tile(len(dip.levels) - 1, 20, 20)
    assert time.perf_counter() - t0 < 10
    assert "\n" not in str(caught.value)
    return caught.value  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("mode", "expected", "match"),
    [
        ("404", RasterNotFoundError, "HTTP 404"),
        ("403", RemoteAccessError, "access denied .HTTP 403"),
        ("no-range", RemoteRasterError, "server does not support range requests"),
        ("truncated", RasterInputError, "truncated|transfer|cannot"),  # the transfer is cut mid-file
    ],
)
def test_bad_server(server: RangeServer, mode: str, expected: type[Exception], match: str) -> None:
    server.mode = mode
    _one_line_error(server.url("scene.tif"), expected, match)


def test_bad_files(server: RangeServer) -> None:
    _one_line_error(server.url("missing.tif"), RasterNotFoundError, "no such remote file")
    _one_line_error(server.url("truncated.tif"), CorruptRasterError, "truncated")
    _one_line_error(server.url("notes.tif"), NotARasterError, "not a raster format")
    port = server.server_address[1]
    with serve(Path(".")) as other:  # a port that was just closed: nothing listens there
        port = other.server_address[1]
    _one_line_error(f"http://127.0.0.1:{port}/scene.tif", RemoteRasterError, "cannot reach the server")


def test_cli_errors_exit_2(server: RangeServer, capsys) -> None:
    assert main(["inspect", server.url("missing.tif")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "HTTP 404" in err and "\n" not in err


def test_non_cog_is_refused_unless_downloaded(server: RangeServer, served: Path, tmp_path: Path) -> None:
    url = server.url("plain.tif")
    with pytest.raises(RemoteLayoutError, match=r"not a Cloud-Optimized GeoTIFF.*lrs-vqa cog.*--download-to"):
        DynamicImagePyramid.open(url)
    assert server.log.bytes_sent < 100_000  # refused from the header alone
    with DynamicImagePyramid.open(url, strict=False) as dip:  # inspect describes it
        assert dip.describe()["read_paths"]["native"] == "refused"
    options = PyramidOptions(download_to=str(tmp_path), cache_dir=tmp_path / "cache")
    with DynamicImagePyramid.open(url, options) as dip:
        copy = tmp_path / "plain.tif"
        assert copy.read_bytes() == (served / "plain.tif").read_bytes()
        assert dip.info.path == copy and not dip.info.remote
        assert dip.remote_report()["downloaded_to"] == str(copy)  # type: ignore[index]
        dip.level_image(0)


def _item(assets: dict[str, dict], item_id: str = "scene-1") -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "geometry": {"type": "Polygon", "coordinates": [[[14, 45], [15, 45], [15, 46], [14, 46], [14, 45]]]},
        "bbox": [14.0, 45.0, 15.0, 46.0],
        "properties": {"datetime": "2024-05-01T10:30:00Z"},
        "links": [],
        "assets": assets,
    }


def test_stac_item_local_and_remote(server: RangeServer, served: Path, tmp_path: Path) -> None:
    tiff = "image/tiff; application=geotiff; profile=cloud-optimized"
    assets = {
        "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
        "visual": {"href": server.url("scene.tif"), "type": tiff, "roles": ["visual"]},
    }
    item = tmp_path / "item.json"
    item.write_text(json.dumps(_item(assets)))
    with DynamicImagePyramid.open(item) as dip:
        stac = dip.info.stac
        assert dip.info.remote and (dip.info.width, dip.info.height) == SIZE
        dip.level_image(0)
        assert dip.remote_report()["bytes_fetched"] == server.log.bytes_sent  # type: ignore[index]
    assert stac is not None
    assert (stac["id"], stac["asset"], stac["bbox"]) == ("scene-1", "visual", [14.0, 45.0, 15.0, 46.0])
    assert str(stac["datetime"]).startswith("2024-05-01T10:30:00")
    with pytest.raises(StacItemError, match="has no asset 'nir'"):
        DynamicImagePyramid.open(item, PyramidOptions(stac_asset="nir"))

    # An item served next to its COG, with a relative href resolved against the item's URL.
    remote_item = served / "remote-item.json"
    remote_item.write_text(
        json.dumps(_item({"data": {"href": "./scene.tif", "type": tiff, "roles": ["data"]}}))
    )
    info = DynamicImagePyramid.open(server.url("remote-item.json")).info
    assert info.path == server.url("scene.tif") and info.stac["asset"] == "data"  # type: ignore[index]

    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(_item({"meta": {"href": "meta.xml", "type": "application/xml"}})))
    with pytest.raises(StacItemError, match="has no raster asset"):
        DynamicImagePyramid.open(bare)
    assert main(["inspect", str(bare)]) == 2


def test_local_paths_unchanged(served: Path, tmp_path: Path) -> None:
    copy = tmp_path / "scene copy.tif"
    shutil.copy(served / "scene.tif", copy)
    info = inspect_raster(str(copy))
    assert info.path == copy and not info.remote and "remote" not in info.describe()
