"""The one registry of region scorers (``--scorer``): a name, a line of help, and how to build one for a
loaded model. A new scorer is one module with ``@register_scorer(...)`` on its builder plus its module name
in ``_BUILTIN_MODULES``; the CLI's choices and help and the web demo's radio buttons come from here."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrs_vqa.models.base import ModelAdapter
    from rfm.base import RegionScorer

# (adapter, LLM layers to run or None for the scorer's default) -> scorer
ScorerBuilder = Callable[["ModelAdapter", "int | None"], "RegionScorer"]


class UnknownScorerError(ValueError):
    """No scorer of that name."""


class ScorerUnavailableError(ValueError):
    """The scorer exists but this model cannot run it (e.g. no trained RFM weights)."""


@dataclass(frozen=True)
class ScorerInfo:
    name: str
    help: str  # a few words for --help and the web demo
    build: ScorerBuilder


SCORERS: dict[str, ScorerInfo] = {}

# Imported on first lookup, in this order (the CLI lists them so); each registers itself.
_BUILTIN_MODULES = ("rfm.attention", "rfm.module")


def register_scorer(name: str, help: str) -> Callable[[ScorerBuilder], ScorerBuilder]:
    def deco(build: ScorerBuilder) -> ScorerBuilder:
        if name in SCORERS and SCORERS[name].build is not build:
            raise KeyError(f"scorer {name!r} is already registered")
        SCORERS[name] = ScorerInfo(name, help, build)
        return build

    return deco


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def scorer_names() -> tuple[str, ...]:
    _load_builtins()
    return tuple(SCORERS)


def get_scorer(name: str) -> ScorerInfo:
    _load_builtins()
    if name not in SCORERS:
        raise UnknownScorerError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}")
    return SCORERS[name]


def build_scorer(name: str, adapter: ModelAdapter, layers: int | None = None) -> RegionScorer:
    """The scorer ``name`` for ``adapter``; ``UnknownScorerError`` / ``ScorerUnavailableError`` otherwise."""
    return get_scorer(name).build(adapter, layers)


def describe_scorers() -> str:
    """``attention (…) | rfm (…)``: the --scorer help."""
    _load_builtins()
    return " | ".join(f"{s.name} ({s.help})" for s in SCORERS.values())
