"""The layers of the README's architecture section, enforced: the import-linter contract in pyproject.toml
holds (a wrong-way import fails here and in ``make lint``), and every module of the five packages sits in
exactly one of its layers, so a new module cannot escape the contract by being left out."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pyramid", "lrs_vqa", "rfm", "pruning", "app")


def _contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    assert tuple(config["root_packages"]) == PACKAGES
    (contract,) = [c for c in config["contracts"] if c["id"] == "layers"]
    return contract


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


def test_the_layers_contract_holds():
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def test_every_module_sits_in_exactly_one_layer():
    layers = [[m.strip() for m in layer.replace("|", ":").split(":")] for layer in _contract()["layers"]]

    def homes(module: str) -> list[int]:
        return [
            i
            for i, members in enumerate(layers)
            if any(module == m or module.startswith(m + ".") for m in members)
        ]

    package_roots = set(PACKAGES) - {m for members in layers for m in members}  # e.g. lrs_vqa/__init__.py
    unplaced = [m for m in _modules() if m not in package_roots and len(homes(m)) != 1]
    assert not unplaced, (
        f"place these modules in one layer of [tool.importlinter] in pyproject.toml: {unplaced}"
    )


def test_the_cli_starts_without_torch():
    """The registries give the CLI its choices and help from tables, so a light command stays light."""
    code = "import sys, lrs_vqa.cli.base; from lrs_vqa.cli import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
