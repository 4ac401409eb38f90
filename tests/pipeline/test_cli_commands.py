"""The CLI imports only the module of the command it runs (Typer builds a pydantic adapter per parameter of
every registered command): the map from command to module must name every command, and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lrs_vqa.cli import COMMAND_MODULES

ROOT = Path(__file__).resolve().parents[2]

_NAMES = (
    "from lrs_vqa.cli.base import app\n"
    "names = [c.name or c.callback.__name__.replace('_', '-') for c in app.registered_commands]\n"
    "names += [g.name for g in app.registered_groups]\n"
    "print(json.dumps(names))\n"
)


def _run(code: str) -> object:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_each_command_module_registers_what_the_map_says() -> None:
    for module in sorted(set(COMMAND_MODULES.values())):
        registered = _run(f"import json, importlib\nimportlib.import_module({module!r})\n" + _NAMES)
        mapped = {name for name, m in COMMAND_MODULES.items() if m == module}
        assert mapped <= set(registered), (module, mapped, registered)  # type: ignore[arg-type]
    every = _run("import json\nfrom lrs_vqa.cli import register_commands\nregister_commands([])\n" + _NAMES)
    assert sorted(every) == sorted(COMMAND_MODULES)  # type: ignore[arg-type]


def test_inspect_imports_no_other_command() -> None:
    code = (
        "import json, sys\n"
        "from lrs_vqa.cli import main\n"
        "rc = main(['inspect', '--help'])\n"
        "print(json.dumps([rc, sorted(m for m in sys.modules if m.startswith('lrs_vqa.cli.'))]))\n"
    )
    rc, modules = _run(code)  # type: ignore[misc]
    assert rc == 0
    assert "lrs_vqa.cli.ask" not in modules and "lrs_vqa.cli.evaluate" not in modules
    assert "lrs_vqa.cli.raster" in modules
