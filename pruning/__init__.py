"""Vision-token pruners behind one interface (LVPruning, AdaptInfer, PTP, STAR, ... and baselines).

Quick use::

    from pruning import get_pruner
    with get_pruner("fastv").attach(adapter, "avg:128") as att:
        record = answer(image, question, model=adapter, llm_hooks=att.llm_hooks,
                        vision_hooks=att.vision_hooks)

Budgets: ``"64"`` (tokens left after the last stage), ``"avg:128"`` (average over LLM layers), ``"0.25"``
(ratio); see ``pruning.budget``. Chains: ``get_pruner("visionzip+fastv")`` with budgets ``"192+0.5"``.
"""

from pruning.base import Attachment, HookSet, ModelTarget, Pruner, Signal, Stage
from pruning.budget import Budget, BudgetKind, Schedule, parse_budgets, solve_schedule
from pruning.errors import (
    BudgetFormatError,
    BudgetTooLargeError,
    BudgetUnreachableError,
    NegativeBudgetError,
    NonPositiveBudgetError,
    PrunerConfigError,
    PruningError,
    UnknownPrunerError,
    ZeroBudgetError,
)
from pruning.registry import Chain, PrunerInfo, describe_pruners, get_pruner, known_pruners, register

__all__ = [
    "Attachment",
    "Budget",
    "BudgetFormatError",
    "BudgetKind",
    "BudgetTooLargeError",
    "BudgetUnreachableError",
    "Chain",
    "HookSet",
    "ModelTarget",
    "NegativeBudgetError",
    "NonPositiveBudgetError",
    "Pruner",
    "PrunerConfigError",
    "PrunerInfo",
    "PruningError",
    "Schedule",
    "Signal",
    "Stage",
    "UnknownPrunerError",
    "ZeroBudgetError",
    "describe_pruners",
    "get_pruner",
    "known_pruners",
    "parse_budgets",
    "register",
    "solve_schedule",
]
