"""Shared machinery of the two-stage pruners (STAR, VScan): a first stage before the LLM (vision side)
keeps n1 tokens, a second stage before LLM layer K keeps a share of the survivors, and the budget is met
exactly by the second stage in the engine's own accounting.

Budget semantics (one budget for both stages):

* ``tokens`` k: the second stage leaves k vision rows; the first keeps ⌈k / r2⌉ of the tokens it sees.
* ``avg`` a: the per-layer vision rows average to a over the LLM's layers; the first stage keeps
  n1 ≈ a·L / (K + (L−K)·r2) (VScan's rule: avg 64 at K = L/2, r2 = 1/3 → 96), clamped so that the average
  stays reachable, and the second stage solves the exact remainder from the rows that really entered.
* ``ratio`` r: the second stage leaves round(r · n0) rows, n0 = the vision rows entering the LLM plus the
  tokens the first stage dropped (what was present where the pruner started).

The first stage records (tokens seen, tokens kept) per encoded group; the LLM hook consumes the records at
layer 0 of its prefill. Without a first stage (a prompt built without the vision hooks) the second stage
alone meets the budget on the rows it sees.
"""

from __future__ import annotations

import math

import torch

from lrs_vqa.engine.decoder import LayerView, Selection
from pruning.base import Pruner, ScheduledLayerHook
from pruning.budget import Budget, BudgetKind, Schedule, round_half_up, scale_layers, solve_schedule
from pruning.errors import PrunerConfigError
from pruning.scores import query_row

# ------------------------------------------------------------------------------------------ pure


def first_stage_keep(budget: Budget, n: int, n_layers: int, layer: int, share: float) -> int:
    """Tokens the first stage keeps out of ``n`` so that a second stage at ``layer`` keeping about ``share``
    of them meets ``budget`` (see the module doc)."""
    if n < 1:
        return n
    if budget.kind is BudgetKind.AVG:
        a = float(budget.value)
        if a >= n:
            return n
        ideal = round_half_up(a * n_layers / (layer + (n_layers - layer) * share))
        reachable = math.floor((a * n_layers - (n_layers - layer)) / layer + 1e-9)
        return max(min(ideal, reachable, n), min(math.ceil(a - 1e-9), n))
    k = budget.final_count(n)
    return min(n, math.ceil(k / share - 1e-9))


def second_stage_budget(budget: Budget, n_llm: int, n_orig: int) -> Budget:
    """The budget the LLM stage meets on the ``n_llm`` vision rows it sees (ratios resolved on ``n_orig``)."""
    if budget.kind is BudgetKind.RATIO:
        return Budget.tokens(max(1, min(n_llm, round_half_up(budget.value * n_orig))))
    return budget


def two_stage_plan(
    budget: Budget, n: int, n_layers: int, layer: int, share: float, newlines: int = 0
) -> Schedule:
    """Per-layer vision rows for ``n`` tokens entering the first stage (``newlines`` marker rows added after
    it): the first stage's count at every layer before ``layer``, then the second stage's."""
    n1 = first_stage_keep(budget, n, n_layers, layer, share)
    n_llm = n1 + newlines
    inner = solve_schedule(
        second_stage_budget(budget, n_llm, n + newlines), n_llm, n_layers, (layer,), lambda t: (t,)
    )
    return Schedule(n + newlines, inner.counts, inner.stage_layers)


# ------------------------------------------------------------------------------------------ hooks


class _LLMStagePlanner:
    """What ``ScheduledLayerHook`` asks of its pruner: the config and a one-stage plan."""

    def __init__(self, pruner: Pruner, layer: int) -> None:
        self.config = pruner.config
        self.name = pruner.name
        self.layer = layer

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        return solve_schedule(budget, n_vision, n_layers, (self.layer,), lambda t: (t,))


class SecondStageHook(ScheduledLayerHook):
    """Before LLM layer ``layer``: keep the vision rows the ``query`` row attended to most (layer−1's
    head-mean attention), as many as the budget leaves after the first stage's ``records``."""

    def __init__(
        self, pruner: Pruner, budget: Budget, n_layers: int, layer: int, records: list[tuple[int, int]]
    ) -> None:
        super().__init__(_LLMStagePlanner(pruner, layer), budget, n_layers, (layer,))  # type: ignore[arg-type]
        self.full_budget = budget
        self.records = records
        self.who = pruner.name

    def query_rows(self, view: LayerView) -> torch.Tensor:
        query = getattr(self.pruner.config, "query", "last")
        return torch.tensor([query_row(view.hidden.shape[1] - 1, view.instruction, query)])

    def stage_scores(
        self, view: LayerView, vision: torch.Tensor, attention: torch.Tensor | None
    ) -> torch.Tensor:
        if attention is None:
            raise PrunerConfigError(f"{self.who} found no attention tap before layer {view.layer}")
        return attention.float().mean(0)

    def before_layer(self, view: LayerView) -> Selection | None:
        if self.active and view.layer == 0:
            dropped = sum(seen - kept for seen, kept in self.records)
            self.records.clear()
            n_llm = int(view.vision.sum())
            self.budget = second_stage_budget(self.full_budget, n_llm, n_llm + dropped)
        return super().before_layer(view)


def stage_layer(layer: int, n_layers: int, depth_ref: int | None, who: str) -> int:
    return scale_layers((layer,), n_layers, depth_ref, who)[0]


def check_share(share: float, who: str) -> None:
    if not 0 < share <= 1:
        raise PrunerConfigError(f"{who} share must be in (0, 1], got {share}")
