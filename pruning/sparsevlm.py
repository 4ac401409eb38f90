"""SparseVLM (pruners.md §2.2, v1 as the card describes it): text-guided, training-free sparsification.

* Raters: on the LLM-input embeddings, S = softmax over the instruction tokens of V·Tᵀ; a text token
  rates if its mean relevance to the vision tokens is above the mean (r[t] > mean(r)).
* At layers 2, 6, 15 (of 32) the vision tokens are scored by the attention the raters pay them (mean over
  heads and raters) and the top ones kept.
* Recycling: the top 30 % of the dropped tokens (by score) are clustered with density-peak kNN into
  ``(their count)/10 + 1`` clusters, and each cluster's mean hidden state survives as one token.

The budget counts recycled tokens, so a stage that must leave k tokens keeps k - c top tokens plus c
cluster tokens. Per-stage counts follow the card's published schedules (192: 300/200/110, 128: 303/110/36,
64: 66/30/17 for 576 tokens): the entry nearest the requested budget gives the stages' proportions and the
solver scales them so that the budget is met exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrs_vqa.engine.decoder import LayerView, Selection
from pruning.base import (
    HookSet,
    ModelTarget,
    Pruner,
    ScheduledLayerHook,
    Signal,
    Stage,
    llm_layers_label,
)
from pruning.budget import (
    Budget,
    Schedule,
    published_schedule,
    scale_layers,
    shape_profile,
)
from pruning.budget import published_shape as nearest_published_shape
from pruning.errors import PrunerConfigError
from pruning.recycle import recycled_selection
from pruning.registry import register

# Published keep counts after layers 2/6/15 for LLaVA-1.5-7B (576 vision tokens, 32 layers), by avg budget.
PUBLISHED = {192: (300, 200, 110), 128: (303, 110, 36), 64: (66, 30, 17)}
PUBLISHED_TOKENS = 576

# ------------------------------------------------------------------------------------------ pure


def select_raters(vision: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(T,) bool: text tokens whose mean relevance to the vision tokens (softmax over text of V·Tᵀ) is above
    the mean relevance; all of them if none is (e.g. identical rows)."""
    relevance = torch.softmax(vision.float() @ text.float().T, dim=-1).mean(0)
    raters = relevance > relevance.mean()
    return raters if bool(raters.any()) else torch.ones_like(raters)


def rater_scores(attention: torch.Tensor) -> torch.Tensor:
    """(V,) mean over rater rows of their (head-mean) attention to each vision token."""
    return attention.float().mean(0)


def published_shape(budget: Budget, n: int) -> tuple[float, ...]:
    """Stage proportions (relative to the first stage) of the published schedule nearest the budget."""
    return nearest_published_shape(PUBLISHED, budget, n, PUBLISHED_TOKENS)


stage_profile = shape_profile  # the published three stages, first/last when fewer survive scaling


# ------------------------------------------------------------------------------------------ pruner


@dataclass(frozen=True)
class SparseVLMConfig:
    layers: tuple[int, ...] = (2, 6, 15)  # for a 32-layer LLM
    depth_ref: int | None = 32
    recycle: bool = True
    recycle_share: float = 0.3  # top share of the dropped tokens that is recycled
    cluster_div: int = 10  # clusters = recycled / cluster_div + 1
    knn: int = 7  # neighbours for the density (TCFormer's default)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers or any(not isinstance(k, int) or k < 1 for k in layers):
            raise PrunerConfigError(f"sparsevlm layers must be integers >= 1, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        if not 0 <= self.recycle_share <= 1:
            raise PrunerConfigError(f"sparsevlm recycle_share must be within 0..1, got {self.recycle_share}")
        if self.cluster_div < 1 or self.knn < 1:
            raise PrunerConfigError("sparsevlm cluster_div and knn must be >= 1")


class SparseVLMHook(ScheduledLayerHook):
    raters: torch.Tensor | None = None  # original row indices of the rater tokens

    def start(self, view: LayerView) -> None:
        vision = view.hidden[0, view.vision]
        text_rows = torch.nonzero(view.instruction).flatten()
        if text_rows.numel() == 0 or vision.shape[0] == 0:
            self.raters = None
            return
        chosen = select_raters(vision, view.hidden[0, text_rows])
        self.raters = view.orig_index[text_rows[chosen.to(text_rows.device)]].clone()

    def query_rows(self, view: LayerView) -> torch.Tensor:
        if self.raters is not None:
            rows = torch.nonzero(
                torch.isin(view.orig_index, self.raters.to(view.orig_index.device))
            ).flatten()
            if rows.numel():
                return rows.cpu()
        return torch.tensor([view.hidden.shape[1] - 1])  # no question tokens: the last row rates

    def stage_scores(
        self, view: LayerView, vision: torch.Tensor, attention: torch.Tensor | None
    ) -> torch.Tensor:
        if attention is None:
            raise PrunerConfigError(f"sparsevlm found no attention tap before layer {view.layer}")
        return rater_scores(attention)

    def stage_selection(
        self, view: LayerView, vision: torch.Tensor, scores: torch.Tensor, keep: int
    ) -> Selection:
        cfg = self.pruner.config
        return recycled_selection(
            view, vision, scores, keep, cfg.recycle, cfg.recycle_share, cfg.cluster_div, cfg.knn
        )


@register("sparsevlm")
class SparseVLM(Pruner):
    paper = (
        "Zhang et al., 'SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model "
        "Inference', ICML 2025, arXiv:2410.04417"
    )
    stages = (Stage.LLM_LAYER,)
    signals = (Signal.LLM_INPUT_EMBEDDINGS, Signal.LLM_ATTN_TEXT_RATERS, Signal.LLM_HIDDEN)
    Config = SparseVLMConfig

    def layers(self, n_layers: int) -> tuple[int, ...]:
        return scale_layers(self.config.layers, n_layers, self.config.depth_ref, "sparsevlm")

    def stage_labels(self, n_layers: int = 32) -> tuple[str, ...]:
        return (llm_layers_label(self.layers(n_layers)),)

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        layers = self.layers(n_layers)
        return published_schedule(
            Budget.parse(budget), n_vision, n_layers, layers, PUBLISHED, PUBLISHED_TOKENS
        )

    def hooks(self, budget: Budget | str | int | float, target: ModelTarget) -> HookSet:
        layers = self.layers(target.llm_layers)
        return HookSet((), (SparseVLMHook(self, Budget.parse(budget), target.llm_layers, layers),))
