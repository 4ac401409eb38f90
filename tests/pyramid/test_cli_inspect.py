"""``lrs-vqa inspect``: JSON and text output against the fixtures' known properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrs_vqa.cli import main
from tests.pyramid.rasters import CRS, TRANSFORM, Raster

pytestmark = pytest.mark.usefixtures("isolated_default_cache")  # the CLI uses the default cache dir

# 2503 x 1901: coarse 1008 x 766 (3x3), 1/2 1251 x 950 (3x4), native (6x8); thumbnail 336 x 255
LEVELS = [
    {"index": 0, "name": "coarse", "width": 1008, "height": 766, "grid": [3, 3], "tiles": 9},
    {"index": 1, "name": "1/2", "width": 1251, "height": 950, "grid": [3, 4], "tiles": 12},
    {"index": 2, "name": "native", "width": 2503, "height": 1901, "grid": [6, 8], "tiles": 48},
]


def run_json(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    capsys.readouterr()
    rc = main(["inspect", str(path), "--json", *extra])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


@pytest.mark.parametrize(
    ("name", "overviews", "block_shape", "georeferenced"),
    [
        ("cog_tif", [2, 4], [512, 512], True),
        ("tiled_tif", [], [512, 512], True),
        ("striped_tif", [], [1, 2503], True),
        ("rgb_png", [], [1, 2503], False),
        ("nongeo_tif", [], [512, 512], False),
    ],
)
def test_inspect_json(
    name: str,
    overviews: list[int],
    block_shape: list[int],
    georeferenced: bool,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    raster: Raster = request.getfixturevalue(name)
    d = run_json(raster.path, capsys)
    assert (d["width"], d["height"], d["bands"], d["dtype"]) == (2503, 1901, 3, "uint8")
    assert d["layout"] == raster.layout
    assert d["overviews"] == overviews
    assert d["block_shape"] == block_shape
    assert d["georeferenced"] is georeferenced
    if georeferenced:
        assert d["crs"] == CRS
        assert d["transform"] == pytest.approx(list(TRANSFORM)[:6])
    else:
        assert d["crs"] is None and d["transform"] is None
    assert d["path"] == str(raster.path)
    assert d["file_size"] == raster.path.stat().st_size
    assert d["driver"] == ("PNG" if raster.layout == "sequential" else "GTiff")
    assert d["bands_rgb"] == [1, 2, 3] and d["alpha_band"] is None
    assert d["nodata"] is None
    levels = [{k: lv[k] for k in ("index", "name", "width", "height", "grid", "tiles")} for lv in d["levels"]]
    assert levels == LEVELS
    assert d["levels"][1]["factor"] == 2.0 and d["levels"][2]["factor"] == 1.0
    assert d["levels"][0]["factor"] == pytest.approx(2503 / 1008, abs=1e-6)
    th = d["thumbnail"]
    assert (th["name"], th["width"], th["height"], th["grid"], th["tiles"]) == (
        "thumbnail",
        336,
        255,
        [1, 1],
        1,
    )
    paths = {"cog": "overviews", "tiled": "source", "striped": "source", "sequential": "source"}
    # 4.8 Mpx is below the default 16 Mpx disk-cache threshold: everything reads the source
    assert d["read_paths"] == {"native": "source", "coarse": paths[raster.layout]}


def test_inspect_json_radiometry_fixtures(
    rgbn_bgr: Raster, float_nodata: Raster, rgba_png: Raster, capsys: pytest.CaptureFixture[str]
) -> None:
    d = run_json(rgbn_bgr.path, capsys)
    assert (d["width"], d["height"], d["bands"], d["dtype"]) == (1500, 1100, 4, "uint16")
    assert d["colorinterp"] == ["blue", "green", "red", "undefined"] and d["bands_rgb"] == [3, 2, 1]
    assert [lv["name"] for lv in d["levels"]] == ["coarse", "native"]
    assert d["levels"][0]["width"] == 1008 and d["levels"][0]["height"] == 739
    d = run_json(rgbn_bgr.path, capsys, "--bands", "4,3,2")
    assert d["bands_rgb"] == [4, 3, 2]
    d = run_json(float_nodata.path, capsys)
    assert d["dtype"] == "float32" and d["nodata"] == -9999.0 and d["bands_rgb"] == [1, 1, 1]
    d = run_json(rgba_png.path, capsys)
    assert d["alpha_band"] == 4 and d["has_mask"] is True and d["layout"] == "sequential"


def test_inspect_json_custom_spec(cog_tif: Raster, capsys: pytest.CaptureFixture[str]) -> None:
    d = run_json(cog_tif.path, capsys, "--tile-size", "224", "--coarse-long-side", "672")
    # 2503/2 = 1251.5 >= 672, /4 = 625.75 < 672 → pow2 [1, 2]; coarse 672 x round(1901*672/2503 = 510.4)
    assert [(lv["name"], lv["width"], lv["height"], lv["grid"]) for lv in d["levels"]] == [
        ("coarse", 672, 510, [3, 3]),
        ("1/2", 1251, 950, [5, 6]),
        ("native", 2503, 1901, [9, 12]),
    ]


def test_inspect_text(cog_tif: Raster, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    rc = main(["inspect", str(cog_tif.path)])
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    for word in ("cog", "coarse", "1/2", "native", "thumbnail", "2503x1901", "1008x766", "EPSG:32633", "6x8"):
        assert word in out, word
    assert "overviews" in out and "2, 4" in out


def test_inspect_text_striped(striped_tif: Raster, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["inspect", str(striped_tif.path)])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "striped" in out and "none" in out  # no overviews
    assert "native" in out and "coarse" in out


def test_inspect_bad_bands_option(cog_tif: Raster, capsys: pytest.CaptureFixture[str]) -> None:
    for bands in ("a,b,c", "7,1,2"):
        rc = main(["inspect", str(cog_tif.path), "--bands", bands])
        _, err = capsys.readouterr()
        assert rc == 2
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect"]) == 2  # missing argument: click's usage error
    assert main(["no-such-command"]) == 2
    assert main(["--help"]) == 0
    out, _ = capsys.readouterr()
    assert "inspect" in out
