"""The trained Region Focus Module as a region scorer (reference card §4.3).

The network itself (N+1 host decoder layers and a norm) is part of a checkpoint, so it lives with the models
(``lrs_vqa.models.region_focus``); this module runs it to score tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lrs_vqa.engine.flops import layer_flops
from lrs_vqa.models.region_focus import DEFAULT_RFM_LAYERS, RegionFocusModule, host_classes
from rfm.attention_rows import score_local_view
from rfm.base import TokenScores
from rfm.scorers import ScorerUnavailableError, register_scorer

if TYPE_CHECKING:
    from lrs_vqa.engine.tokens import VisionSegment
    from lrs_vqa.models.base import ModelAdapter

__all__ = ["DEFAULT_RFM_LAYERS", "RFMScorer", "RegionFocusModule", "host_classes"]


@dataclass(frozen=True)
class RFMScorer:
    """A :class:`rfm.base.RegionScorer` over a :class:`RegionFocusModule`: builds the prompt the host LLM
    would read, runs the RFM's N layers over it and takes layer N's last-token attention row over the
    local view's tokens (softmax restricted to them, heads averaged)."""

    rfm: RegionFocusModule
    name: str = "rfm"

    def score(
        self, adapter: ModelAdapter, question: str, segments: Sequence[VisionSegment], local: int
    ) -> TokenScores:
        cfg = self.rfm.config
        return score_local_view(
            adapter,
            question,
            segments,
            local,
            self.rfm.layers,
            self.rfm.rotary_emb,
            cfg,
            lambda length: layer_flops(length, cfg.hidden_size, cfg.intermediate_size),  # type: ignore[attr-defined]
        )


@register_scorer("rfm")
def _trained(adapter: ModelAdapter, layers: int | None) -> RFMScorer:
    module = getattr(adapter, "region_focus_module", None)  # only checkpoints with trained RFM weights
    if module is None:
        raise ScorerUnavailableError(
            f"{adapter.source} has no trained Region Focus Module; use --scorer attention "
            "(or load an LRS-VQA checkpoint such as ll-13/llava-largeimg-Qwen2-7B)"
        )
    return RFMScorer(module)
