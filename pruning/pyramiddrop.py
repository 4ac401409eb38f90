"""PyramidDrop (pruners.md §2.3): the LLM is split into stages; at the end of each (layers 8, 16, 24 of 32)
the image tokens are ranked by the head-mean attention of the last instruction token and a fraction λ of
the remaining ones is kept (cumulative λ, λ², λ³; λ = 0.5 by default in the paper). Here λ is solved from
the budget: ``avg:270`` on 576 tokens / 32 layers gives λ = 0.5 exactly (288/144/72)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrs_vqa.engine.decoder import LayerView
from pruning.base import HookSet, ModelTarget, Pruner, ScheduledLayerHook, Signal, Stage, llm_layers_label
from pruning.budget import Budget, Profile, Schedule, scale_layers, solve_schedule
from pruning.errors import PrunerConfigError
from pruning.registry import register
from pruning.scores import QUERIES, query_row

# ------------------------------------------------------------------------------------------ pure


def pyramid_profile(stages: int) -> Profile:
    """Keep fractions λ, λ², ..., λ^stages of the tokens entering the LLM, as a function of λ."""
    return lambda lam: tuple(lam**i for i in range(1, stages + 1))


def pdrop_scores(query_attention: torch.Tensor) -> torch.Tensor:
    """Head-mean attention of the query row to each vision token (one row: the scores themselves)."""
    return query_attention.reshape(-1)


# ------------------------------------------------------------------------------------------ pruner


@dataclass(frozen=True)
class PyramidDropConfig:
    layers: tuple[int, ...] = (8, 16, 24)  # stage ends for a 32-layer LLM
    depth_ref: int | None = 32
    query: str = "last"  # "last" prompt row or "last_instruction" (the question's last token)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers or any(not isinstance(k, int) or k < 1 for k in layers):
            raise PrunerConfigError(f"pyramiddrop layers must be integers >= 1, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        if self.query not in QUERIES:
            raise PrunerConfigError(
                f"pyramiddrop query must be one of {', '.join(QUERIES)}, got {self.query!r}"
            )


class PyramidDropHook(ScheduledLayerHook):
    def query_rows(self, view: LayerView) -> torch.Tensor:
        cfg = self.pruner.config
        return torch.tensor([query_row(view.hidden.shape[1] - 1, view.instruction, cfg.query)])

    def stage_scores(
        self, view: LayerView, vision: torch.Tensor, attention: torch.Tensor | None
    ) -> torch.Tensor:
        if attention is None:
            raise PrunerConfigError(f"pyramiddrop found no attention tap before layer {view.layer}")
        return pdrop_scores(attention)


@register("pyramiddrop")
class PyramidDrop(Pruner):
    paper = (
        "Xing et al., 'PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual "
        "Redundancy Reduction', CVPR 2025, arXiv:2410.17247"
    )
    stages = (Stage.LLM_LAYER,)
    signals = (Signal.LLM_ATTN_LAST_ROW,)
    Config = PyramidDropConfig

    def layers(self, n_layers: int) -> tuple[int, ...]:
        return scale_layers(self.config.layers, n_layers, self.config.depth_ref, "pyramiddrop")

    def stage_labels(self, n_layers: int = 32) -> tuple[str, ...]:
        return (llm_layers_label(self.layers(n_layers)),)

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        layers = self.layers(n_layers)
        return solve_schedule(Budget.parse(budget), n_vision, n_layers, layers, pyramid_profile(len(layers)))

    def hooks(self, budget: Budget | str | int | float, target: ModelTarget) -> HookSet:
        layers = self.layers(target.llm_layers)
        return HookSet((), (PyramidDropHook(self, Budget.parse(budget), target.llm_layers, layers),))
