"""The one registry of answering strategies (``--strategy``): what the LLM is shown of the image.

A strategy is one module in this package with a ``gather(request) -> Gathered`` function decorated with
``@register_strategy(...)``, and its module name in ``_BUILTIN_MODULES`` (the order the CLI lists them).
``lrs_vqa.answer`` runs the chosen one; the CLI's choices and help and the web demo's radio buttons come from
here. The registry imports the strategies by name on first lookup, so it depends on none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lrs_vqa.c2f import C2FResult
from lrs_vqa.engine.hooks import VisionHook
from lrs_vqa.engine.tokens import VisionSegment
from lrs_vqa.models.base import EncodedPrompt, ModelAdapter
from lrs_vqa.options import AskOptions
from pyramid.dip import DynamicImagePyramid, Tile

_BUILTIN_MODULES = (
    "lrs_vqa.strategies.c2f",
    "lrs_vqa.strategies.global_view",
    "lrs_vqa.strategies.anyres",
    "lrs_vqa.strategies.tiles_all",
)


class StrategyError(ValueError):
    """A strategy cannot run with these settings (e.g. too many tokens); one-line message."""


@dataclass(frozen=True)
class StrategyRequest:
    """What a strategy gets: ``vision_hooks`` apply to every encoded group; ``pruner_hooks`` are a token
    pruner's vision-side hooks (``None`` without a pruner); ``split_views``: c2f with a pruner that acts only
    before the LLM shares its budget between the thumbnail and the final tiles."""

    adapter: ModelAdapter
    dip: DynamicImagePyramid
    question: str
    options: AskOptions
    vision_hooks: Sequence[VisionHook] = ()
    pruner_hooks: Sequence[VisionHook] | None = None
    split_views: bool = False


@dataclass
class Gathered:
    segments: list[VisionSegment]
    tiles: list[Tile]
    roles: list[str]
    prompt: EncodedPrompt | None = None  # set by strategies that use the model's own processing
    c2f: C2FResult | None = None


Gather = Callable[[StrategyRequest], Gathered]


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    help: str
    gather: Gather
    coarse_to_fine: bool = False  # runs the c2f loop: scorer, heatmap, the pruner's split budget
    own_processing: bool = False  # the model's own image processing: no vision-side hooks
    in_app: bool = True  # offered by the web demo (tiles-all stays on the command line: it can be huge)


STRATEGIES: dict[str, StrategyInfo] = {}


def register_strategy(
    name: str, help: str, *, coarse_to_fine: bool = False, own_processing: bool = False, in_app: bool = True
) -> Callable[[Gather], Gather]:
    def deco(gather: Gather) -> Gather:
        if name in STRATEGIES and STRATEGIES[name].gather is not gather:
            raise KeyError(f"strategy {name!r} is already registered")
        STRATEGIES[name] = StrategyInfo(name, help, gather, coarse_to_fine, own_processing, in_app)
        return gather

    return deco


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def strategy_names() -> tuple[str, ...]:
    _load_builtins()
    return tuple(STRATEGIES)


def get_strategy(name: str) -> StrategyInfo:
    _load_builtins()
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def describe_strategies() -> str:
    """``c2f | global | anyres | tiles-all``: the --strategy help."""
    return " | ".join(strategy_names())
