"""DivPrune (pruners.md §2.5): after the projector, keep the most diverse subset by greedy max-min
diversity on cosine distance: first the token whose nearest neighbour is farthest, then repeatedly the token
farthest (in minimum distance) from everything chosen. Text-agnostic, no attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrs_vqa.engine.decoder import Selection
from pruning.base import BudgetedVisionHook, HookSet, ModelTarget, Pruner, Signal, Stage
from pruning.budget import Budget, Schedule, uniform_schedule
from pruning.registry import register

# ------------------------------------------------------------------------------------------ pure


def cosine_distance(feats: torch.Tensor) -> torch.Tensor:
    unit = torch.nn.functional.normalize(feats.float(), dim=-1)
    return 1.0 - unit @ unit.T


def _first_argmax(x: torch.Tensor) -> int:
    # Ties go to the lowest index, whatever the backend's argmax does.
    return int(torch.nonzero(x == x.max()).flatten()[0])


def max_min_order(feats: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices in the order the greedy max-min rule picks them (``keep`` of them). The minimum distance to
    the chosen set is kept incrementally: O(n·k) instead of recomputing it every step."""
    n = feats.shape[0]
    keep = min(keep, n)
    if keep <= 0:
        return torch.empty(0, dtype=torch.long)
    dist = cosine_distance(feats).cpu()
    others = dist + torch.diag(torch.full((n,), float("inf")))
    first = _first_argmax(others.min(dim=1).values) if n > 1 else 0
    order = [first]
    closest = dist[first].clone()
    closest[first] = -float("inf")
    for _ in range(keep - 1):
        nxt = _first_argmax(closest)
        order.append(nxt)
        closest = torch.minimum(closest, dist[nxt])
        closest[torch.tensor(order)] = -float("inf")
    return torch.tensor(order)


def divprune_keep(feats: torch.Tensor, keep: int) -> torch.Tensor:
    """Sorted indices of the ``keep`` tokens the greedy rule picks."""
    if keep >= feats.shape[0]:
        return torch.arange(feats.shape[0])
    return torch.sort(max_min_order(feats, keep)).values


# ------------------------------------------------------------------------------------------ pruner


@dataclass(frozen=True)
class DivPruneConfig:
    pass  # the algorithm has no knob besides the budget


class DivPruneHook(BudgetedVisionHook):
    stage = Stage.AFTER_PROJECTOR

    def select(self, feats: torch.Tensor, meta: object, ctx: object, keep: int) -> Selection:
        return Selection(divprune_keep(feats, keep))


@register("divprune")
class DivPrune(Pruner):
    paper = (
        "Alvar et al., 'DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models', "
        "CVPR 2025, arXiv:2503.02175"
    )
    stages = (Stage.AFTER_PROJECTOR,)
    signals = (Signal.VISION_FEATURES,)
    Config = DivPruneConfig

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        return uniform_schedule(n_vision, Budget.parse(budget).uniform_count(n_vision), n_layers)

    def hooks(self, budget: Budget | str | int | float, target: ModelTarget) -> HookSet:
        return HookSet((DivPruneHook(self, Budget.parse(budget), target),), ())
