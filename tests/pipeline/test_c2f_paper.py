"""``paper`` mode: the released one-hop loop. The level arithmetic must reproduce the reference card's
worked-example table (§2.2) and token budgets (§5); the selection rules are checked on hand-made grids; the
loop runs on a released-layout checkpoint (tiny, random) with a planted scorer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_vqa.answer import AskOptions, answer, pyramid_spec_for
from lrs_vqa.c2f import C2FOptions, make_loop
from lrs_vqa.c2f_paper import (
    PaperModeError,
    coarse_selection,
    final_keep,
    paper_plan,
    retrieval_tiles,
    unpadded_grid,
)
from lrs_vqa.engine.tokens import VisionSegment
from lrs_vqa.models.base import ModelAdapter
from lrs_vqa.models.largeimg import LargeImgAdapter
from pyramid.dip import DynamicImagePyramid, PyramidOptions
from pyramid.levels import PixelBox
from rfm.base import TokenScores
from tests.rfm.checkpoints import write_checkpoint

# ------------------------------------------------------------------------------ the card's worked example

# (W, H) -> [(resized h, w, tile rows, cols) coarse → next], coarse local grid incl. newline, finest long side
WORKED = {
    (1024, 1024): ([(1008, 1008, 3, 3), (1344, 1344, 4, 4)], (36, 37), 1344),
    (4000, 4000): ([(1008, 1008, 3, 3), (2016, 2016, 6, 6), (4032, 4032, 12, 12)], (36, 37), 2016),
    (8000, 6000): ([(756, 1008, 3, 3), (1512, 2016, 5, 6)], (27, 37), 2016),
    (16384, 16384): ([(1008, 1008, 3, 3), (1344, 1344, 4, 4)], (36, 37), 1344),
    (27328, 27328): ([(1008, 1008, 3, 3), (2016, 2016, 6, 6)], (36, 37), 2016),
    (27328, 10000): ([(369, 1008, 2, 3), (672, 1836, 2, 6)], (13, 37), 1836),
}
RATIOS = {  # the coarse ratio and the next one, as the card prints them
    (1024, 1024): (0.984, 1.0),
    (4000, 4000): (0.252, 0.5),
    (8000, 6000): (0.126, 0.25),
    (16384, 16384): (0.0615, 0.0625),
    (27328, 27328): (0.0369, 0.0625),
    (27328, 10000): (0.0369, 0.0625),
}


@pytest.mark.parametrize("size", sorted(WORKED))
def test_plan_reproduces_the_worked_example(size: tuple[int, int]) -> None:
    w, h = size
    levels, (rows, cols), finest = WORKED[size]
    plan = paper_plan(w, h)
    got = [(lv.resized_height, lv.resized_width, lv.rows, lv.cols) for lv in plan.levels]
    assert got[: len(levels)] == levels
    assert plan.coarse_grid == (rows, cols - 1) and plan.coarse_tokens == rows * cols
    nxt = plan.levels[plan.next_index]
    assert max(nxt.resized_height, nxt.resized_width) == finest
    coarse_ratio, next_ratio = RATIOS[size]
    assert plan.levels[0].ratio == pytest.approx(coarse_ratio, abs=6e-4)
    assert nxt.ratio == pytest.approx(next_ratio, abs=6e-4)
    assert max(plan.thumbnail) == 336


def test_levels_are_powers_of_two_down_to_the_coarse_one() -> None:
    plan = paper_plan(27328, 27328)
    assert [lv.ratio for lv in plan.levels[1:]] == [0.0625, 0.125, 0.25, 0.5, 1.0]
    assert (plan.levels[-1].rows, plan.levels[-1].cols) == (82, 82)  # the card: 82x82 native tiles


@pytest.mark.parametrize(
    ("size", "tokens"),
    [((2016, 2016), 1963), ((8000, 6000), 1616)],  # card §5 "visual tokens to the LLM, all tiles retrieved"
)
def test_token_budget_upper_bounds_of_the_card(size: tuple[int, int], tokens: int) -> None:
    plan = paper_plan(*size) if size != (2016, 2016) else paper_plan(4000, 4000)
    rn, cn = plan.next_grid()
    valid = rn * cn + rn  # every tile retrieved: all content tokens plus the newline column
    assert 576 + 1 + int(0.25 * valid) + rn == tokens


def test_unpad_crops_bottom_right_by_the_original_aspect() -> None:
    assert unpadded_grid(36, 36, 8000, 6000) == (27, 36)
    assert unpadded_grid(36, 36, 6000, 8000) == (36, 27)
    assert unpadded_grid(24, 36, 27328, 10000) == (13, 36)
    assert unpadded_grid(36, 36, 1000, 1000) == (36, 36)


def test_too_small_for_a_tiled_level_is_a_typed_error() -> None:
    with pytest.raises(PaperModeError, match="no tiled level"):
        paper_plan(336, 336)


# ----------------------------------------------------------------------------------- the selection rules


def test_coarse_selection_golden() -> None:
    scores = torch.tensor([0.1, 0.5, 0.0, 0.05, 0.2, 0.0, 0.9, 0.3])
    assert coarse_selection(scores, cols=3, ratio=0.25).tolist() == [1, 3, 6, 7]
    assert coarse_selection(scores, cols=3, ratio=0.5).tolist() == [1, 3, 4, 6, 7]


def test_newline_column_forces_the_right_most_tile_column() -> None:
    # A 4 x (4 + 1) coarse grid onto a 2 x 3 tile grid; only newline positions selected.
    newlines = torch.tensor([4, 9, 14, 19])
    assert retrieval_tiles(newlines, 4, 4, 2, 3) == [(0, 2), (1, 2)]
    # Position (row 3, col 1): tile row floor(3*2/4) = 1, tile col floor(1*3/5) = 0
    assert retrieval_tiles(torch.tensor([3 * 5 + 1]), 4, 4, 2, 3) == [(1, 0)]
    # No cap: every touched tile comes back, raster order
    everything = torch.arange(20)
    assert retrieval_tiles(everything, 4, 4, 2, 3) == [(r, c) for r in range(2) for c in range(3)]


def test_final_prune_keeps_every_newline() -> None:
    scores = torch.tensor([0.4, 0.1, 0.0, 0.3, 0.2, 0.0, 0.0, 0.0])
    newline = torch.tensor([False, False, True, False, False, True, False, True])
    assert final_keep(scores, newline, 0.25).tolist() == [0, 2, 3, 5, 7]  # top 2 = {0, 3}


# ------------------------------------------------------------------------------------------- the loop

REGION = PixelBox(100, 80, 260, 190)  # level-0 pixels of a 1200 x 700 image


@dataclass(frozen=True)
class GradedScorer:
    """1 inside ``REGION``, then decaying with distance from it (no ties), newline markers 0."""

    region: PixelBox = REGION

    def score(
        self, adapter: ModelAdapter, question: str, segments: Sequence[VisionSegment], local: int
    ) -> TokenScores:
        seg = segments[local]
        rows = adapter.present_rows(seg)
        meta = seg.meta.select(rows)
        b = torch.nan_to_num(meta.boxes, nan=-1e6)
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        r = self.region
        dx = torch.clamp(torch.maximum(r.x0 - cx, cx - r.x1), min=0)
        dy = torch.clamp(torch.maximum(r.y0 - cy, cy - r.y1), min=0)
        s = torch.where((dx == 0) & (dy == 0), 1.0, 1e-3 / (1 + dx + dy + 1e-3 * cx + 1e-6 * cy))
        s = s * (~meta.newline)
        return TokenScores(s / s.sum(), rows, meta)


@pytest.fixture(scope="module")
def largeimg(tmp_path_factory: pytest.TempPathFactory) -> tuple[LargeImgAdapter, Path]:
    root = tmp_path_factory.mktemp("paper_ckpt")
    folder, _, _ = write_checkpoint(root, "qwen2", fmt="sharded")
    return LargeImgAdapter.from_checkpoint(str(folder)), folder


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(11)
    img = Image.fromarray(rng.integers(0, 256, (14, 24, 3), dtype=np.uint8)).resize((1200, 700))
    path = tmp_path_factory.mktemp("paper_img") / "scene.png"
    img.save(path)
    return path


def test_paper_loop_one_hop_on_the_released_layout(largeimg, scene: Path, tmp_path: Path) -> None:
    adapter, _ = largeimg
    t = adapter.tile_size  # 56 px tiles, 2x2 pooled tokens each
    plan = paper_plan(1200, 700, tile=t, coarse_long=3 * t, side=2)
    # 0.14 -> 98 x 168 (2 x 3 tiles); 0.25 -> 175 x 300 upsampled to 196 x 336 (4 x 6 tiles)
    assert [(lv.resized_height, lv.resized_width, lv.rows, lv.cols) for lv in plan.levels[:2]] == [
        (98, 168, 2, 3),
        (196, 336, 4, 6),
    ]
    assert plan.coarse_grid == (3, 6)  # the content is 3.5 token rows: LLaVA's unpad drops the half row

    options = PyramidOptions(spec=pyramid_spec_for(adapter), cache_dir=tmp_path / "cache")
    with DynamicImagePyramid.open(scene, options) as dip:
        loop = make_loop(adapter, GradedScorer(), C2FOptions(mode="paper"))
        result = loop.run(dip, "where are the ships?")
        tiles_read = dip.stats["tiles_read"]

    coarse, nxt = result.steps
    assert coarse.grid == (2, 3) and len(coarse.tiles) == 6
    assert nxt.grid == (4, 6) and nxt.decision.startswith("stop: paper")
    assert tiles_read == 1 + 6 + len(nxt.tiles) == len(result.tiles)

    # The selection, recomputed independently from the coarse scores: k = int(0.25 * 21) = 5 best
    # positions plus the 3 newlines, mapped by floor(r * 4 / 3), floor(c * 6 / 7).
    scores = result.coarse_scores
    assert scores is not None and len(scores.scores) == 3 * 7
    best = sorted(range(21), key=lambda i: -float(scores.scores[i]))[:5]
    positions = set(best) | {6, 13, 20}
    expected = sorted({((i // 7) * 4 // 3, (i % 7) * 6 // 7) for i in positions})
    assert [(k.row, k.col) for k in nxt.tiles] == expected
    # The newline column forces the right-most tile column in, for every tile row the 3 unpadded coarse
    # rows reach: floor(r * 4 / 3) never reaches tile row 3 (the released mapping's blind spot).
    assert {(0, 5), (1, 5), (2, 5)} <= set(expected) and not any(r == 3 for r, _ in expected)
    # The planted region (level-0 x 100..260, y 80..190) lies in next-level tiles rows 0-1, cols 0-1
    # (a next-level tile covers 1200/336*56 = 200 px across and 700/196*56 = 200 px down).
    assert {(0, 0), (0, 1)} <= set(expected)

    _, final = result.segments
    assert bool((final.meta.level == 1).all())  # the coarse tokens are dropped
    newline = final.meta.newline
    # ceil(196 / 28) = 7 token rows, every one keeps its newline, also row 6 whose tiles were not read
    assert int(newline.sum()) == 7
    kept_tokens = int((~newline).sum())
    # |V| = the retrieved tiles' content tokens + 7 newlines; keep = top int(|V|/4) ∪ newlines
    # Tile rows 0-2 are whole (2 x 2 tokens each): |V| = 4 per read tile + 7 newlines; the planted
    # scorer gives newlines 0, so the top int(|V| / 4) are all real tokens.
    assert kept_tokens == int(0.25 * (4 * len(nxt.tiles) + 7))
    inside = (final.meta.boxes[~newline, 0] < REGION.x1) & (final.meta.boxes[~newline, 2] > REGION.x0)
    assert bool(inside.any())


def test_paper_mode_through_answer_and_the_record(largeimg, scene: Path, tmp_path: Path) -> None:
    _, folder = largeimg
    rec = answer(
        scene,
        "how many ships are in the harbor?",
        model=str(folder),
        options=AskOptions(
            strategy="c2f",
            scorer="rfm",
            c2f=C2FOptions(mode="paper"),
            max_new_tokens=2,
            pyramid=PyramidOptions(cache_dir=tmp_path / "cache"),
        ),
    )
    assert rec.settings["mode"] == "paper" and len(rec.levels) == 2
    assert rec.levels[1]["decision"] == "stop: paper (one hop)"
    assert rec.stats.tiles_read == 1 + 6 + len(rec.levels[1]["tiles"])
    assert rec.stats.tflops_scoring > 0 and 1 <= rec.generated_tokens <= 2


def test_paper_mode_needs_newline_tokens(scene: Path, tmp_path: Path) -> None:
    from lrs_vqa.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path / "llava", "llava").path
    with pytest.raises(PaperModeError, match="newline"):
        answer(
            scene,
            "what is there?",
            model=str(folder),
            options=AskOptions(
                c2f=C2FOptions(mode="paper"), pyramid=PyramidOptions(cache_dir=tmp_path / "cache")
            ),
        )
