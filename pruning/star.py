"""STAR — Stage-wise Attention-guided token Reduction (pruners.md §1.4): two complementary stages.

* Stage 1, after the vision encoder (text-agnostic): visual self-attention. Each token's score is the
  attention the CLS token pays it at the encoder's feature layer (head mean); encoders without CLS (SigLIP,
  Qwen-ViT) use the mean attention each token receives over all queries (Qwen: averaged over the 2×2 merge
  unit). The top n1 tokens of every encoded group enter the LLM.
* Stage 2, before LLM layer K (default 16 of 32): cross-modal attention. The survivors are ranked by the
  head-mean attention the last prompt token pays them in layer K−1, and the top ones are kept.

One budget covers both stages (``pruning.two_stage``): stage 2 keeps ``share`` (default 1/2) of stage 1's
survivors, stage 1 is sized from the budget, and stage 2 meets it exactly.

Deviations (the card is [abs] + [recon]; no code was available):

* K, ``share`` and the split of the budget between the stages are not published; K = 16 (the middle of a
  32-layer LLM, where cross-modal attention is informative) and share = 0.5 are our choices.
* Stage 2 ranks with layer K−1's attention (FastV's convention in this engine).
* Qwen2.5-VL's windowed encoder is refused (its taps come in window order), as for VisionZip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lrs_vqa.engine.decoder import Selection
from pruning.base import (
    BudgetedVisionHook,
    HookSet,
    ModelTarget,
    Pruner,
    Signal,
    Stage,
    saliency_rows,
    top_k,
)
from pruning.budget import Budget, Schedule
from pruning.errors import PrunerConfigError
from pruning.registry import register
from pruning.scores import QUERIES, encoder_saliency
from pruning.two_stage import SecondStageHook, check_share, first_stage_keep, stage_layer, two_stage_plan

if TYPE_CHECKING:
    from lrs_vqa.engine.hooks import VisionContext
    from lrs_vqa.engine.taps import RowSelector
    from lrs_vqa.engine.tokens import TokenMeta

# ------------------------------------------------------------------------------------------ pure


def star_stage1_keep(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Sorted indices of the ``keep`` highest stage-1 scores."""
    return top_k(scores, keep)


# ------------------------------------------------------------------------------------------ pruner


@dataclass(frozen=True)
class StarConfig:
    layer: int = 16  # stage 2: before this layer of a 32-layer LLM
    depth_ref: int | None = 32
    share: float = 0.5  # stage 2 keeps this share of stage 1's survivors
    query: str = "last"  # stage-2 query row: "last" prompt row or "last_instruction"

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or self.layer < 1:
            raise PrunerConfigError(f"star layer must be an integer >= 1, got {self.layer!r}")
        check_share(self.share, "star")
        if self.query not in QUERIES:
            raise PrunerConfigError(f"star query must be one of {', '.join(QUERIES)}, got {self.query!r}")


class StarVisionHook(BudgetedVisionHook):
    stage = Stage.AFTER_ENCODER

    def __init__(
        self, pruner: Pruner, budget: Budget, target: ModelTarget, layer: int, records: list[tuple[int, int]]
    ) -> None:
        super().__init__(pruner, budget, target)
        self.layer = layer
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
        n = int(feats.shape[0])
        cfg = self.pruner.config
        keep = first_stage_keep(self.budget, n, self.target.llm_layers, self.layer, cfg.share)
        self.calls.append((n, keep))
        self.records.append((n, keep))
        if keep >= n:
            return None
        return self.select(feats, meta, ctx, keep)

    def select(self, feats: torch.Tensor, meta: TokenMeta, ctx: VisionContext, keep: int) -> Selection:
        return Selection(star_stage1_keep(encoder_saliency(self.target, ctx, "star"), keep))


@register("star")
class Star(Pruner):
    paper = (
        "Guo et al., 'STAR: Stage-wise Attention-guided token Reduction for Efficient Large Vision-Language "
        "Models Inference', arXiv:2505.12359"
    )
    stages = (Stage.AFTER_ENCODER, Stage.LLM_LAYER)
    signals = (Signal.VIT_ATTN_CLS, Signal.LLM_ATTN_LAST_ROW)
    Config = StarConfig

    def layers(self, n_layers: int) -> tuple[int, ...]:
        return (stage_layer(self.config.layer, n_layers, self.config.depth_ref, "star"),)

    def stage_labels(self, n_layers: int = 32) -> tuple[str, ...]:
        return (
            f"{Stage.AFTER_ENCODER.value} (visual self-attention)",
            f"llm layer {self.layers(n_layers)[0]} (cross-modal attention, keeps {self.config.share:g})",
        )

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        """Both stages for ``n_vision`` encoder tokens (one group, no newline markers)."""
        return two_stage_plan(
            Budget.parse(budget), n_vision, n_layers, self.layers(n_layers)[0], self.config.share
        )

    def hooks(self, budget: Budget | str | int | float, target: ModelTarget) -> HookSet:
        if target.window_order:
            raise PrunerConfigError("star does not support Qwen2.5-VL's windowed encoder yet")
        budget = Budget.parse(budget)
        layer = self.layers(target.llm_layers)[0]
        records: list[tuple[int, int]] = []
        vision = StarVisionHook(self, budget, target, layer, records)
        llm = SecondStageHook(self, budget, target.llm_layers, layer, records)
        return HookSet((vision,), (llm,))
