"""FastV (pruners.md §2.1): at LLM layer K (default 2) keep the vision tokens that received the most
head-averaged attention from the last prompt token in layer K-1; later layers see only the survivors
("in-place" mode: tokens are removed and keep their original positions)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrs_vqa.engine.decoder import LayerView
from pruning.base import HookSet, ModelTarget, Pruner, ScheduledLayerHook, Signal, Stage, top_k
from pruning.budget import Budget, Schedule, scale_layers, solve_schedule
from pruning.errors import PrunerConfigError
from pruning.registry import register

# ------------------------------------------------------------------------------------------ pure scoring


def fastv_scores(last_row: torch.Tensor, vision_cols: torch.Tensor) -> torch.Tensor:
    """Attention the last prompt token pays to each vision token: its (head-mean) attention row read at the
    vision columns."""
    return last_row[vision_cols]


def fastv_keep(last_row: torch.Tensor, vision_cols: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` most-attended vision columns, sorted (ties: earlier column first)."""
    return vision_cols[top_k(fastv_scores(last_row, vision_cols), keep)]


def one_stage(t: float) -> tuple[float]:
    return (t,)


# ------------------------------------------------------------------------------------------ pruner


@dataclass(frozen=True)
class FastVConfig:
    layer: int = 2  # drop before this decoder layer, ranking with layer-1's attention
    depth_ref: int | None = 32  # `layer` is for a 32-layer LLM and scaled; None: use it as it is

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or self.layer < 1:
            raise PrunerConfigError(f"fastv layer must be an integer >= 1, got {self.layer!r}")
        if self.depth_ref is not None and (not isinstance(self.depth_ref, int) or self.depth_ref < 2):
            raise PrunerConfigError(
                f"fastv depth_ref must be None or an integer >= 2, got {self.depth_ref!r}"
            )


class FastVHook(ScheduledLayerHook):
    def stage_scores(
        self, view: LayerView, vision: torch.Tensor, attention: torch.Tensor | None
    ) -> torch.Tensor:
        if attention is None:
            raise PrunerConfigError(f"fastv found no attention tap before layer {view.layer}")
        # attention is already restricted to the vision columns: one query row, the last token.
        return fastv_scores(attention[0], torch.arange(attention.shape[1], device=attention.device))


@register("fastv")
class FastV(Pruner):
    paper = "Chen et al., 'An Image is Worth 1/2 Tokens After Layer 2' (FastV), ECCV 2024, arXiv:2403.06764"
    stages = (Stage.LLM_LAYER,)
    signals = (Signal.LLM_ATTN_LAST_ROW,)
    Config = FastVConfig

    def layers(self, n_layers: int) -> tuple[int, ...]:
        return scale_layers((self.config.layer,), n_layers, self.config.depth_ref, "fastv")

    def stage_labels(self, n_layers: int = 32) -> tuple[str, ...]:
        return tuple(f"llm layer {k}" for k in self.layers(n_layers))

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        return solve_schedule(Budget.parse(budget), n_vision, n_layers, self.layers(n_layers), one_stage)

    def hooks(self, budget: Budget | str | int | float, target: ModelTarget) -> HookSet:
        hook = FastVHook(self, Budget.parse(budget), target.llm_layers, self.layers(target.llm_layers))
        return HookSet((), (hook,))
