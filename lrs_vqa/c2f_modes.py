"""The one registry of coarse-to-fine modes (``--mode``): a name, a line of help, and the loop class.

A mode is one module whose loop class is decorated with ``@register_mode(name, help)`` and takes
``(adapter, scorer, options, vision_hooks, pruner_hooks)``; its module name goes in ``_BUILTIN_MODULES``.
``lrs_vqa.c2f.make_loop`` picks the loop for ``C2FOptions.mode``; the CLI's choices and help come from here.
The registry imports the modes by name on first lookup, so it depends on none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

# Imported on first lookup, in this order; each registers itself.
_BUILTIN_MODULES = ("lrs_vqa.c2f", "lrs_vqa.c2f_paper")


@dataclass(frozen=True)
class ModeInfo:
    name: str
    help: str
    loop: type[Any]  # called as loop(adapter, scorer, options, vision_hooks, pruner_hooks); has .run(dip, q)


MODES: dict[str, ModeInfo] = {}

L = TypeVar("L", bound=type[Any])


def register_mode(name: str, help: str) -> Callable[[L], L]:
    def deco(cls: L) -> L:
        if name in MODES and MODES[name].loop is not cls:
            raise KeyError(f"c2f mode {name!r} is already registered")
        MODES[name] = ModeInfo(name, help, cls)
        return cls

    return deco


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def mode_names() -> tuple[str, ...]:
    _load_builtins()
    return tuple(MODES)


def get_mode(name: str) -> ModeInfo | None:
    _load_builtins()
    return MODES.get(name)


def describe_modes() -> str:
    """``default (…) | paper (…)``: the --mode help."""
    _load_builtins()
    return " | ".join(f"{m.name} ({m.help})" for m in MODES.values())
