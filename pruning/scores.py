"""Token scores several pruners share, so that no pruner imports another: the LLM-side ranking query
(PyramidDrop, STAR, VScan), the encoder's attention dominance (VisionZip, STAR, PTP) and the encoder saliency
read from the tap ``pruning.base.saliency_rows`` asks for (STAR, PTP)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pruning.errors import PrunerConfigError

if TYPE_CHECKING:
    from lrs_vqa.engine.hooks import VisionContext
    from pruning.base import ModelTarget

QUERIES = ("last", "last_instruction")


def query_row(last: int, instruction: torch.Tensor, query: str) -> int:
    """The ranking query: the last prompt row (the reference code's choice: LLaVA's prompt ends with the
    instruction's "ASSISTANT:"), or the last token of the question itself."""
    if query == "last_instruction":
        rows = torch.nonzero(instruction).flatten()
        if rows.numel():
            return int(rows[-1])
    return last


def cls_dominance(att: torch.Tensor, tile_index: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
    """CLS → patch attention of each token; ``att`` (tiles, 1, 1 + patches) with CLS at key 0."""
    return att[tile_index, 0, 1 + token_index].float()


def received_dominance(
    att: torch.Tensor, tile_index: torch.Tensor, token_index: torch.Tensor, merge: int = 1
) -> torch.Tensor:
    """Mean attention each token receives over all queries; ``att`` (tiles, queries, patches). With a
    ``merge``×``merge`` patch merger the patches of one token are consecutive and are averaged."""
    received = att.float().mean(1)  # (tiles, patches)
    group = merge * merge
    received = received.reshape(received.shape[0], -1, group).mean(-1)
    return received[tile_index, token_index]


def self_attention_scores(
    att: torch.Tensor, tile_index: torch.Tensor, token_index: torch.Tensor, cls: bool, merge: int = 1
) -> torch.Tensor:
    """Stage-1 score of each token: CLS → token attention (``att`` (tiles, 1, 1 + patches)), or without
    CLS the mean attention it receives (``att`` (tiles, queries, patches))."""
    if cls:
        return cls_dominance(att, tile_index, token_index)
    return received_dominance(att, tile_index, token_index, merge)


def encoder_saliency(target: ModelTarget, ctx: VisionContext, who: str) -> torch.Tensor:
    """:func:`self_attention_scores` of this group's tokens, from the encoder tap at its feature layer."""
    layer = target.feature_layer
    if layer not in ctx.taps:
        raise PrunerConfigError(f"{who} found no encoder attention for this group of tiles")
    tile, token = ctx.tile_index.cpu(), ctx.token_index.cpu()
    return self_attention_scores(ctx.taps[layer].cpu(), tile, token, target.cls_token, target.merge)
