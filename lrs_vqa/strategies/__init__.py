"""The one registry of answering strategies (``--strategy``): what the LLM is shown of the image.

A strategy is one module in this package with a ``gather(request) -> Gathered`` function decorated with
``@register_strategy(name, ...)``, plus its line in ``BUILTIN`` (the order the CLI lists them).
``lrs_vqa.answer`` runs the chosen one; the CLI's choices and help and the web demo's radio buttons come from
here. Names are read from ``BUILTIN`` without importing the strategies (the CLI stays quick to start); a
strategy's module is imported when it is first looked up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyramid.errors import LrsVqaError

if TYPE_CHECKING:
    from lrs_vqa.c2f import C2FResult
    from lrs_vqa.engine.hooks import VisionHook
    from lrs_vqa.engine.tokens import VisionSegment
    from lrs_vqa.models.base import EncodedPrompt, ModelAdapter
    from lrs_vqa.options import AskOptions
    from pyramid.dip import DynamicImagePyramid, Tile

# name -> (module that registers it, help), in the order the CLI lists them
BUILTIN: dict[str, tuple[str, str]] = {
    "c2f": ("lrs_vqa.strategies.c2f", "coarse to fine"),
    "global": ("lrs_vqa.strategies.global_view", "the global thumbnail only"),
    "anyres": ("lrs_vqa.strategies.anyres", "the model's own grid on the coarse view"),
    "tiles-all": ("lrs_vqa.strategies.tiles_all", "every tile of one level"),
    "region": ("lrs_vqa.strategies.region", "the native tiles under --box (an oracle with ground truth)"),
}


class StrategyError(LrsVqaError, ValueError):
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


Gather = Callable[["StrategyRequest"], "Gathered"]


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
    name: str,
    help: str | None = None,
    *,
    coarse_to_fine: bool = False,
    own_processing: bool = False,
    in_app: bool = True,
) -> Callable[[Gather], Gather]:
    """Decorator on ``gather``; ``help`` only for a strategy that is not in ``BUILTIN``."""

    def deco(gather: Gather) -> Gather:
        if name in STRATEGIES and STRATEGIES[name].gather is not gather:
            raise KeyError(f"strategy {name!r} is already registered")
        info = StrategyInfo(name, help or BUILTIN[name][1], gather, coarse_to_fine, own_processing, in_app)
        STRATEGIES[name] = info
        return gather

    return deco


def strategy_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*BUILTIN, *STRATEGIES]))


def get_strategy(name: str) -> StrategyInfo:
    if name not in STRATEGIES and name in BUILTIN:
        importlib.import_module(BUILTIN[name][0])
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(strategy_names())}")
    return STRATEGIES[name]


def describe_strategies() -> str:
    """``c2f | global | anyres | tiles-all``: the --strategy help."""
    return " | ".join(strategy_names())
