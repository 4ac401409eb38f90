"""The coarse-to-fine loop, proved with a planted scorer: it must zoom to the native resolution over the tiles
that cover the planted region, read nothing else there, and hand the LLM only tokens inside the region."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pyvips
import torch
from PIL import Image

from lrs_vqa.answer import AskOptions, answer, get_adapter, pyramid_spec_for
from lrs_vqa.c2f import C2FError, C2FOptions, CoarseToFine, focus_rows
from lrs_vqa.cli import main
from lrs_vqa.engine.tokens import VisionSegment
from lrs_vqa.models.base import ModelAdapter
from lrs_vqa.tiny import FAMILIES
from pyramid.dip import DynamicImagePyramid, PyramidOptions
from pyramid.levels import PixelBox
from rfm.base import TokenScores

PATCH = 14  # tiny models: 14 px patches


@pytest.fixture(scope="module")
def tiny_paths(tiny_checkpoint) -> dict[str, str]:
    return {fam: tiny_checkpoint(fam, 7) for fam in FAMILIES}


def plain_raster(path: Path, width: int, height: int) -> Path:
    """A tiled JPEG TIFF with overviews (a COG layout), written by libvips in seconds even at 27k."""
    x = pyvips.Image.xyz(width, height)
    rgb = (x[0] % 251).bandjoin([x[1] % 241, (x[0] + x[1]) % 239]).cast("uchar")
    rgb.tiffsave(
        str(path), tile=True, pyramid=True, compression="jpeg", Q=60, tile_width=512, tile_height=512
    )
    return path


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plain_raster(tmp_path_factory.mktemp("big") / "scene27k.tif", 27328, 27328)


@dataclass
class PlantedScorer:
    """Relevance 1 for tokens whose level-0 box intersects ``region``, ~0 elsewhere (a normalised map)."""

    region: PixelBox
    name: str = "planted"

    def score(
        self, adapter: ModelAdapter, question: str, segments: Sequence[VisionSegment], local: int
    ) -> TokenScores:
        seg = segments[local]
        rows = adapter.present_rows(seg)
        meta = seg.meta.select(rows)
        b = meta.boxes
        r = self.region
        hit = (b[:, 0] < r.x1) & (b[:, 2] > r.x0) & (b[:, 1] < r.y1) & (b[:, 3] > r.y0) & ~meta.newline
        s = torch.where(hit, 1.0, 1e-6) * (~meta.newline)
        return TokenScores(s / s.sum(), rows, meta)


def dilate(box: PixelBox, by: float) -> PixelBox:
    return PixelBox(int(box.x0 - by), int(box.y0 - by), int(box.x1 + by + 1), int(box.y1 + by + 1))


def run_planted(adapter: ModelAdapter, path: Path, region: PixelBox, **opts: object):
    loop = CoarseToFine(adapter, PlantedScorer(region), C2FOptions(**opts))
    popts = PyramidOptions(spec=pyramid_spec_for(adapter))
    with DynamicImagePyramid.open(path, popts) as dip:
        result = loop.run(dip, "where is it?")
        return result, dip.stats["tiles_read"], dip.levels


def check_descent(result, tiles_read: int, levels, region: PixelBox) -> None:
    steps = result.steps
    native = len(levels) - 1
    assert [s.level for s in steps] == list(range(native + 1))  # one step per level, coarse → native
    assert [s.decision for s in steps] == ["zoom"] * native + ["stop: native"]
    # every tile that was read is accounted for by a step (thumbnail + each level's tiles), nothing else
    assert tiles_read == 1 + sum(len(s.tiles) for s in steps)
    # the native tiles: all tiles over the region, plus at most the neighbours one coarser token away
    lvl = levels[native]
    read = {(k.row, k.col) for k in steps[-1].tiles}
    assert set(lvl.tiles_covering(region)) <= read
    spill = levels[native - 1].factor_x * PATCH
    assert read <= set(lvl.tiles_covering(dilate(region, spill)))
    # every zoom step read only tiles near the region
    for step in steps[1:]:
        coarser = levels[step.level - 1]
        near = set(levels[step.level].tiles_covering(dilate(region, coarser.factor_x * PATCH)))
        assert {(k.row, k.col) for k in step.tiles} <= near
    # the LLM gets native tokens, all of them touching the region
    final = result.segments[-1]
    real = ~final.meta.newline
    assert bool((final.meta.level[real] == native).all())
    b = final.meta.boxes[real]
    assert bool(
        ((b[:, 0] < region.x1) & (b[:, 2] > region.x0) & (b[:, 1] < region.y1) & (b[:, 3] > region.y0)).all()
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "region",
    [
        PixelBox(13000, 9000, 13150, 9110),  # inside the image
        PixelBox(27328 - 120, 27328 - 90, 27328, 27328),  # bottom-right corner, on the border
    ],
    ids=["inside", "border"],
)
def test_planted_region_27k_descends_to_native_over_its_tiles(
    region: PixelBox, big_scene: Path, tiny_paths: dict[str, str]
) -> None:
    adapter = get_adapter(tiny_paths["llava_onevision"])
    result, tiles_read, levels = run_planted(adapter, big_scene, region)
    assert levels[-1].is_native and len(levels) == 9  # 168 px coarse → 27,328 px native
    check_descent(result, tiles_read, levels, region)
    assert tiles_read < 100  # of 238,144 native tiles


def test_elongated_image(tmp_path: Path, tiny_paths: dict[str, str]) -> None:
    path = plain_raster(tmp_path / "strip.tif", 27328, 1024)
    region = PixelBox(20000, 500, 20100, 560)
    adapter = get_adapter(tiny_paths["llava_onevision"])
    result, tiles_read, levels = run_planted(adapter, path, region)
    assert levels[0].rows == 1  # the coarse level of a 27:1 strip is one tile row
    check_descent(result, tiles_read, levels, region)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_smaller_than_the_coarse_level(family: str, tmp_path: Path, tiny_paths: dict[str, str]) -> None:
    """One level only: the loop prunes it and stops; the planted tokens are the ones kept."""
    path = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (100, 150, 3), dtype=np.uint8)).save(path)
    region = PixelBox(0, 0, 40, 40)
    adapter = get_adapter(tiny_paths[family])
    result, tiles_read, levels = run_planted(adapter, path, region)
    assert len(levels) == 1 and [s.decision for s in result.steps] == ["stop: single level"]
    assert tiles_read == 1 + len(result.steps[0].tiles)
    final = result.segments[-1]
    present = final.meta.select(adapter.present_rows(final))
    b = present.boxes[~present.newline]
    assert len(b) > 0 and bool(((b[:, 0] < 40) & (b[:, 1] < 40)).all())


def test_spread_scores_stop_and_prune(tmp_path: Path, tiny_paths: dict[str, str]) -> None:
    """A region larger than the tile cap allows: the loop refuses to zoom into an arbitrary part of it."""
    path = plain_raster(tmp_path / "mid.tif", 4000, 3000)
    adapter = get_adapter(tiny_paths["llava_onevision"])
    result, _, _ = run_planted(adapter, path, PixelBox(0, 0, 4000, 3000), max_tiles_per_level=2)
    assert [s.decision for s in result.steps] == ["stop: spread"]
    assert result.steps[0].focus_share is not None and result.steps[0].focus_share < 0.5


def test_uniform_scores_do_not_zoom_into_an_arbitrary_subset(
    tmp_path: Path, tiny_paths: dict[str, str]
) -> None:
    """A flat map whose candidates exceed the tile cap fails the lift test: stop at the coarse level."""
    path = plain_raster(tmp_path / "mid.tif", 4000, 3000)
    adapter = get_adapter(tiny_paths["llava_onevision"])
    result, tiles_read, levels = run_planted(adapter, path, PixelBox(0, 0, 4000, 3000))
    step = result.steps[0]
    assert levels[1].num_tiles > 16  # more candidates than the default cap
    assert step.decision == "stop: spread" and step.lift == pytest.approx(1.0, abs=0.15)
    assert tiles_read == 1 + len(step.tiles)


def test_thumbnail_first_jumps_past_the_coarse_level_to_the_same_native_tiles(
    tmp_path: Path, tiny_paths: dict[str, str]
) -> None:
    """A concentrated thumbnail map: the loop starts below the coarse level (never encoded whole), reads at
    most ``jump_tiles`` tiles there, and ends on the native tiles the coarse-first descent reaches, having
    encoded fewer tokens."""
    path = plain_raster(tmp_path / "big.tif", 12000, 9000)
    adapter = get_adapter(tiny_paths["llava_onevision"])
    region = PixelBox(7000, 5000, 7060, 5040)
    first, read_first, levels = run_planted(adapter, path, region)
    jumped, read_jumped, _ = run_planted(adapter, path, region, thumbnail_first=True)
    thumb, start = jumped.steps[0], jumped.steps[1]
    assert thumb.level == -1 and thumb.decision.startswith("jump to ")
    assert thumb.reads_next and start.reads_next  # the heatmap outlines the jump's tiles too
    assert start.level > 0 and 1 <= len(start.tiles) <= 4  # below coarse, at most jump_tiles
    assert thumb.decision == f"jump to {levels[start.level].name}"
    assert set(thumb.next_tiles) == set(start.tiles)
    assert 0 not in {s.level for s in jumped.steps}  # the coarse level was not read
    assert jumped.steps[-1].decision == "stop: native"
    assert set(jumped.steps[-1].tiles) == set(first.steps[-1].tiles)  # the same native tiles reached
    assert jumped.tokens_encoded < first.tokens_encoded and read_jumped < read_first
    assert read_jumped == 1 + sum(len(s.tiles) for s in jumped.steps[1:])  # nothing read but the steps'
    # the LLM reads the same native tokens as in the coarse-first run
    a, b = jumped.segments[-1].meta.boxes, first.segments[-1].meta.boxes
    assert torch.equal(a.nan_to_num(-1), b.nan_to_num(-1))  # newline markers carry NaN boxes


def test_thumbnail_first_falls_back_to_the_coarse_level_when_spread(
    tmp_path: Path, tiny_paths: dict[str, str]
) -> None:
    """A flat thumbnail map passes no jump: the coarse level is read whole, as without the option."""
    path = plain_raster(tmp_path / "mid.tif", 4000, 3000)
    adapter = get_adapter(tiny_paths["llava_onevision"])
    whole = PixelBox(0, 0, 4000, 3000)
    plain, _, levels = run_planted(adapter, path, whole)
    result, tiles_read, _ = run_planted(adapter, path, whole, thumbnail_first=True)
    assert result.steps[0].level == -1 and result.steps[0].decision == "spread: coarse level"
    assert not result.steps[0].reads_next
    assert [s.describe() for s in result.steps[1:]] == [s.describe() for s in plain.steps]
    assert len(result.steps[1].tiles) == levels[0].num_tiles
    assert tiles_read == 1 + levels[0].num_tiles


def test_budget_and_keep_ratio_bound_the_llm_tokens(tmp_path: Path, tiny_paths: dict[str, str]) -> None:
    path = plain_raster(tmp_path / "mid.tif", 4000, 3000)
    adapter = get_adapter(tiny_paths["llava_onevision"])
    big = PixelBox(1000, 1000, 3000, 2500)
    for budget in (40, 60, 200):
        result, _, _ = run_planted(adapter, path, big, budget_tokens=budget, max_tiles_per_level=400)
        total = sum(len(adapter.present_rows(s)) for s in result.segments)
        assert total <= budget
    with pytest.raises(C2FError, match="budget"):
        run_planted(adapter, path, big, budget_tokens=5)  # smaller than the thumbnail alone


def test_focus_rows_mass_ties_and_cap() -> None:
    s = torch.tensor([0.05, 0.4, 0.05, 0.3, 0.0, 0.2])
    nl = torch.tensor([False, False, False, False, True, False])
    assert focus_rows(s, nl, 0.6).tolist() == [1, 3]  # 0.4 + 0.3 ≥ 0.6
    assert focus_rows(s, nl, 0.95).tolist() == [0, 1, 2, 3, 5]  # 0.05 ties are taken together
    assert focus_rows(s, nl, 0.95, ratio=0.4).tolist() == [1, 3]  # cap: ceil(0.4 · 5) = 2
    flat = torch.full((6,), 1 / 6)
    assert focus_rows(flat, torch.zeros(6, dtype=torch.bool), 0.5).tolist() == list(range(6))


def test_bad_options() -> None:
    assert C2FOptions(mode="paper").mode == "paper"
    bad = (
        {"mode": "nope"},
        {"keep_ratio": 0},
        {"focus_mass": 1.5},
        {"max_tiles_per_level": 0},
        {"jump_tiles": 0},
    )
    for kwargs in bad:
        with pytest.raises(C2FError):
            C2FOptions(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", FAMILIES)
def test_ask_c2f_cli_records_levels_evidence_and_heatmap(
    family: str, tmp_path: Path, tiny_paths: dict[str, str], capsys
) -> None:
    path = plain_raster(tmp_path / "scene.tif", 3000, 2000)
    ev, heat = tmp_path / "ev.geojson", tmp_path / "heat.png"
    args = ["ask", str(path), "where are the ships?", "--model", tiny_paths[family], "--json"]
    code = main([*args, "--evidence", str(ev), "--heatmap", str(heat), "--max-new-tokens", "2"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["strategy"] == "c2f"
    levels = record["levels"]
    assert levels and levels[0]["level"] == 0 and levels[0]["level_name"] == "coarse"
    stats = record["stats"]
    assert stats["tiles_read"] == 1 + sum(len(lv["tiles"]) for lv in levels)
    assert stats["tflops_scoring"] > 0
    assert stats["tflops_total"] == pytest.approx(
        stats["tflops_vision"] + stats["tflops_llm"] + stats["tflops_scoring"]
    )
    assert stats["vision_tokens_encoded"] >= stats["vision_tokens_into_llm"]
    roles = [t["role"] for t in record["tiles"]]
    assert roles[0] == "thumbnail" and roles.count("coarse") == len(levels[0]["tiles"])
    assert all(t["score"] is not None for t in record["tiles"][1:])
    geo = json.loads(ev.read_text())
    assert len(geo["features"]) == stats["tiles_read"]
    picture = Image.open(heat)
    coarse = record["image"]["levels"][0]
    assert picture.size == (coarse["width"], coarse["height"]) and picture.mode == "RGB"
    assert np.asarray(picture).std() > 0
    # a heatmap needs c2f
    assert main([*args, "--strategy", "global", "--heatmap", str(heat)]) == 2


def test_rfm_scorer_needs_trained_weights(tmp_path: Path, tiny_paths: dict[str, str]) -> None:
    path = plain_raster(tmp_path / "scene.tif", 600, 400)
    with pytest.raises(ValueError, match="no trained Region Focus Module"):
        answer(path, "q?", model=tiny_paths["llava"], options=AskOptions(scorer="rfm"))


def test_the_defaults_are_the_papers_and_declared_once():
    """The one place the defaults are pinned; the CLI (tests/test_ask.py) and the app read the dataclasses."""
    c2f, ask = C2FOptions(), AskOptions()
    assert (c2f.mode, c2f.keep_ratio, c2f.max_tiles_per_level, c2f.budget_tokens) == (
        "default",
        0.25,
        16,
        4096,
    )
    assert (ask.strategy, ask.scorer, ask.max_vision_tokens, ask.max_new_tokens) == (
        "c2f",
        "auto",
        16384,
        32,
    )
