"""``paper`` mode: the released LRS-VQA coarse-to-fine step, as the reference card lists it (§2.2, §3, §5).

So that published numbers can be compared with the released weights, this mode keeps the released
behaviour, including the parts the default mode changes:

* **Levels.** The released DIP's arithmetic (:func:`paper_plan`): powers of two of the original down to a
  coarse level with a long side of about ``3 × tile`` (1008 px), every level upsampled so its limiting side
  fills whole tiles, padding bottom/right with the CLIP mean, a global thumbnail with long side ``tile``.
* **One hop.** Coarse level → its next level (the same level when the image has only one), never further.
* **Selection.** ``k = int(keep_ratio · |C|)`` top coarse tokens (newline markers compete and are then all
  added), mapped onto the next level's tile grid by ``floor(r · bh / rc)``, ``floor(c · bw / (cc + 1))``
  — so the newline column always pulls in the right-most tile column — and *every* touched tile is read.
* **Final prune.** Top ``int(keep_ratio · |V|)`` of the next level's valid tokens, plus every newline marker.
* **Layout.** ``[prefix][global][':'][pruned next-level tokens in raster order with newlines][suffix]``; the
  coarse tokens are dropped.

Known differences from the released code (reported, not hidden):

* Pixels come from our pyramid (area-averaged overviews, then bilinear to the released level size) instead of
  a non-antialiased bilinear resize of the whole decoded image; geometry (sizes, grids, tokens) is identical.
* The second scoring pass runs on the compacted sequence (unselected tiles are absent) instead of zero-filled
  tiles masked as keys: the scored tokens see the same keys, but tokens after a gap sit at smaller RoPE
  positions.
* The next level's token grid is cut at the tokens that touch content (``ceil`` of the content size); the
  card does not give the rounding of the released ``unpad_image_hw``. The coarse grid uses LLaVA's unpad rule.
* No truncation to ``tokenizer_model_max_length`` (the released code cuts the question off if it overflows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from lrs_vqa.c2f import C2FError, C2FOptions, C2FResult, LevelStep, shift_tiles, tile_mass
from lrs_vqa.c2f_modes import register_mode
from lrs_vqa.engine.hooks import VisionHook
from lrs_vqa.engine.tokens import VisionSegment
from lrs_vqa.models.base import ModelAdapter
from pyramid.dip import THUMBNAIL, DynamicImagePyramid, Tile, TileKey
from pyramid.levels import PixelBox
from rfm.base import RegionScorer, TokenScores


class PaperModeError(C2FError):
    """The released loop cannot run here; one-line message."""


@dataclass(frozen=True)
class PaperLevel:
    """One tiled level of the released DIP (card §2.2)."""

    ratio: float
    height: int  # round(H · ratio), before the upsample-to-tiles
    width: int
    resized_height: int  # after the upsample: what the tiles are cut from
    resized_width: int
    rows: int  # tile grid
    cols: int

    @property
    def tiles(self) -> int:
        return self.rows * self.cols

    def tile_box(self, row: int, col: int, tile: int) -> PixelBox:
        """Content of tile (row, col) in this level's resized pixels (the rest of the tile is padding)."""
        return PixelBox(
            col * tile,
            row * tile,
            min((col + 1) * tile, self.resized_width),
            min((row + 1) * tile, self.resized_height),
        )


@dataclass(frozen=True)
class PaperPlan:
    width: int  # the source image
    height: int
    tile: int
    side: int  # pooled tokens per tile side (12 for 336 tiles)
    levels: tuple[PaperLevel, ...]  # tiled levels, coarse → fine
    thumbnail: tuple[int, int]  # (height, width) of the global view, top-left in one tile
    coarse_grid: tuple[int, int]  # unpadded coarse token grid (rows, cols), newline column not counted

    @property
    def next_index(self) -> int:
        """The level the one hop reads (clamped to the coarse level when it is the only one)."""
        return min(1, len(self.levels) - 1)

    @property
    def coarse_tokens(self) -> int:
        rows, cols = self.coarse_grid
        return rows * (cols + 1)

    def next_grid(self) -> tuple[int, int]:
        """The next level's token grid over its content (rows, cols), newline column not counted."""
        nxt = self.levels[self.next_index]
        cell = self.tile / self.side
        return math.ceil(nxt.resized_height / cell), math.ceil(nxt.resized_width / cell)


def _level(width: int, height: int, ratio: float, tile: int) -> PaperLevel:
    h, w = round(height * ratio), round(width * ratio)
    bh, bw = math.ceil(h / tile), math.ceil(w / tile)
    s = min(bh * tile / h, bw * tile / w)  # >= 1: upsample until the limiting side fills whole tiles
    rh, rw = round(h * s), round(w * s)
    return PaperLevel(ratio, h, w, rh, rw, math.ceil(rh / tile), math.ceil(rw / tile))


def unpadded_grid(rows: int, cols: int, width: int, height: int) -> tuple[int, int]:
    """LLaVA's unpad of a ``rows × cols`` token grid to the original aspect ratio, cropping bottom/right."""
    # round(·, 7) before int: 6000 · (36 / 8000) is 26.999999999999996 in floating point, 27 on paper.
    if width / height > cols / rows:
        return int(round(height * (cols / width), 7)), cols
    return rows, int(round(width * (rows / height), 7))


def paper_plan(
    width: int, height: int, *, tile: int = 336, coarse_long: int = 1008, side: int = 12
) -> PaperPlan:
    """The released DIP's levels for a ``width × height`` image (card §2.2 pseudo-code)."""
    if width < 1 or height < 1:
        raise PaperModeError(f"image size must be positive, got {width}x{height}")
    min_scale = min(coarse_long / max(width, height), 1.0)
    ratios = [1.0]
    while ratios[-1] / 2 >= min_scale:
        ratios.append(ratios[-1] / 2)
    if ratios[-1] > min_scale:
        ratios.append(min_scale)
    ratios.append(min(tile / height, tile / width))
    ordered = sorted(set(ratios), reverse=True)
    if len(ordered) < 2:
        raise PaperModeError(f"a {width}x{height} image leaves the released pyramid no tiled level")
    glob = _level(width, height, ordered[-1], tile)
    levels = tuple(_level(width, height, r, tile) for r in reversed(ordered[:-1]))
    coarse = levels[0]
    grid = unpadded_grid(coarse.rows * side, coarse.cols * side, width, height)
    return PaperPlan(width, height, tile, side, levels, (glob.resized_height, glob.resized_width), grid)


# -------------------------------------------------------------------------------------- selection rules


def coarse_selection(scores: torch.Tensor, cols: int, ratio: float) -> torch.Tensor:
    """Sorted indices into the coarse sequence C (rows × (cols + 1), newline last in each row): the top
    ``int(ratio · |C|)`` scores, then every newline position added."""
    n = scores.numel()
    top = torch.topk(scores.float(), int(ratio * n)).indices
    newlines = torch.arange(cols, n, cols + 1)
    return torch.unique(torch.cat([top, newlines]))


def tile_of_positions(
    indices: torch.Tensor, rows: int, cols: int, next_rows: int, next_cols: int
) -> list[tuple[int, int]]:
    """The next-level tile (row, col) of each coarse position in ``indices`` of a ``rows × (cols + 1)``
    grid, by the released mapping (the unpadded token grid onto the padded tile grid)."""
    r, c = indices // (cols + 1), indices % (cols + 1)
    tr = (r * next_rows) // rows
    tc = (c * next_cols) // (cols + 1)
    return [(int(a), int(b)) for a, b in zip(tr.tolist(), tc.tolist(), strict=True)]


def retrieval_tiles(
    indices: torch.Tensor, rows: int, cols: int, next_rows: int, next_cols: int
) -> list[tuple[int, int]]:
    """Every next-level tile touched by ``indices``, raster order, no cap (the released rule)."""
    return sorted(set(tile_of_positions(indices, rows, cols, next_rows, next_cols)))


def final_keep(scores: torch.Tensor, newline: torch.Tensor, ratio: float) -> torch.Tensor:
    """Sorted rows kept by the final prune: top ``int(ratio · n)`` over all valid tokens (newline markers
    included), then every newline marker."""
    top = torch.topk(scores.float(), int(ratio * scores.numel())).indices
    return torch.unique(torch.cat([top, torch.nonzero(newline).flatten()]))


# -------------------------------------------------------------------------------------------- the loop


def _select(segment: VisionSegment, rows: torch.Tensor) -> VisionSegment:
    return replace(
        segment, embeds=segment.embeds[rows.to(segment.embeds.device)], meta=segment.meta.select(rows)
    )


def _full_scores(scores: TokenScores, n: int) -> torch.Tensor:
    full = torch.zeros(n, dtype=torch.float32)
    full[scores.rows] = scores.scores.float().cpu()
    return full


def grid_positions(segment: VisionSegment, tiles: Sequence[Tile], side: int, tile: int) -> torch.Tensor:
    """(n, 2) token-grid (row, col) of every row of a level segment; a newline marker gets its row and
    col = -1."""
    meta = segment.meta
    cell = tile / side
    out = torch.empty(len(meta), 2, dtype=torch.long)
    last_row = 0
    for i in range(len(meta)):
        if bool(meta.newline[i]):
            out[i] = torch.tensor([last_row, -1])
            continue
        t = tiles[int(meta.tile[i])]
        sx = t.box.width / max(t.level_box.width, 1)
        sy = t.box.height / max(t.level_box.height, 1)
        x0, y0 = float(meta.boxes[i, 0]), float(meta.boxes[i, 1])
        col = round((t.level_box.x0 + (x0 - t.box.x0) / sx) / cell)
        last_row = round((t.level_box.y0 + (y0 - t.box.y0) / sy) / cell)
        out[i] = torch.tensor([last_row, col])
    return out


def complete_newlines(segment: VisionSegment, token_rows: torch.Tensor, rows: int) -> VisionSegment:
    """Give every token row ``0..rows-1`` its newline marker, also rows none of whose tiles were retrieved
    (the released grid zero-fills them, masks their tokens and keeps their newlines valid)."""
    newline = segment.meta.newline
    marker = torch.nonzero(newline).flatten()[:1]
    if marker.numel() == 0:
        raise PaperModeError("the level has no newline marker to copy")
    order: list[int] = []  # segment rows, with ``marker`` repeated for the missing rows
    present = set(token_rows[newline].tolist())
    done = 0
    for i in range(len(segment.meta)):
        if bool(newline[i]):
            row = int(token_rows[i])
            order += [int(marker)] * sum(1 for r in range(done, row) if r not in present)
            done = row + 1
        order.append(i)
    order += [int(marker)] * (rows - done)
    return _select(segment, torch.tensor(order))


@register_mode("paper")
class PaperLoop:
    """The released one-hop loop over one pyramid with one adapter and one scorer; returns the same result
    type as :class:`lrs_vqa.c2f.CoarseToFine`. Of the options it uses ``keep_ratio`` only; a token pruner is
    refused (``AskOptions``: the released loop has its own final prune, so a budget would not be honoured)."""

    def __init__(
        self,
        adapter: ModelAdapter,
        scorer: RegionScorer,
        options: C2FOptions | None = None,
        vision_hooks: Sequence[VisionHook] = (),
        pruner_hooks: Sequence[VisionHook] | None = None,
    ) -> None:
        self.adapter = adapter
        self.scorer = scorer
        self.keep_ratio = (options or C2FOptions(mode="paper")).keep_ratio
        self.hooks = vision_hooks

    def plan(self, dip: DynamicImagePyramid) -> PaperPlan:
        tile = self.adapter.tile_size
        side = math.isqrt(self.adapter.tokens_per_tile)
        return paper_plan(dip.info.width, dip.info.height, tile=tile, coarse_long=3 * tile, side=side)

    def _tile(self, dip: DynamicImagePyramid, plan: PaperPlan, index: int, row: int, col: int) -> Tile:
        level = plan.levels[index]
        box = level.tile_box(row, col, plan.tile)
        return self._read(dip, plan, box, level.resized_width, level.resized_height, TileKey(index, row, col))

    @staticmethod
    def _read(
        dip: DynamicImagePyramid, plan: PaperPlan, box: PixelBox, level_w: int, level_h: int, key: TileKey
    ) -> Tile:
        sx, sy = plan.width / level_w, plan.height / level_h
        src = (box.x0 * sx, box.y0 * sy, box.x1 * sx, box.y1 * sy)
        pixels, valid = dip.read_resampled(src, box.width, box.height)
        level0 = PixelBox(
            math.floor(src[0] + 1e-9),
            math.floor(src[1] + 1e-9),
            min(plan.width, math.ceil(src[2] - 1e-9)),
            min(plan.height, math.ceil(src[3] - 1e-9)),
        )
        name = "thumbnail" if key.level == THUMBNAIL else f"paper-{key.level} ({level_w}x{level_h})"
        return Tile(key, name, box, dip.geometry(level0), pixels, valid)

    def _encode(self, tiles: Sequence[Tile], level: int, newlines: bool) -> VisionSegment:
        return self.adapter.encode_tiles(tiles, newlines=newlines, level=level, hooks=self.hooks)

    def run(self, dip: DynamicImagePyramid, question: str) -> C2FResult:
        adapter, ratio = self.adapter, self.keep_ratio
        plan = self.plan(dip)
        th, tw = plan.thumbnail
        thumb = self._read(dip, plan, PixelBox(0, 0, tw, th), tw, th, TileKey(THUMBNAIL, 0, 0))
        seg_thumb = self._encode([thumb], THUMBNAIL, newlines=False)

        coarse = plan.levels[0]
        coarse_tiles = [
            self._tile(dip, plan, 0, r, c) for r in range(coarse.rows) for c in range(coarse.cols)
        ]
        seg = self._encode(coarse_tiles, 0, newlines=True)
        if not bool(seg.meta.newline.any()) or len(adapter.present_rows(seg)) != len(seg.meta):
            raise PaperModeError(
                f"paper mode needs the released LLaVA layout with row-end newline tokens; {adapter.family} "
                "has none (use --mode default)"
            )
        rows, cols = plan.coarse_grid
        pos = grid_positions(seg, coarse_tiles, plan.side, plan.tile)
        keep = (pos[:, 0] < rows) & (pos[:, 1] < cols)  # LLaVA's unpad (drops a partial last row/col)
        seg = _select(seg, torch.nonzero(keep).flatten())
        if len(seg.meta) != plan.coarse_tokens:
            raise PaperModeError(
                f"coarse grid has {len(seg.meta)} tokens, the released layout {rows}x{cols + 1} = "
                f"{plan.coarse_tokens}"
            )
        scores = self.scorer.score(adapter, question, [seg_thumb, seg], 1)
        s_coarse = _full_scores(scores, len(seg.meta))
        chosen = coarse_selection(s_coarse, cols, ratio)
        ni = plan.next_index
        nxt = plan.levels[ni]
        per_position = tile_of_positions(chosen, rows, cols, nxt.rows, nxt.cols)
        picks = sorted(set(per_position))
        by_tile = dict.fromkeys(picks, 0.0)  # the selected coarse score mass behind each tile
        for idx, key in zip(chosen.tolist(), per_position, strict=True):
            by_tile[key] += float(s_coarse[idx])

        next_tiles = [self._tile(dip, plan, ni, r, c) for r, c in picks]
        seg2 = self._encode(next_tiles, ni, newlines=True)
        token_rows = grid_positions(seg2, next_tiles, plan.side, plan.tile)[:, 0]
        seg2 = complete_newlines(seg2, token_rows, plan.next_grid()[0])
        scores2 = self.scorer.score(adapter, question, [seg_thumb, seg2], 1)
        s_next = _full_scores(scores2, len(seg2.meta))
        final = _select(seg2, final_keep(s_next, seg2.meta.newline, ratio))

        n_coarse, n_next = len(coarse_tiles), len(next_tiles)
        offset = 1 + n_coarse
        final = shift_tiles(final, offset)
        steps = [
            LevelStep(
                level=0,
                level_name=coarse_tiles[0].level_name,
                grid=(coarse.rows, coarse.cols),
                tiles=tuple(t.key for t in coarse_tiles),
                tile_scores=tuple(tile_mass(scores, n_coarse)),
                tokens_encoded=seg.tokens_encoded,
                focus_tokens=int(chosen.numel()),
                decision="zoom",
                next_tiles=tuple(TileKey(ni, r, c) for r, c in picks),
                next_scores=tuple(by_tile[p] for p in picks),
                next_boxes=tuple(t.box for t in next_tiles),
            ),
            LevelStep(
                level=ni,
                level_name=next_tiles[0].level_name,
                grid=(nxt.rows, nxt.cols),
                tiles=tuple(t.key for t in next_tiles),
                tile_scores=tuple(tile_mass(scores2, n_next)),
                tokens_encoded=seg2.tokens_encoded,
                focus_tokens=int(final.meta.newline.logical_not().sum()),
                decision="stop: paper (one hop)",
            ),
        ]
        return C2FResult(
            segments=[seg_thumb, final],
            tiles=[thumb, *coarse_tiles, *next_tiles],
            roles=["thumbnail"] + ["coarse"] * n_coarse + ["zoom"] * n_next,
            steps=steps,
            coarse_scores=scores,
            tile_scores=[None, *tile_mass(scores, n_coarse), *tile_mass(scores2, n_next)],
            tokens_encoded=seg_thumb.tokens_encoded + seg.tokens_encoded + seg2.tokens_encoded,
            images_encoded=seg_thumb.images_encoded + seg.images_encoded + seg2.images_encoded,
            scoring_tflops=scores.tflops + scores2.tflops,
        )
