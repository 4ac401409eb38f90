"""Hook points on the vision side. (LLM-side hooks live with the decoder loop: ``LayerHook``.)

Vision hooks see the tokens of one encoded group of tiles as a flat list in the order they will enter the
LLM (row-end newline markers are added afterwards, only for rows that still have tokens), with the
``TokenMeta`` that maps each token to its tile and level-0 box:

* ``after_encoder``: vision-encoder features before the projector (Qwen-VL: after its patch merger,
  which *is* its projector, so both points see the same tensor there);
* ``after_projector``: the same tokens in the LLM's embedding space.

Either may return a ``Selection`` (sorted keep indices, optional replacement features for merges).
Attention inside the encoder is available through taps: ``vision_tap_rows`` names encoder layers and the
query rows wanted (e.g. CLS = row 0), and the captured rows arrive in ``VisionContext.taps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from lrs_vqa.engine.decoder import Selection
from lrs_vqa.engine.taps import RowSelector

if TYPE_CHECKING:
    from lrs_vqa.models.base import TokenMeta


@dataclass
class VisionContext:
    """What vision hooks see for one group of tiles."""

    level: int
    token_index: torch.Tensor  # (n,) index of each token inside its tile's token grid
    tile_index: torch.Tensor  # (n,) index of the tile in the encoded list
    grid: tuple[int, int]  # tokens per tile (rows, cols)
    # encoder layer -> (tiles, rows, keys) head-averaged attention (keys include CLS where the tower has one)
    taps: dict[int, torch.Tensor] = field(default_factory=dict)


class VisionHook(Protocol):
    def vision_tap_rows(self) -> dict[int, RowSelector]:
        """Encoder layer index (negative = from the end) → query rows to capture; {} for none."""
        ...

    def after_encoder(self, feats: torch.Tensor, meta: TokenMeta, ctx: VisionContext) -> Selection | None: ...

    def after_projector(
        self, embeds: torch.Tensor, meta: TokenMeta, ctx: VisionContext
    ) -> Selection | None: ...


def apply_selection(
    selection: Selection | None, feats: torch.Tensor, meta: TokenMeta, ctx: VisionContext
) -> tuple[torch.Tensor, TokenMeta, VisionContext]:
    """Apply a vision-side selection to the features, their metadata and the context."""
    if selection is None:
        return feats, meta, ctx
    keep = selection.keep.to(feats.device)
    if keep.numel() == 0:
        raise ValueError("a vision hook dropped every token")
    if bool((keep[1:] <= keep[:-1]).any()):
        raise ValueError("keep indices must be sorted and unique")
    new = selection.hidden if selection.hidden is not None else feats[keep]
    keep_cpu = keep.cpu()
    ctx = VisionContext(ctx.level, ctx.token_index[keep_cpu], ctx.tile_index[keep_cpu], ctx.grid, ctx.taps)
    return new, meta.select(keep_cpu), ctx
