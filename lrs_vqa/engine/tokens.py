"""What every vision token carries through the engine: its tile, pyramid level and level-0 pixel box.

These are engine types: the hooks, the decoder loop's callers, the region scorers and the pruners all read
them, and the model adapters produce them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pyramid.levels import PixelBox


@dataclass(frozen=True)
class TokenMeta:
    """Per vision token: which tile/level it came from and its level-0 pixel box (NaN for newline rows)."""

    tile: torch.Tensor  # (n,) long; index into the tiles given to encode, -1 for newline markers
    level: torch.Tensor  # (n,) long; pyramid level index (-1 = thumbnail)
    boxes: torch.Tensor  # (n, 4) float32 level-0 x0, y0, x1, y1
    newline: torch.Tensor  # (n,) bool

    @staticmethod
    def cat(parts: Sequence[TokenMeta]) -> TokenMeta:
        return TokenMeta(
            torch.cat([p.tile for p in parts]),
            torch.cat([p.level for p in parts]),
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.newline for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.tile.numel())

    @staticmethod
    def whole_image(n: int, box: PixelBox) -> TokenMeta:
        """``n`` tokens of the model's own processing of one image: all attributed to its whole box."""
        return TokenMeta(
            torch.zeros(n, dtype=torch.long),
            torch.full((n,), -2, dtype=torch.long),
            torch.tensor([box.as_list()], dtype=torch.float32).expand(n, 4).clone(),
            torch.zeros(n, dtype=torch.bool),
        )

    def select(self, index: torch.Tensor) -> TokenMeta:
        return TokenMeta(self.tile[index], self.level[index], self.boxes[index], self.newline[index])


@dataclass
class VisionSegment:
    """Encoded tokens of one group of tiles, in the order they enter the LLM."""

    embeds: torch.Tensor  # (n, d) in the LLM's embedding space
    meta: TokenMeta
    images_encoded: int  # vision-encoder inputs (for FLOPs)
    tokens_encoded: int = 0  # tokens the encoder produced for these tiles, before any selection
    qwen_grids: list[tuple[int, int, int]] | None = None  # per encoded image (t, h, w), Qwen-VL only
    qwen_keep: torch.Tensor | None = None  # Qwen-VL: which of the full-grid tokens survive unpadding


def box_overlaps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) intersection areas of level-0 boxes ``a`` (n, 4) and ``b`` (m, 4), x0, y0, x1, y1 (fp32; a NaN
    box gives NaN)."""
    a, b = a.float(), b.float().reshape(-1, 4)
    ix = torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])
    iy = torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])
    return ix.clamp(min=0) * iy.clamp(min=0)
