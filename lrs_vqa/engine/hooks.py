"""Hook points on the vision side. (LLM-side hooks live with the decoder loop: ``LayerHook``.)

Vision hooks see the tokens of one encoded group of tiles as a flat list in the order they will enter the
LLM (row-end newline markers are added afterwards, only for rows that still have tokens), with the
``TokenMeta`` that maps each token to its tile and level-0 box:

* ``after_encoder``: vision-encoder features before the projector (Qwen-VL: after its patch merger,
  which *is* its projector, so both points see the same tensor there);
* ``after_projector``: the same tokens in the LLM's embedding space.

Either may return a ``Selection`` (sorted keep indices, optional replacement features for merges).

A third point acts *inside* the encoder (LLaVA family: CLIP/SigLIP towers): a hook whose optional
``encoder_drop_layers()`` names encoder layers gets ``inside_encoder(layer, hidden, grid_index)`` before
each of them, with ``hidden`` (tiles, 1 + k or k, d) — a CLIP tower's CLS row first, never offered for
dropping — and ``grid_index`` (tiles, k) the original patch index of each surviving token. It may return an
``EncoderSelection``: per-tile keep indices into the k patch tokens (the same count in every tile, so the
batch stays rectangular) and optional merged states. Survivors keep their own position embeddings (added
before layer 0) and their boxes.
Attention inside the encoder is available through taps: ``vision_tap_rows`` names encoder layers and the
query rows wanted (e.g. CLS = row 0), and the captured rows arrive in ``VisionContext.taps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from lrs_vqa.engine.decoder import Selection
from lrs_vqa.engine.taps import RowSelector

if TYPE_CHECKING:
    from lrs_vqa.engine.tokens import TokenMeta


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


@dataclass(frozen=True)
class EncoderSelection:
    """Inside the encoder: per-tile sorted keep indices into the current patch tokens (CLS excluded)."""

    keep: torch.Tensor  # (tiles, k) long
    hidden: torch.Tensor | None = None  # (tiles, k, d): merged patch states replacing the kept ones


def encoder_drop_layers(hooks: Sequence[VisionHook], depth: int) -> dict[int, list[VisionHook]]:
    """Encoder layer (non-negative) → the hooks that act before it."""
    wanted: dict[int, list[VisionHook]] = {}
    for hook in hooks:
        ask = getattr(hook, "encoder_drop_layers", None)
        for layer in ask() if ask is not None else ():
            k = layer if layer >= 0 else depth + layer
            if not 0 <= k < depth:
                raise ValueError(f"encoder layer {layer} outside 0..{depth - 1}")
            wanted.setdefault(k, []).append(hook)
    return wanted


def apply_encoder_selection(
    selection: EncoderSelection | None, hidden: torch.Tensor, grid_index: torch.Tensor, cls: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply an in-encoder selection to (tiles, [CLS +] k, d) states and their (tiles, k) grid indices."""
    if selection is None:
        return hidden, grid_index
    keep = selection.keep.to(grid_index.device).long()
    if keep.dim() != 2 or keep.shape[0] != hidden.shape[0]:
        raise ValueError("an in-encoder selection needs one row of keep indices per tile (same count each)")
    if keep.shape[1] == 0:
        raise ValueError("an in-encoder selection dropped every token")
    if (
        bool((keep[:, 1:] <= keep[:, :-1]).any())
        or int(keep.max()) >= grid_index.shape[1]
        or int(keep.min()) < 0
    ):
        raise ValueError("in-encoder keep indices must be sorted, unique and within the current tokens")
    patches = hidden[:, 1:] if cls else hidden
    if selection.hidden is not None:
        if selection.hidden.shape[:2] != keep.shape:
            raise ValueError("merged states must have one row per kept token")
        kept = selection.hidden.to(hidden)
    else:
        kept = torch.gather(patches, 1, keep.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1]))
    new = torch.cat([hidden[:, :1], kept], dim=1) if cls else kept
    return new, torch.gather(grid_index, 1, keep)


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
