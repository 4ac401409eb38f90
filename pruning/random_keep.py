"""Random baseline: keep a uniformly random subset of the vision tokens at the same budget as the pruner it is
compared with, either after the projector (default) or before an LLM layer (FastV's place, ``layer=2``).
Seeded: a fresh ``hooks()`` call replays the same draws."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrs_vqa.engine.decoder import LayerView, Selection
from pruning.base import (
    BudgetedVisionHook,
    HookSet,
    ModelTarget,
    Pruner,
    ScheduledLayerHook,
    Signal,
    Stage,
)
from pruning.budget import Budget, Schedule, scale_layers, solve_schedule, uniform_schedule
from pruning.errors import PrunerConfigError
from pruning.registry import register

# ------------------------------------------------------------------------------------------ pure


def random_keep(n: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    """``keep`` of ``n`` indices drawn uniformly without replacement, sorted."""
    return torch.sort(torch.randperm(n, generator=generator)[:keep]).values


# ------------------------------------------------------------------------------------------ pruner


@dataclass(frozen=True)
class RandomConfig:
    seed: int = 0
    layer: int | None = None  # None: after the projector; else before this LLM layer (scaled like FastV)
    depth_ref: int | None = 32

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int):
            raise PrunerConfigError(f"random seed must be an integer, got {self.seed!r}")
        if self.layer is not None and (not isinstance(self.layer, int) or self.layer < 1):
            raise PrunerConfigError(f"random layer must be None or an integer >= 1, got {self.layer!r}")


class RandomVisionHook(BudgetedVisionHook):
    stage = Stage.AFTER_PROJECTOR

    def __init__(self, pruner: Pruner, budget: Budget, target: ModelTarget, seed: int) -> None:
        super().__init__(pruner, budget, target)
        self.generator = torch.Generator().manual_seed(seed)

    def select(self, feats: torch.Tensor, meta: object, ctx: object, keep: int) -> Selection:
        return Selection(random_keep(int(feats.shape[0]), keep, self.generator))


class RandomLayerHook(ScheduledLayerHook):
    def __init__(self, *args: object, seed: int) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.seed = seed
        self.generator = torch.Generator()

    def start(self, view: LayerView) -> None:
        self.generator.manual_seed(self.seed)  # every prefill draws the same subset for the same input

    def query_rows(self, view: LayerView) -> None:
        return None

    def stage_scores(
        self, view: LayerView, vision: torch.Tensor, attention: torch.Tensor | None
    ) -> torch.Tensor:
        # A random permutation's rank as the score: top-k of it is a uniform k-subset.
        order = torch.randperm(len(vision), generator=self.generator)
        scores = torch.empty(len(vision))
        scores[order] = torch.arange(len(vision), 0, -1, dtype=torch.float32)
        return scores


@register("random")
class RandomPruner(Pruner):
    paper = "uniform random selection (control baseline; no paper)"
    stages = (Stage.AFTER_PROJECTOR, Stage.LLM_LAYER)
    signals = (Signal.RANDOM,)
    Config = RandomConfig

    def layers(self, n_layers: int) -> tuple[int, ...]:
        if self.config.layer is None:
            return ()
        return scale_layers((self.config.layer,), n_layers, self.config.depth_ref, "random")

    def stage_labels(self, n_layers: int = 32) -> tuple[str, ...]:
        layers = self.layers(n_layers)
        return tuple(f"llm layer {k}" for k in layers) if layers else (Stage.AFTER_PROJECTOR.value,)

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        budget = Budget.parse(budget)
        layers = self.layers(n_layers)
        if not layers:
            return uniform_schedule(n_vision, budget.uniform_count(n_vision), n_layers)
        return solve_schedule(budget, n_vision, n_layers, layers, lambda t: (t,))

    def hooks(self, budget: Budget | str | int | float, target: ModelTarget) -> HookSet:
        budget = Budget.parse(budget)
        layers = self.layers(target.llm_layers)
        if not layers:
            return HookSet((RandomVisionHook(self, budget, target, self.config.seed),), ())
        return HookSet((), (RandomLayerHook(self, budget, target.llm_layers, layers, seed=self.config.seed),))
