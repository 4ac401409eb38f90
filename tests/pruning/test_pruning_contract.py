"""One contract over the pruner registry, grouped by the stages each pruner acts at: every registered pruner
declares what the ``pruners`` listing and the engine need, importing its module registers it and nothing
else, and it sits in the import contract that keeps the pruners independent. A new pruner is covered by
registering it; the other pruning tests parametrise over ``known_pruners()`` where they test every one."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pruning.registry import _BUILTIN_MODULES, PRUNERS, describe_pruners, get_pruner, known_pruners

ROOT = Path(__file__).resolve().parents[2]
# The methods the README promises (its "thirteen registered pruners"): none may get lost.
PROMISED = {
    "lvpruning", "adaptinfer", "ptp", "star", "transprune", "vflowopt", "vscan",
    "fastv", "pyramiddrop", "sparsevlm", "visionzip", "divprune", "random",
}  # fmt: skip


def by_stage() -> list[tuple[str, str]]:
    """(stages, name) for every registered pruner, grouped by the stages it acts at."""
    known_pruners()
    return sorted(("+".join(s.value for s in cls.stages), name) for name, cls in PRUNERS.items())


def test_the_promised_methods_are_registered():
    assert set(known_pruners()) >= PROMISED


@pytest.mark.parametrize(("stages", "name"), by_stage(), ids=[f"{s}/{n}" for s, n in by_stage()])
def test_every_pruner_declares_its_contract(stages: str, name: str):
    cls = PRUNERS[name]
    assert cls.name == name and cls.paper and cls.signals, name
    assert stages and all(s.value in stages for s in cls.stages)
    pruner = get_pruner(name)  # its defaults are valid
    assert pruner.name == name
    (row,) = [r for r in describe_pruners() if r.name == name]
    assert row.stages and row.signals and row.paper == cls.paper


def test_importing_a_pruner_registers_only_itself():
    """Each built-in module, imported alone in a clean state, registers exactly its own pruner."""
    script = """
import importlib, json, sys
found = {}
for module in sys.argv[1:]:
    for name in [m for m in sys.modules if m == "pruning" or m.startswith("pruning.")]:
        del sys.modules[name]
    registry = importlib.import_module("pruning.registry")
    importlib.import_module(module)
    found[module] = sorted(registry.PRUNERS)
print(json.dumps(found))
"""
    out = subprocess.run(
        [sys.executable, "-c", script, *_BUILTIN_MODULES],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    found = json.loads(out.stdout)
    known_pruners()
    own = {cls.__module__: name for name, cls in PRUNERS.items()}
    assert {module: [own[module]] for module in _BUILTIN_MODULES} == found


def test_every_pruner_module_is_in_the_independence_contract():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (independent,) = [c for c in contracts if c["id"] == "pruners"]
    assert sorted(independent["modules"]) == sorted(_BUILTIN_MODULES)
