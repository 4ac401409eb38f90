"""The coarse-to-fine loop: global thumbnail → coarse level → scores → zoom into the next level's tiles the
scores point at → … → prune the final level's tokens and hand them to the LLM.

Only the tiles the loop selects are ever read from the pyramid. The rule of the default mode (the released
code takes exactly one hop with a fixed 25 % keep ratio; see the reference card §5 and §11):

0. **Thumbnail first** (``thumbnail_first``). The thumbnail alone is scored; its focus tokens vote on the
   tiles of every level. Among the levels where they land on at most ``jump_tiles`` tiles that pass the zoom
   test of step 3, the loop starts at the one needing the fewest reads to reach native (its tiles plus one
   per level below; the deeper on a tie), reading only those tiles. When no level passes (a spread map),
   it falls back to the whole coarse level. A concentrated question then costs one cheap thumbnail pass
   instead of encoding and scoring the coarse grid, and skips the levels the thumbnail already resolves.
1. **Focus tokens.** At each level, the highest-scoring tokens until they hold ``focus_mass`` of the level's
   score mass (ties with the last one included). Newline markers never select tiles (the released code's
   newline column forces the right-most tile column in; ours does not).
2. **Candidate tiles.** Each focus token spreads its score over the next level's tiles its level-0 box
   overlaps, by overlap area: exact content extents, no padding misalignment.
3. **Zoom or stop.** If every candidate fits in ``max_tiles_per_level``, they are all read (the zoom is
   bounded anyway). Otherwise the best ``max_tiles_per_level`` are read only if the map is concentrated:
   they hold at least ``min_focus_share`` of the view's whole score mass, and their *gain* — how much of the
   mass they could hold beyond their area share they do hold, ``(share − area share) / (1 − area share)`` —
   is at least ``min_gain``. A uniform map has gain 0 (top 16 of 25 tiles hold 64 % of it, their area
   share), so the loop stops at the current level instead of zooming into an arbitrary subset; a ratio test
   (mass share / area share) could not pass there at all, since 16 of 25 tiles allow at most 1.56. It also
   stops at the native resolution.
4. **Final prune.** The last level's tokens are pruned the same way as in step 1 (score mass, ``keep_ratio``
   cap) and further to fit ``budget_tokens`` vision tokens into the LLM, counting the thumbnail, newline
   markers and, with ``keep_coarse``, the coarse level's focus tokens kept as context.

Why mass instead of a fixed top-k: a sharp score map (one object) selects few tokens and few tiles, a flat one
selects many and triggers the stop rule; a fixed ratio would zoom into tiles picked by noise in both cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from lrs_vqa.c2f_modes import get_mode, mode_names, register_mode
from lrs_vqa.engine.hooks import VisionHook
from lrs_vqa.engine.tokens import TokenMeta, VisionSegment
from lrs_vqa.models.base import ModelAdapter
from lrs_vqa.options import C2FError, C2FOptions
from pyramid.dip import DynamicImagePyramid, Tile, TileKey
from pyramid.levels import PixelBox
from rfm.base import RegionScorer, TokenScores


@dataclass(frozen=True)
class LevelStep:
    """What the loop did at one level."""

    level: int
    level_name: str
    grid: tuple[int, int]  # the level's tile grid (rows, cols)
    tiles: tuple[TileKey, ...]  # tiles read and encoded at this level
    tile_scores: tuple[float, ...]  # score mass of each encoded tile's tokens
    tokens_encoded: int
    focus_tokens: int
    decision: str  # "zoom" | "stop: native" | "stop: spread" | "stop: single level"
    next_tiles: tuple[TileKey, ...] = ()
    next_scores: tuple[float, ...] = ()
    focus_share: float | None = None  # share of the view's score mass the next tiles hold
    lift: float | None = None  # that share over the share of the view's area they cover
    gain: float | None = None  # (share − area share) / (1 − area share): 0 uniform, 1 all the mass
    next_boxes: tuple[PixelBox, ...] = ()  # level-0 boxes of next_tiles where they are not pyramid tiles

    @property
    def reads_next(self) -> bool:
        """The loop went on to read ``next_tiles`` (a zoom, or the thumbnail's jump)."""
        return self.decision == "zoom" or self.decision.startswith("jump to ")

    def describe(self) -> dict[str, object]:
        return {
            "level": self.level,
            "level_name": self.level_name,
            "grid": list(self.grid),
            "tiles": [[k.row, k.col] for k in self.tiles],
            "tile_scores": [round(s, 6) for s in self.tile_scores],
            "tokens_encoded": self.tokens_encoded,
            "focus_tokens": self.focus_tokens,
            "decision": self.decision,
            "next_tiles": [[k.row, k.col] for k in self.next_tiles],
            "next_scores": [round(s, 6) for s in self.next_scores],
            "focus_share": None if self.focus_share is None else round(self.focus_share, 4),
            "lift": None if self.lift is None else round(self.lift, 3),
            "gain": None if self.gain is None else round(self.gain, 3),
        }


@dataclass
class C2FResult:
    segments: list[VisionSegment]  # what the LLM reads, in order; meta.tile indexes ``tiles``
    tiles: list[Tile]  # every tile read: thumbnail first, then level by level
    roles: list[str]
    steps: list[LevelStep]
    coarse_scores: TokenScores | None = None  # for the heatmap
    tile_scores: list[float | None] = field(default_factory=list)  # aligned with ``tiles``
    tokens_encoded: int = 0  # every level's encoder output, thumbnail included
    images_encoded: int = 0  # every encoder input (for the vision FLOPs)
    scoring_tflops: float = 0.0  # the region scorer's passes


def focus_rows(
    scores: torch.Tensor, newline: torch.Tensor, mass: float, ratio: float | None = None
) -> torch.Tensor:
    """Indices (sorted) of the top-scoring non-newline tokens that hold ``mass`` of their score mass, with
    every token tied with the last one taken (a flat plateau is kept whole, never cut by index order), at
    most ``ceil(ratio · n)`` of them when ``ratio`` is given, and at least one."""
    candidates = torch.nonzero(~newline).flatten()
    if candidates.numel() == 0:
        return candidates
    s = scores[candidates].double()
    order = torch.argsort(s, descending=True, stable=True)
    total = float(s.sum())
    if total <= 0:
        take = candidates.numel()
    else:
        cum = torch.cumsum(s[order], 0) / total
        take = int(torch.searchsorted(cum, torch.tensor([mass - 1e-12], dtype=cum.dtype))[0]) + 1
        take = min(max(take, 1), candidates.numel())
        threshold = float(s[order[take - 1]])
        take = int((s >= threshold * (1 - 1e-6)).sum())  # ties with the last token taken
    if ratio is not None:
        take = min(take, max(1, math.ceil(ratio * candidates.numel())))
    return torch.sort(candidates[order[:take]]).values


def tile_votes(
    dip: DynamicImagePyramid, level: int, boxes: torch.Tensor, scores: torch.Tensor
) -> dict[TileKey, float]:
    """Spread each token's score over the ``level`` tiles its level-0 box overlaps, by overlap area."""
    lvl = dip.level(level)
    votes: dict[TileKey, float] = {}
    for box, score in zip(boxes.tolist(), scores.tolist(), strict=True):
        x0, y0, x1, y1 = box
        area = max((x1 - x0) * (y1 - y0), 1e-9)
        outer = PixelBox(math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))
        for r, c in lvl.tiles_covering(outer):
            tb = lvl.tile_box(r, c)
            ox = min(x1, tb.x1) - max(x0, tb.x0)
            oy = min(y1, tb.y1) - max(y0, tb.y0)
            if ox > 0 and oy > 0:
                key = TileKey(level, r, c)
                votes[key] = votes.get(key, 0.0) + score * ox * oy / area
    return votes


def tile_mass(scores: TokenScores, n_tiles: int) -> list[float]:
    real = scores.meta.tile >= 0
    mass = torch.zeros(n_tiles, dtype=torch.float64)
    mass.index_add_(0, scores.meta.tile[real], scores.scores[real].double())
    return mass.tolist()


def shift_tiles(segment: VisionSegment, offset: int) -> VisionSegment:
    tile = torch.where(segment.meta.tile >= 0, segment.meta.tile + offset, segment.meta.tile)
    return replace(
        segment, meta=TokenMeta(tile, segment.meta.level, segment.meta.boxes, segment.meta.newline)
    )


class Loop(Protocol):
    """What a c2f mode builds (``lrs_vqa.c2f_modes``): one question over one pyramid → a ``C2FResult``."""

    def run(self, dip: DynamicImagePyramid, question: str) -> C2FResult: ...


def make_loop(
    adapter: ModelAdapter,
    scorer: RegionScorer,
    options: C2FOptions | None = None,
    vision_hooks: Sequence[VisionHook] = (),
    pruner_hooks: Sequence[VisionHook] | None = None,
) -> Loop:
    """The loop of ``options.mode`` (registered in ``lrs_vqa.c2f_modes``)."""
    options = options or C2FOptions()
    mode = get_mode(options.mode)
    if mode is None:
        raise C2FError(f"unknown mode {options.mode!r}; choose one of {', '.join(mode_names())}")
    return mode.loop(adapter, scorer, options, vision_hooks, pruner_hooks)


@register_mode("default")
class CoarseToFine:
    """The default mode's loop, for one question over one pyramid with one adapter and one scorer."""

    def __init__(
        self,
        adapter: ModelAdapter,
        scorer: RegionScorer,
        options: C2FOptions | None = None,
        vision_hooks: Sequence[VisionHook] = (),
        pruner_hooks: Sequence[VisionHook] | None = None,
    ) -> None:
        """``pruner_hooks``: a token pruner compresses the final level instead of the loop's own final prune:
        the final tiles are re-encoded with these (vision-side) hooks, or, when there are none (an LLM-side
        pruner), handed to the LLM whole."""
        self.adapter = adapter
        self.scorer = scorer
        self.options = options or C2FOptions()
        if self.options.mode != "default":  # other modes have their own loop: make_loop picks it
            raise C2FError(
                f"CoarseToFine runs the default mode; use make_loop for mode {self.options.mode!r}"
            )
        self.hooks = vision_hooks
        self.pruner_hooks = pruner_hooks

    def _encode(self, tiles: Sequence[Tile], level: int, newlines: bool) -> VisionSegment:
        return self.adapter.encode_tiles(tiles, newlines=newlines, level=level, hooks=self.hooks)

    def _prune_to(self, segment: VisionSegment, scores: TokenScores, rows: torch.Tensor) -> VisionSegment:
        return self.adapter.prune_segment(segment, scores.rows[rows])

    def _final(
        self, segment: VisionSegment, scores: TokenScores, room: int
    ) -> tuple[VisionSegment, torch.Tensor]:
        """Prune by mass and ratio, then shrink until the survivors (with their newlines) fit ``room``."""
        opt = self.options
        rows = focus_rows(scores.scores, scores.meta.newline, opt.focus_mass, opt.keep_ratio)
        if room < 1:
            raise C2FError(f"token budget {opt.budget_tokens} leaves no room for the zoomed-in tokens")
        order = torch.argsort(scores.scores[rows], descending=True, stable=True)
        keep = rows
        for _ in range(8):  # newline markers depend on which rows survive: converge in a few passes
            pruned = self._prune_to(segment, scores, keep)
            size = len(self.adapter.present_rows(pruned))
            if size <= room:
                return pruned, keep
            n = max(1, len(keep) - (size - room))
            keep = torch.sort(rows[order[:n]]).values
            if n == 1:
                break
        pruned = self._prune_to(segment, scores, keep)
        if len(self.adapter.present_rows(pruned)) > room:
            raise C2FError(f"token budget {opt.budget_tokens} is too small for even one zoomed-in token")
        return pruned, keep

    @staticmethod
    def _concentration(
        dip: DynamicImagePyramid, level: int, scores: TokenScores, chosen: Sequence[TileKey]
    ) -> tuple[float, float, float]:
        """Share of the view's whole score mass inside ``chosen`` (next-level tiles), its lift: that share
        over the share of the view's area they cover (1 = no denser than average), and its gain (see the
        module docstring)."""
        real = torch.nonzero(~scores.meta.newline).flatten()
        votes = tile_votes(dip, level, scores.meta.boxes[real], scores.scores[real])
        total = sum(votes.values())
        if total <= 0 or not chosen:
            return 0.0, 0.0, 0.0
        lvl = dip.level(level)

        def area(key: TileKey) -> int:
            return lvl.tile_box(key.row, key.col).area

        share = sum(votes.get(k, 0.0) for k in chosen) / total
        area_share = sum(area(k) for k in chosen) / max(sum(area(k) for k in votes), 1)
        gain = (share - area_share) / (1 - area_share) if area_share < 1 else 0.0
        return share, share / max(area_share, 1e-12), gain

    def _thumbnail_jump(
        self, dip: DynamicImagePyramid, scores: TokenScores, thumb: Tile
    ) -> tuple[int, list[TileKey], LevelStep]:
        """Where the thumbnail's scores send the loop: (level, its tiles to read, the step recorded), or
        level -1 and no tiles when the map is too spread to jump (read the coarse level whole)."""
        opt = self.options
        focus = focus_rows(scores.scores, scores.meta.newline, opt.focus_mass)
        base = {
            "level": -1,
            "level_name": "thumbnail",
            "grid": (1, 1),
            "tiles": (thumb.key,),
            "tile_scores": (float(scores.scores.sum()),),
            "tokens_encoded": len(scores.scores),
            "focus_tokens": int(focus.numel()),
        }
        native = len(dip.levels) - 1
        best: tuple[int, int, list[TileKey], dict[TileKey, float], tuple[float, float, float]] | None = None
        for index in range(native, -1, -1):  # deepest first, so a tie goes to the deeper level
            votes = tile_votes(dip, index, scores.meta.boxes[focus], scores.scores[focus])
            if not votes or len(votes) > opt.jump_tiles:
                continue
            chosen = sorted(votes, key=lambda k: (k.row, k.col))  # raster order for the LLM
            share, lift, gain = self._concentration(dip, index, scores, chosen)
            if share < opt.min_focus_share or gain < opt.min_gain:
                continue
            # Reads to reach native from here: these tiles, then at least one per level below. A deep level
            # where the focus straddles 4 tiles can cost more than a shallower one where it sits in one.
            cost = len(chosen) + native - index
            if best is None or cost < best[0]:
                best = (cost, index, chosen, votes, (share, lift, gain))
        if best is None:
            return -1, [], LevelStep(**base, decision="spread: coarse level")
        _, index, chosen, votes, (share, lift, gain) = best
        lvl = dip.level(index)
        step = LevelStep(
            **base,
            decision=f"jump to {lvl.name}",
            next_tiles=tuple(chosen),
            next_scores=tuple(votes[k] for k in chosen),
            focus_share=share,
            lift=lift,
            gain=gain,
            next_boxes=tuple(lvl.tile_box(k.row, k.col) for k in chosen),
        )
        return index, chosen, step

    def run(self, dip: DynamicImagePyramid, question: str) -> C2FResult:
        opt = self.options
        thumb = dip.thumbnail()
        seg_thumb = self._encode([thumb], -1, newlines=False)
        thumb_tokens = len(self.adapter.present_rows(seg_thumb))
        tiles: list[Tile] = [thumb]
        roles = ["thumbnail"]
        tile_scores: list[float | None] = [None]
        steps: list[LevelStep] = []
        context: list[VisionSegment] = []
        coarse_scores: TokenScores | None = None
        encoded, images, scoring = seg_thumb.tokens_encoded, seg_thumb.images_encoded, 0.0

        index = 0
        keys = dip.all_tiles(0)
        if opt.thumbnail_first and len(dip.levels) > 1:
            thumb_scores = self.scorer.score(self.adapter, question, [seg_thumb], 0)
            scoring += thumb_scores.tflops
            jump, chosen, step = self._thumbnail_jump(dip, thumb_scores, thumb)
            steps.append(step)
            if jump >= 0:
                index, keys, coarse_scores = jump, chosen, thumb_scores  # heatmap: the thumbnail map
        while True:
            level = dip.levels[index]
            level_tiles = list(dip.stream(keys))
            segment = self._encode(level_tiles, index, newlines=True)
            scores = self.scorer.score(self.adapter, question, [seg_thumb, segment], 1)
            encoded += segment.tokens_encoded
            images += segment.images_encoded
            scoring += scores.tflops
            if index == 0 and coarse_scores is None:
                coarse_scores = scores
            offset = len(tiles)
            tiles += level_tiles
            roles += ["coarse" if index == 0 else "zoom"] * len(level_tiles)
            per_tile = tile_mass(scores, len(level_tiles))
            tile_scores += per_tile
            focus = focus_rows(scores.scores, scores.meta.newline, opt.focus_mass)
            base = {
                "level": index,
                "level_name": level.name,
                "grid": (level.rows, level.cols),
                "tiles": tuple(t.key for t in level_tiles),
                "tile_scores": tuple(per_tile),
                "tokens_encoded": segment.tokens_encoded,
                "focus_tokens": int(focus.numel()),
            }
            if level.is_native:
                decision = "stop: native" if index > 0 else "stop: single level"
                steps.append(LevelStep(**base, decision=decision))
                break
            votes = tile_votes(dip, index + 1, scores.meta.boxes[focus], scores.scores[focus])
            ranked = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0].row, kv[0].col))
            chosen = ranked[: opt.max_tiles_per_level]
            share, lift, gain = self._concentration(dip, index + 1, scores, [k for k, _ in chosen])
            # All candidates fit the cap: the zoom is bounded anyway. Otherwise only a concentrated map may
            # zoom: a uniform one would pick an arbitrary subset (top 16 of 25 tiles always hold 64 %).
            fits = len(ranked) <= opt.max_tiles_per_level
            zoom = bool(chosen) and (fits or (share >= opt.min_focus_share and gain >= opt.min_gain))
            steps.append(
                LevelStep(
                    **base,
                    decision="zoom" if zoom else "stop: spread",
                    next_tiles=tuple(k for k, _ in chosen),
                    next_scores=tuple(v for _, v in chosen),
                    focus_share=share,
                    lift=lift,
                    gain=gain,
                )
            )
            if not zoom:
                break
            if index == 0 and opt.keep_coarse:
                context.append(shift_tiles(self._prune_to(segment, scores, focus), offset))
            keys = sorted((k for k, _ in chosen), key=lambda k: (k.row, k.col))  # raster order for the LLM
            index += 1

        if self.pruner_hooks is None:
            room = opt.budget_tokens - thumb_tokens - sum(len(self.adapter.present_rows(s)) for s in context)
            final, _ = self._final(segment, scores, room)
        elif self.pruner_hooks:
            final = self.adapter.encode_tiles(
                level_tiles, newlines=True, level=index, hooks=self.pruner_hooks
            )
            encoded += final.tokens_encoded
            images += final.images_encoded
        else:
            final = segment
        return C2FResult(
            segments=[seg_thumb, *context, shift_tiles(final, offset)],
            tiles=tiles,
            roles=roles,
            steps=steps,
            coarse_scores=coarse_scores,
            tile_scores=tile_scores,
            tokens_encoded=encoded,
            images_encoded=images,
            scoring_tflops=scoring,
        )
