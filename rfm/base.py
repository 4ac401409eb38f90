"""The region-scorer interface: relevance of every vision token of one view to the question."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from lrs_vqa.engine.tokens import TokenMeta, VisionSegment
    from lrs_vqa.models.base import ModelAdapter


@dataclass(frozen=True)
class TokenScores:
    """Scores of the local view's tokens as they sit in the prompt (newline rows included, scored too).

    ``rows`` index ``segment.meta`` of the scored segment (Qwen-VL drops padding-only tokens from the
    prompt, so not every meta row is present); ``meta`` is ``segment.meta.select(rows)``.
    """

    scores: torch.Tensor  # (n,) fp32, sums to 1 over the local tokens (a distribution)
    rows: torch.Tensor  # (n,) long
    meta: TokenMeta
    tflops: float = 0.0  # what computing the scores cost (analytic, pruners.md §0.3 per layer)


class RegionScorer(Protocol):
    """Scores the tokens of ``segments[local]`` given the question and every segment of the prompt.

    The prompt is what the host model would read: ``adapter.build_prompt(question, segments)``; context
    segments (the global thumbnail) are in it but are not scored.
    """

    name: str

    def score(
        self, adapter: ModelAdapter, question: str, segments: Sequence[VisionSegment], local: int
    ) -> TokenScores: ...


def local_rows(adapter: ModelAdapter, segments: Sequence[VisionSegment], local: int) -> torch.Tensor:
    """Prompt-vision-row indices (into ``prompt.meta``) that belong to ``segments[local]``."""
    start = sum(len(adapter.present_rows(s)) for s in segments[:local])
    return torch.arange(start, start + len(adapter.present_rows(segments[local])))
