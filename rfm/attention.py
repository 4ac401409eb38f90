"""Training-free region scorer: the host LLM's own first K layers, last prompt token → local vision tokens.

This is the RFM's own initialisation (its layers are copies of LLM layers) used as it is, so it works for
any supported model without trained RFM weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lrs_vqa.engine.flops import layer_flops
from rfm.attention_rows import score_local_view
from rfm.base import TokenScores
from rfm.scorers import register_scorer

if TYPE_CHECKING:
    from lrs_vqa.engine.tokens import VisionSegment
    from lrs_vqa.models.base import ModelAdapter


@dataclass(frozen=True)
class AttentionScorer:
    """Scores with the attention of the last prompt token at LLM layer ``layers`` (1-based count).

    ``layers=None`` uses a quarter of the LLM's depth (at least 2): middle layers are where text-to-image
    attention starts to land on the referenced objects (reference card §4.5), and a quarter keeps the
    scoring pass at a quarter of a prefill.
    """

    layers: int | None = None
    name: str = "attention"

    def depth(self, adapter: ModelAdapter) -> int:
        total = len(adapter.decoder.layers)
        k = self.layers if self.layers is not None else max(2, math.ceil(total / 4))
        if not 1 <= k <= total:
            raise ValueError(f"scorer layers must be within 1..{total} for this model, got {k}")
        return k

    def score(
        self, adapter: ModelAdapter, question: str, segments: Sequence[VisionSegment], local: int
    ) -> TokenScores:
        decoder, depth, shape = adapter.decoder, self.depth(adapter), adapter.llm_shape()
        return score_local_view(
            adapter,
            question,
            segments,
            local,
            decoder.layers[:depth],
            decoder.rotary,
            decoder.config,
            lambda length: layer_flops(length, shape.hidden, shape.ffn, gated_mlp=shape.gated_mlp),
        )


@register_scorer("attention")
def _attention(adapter: ModelAdapter, layers: int | None) -> AttentionScorer:
    return AttentionScorer(layers)
