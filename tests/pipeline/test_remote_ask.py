"""``lrs-vqa ask`` about a COG on a loopback HTTP server and about a STAC item: the record and the GeoJSON
evidence carry the bytes fetched and requests made (equal to the server's own log) and the item's metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrs_vqa.cli import main
from pyramid.cog import write_cog
from pyramid.gdal_vsi import clear_cache
from pyramid.synth import synthesize_scene
from tests.pyramid.range_server import serve


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    synthesize_scene(root / "plain.tif", (1300, 900), seed=2)
    write_cog(root / "plain.tif", root / "scene.tif")
    return root


def test_ask_about_a_url_and_a_stac_item(served: Path, tiny_checkpoint, tmp_path: Path, capsys) -> None:
    model = tiny_checkpoint("llava_onevision", 5)
    with serve(served) as server:
        clear_cache()
        evidence = tmp_path / "ev.geojson"
        url = server.url("scene.tif")
        args = ["--model", model, "--strategy", "global", "--json", "--max-new-tokens", "2"]
        assert main(["ask", url, "what is this?", *args, "--evidence", str(evidence)]) == 0
        record = json.loads(capsys.readouterr().out)
        remote = record["image"]["remote"]
        assert record["image"]["path"] == url
        assert (remote["bytes_fetched"], remote["requests"]) == (server.log.bytes_sent, server.log.requests)
        assert remote["file_size"] == (served / "scene.tif").stat().st_size
        assert json.loads(evidence.read_text())["remote"] == remote

        item = tmp_path / "item.json"
        item.write_text(
            json.dumps(
                {
                    "type": "Feature",
                    "stac_version": "1.0.0",
                    "id": "demo-item",
                    "geometry": None,
                    "bbox": [14.0, 45.0, 14.1, 45.1],
                    "properties": {"datetime": "2023-07-14T09:00:00Z"},
                    "links": [],
                    "assets": {"image": {"href": url, "type": "image/tiff; application=geotiff"}},
                }
            )
        )
        assert main(["ask", str(item), "what is this?", *args, "--asset", "image"]) == 0
        stac = json.loads(capsys.readouterr().out)["image"]["stac"]
        assert (stac["id"], stac["asset"], stac["bbox"]) == ("demo-item", "image", [14.0, 45.0, 14.1, 45.1])
        assert stac["datetime"].startswith("2023-07-14T09:00:00")
        clear_cache()
