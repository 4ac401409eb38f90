"""The web demo: the API through gradio_client against a live loopback server with a tiny random model, and
the page in a real browser (Debian chromium driven by Playwright)."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from app.config import RunSettings, ServeConfig  # noqa: E402
from app.examples import EXAMPLES  # noqa: E402
from app.inputs import InputError, resolve_input  # noqa: E402
from lrs_vqa.c2f import C2FOptions  # noqa: E402
from lrs_vqa.options import AskOptions  # noqa: E402
from tests.app.served import CHROMIUM, CHROMIUM_ARGS, ask_args, launched, write_scene  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
QUESTION = EXAMPLES[0].question  # the question box starts with the first example's


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="module")
def scene(workdir: Path) -> Path:
    return write_scene(workdir)


@pytest.fixture(scope="module")
def server(workdir: Path, scene: Path, tiny_checkpoint) -> Iterator[tuple[str, ServeConfig]]:
    with launched(workdir, scene, tiny_checkpoint("llava_onevision", 5)) as (url, config, _):
        yield url, config


def test_config_defaults_are_loopback_and_the_cli_defaults() -> None:
    config = ServeConfig()
    assert config.host == "127.0.0.1" and config.port == 7860
    opts = RunSettings(model="m").ask_options()
    ask, c2f = (
        AskOptions(),
        C2FOptions(),
    )  # the CLI reads them too; values: test_c2f
    assert (opts.strategy, opts.scorer, opts.c2f.keep_ratio, opts.c2f.max_tiles_per_level) == (
        ask.strategy,
        ask.scorer,
        c2f.keep_ratio,
        c2f.max_tiles_per_level,
    )
    assert opts.c2f.budget_tokens == c2f.budget_tokens


def test_input_rules(tmp_path: Path) -> None:
    config = ServeConfig(max_upload_mb=1, allow_dir=tmp_path)
    (tmp_path / "a.tif").write_bytes(b"x")
    (tmp_path / "big.png").write_bytes(b"0" * (2**20 + 1))
    assert resolve_input(None, None, "a.tif", config, {}) == (tmp_path / "a.tif").resolve()
    for upload, path, message in [
        (str(tmp_path / "big.png"), "", "above the 1 MB limit"),
        (str(tmp_path / "notes.txt"), "", "unsupported file type"),
        (None, "../etc/passwd", "outside the allowed folder"),
        (None, "", "upload an image"),
    ]:
        with pytest.raises(InputError, match=message):
            resolve_input(upload, None, path, config, {})
    with pytest.raises(InputError, match="disabled"):
        resolve_input(None, None, "a.tif", ServeConfig(), {})
    # A URL is fetched by the server: only when it was started with --allow-remote, and kept as written.
    url = "https://example.org/a/scene.tif"
    with pytest.raises(InputError, match="remote URLs are disabled"):
        resolve_input(None, None, url, config, {})
    assert resolve_input(None, None, url, ServeConfig(allow_remote=True), {}) == url


def test_api_answer_record_evidence_and_statistics(
    server: tuple[str, ServeConfig], scene: Path, tmp_path: Path
) -> None:
    url, config = server
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path))
    status, answer_md, overview, tiles, stats, evidence, record, viewer = client.predict(
        *ask_args(config, upload=gradio_client.handle_file(str(scene))), api_name="/ask"
    )
    assert "done" in status
    assert "meaningless" in answer_md  # a random tiny model is labelled
    assert overview["annotations"], "the selected tiles are drawn on the overview"
    labels = {a["label"] for a in overview["annotations"]}
    assert "level 0" in labels
    assert tiles, "the selected tiles are in the gallery"
    assert 'class="lrs-viewer-host"' in viewer  # the deep-zoom viewer's container (tests/app/test_viewer.py)

    rec = json.loads(Path(record).read_text())
    assert rec["question"] == QUESTION and rec["strategy"] == "c2f"
    assert rec["random_weights"] is True and rec["warning"].endswith("meaningless")
    assert rec["answer"] in answer_md
    assert rec["levels"] and rec["levels"][0]["level"] == 0

    ev = json.loads(Path(evidence).read_text())
    assert ev["type"] == "FeatureCollection" and ev["question"] == QUESTION
    assert len(ev["features"]) == len(rec["tiles"]) == stats["tiles read"]
    assert all(f["geometry"]["type"] == "Polygon" for f in ev["features"])  # georeferenced: WGS84

    s = rec["stats"]
    assert stats["vision tokens encoded"] == s["vision_tokens_encoded"] > 0
    assert stats["tokens into the LLM"] == s["tokens_into_llm"] > s["vision_tokens_into_llm"] > 0
    assert stats["TFLOPs (total)"] > 0 and stats["time (s)"] > 0
    assert any(k.startswith("peak memory") and v > 0 for k, v in stats.items())

    # a bundled example and an allowed server-side path with another strategy
    out = client.predict(*ask_args(config, example=EXAMPLES[1].name), api_name="/ask")
    assert json.loads(Path(out[6]).read_text())["image"]["width"] == EXAMPLES[1].size[0]
    args = ask_args(config, path=scene.name)
    args[5] = "global"
    out = client.predict(*args, api_name="/ask")
    assert json.loads(Path(out[6]).read_text())["strategy"] == "global"


def test_api_bad_input_is_a_readable_error_and_the_server_keeps_serving(
    server: tuple[str, ServeConfig], scene: Path, tmp_path: Path
) -> None:
    url, config = server
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path))
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00garbage" * 50)
    text = tmp_path / "notes.tif"
    text.write_text("not an image at all\n" * 10)
    complex_tif = tmp_path / "complex.tif"
    tifffile.imwrite(complex_tif, np.zeros((64, 64), np.complex64))
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\x00" * (6 * 2**20))
    for bad, expected in [
        (corrupt, "corrupt.tif: TIFF header cannot be read"),
        (text, "notes.tif: not a raster"),
        (complex_tif, "complex.tif: data type complex64 is not supported"),
        (big, "exceeds the maximum file size"),  # the 5 MB limit of this server
    ]:
        with pytest.raises(Exception) as info:
            client.predict(*ask_args(config, upload=gradio_client.handle_file(str(bad))), api_name="/ask")
        message = str(info.value)
        assert expected in message and "Traceback" not in message and "/gradio/" not in message
    with pytest.raises(Exception, match="outside the allowed folder"):
        client.predict(*ask_args(config, path="../../etc/passwd"), api_name="/ask")
    out = client.predict(*ask_args(config, path=scene.name), api_name="/ask")  # still serving
    assert "done" in out[0]


def test_api_with_a_token_pruner(server: tuple[str, ServeConfig], scene: Path, tmp_path: Path) -> None:
    url, config = server
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path))
    args = ask_args(config, path=scene.name)
    args[-2:] = ["fastv", "0.5"]
    out = client.predict(*args, api_name="/ask")
    rec = json.loads(Path(out[6]).read_text())
    assert rec["settings"]["pruner"] == "fastv" and rec["settings"]["budget"] == "0.5"
    layers = rec["stats"]["vision_tokens_per_layer"]
    assert layers[-1] < layers[0]  # FastV dropped vision tokens inside the LLM
    args[-2:] = ["nosuchpruner", "0.5"]
    with pytest.raises(Exception, match="unknown pruner 'nosuchpruner'"):
        client.predict(*args, api_name="/ask")


def test_api_streams_stage_progress(server: tuple[str, ServeConfig], tmp_path: Path) -> None:
    url, config = server
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path))
    job = client.submit(*ask_args(config, example=EXAMPLES[0].name), api_name="/ask")
    trails = [out[0] for out in job]
    assert len(trails) >= 4, trails
    final = trails[-1]
    order = [
        final.index(stage) for stage in ("loading model", "overview", "level 0", "scoring", "answer", "done")
    ]
    assert order == sorted(order), final
    assert any("⏳ **overview**" in t for t in trails) and any("⏳ **answer**" in t for t in trails)


def test_cli_serve_refuses_a_missing_allow_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lrs_vqa.cli import main

    assert main(["serve", "--allow-dir", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err


def upload(page: object, path: Path) -> None:
    """Set the file input until the component lists the file (the page may still be hydrating)."""
    shown = page.locator("#upload").get_by_text(path.stem).first  # type: ignore[attr-defined]
    for _ in range(3):
        page.locator("#upload input[type=file]").set_input_files(str(path))  # type: ignore[attr-defined]
        try:
            shown.wait_for(timeout=15_000)
            return
        except Exception:
            continue
    shown.wait_for(timeout=15_000)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_browser_upload_ask_and_see_the_results(
    server: tuple[str, ServeConfig], scene: Path, tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    url, config = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text(f"Upload limit: {config.max_upload_mb} MB").wait_for(timeout=30_000)
            upload(page, scene)
            page.locator("#ask").click()
            answer = page.locator("#answer")
            answer.get_by_text("this answer is meaningless").wait_for(timeout=120_000)
            # the annotated overview: the picture and one legend entry per level read
            overview = page.locator("#overview")
            overview.locator("img").first.wait_for(timeout=30_000)
            # the element appears before its picture has loaded: wait for the pixels, then check them
            page.wait_for_function(
                "() => { const i = document.querySelector('#overview img'); return i && i.naturalWidth; }",
                timeout=30_000,
            )
            assert overview.locator("img").first.evaluate("img => img.naturalWidth") > 0
            overview.get_by_text("level 0").first.wait_for(timeout=30_000)
            # the downloads: both links appear, and the evidence downloads as GeoJSON
            page.locator("#record a[download='record.json']").wait_for(timeout=30_000)
            with page.expect_download() as download:
                page.locator("#evidence a[download='evidence.geojson']").click()
            geojson = json.loads(Path(download.value.path()).read_text())
            assert geojson["type"] == "FeatureCollection" and geojson["question"] == QUESTION
            page.locator("#status").get_by_text("done").wait_for(timeout=30_000)
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # bad input: a readable error in the page, and the next request still works
            bad = tmp_path / "notes.tif"
            bad.write_text("not an image\n" * 10)
            page.locator("#upload button[aria-label='Clear']").first.click()
            upload(page, bad)
            page.locator("#ask").click()
            page.get_by_text("notes.tif: not a raster format").first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "app-error.png"))
            page.locator("#upload button[aria-label='Clear']").first.click()
            page.locator("#upload").get_by_text("notes").wait_for(state="detached", timeout=30_000)
            page.locator("#ask").click()  # the bundled example this time
            page.locator("#status").get_by_text("done").wait_for(timeout=120_000)
        finally:
            browser.close()
    if os.environ.get("LRS_VQA_UPDATE_SCREENSHOT"):
        from PIL import Image

        picture = Image.open(shot).convert("RGB")
        picture.thumbnail((900, 1200))
        picture.quantize(colors=128).save(REPO / "docs" / "app.png", optimize=True)
