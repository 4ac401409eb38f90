"""The one registry of coarse-to-fine modes (``--mode``): name → the module with its loop, and a line of help.

A mode is one module whose loop class is decorated with ``@register_mode(name)`` and takes
``(adapter, scorer, options, vision_hooks, pruner_hooks)``, plus its line in ``BUILTIN``.
``lrs_vqa.c2f.make_loop`` picks the loop for ``C2FOptions.mode``; the CLI's choices and help come from here.
Names and help are read from ``BUILTIN`` without importing the modes (the CLI stays quick to start); a
mode's module is imported when it is first run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

# name -> (module that registers it, help)
BUILTIN: dict[str, tuple[str, str]] = {
    "default": ("lrs_vqa.c2f", "multi-level, capped"),
    "paper": ("lrs_vqa.c2f_paper", "the released one-hop loop"),
}


@dataclass(frozen=True)
class ModeInfo:
    name: str
    help: str
    loop: type[Any]  # called as loop(adapter, scorer, options, vision_hooks, pruner_hooks); has .run(dip, q)


MODES: dict[str, ModeInfo] = {}

L = TypeVar("L", bound=type[Any])


def register_mode(name: str, help: str | None = None) -> Callable[[L], L]:
    """Class decorator; ``help`` only for a mode that is not in ``BUILTIN``."""

    def deco(cls: L) -> L:
        if name in MODES and MODES[name].loop is not cls:
            raise KeyError(f"c2f mode {name!r} is already registered")
        MODES[name] = ModeInfo(name, help or BUILTIN[name][1], cls)
        return cls

    return deco


def mode_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*BUILTIN, *MODES]))


def get_mode(name: str) -> ModeInfo | None:
    if name not in MODES and name in BUILTIN:
        importlib.import_module(BUILTIN[name][0])
    return MODES.get(name)


def describe_modes() -> str:
    """``default (…) | paper (…)``: the --mode help."""
    helps = {**{n: h for n, (_, h) in BUILTIN.items()}, **{n: m.help for n, m in MODES.items()}}
    return " | ".join(f"{n} ({h})" for n, h in helps.items())
