"""Typed errors of the pruning package. All are ``ValueError``s with a one-line message, so a CLI can print
``str(err)`` as it is."""

from __future__ import annotations

from pyramid.errors import LrsVqaError


class PruningError(LrsVqaError, ValueError):
    """Base class of every pruning error."""


class BudgetFormatError(PruningError):
    """A budget string that does not parse (e.g. ``"avg:"``, ``"lots"``, ``"0.5:avg"``)."""


class NonPositiveBudgetError(PruningError):
    """A budget of zero or below."""


class ZeroBudgetError(NonPositiveBudgetError):
    """A budget of zero tokens (or a ratio of 0)."""


class NegativeBudgetError(NonPositiveBudgetError):
    """A negative budget."""


class BudgetTooLargeError(PruningError):
    """A budget above the number of vision tokens present (or a ratio above 1)."""


class BudgetUnreachableError(PruningError):
    """A valid budget this pruner's schedule cannot meet exactly (e.g. an average below what remains when
    the first drop happens at layer K)."""


class UnknownPrunerError(PruningError):
    """A pruner name that is not registered."""


class PrunerConfigError(PruningError):
    """A bad pruner option (unknown key, wrong type, a layer outside the model)."""
