"""The one registry of region scorers (``--scorer``): name → the module that builds it, and a line of help.

A scorer is one module with ``@register_scorer(name)`` on its builder ``(adapter, layers) -> scorer``, plus
its line in ``BUILTIN``; the CLI's choices and help and the web demo's radio buttons come from here. Names
and help are read from ``BUILTIN`` without importing the scorers (the CLI stays quick to start); a scorer's
module is imported when it is first built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyramid.errors import LrsVqaError

if TYPE_CHECKING:
    from lrs_vqa.models.base import ModelAdapter
    from rfm.base import RegionScorer

# (adapter, LLM layers to run or None for the scorer's default) -> scorer
ScorerBuilder = Callable[["ModelAdapter", "int | None"], "RegionScorer"]

# name -> (module that registers it, help), in the order the CLI lists them
BUILTIN: dict[str, tuple[str, str]] = {
    "auto": ("rfm.scorers", "the model's trained RFM if it ships one, else attention"),
    "attention": ("rfm.attention", "any model"),
    "rfm": ("rfm.module", "trained RFM"),
}


class UnknownScorerError(LrsVqaError, ValueError):
    """No scorer of that name."""


class ScorerUnavailableError(LrsVqaError, ValueError):
    """The scorer exists but this model cannot run it (e.g. no trained RFM weights)."""


@dataclass(frozen=True)
class ScorerInfo:
    name: str
    help: str  # a few words for --help and the web demo
    build: ScorerBuilder


SCORERS: dict[str, ScorerInfo] = {}


def register_scorer(name: str, help: str | None = None) -> Callable[[ScorerBuilder], ScorerBuilder]:
    """Decorator on a builder; ``help`` only for a scorer that is not in ``BUILTIN``."""

    def deco(build: ScorerBuilder) -> ScorerBuilder:
        if name in SCORERS and SCORERS[name].build is not build:
            raise KeyError(f"scorer {name!r} is already registered")
        SCORERS[name] = ScorerInfo(name, help or BUILTIN[name][1], build)
        return build

    return deco


def scorer_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*BUILTIN, *SCORERS]))


def resolve_scorer_name(name: str, adapter: ModelAdapter) -> str:
    """``auto`` → ``rfm`` when the model carries a trained Region Focus Module (a released LRS-VQA
    checkpoint, or a model folder with an ``rfm/`` from ``lrs-vqa train-rfm``), else ``attention``; any
    other name unchanged."""
    if name != "auto":
        return name
    return "rfm" if getattr(adapter, "region_focus_module", None) is not None else "attention"


def get_scorer(name: str) -> ScorerInfo:
    if name not in SCORERS and name in BUILTIN:
        importlib.import_module(BUILTIN[name][0])
    if name not in SCORERS:
        raise UnknownScorerError(f"unknown scorer {name!r}; choose one of {', '.join(scorer_names())}")
    return SCORERS[name]


def build_scorer(name: str, adapter: ModelAdapter, layers: int | None = None) -> RegionScorer:
    """The scorer ``name`` for ``adapter``; ``UnknownScorerError`` / ``ScorerUnavailableError`` otherwise
    (``layers`` outside 1..the model's LLM layers is a ``ScorerUnavailableError`` too)."""
    info = get_scorer(resolve_scorer_name(name, adapter))
    if layers is not None:
        total = adapter.llm_shape().layers
        if not 1 <= layers <= total:
            raise ScorerUnavailableError(
                f"--scorer-layers must be between 1 and {total} (the model's LLM layers), got {layers}"
            )
    return info.build(adapter, layers)


def describe_scorers() -> str:
    """``attention (…) | rfm (…)``: the --scorer help."""
    helps = {**{n: h for n, (_, h) in BUILTIN.items()}, **{n: s.help for n, s in SCORERS.items()}}
    return " | ".join(f"{n} ({h})" for n, h in helps.items())
