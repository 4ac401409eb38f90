"""PTP — Pyramid Token Pruning (pruners.md §1.3): a pyramid of importance for tiled (sub-image) inputs.

* Token level (bottom-up): each vision token's saliency b in the encoder — the attention the CLS token pays
  it at the feature layer (head mean), or without CLS the mean attention it receives (Qwen: averaged over
  the 2×2 merge unit). Read on the vision side (after the projector); nothing is dropped there.
* Region level (bottom-up): partitions are the tiles of each encoded group (the engine tags every token
  with its tile: ``VisionContext.tile_index``), so a thumbnail and each sub-image / pyramid tile are separate
  regions. A region's saliency is the global view's (the thumbnail's) token saliency pooled over the
  region's level-0 footprint (mean density, :func:`footprint_saliency`): one map rates every region, so the
  ratings compare across tiles. A tile's own mean b would not — b is normalised inside each tile, so without
  a CLS token that mean is exactly 1/N for every tile and budgets would just follow tile sizes. Without a
  global view carrying token boxes (the model's own processing) the region saliency falls back to the
  mean b, i.e. budgets in proportion to size. The tokens a stage keeps are shared out over the partitions
  in proportion to their saliency (largest remainders, capped at a partition's size).
* Instruction level (top-down): c = the maximum over the question's rows of their head-mean attention to
  each vision token, in a shallow LLM layer.
* Before LLM layer K (default 2 of 32) the tokens are ranked by fused = (1−α)·minmax(b) + α·minmax(c)
  (α = 0.5) and each partition keeps its share of the budget.

Deviations (no official code; the card is [abs] + a third-party re-implementation):

* The selection happens once, in the LLM, with both signals; the card's intermediate "candidates" step
  (top budget[p] by b) would select exactly as many tokens as the final step and so is folded into it.
* c uses layer K−1's attention (FastV's convention in this engine); the re-implementation uses layer 2.
* The LLM stage finds each token's tile and b by the exact fingerprint of its embedding (recorded by the
  vision hook after the projector), so newline markers and rows a region search (c2f) dropped or never
  used do not disturb it. A row the vision hook never saw (a newline marker) joins the partition of the
  row before it with b = 0; with no record at all (a prompt built without the vision hook) every vision
  row is one partition and b = 0, i.e. instruction relevance alone.
* An average budget's remainder trim ranks all partitions together by the stage's fused score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lrs_vqa.engine.decoder import LayerView, Selection
from lrs_vqa.engine.tokens import box_overlaps
from pruning.base import (
    BudgetedVisionHook,
    HookSet,
    ModelTarget,
    Pruner,
    ScheduledLayerHook,
    Signal,
    Stage,
    fingerprints,
    saliency_rows,
    selection_keeping,
    top_k,
)
from pruning.budget import Budget, Schedule, scale_layers, solve_schedule
from pruning.errors import PrunerConfigError
from pruning.registry import register
from pruning.scores import encoder_saliency
from pyramid.dip import THUMBNAIL

if TYPE_CHECKING:
    from lrs_vqa.engine.hooks import VisionContext
    from lrs_vqa.engine.taps import RowSelector
    from lrs_vqa.engine.tokens import TokenMeta

# ------------------------------------------------------------------------------------------ pure


def minmax(x: torch.Tensor) -> torch.Tensor:
    """(x − min) / (max − min); zeros when all values are equal."""
    x = x.float()
    if x.numel() == 0:
        return x
    lo, hi = x.min(), x.max()
    if float(hi - lo) <= 0:
        return torch.zeros_like(x)
    return (x - lo) / (hi - lo)


def fuse(bottom_up: torch.Tensor, top_down: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1−α)·minmax(b) + α·minmax(c)."""
    return (1.0 - alpha) * minmax(bottom_up) + alpha * minmax(top_down)


def instruction_relevance(attention: torch.Tensor) -> torch.Tensor:
    """(V,) c: the maximum over the instruction rows of their (head-mean) attention to each vision token."""
    return attention.float().max(0).values


def footprint_saliency(
    global_b: torch.Tensor, global_boxes: torch.Tensor, footprints: torch.Tensor
) -> torch.Tensor:
    """(parts,) mean density of the global view's token saliency over each partition's level-0 footprint:
    ``Σ_g (b_g / |box_g|) · |box_g ∩ F_p| / |F_p|``. One map (the global view's) rates every region, so
    regions compare across tiles — unlike a tile's own mean saliency, which is normalised inside the tile."""
    g = global_boxes.float()
    f = footprints.float()
    area_g = ((g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])).clamp(min=1e-9)
    area_f = ((f[:, 2] - f[:, 0]) * (f[:, 3] - f[:, 1])).clamp(min=1e-9)
    density = global_b.float() / area_g
    return (density[:, None] * box_overlaps(g, f)).sum(0) / area_f


def region_saliency(bottom_up: torch.Tensor, partition: torch.Tensor, parts: int) -> torch.Tensor:
    """(parts,) mean b of each partition's tokens (0 for an empty one)."""
    sums = torch.zeros(parts, dtype=torch.float32).index_add_(0, partition, bottom_up.float())
    counts = torch.bincount(partition, minlength=parts).float()
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))


def allocate(saliency: Sequence[float], sizes: Sequence[int], total: int) -> list[int]:
    """Share ``total`` tokens over partitions in proportion to ``saliency`` (to their sizes when no open
    partition has any saliency), never more than a partition's size: floors plus largest remainders (ties to
    the lower index); a partition that would overflow is filled and the rest shared again."""
    n = len(sizes)
    if total > sum(sizes):
        raise ValueError(f"cannot keep {total} tokens out of {sum(sizes)}")
    alloc = [0] * n
    open_ = [i for i in range(n) if sizes[i] > 0]
    remaining = total
    while remaining > 0 and open_:
        weights = [max(float(saliency[i]), 0.0) for i in open_]
        if sum(weights) <= 0:
            weights = [float(sizes[i]) for i in open_]
        scale = remaining / sum(weights)
        exact = {i: w * scale for i, w in zip(open_, weights, strict=True)}
        full = [i for i in open_ if alloc[i] + exact[i] >= sizes[i]]
        if full:
            for i in full:
                remaining -= sizes[i] - alloc[i]
                alloc[i] = sizes[i]
            open_ = [i for i in open_ if i not in full]
            continue
        floors = {i: math.floor(exact[i] + 1e-9) for i in open_}
        for i in open_:
            alloc[i] += floors[i]
        left = remaining - sum(floors.values())
        order = sorted(open_, key=lambda i: (-(exact[i] - floors[i]), i))
        for i in order[:left]:
            alloc[i] += 1
        remaining = 0
    return alloc


def ptp_keep(fused: torch.Tensor, partition: torch.Tensor, budgets: Sequence[int]) -> torch.Tensor:
    """Sorted indices: the top ``budgets[p]`` tokens of each partition p by the fused score."""
    kept = []
    for p, k in enumerate(budgets):
        members = torch.nonzero(partition == p).flatten()
        if k > 0 and members.numel():
            kept.append(members[top_k(fused[members], k)])
    if not kept:
        return torch.empty(0, dtype=torch.long)
    return torch.sort(torch.cat(kept)).values


# ------------------------------------------------------------------------------------------ pruner


@dataclass(frozen=True)
class PTPConfig:
    layer: int = 2  # the top-down stage: before this layer of a 32-layer LLM
    depth_ref: int | None = 32
    alpha: float = 0.5  # weight of the instruction relevance in the fused score

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or self.layer < 1:
            raise PrunerConfigError(f"ptp layer must be an integer >= 1, got {self.layer!r}")
        if not 0 <= self.alpha <= 1:
            raise PrunerConfigError(f"ptp alpha must be within 0..1, got {self.alpha}")


@dataclass
class _Record:
    partition: torch.Tensor  # (n,) tile index inside its group
    saliency: torch.Tensor  # (n,) b
    keys: list[bytes] | None = None  # fingerprint of each token's LLM input embedding
    boxes: torch.Tensor | None = None  # (n, 4) level-0 token boxes (NaN: none)
    level: torch.Tensor | None = None  # (n,) pyramid level (pyramid.dip.THUMBNAIL: the global view)


def record_saliency(records: Sequence[_Record]) -> torch.Tensor | None:
    """(partitions over all records,) region saliency from the global view's saliency map pooled over each
    partition's footprint, or None when no record is a global view with token boxes (then the caller falls
    back to each partition's mean b)."""
    glob = [
        r
        for r in records
        if r.level is not None and r.boxes is not None and bool((r.level == THUMBNAIL).all())
    ]
    if not glob or not all(r.boxes is not None for r in records):
        return None
    gb = torch.cat([r.saliency for r in glob])
    gbox = torch.cat([r.boxes for r in glob])  # type: ignore[misc]
    finite = torch.isfinite(gbox).all(1)
    if not bool(finite.any()):
        return None
    feet = []
    for r in records:
        parts = int(r.partition.max()) + 1 if len(r.partition) else 0
        for p in range(parts):
            boxes = r.boxes[(r.partition == p) & torch.isfinite(r.boxes).all(1)]  # type: ignore[index]
            if not len(boxes):
                feet.append(torch.zeros(4))
                continue
            feet.append(
                torch.stack([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
            )
    return footprint_saliency(gb[finite], gbox[finite], torch.stack(feet)) if feet else None


def align(records: Sequence[_Record], keys: Sequence[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """(partition, b) of each LLM vision row with fingerprint ``keys``: partitions numbered over all
    records; a row no record has seen (a newline marker) joins the partition of the row before it with b = 0.
    Equal fingerprints are matched in order."""
    table: dict[bytes, list[tuple[int, float]]] = {}
    offset = 0
    for r in records:
        assert r.keys is not None
        for key, p, b in zip(r.keys, r.partition.tolist(), r.saliency.tolist(), strict=True):
            table.setdefault(key, []).append((p + offset, b))
        offset += int(r.partition.max()) + 1 if len(r.partition) else 0
    for entries in table.values():
        entries.reverse()  # pop() from the end = first seen first
    part, sal = [], []
    for key in keys:
        entries = table.get(key)
        if entries:
            p, b = entries.pop()
        else:
            p, b = (part[-1] if part else 0), 0.0
        part.append(p)
        sal.append(b)
    return torch.tensor(part, dtype=torch.long), torch.tensor(sal, dtype=torch.float32)


class PTPVisionHook(BudgetedVisionHook):
    """Records each token's tile, encoder saliency and embedding fingerprint; keeps every token."""

    stage = Stage.AFTER_PROJECTOR

    def __init__(self, pruner: Pruner, budget: Budget, target: ModelTarget, records: list[_Record]) -> None:
        super().__init__(pruner, budget, target)
        self.records = records

    def vision_tap_rows(self) -> dict[int, RowSelector]:
        if not self.active:
            return {}
        return saliency_rows(self.target)

    def _apply(
        self, stage: Stage, feats: torch.Tensor, meta: TokenMeta, ctx: VisionContext
    ) -> Selection | None:
        if not self.active or stage is not self.stage:
            return None
        b = encoder_saliency(self.target, ctx, "ptp")
        self.records.append(
            _Record(
                ctx.tile_index.cpu().clone(),
                b,
                fingerprints(feats),
                meta.boxes.cpu().float().clone(),
                meta.level.cpu().clone(),
            )
        )
        n = int(feats.shape[0])
        self.calls.append((n, n))
        return None


class PTPLayerHook(ScheduledLayerHook):
    def __init__(
        self, pruner: Pruner, budget: Budget, n_layers: int, layer: int, records: list[_Record]
    ) -> None:
        super().__init__(pruner, budget, n_layers, (layer,))
        self.records = records
        self._part: torch.Tensor | None = None  # partition by original row index (-1: not vision)
        self._b: torch.Tensor | None = None  # bottom-up saliency by original row index
        self._sal: torch.Tensor | None = None  # region saliency by partition

    def start(self, view: LayerView) -> None:
        records, self.records[:] = list(self.records), []
        length = int(view.orig_index.max()) + 1
        vision = torch.nonzero(view.vision).flatten()
        part = torch.full((length,), -1, dtype=torch.long)
        b = torch.zeros(length)
        rows = vision.cpu()
        if records and vision.numel():
            part[rows], b[rows] = align(records, fingerprints(view.hidden[0, vision]))
        else:
            part[rows] = 0
        self._part, self._b = part, b
        parts_n = int(part.max()) + 1 if vision.numel() else 0
        pooled = record_saliency(records) if records else None
        if pooled is not None and len(pooled) >= parts_n:
            self._sal = pooled[: max(parts_n, 1)]
        else:
            self._sal = region_saliency(b[rows], part[rows], max(parts_n, 1))

    def query_rows(self, view: LayerView) -> torch.Tensor | None:
        if self.pruner.config.alpha == 0:
            return None
        rows = torch.nonzero(view.instruction).flatten()
        return rows.cpu() if rows.numel() else torch.tensor([view.hidden.shape[1] - 1])

    def stage_scores(
        self, view: LayerView, vision: torch.Tensor, attention: torch.Tensor | None
    ) -> torch.Tensor:
        assert self._b is not None
        b = self._b[view.orig_index[vision].cpu()]
        if self.pruner.config.alpha == 0:
            c = torch.zeros_like(b)
        elif attention is None:
            raise PrunerConfigError(f"ptp found no attention tap before layer {view.layer}")
        else:
            c = instruction_relevance(attention).cpu()
        return fuse(b, c, self.pruner.config.alpha)

    def stage_selection(
        self, view: LayerView, vision: torch.Tensor, scores: torch.Tensor, keep: int
    ) -> Selection:
        assert self._part is not None and self._sal is not None
        part = self._part[view.orig_index[vision].cpu()]
        parts = len(self._sal)
        sizes = torch.bincount(part, minlength=parts).tolist()
        budgets = allocate(self._sal.tolist(), sizes, keep)
        return selection_keeping(view, vision[ptp_keep(scores, part, budgets).to(vision.device)])


@register("ptp")
class PTP(Pruner):
    paper = (
        "Liang et al., 'PTP: Pyramid Token Pruning for Efficient High-Resolution Large Vision-Language "
        "Models' (region-, token- and instruction-level importance), arXiv:2509.15704"
    )
    stages = (Stage.AFTER_PROJECTOR, Stage.LLM_LAYER)
    signals = (Signal.VIT_ATTN_CLS, Signal.LLM_ATTN_TEXT_RATERS)
    Config = PTPConfig

    def layers(self, n_layers: int) -> tuple[int, ...]:
        return scale_layers((self.config.layer,), n_layers, self.config.depth_ref, "ptp")

    def stage_labels(self, n_layers: int = 32) -> tuple[str, ...]:
        return (
            f"{Stage.AFTER_PROJECTOR.value} (tile and token saliency, no drop)",
            f"llm layer {self.layers(n_layers)[0]} (fused with instruction relevance, per-tile budgets)",
        )

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        return solve_schedule(Budget.parse(budget), n_vision, n_layers, self.layers(n_layers), lambda t: (t,))

    def hooks(self, budget: Budget | str | int | float, target: ModelTarget) -> HookSet:
        if target.window_order:
            raise PrunerConfigError("ptp does not support Qwen2.5-VL's windowed encoder yet")
        budget = Budget.parse(budget)
        records: list[_Record] = []
        vision = PTPVisionHook(self, budget, target, records)
        llm = PTPLayerHook(self, budget, target.llm_layers, self.layers(target.llm_layers)[0], records)
        return HookSet((vision,), (llm,))
