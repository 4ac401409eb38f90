"""The one registry of pruners, lookup by name (or a chain ``"a+b"``), and the rows a ``pruners`` command
prints.

Names may carry options: ``"fastv:layer=3"``, ``"pyramiddrop:layers=2/4/6,depth_ref=none"``; chains join
members with ``+`` and apply them in order (vision-side hooks in encoder order, LLM hooks in layer order),
e.g. ``"visionzip+fastv"``. A chain takes one budget per member: ``"192+0.5"``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pruning.base import HookSet, ModelTarget, Pruner
from pruning.budget import Budget, parse_budgets
from pruning.errors import PrunerConfigError, PruningError, UnknownPrunerError

if TYPE_CHECKING:
    from lrs_vqa.models.base import ModelAdapter

PRUNERS: dict[str, type[Pruner]] = {}

# Modules whose import registers the baselines (imported lazily so that ``pruning.base`` stays light).
_BUILTIN_MODULES = (
    "pruning.fastv",
    "pruning.pyramiddrop",
    "pruning.sparsevlm",
    "pruning.visionzip",
    "pruning.divprune",
    "pruning.random_keep",
    "pruning.transprune",
    "pruning.star",
    "pruning.ptp",
    "pruning.vscan",
    "pruning.adaptinfer",
    "pruning.vflowopt",
    "pruning.lvpruning",
)

P = TypeVar("P", bound=type[Pruner])


def register(name: str) -> Callable[[P], P]:
    """Class decorator: ``@register("fastv")``. Names are lower-case and unique; ``+ : , =`` are reserved
    for specs."""
    if not name or name != name.lower() or any(c in name for c in "+:,= "):
        raise PruningError(f"bad pruner name {name!r}")

    def deco(cls: P) -> P:
        if name in PRUNERS and PRUNERS[name] is not cls:
            raise PruningError(f"pruner {name!r} is already registered")
        cls.name = name
        PRUNERS[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def known_pruners() -> list[str]:
    _load_builtins()
    return sorted(PRUNERS)


def _coerce(raw: str, default: Any, who: str, key: str) -> Any:
    text = raw.strip()
    if text.lower() == "none":
        return None
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(default, tuple):
            return tuple(int(part) for part in text.split("/"))
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if default is None:
            for convert in (int, float):
                try:
                    return convert(text)
                except ValueError:
                    pass
        return text
    except ValueError:
        raise PrunerConfigError(
            f"{who} option {key}={raw!r} is not a valid {type(default).__name__}"
        ) from None


def _one(spec: str, overrides: dict[str, Any]) -> Pruner:
    name, _, opts = spec.strip().partition(":")
    name = name.strip().lower()
    cls = PRUNERS.get(name)
    if cls is None:
        raise UnknownPrunerError(f"unknown pruner {name!r}; known pruners: {', '.join(known_pruners())}")
    defaults = cls.Config()
    parsed: dict[str, Any] = {}
    for item in filter(None, (o.strip() for o in opts.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise PrunerConfigError(f"{name} option {item!r} needs the form key=value")
        if not hasattr(defaults, key):
            fields = ", ".join(f.name for f in dataclasses.fields(defaults))
            raise PrunerConfigError(f"{name} has no option {key!r}; its options are: {fields}")
        parsed[key] = _coerce(value, getattr(defaults, key), name, key)
    return cls(**parsed, **overrides)


def get_pruner(spec: str, **overrides: Any) -> Pruner:
    """A configured pruner by name (``"fastv"``), with options (``"fastv:layer=3"``) or a chain
    (``"visionzip+fastv"``). Keyword overrides apply to a single pruner only."""
    _load_builtins()
    parts = [p for p in spec.split("+")]
    if any(not p.strip() for p in parts):
        raise UnknownPrunerError(
            f"empty pruner name in {spec!r}; known pruners: {', '.join(known_pruners())}"
        )
    if len(parts) == 1:
        return _one(parts[0], overrides)
    if overrides:
        raise PrunerConfigError("options for a chain go into its spec, e.g. 'visionzip+fastv:layer=3'")
    return Chain([_one(p, {}) for p in parts])


class Chain(Pruner):
    """Members applied in order; each gets its own budget (counted on the tokens it sees)."""

    name = "chain"
    paper = ""

    @dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, members: Sequence[Pruner]) -> None:
        if len(members) < 2:
            raise PrunerConfigError("a chain needs at least two pruners")
        self.members = tuple(members)
        self.config = Chain.Config()
        self.name = "+".join(m.name for m in self.members)  # type: ignore[misc]
        self.paper = " | ".join(m.paper for m in self.members)  # type: ignore[misc]
        self.stages = tuple(dict.fromkeys(s for m in self.members for s in m.stages))  # type: ignore[misc]
        self.signals = tuple(dict.fromkeys(s for m in self.members for s in m.signals))  # type: ignore[misc]

    def stage_labels(self, n_layers: int = 32) -> tuple[str, ...]:
        return tuple(f"{m.name}: {label}" for m in self.members for label in m.stage_labels(n_layers))

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Any:
        raise PruningError("a chain has no single schedule; plan each member with its own budget")

    def budgets(self, budget: Any) -> tuple[Budget, ...]:
        if isinstance(budget, Budget | int | float):
            budget = [budget]
        return parse_budgets(budget, len(self.members))

    def hooks(self, budget: Any, target: ModelTarget) -> HookSet:
        sets = [m.hooks(b, target) for m, b in zip(self.members, self.budgets(budget), strict=True)]
        return HookSet(
            tuple(h for s in sets for h in s.vision),
            tuple(h for s in sets for h in s.llm),
        )

    def instrument(self, adapter: ModelAdapter, hooks: HookSet) -> list[Any]:
        return [h for m in self.members for h in m.instrument(adapter, hooks)]

    def __repr__(self) -> str:
        return f"Chain({list(self.members)!r})"


@dataclass(frozen=True)
class PrunerInfo:
    """One row of ``describe_pruners()``."""

    name: str
    stages: tuple[str, ...]
    signals: tuple[str, ...]
    defaults: dict[str, Any]
    paper: str


def describe_pruners() -> list[PrunerInfo]:
    """Every registered pruner, sorted by name, with stages as its defaults place them in a 32-layer LLM."""
    rows = []
    for name in known_pruners():
        cls = PRUNERS[name]
        pruner = cls()
        rows.append(
            PrunerInfo(
                name=name,
                stages=pruner.stage_labels(32),
                signals=tuple(s.value for s in cls.signals),
                defaults=cls.defaults(),
                paper=cls.paper,
            )
        )
    return rows
