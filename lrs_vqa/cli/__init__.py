"""The ``lrs-vqa`` command line: one Typer app (``lrs_vqa.cli.base.app``) and one module per command group,
each registering its commands on it. Bad input → one line on stderr and exit code 2, never a traceback.

A new command is a function decorated with ``@app.command(...)`` in a module here that does
``from lrs_vqa.cli.base import app``, plus its line in ``COMMAND_MODULES``. A run imports only the module of
the command it names (all of them for ``--help`` or an unknown name): Typer builds a pydantic adapter for
every parameter of every registered command, ~0.1 s for them all, which ``lrs-vqa inspect`` need not pay.
"""

from __future__ import annotations

import importlib
import sys

from lrs_vqa.cli.base import EXIT_BAD_INPUT, app, err
from lrs_vqa.cli.ray_options import bare_ray_to_auto
from lrs_vqa.errors import LrsVqaError

__all__ = ["COMMAND_MODULES", "app", "main", "register_commands"]

# Command (or command group) → the module whose import registers it (tests check this against the app).
COMMAND_MODULES: dict[str, str] = {
    "ask": "lrs_vqa.cli.ask",
    "batch": "lrs_vqa.cli.batch",
    "score": "lrs_vqa.cli.evaluate",
    "eval": "lrs_vqa.cli.evaluate",
    "merge": "lrs_vqa.cli.evaluate",
    "make-tiny-model": "lrs_vqa.cli.models",
    "pruners": "lrs_vqa.cli.pruners",
    "pruner-tool": "lrs_vqa.cli.pruners",
    "inspect": "lrs_vqa.cli.raster",
    "cog": "lrs_vqa.cli.raster",
    "synth": "lrs_vqa.cli.raster",
    "preview": "lrs_vqa.cli.raster",
    "train-rfm": "lrs_vqa.cli.rfm_train",
    "serve": "lrs_vqa.cli.serve",
    "world-bench": "lrs_vqa.cli.world",
    "train-world-model": "lrs_vqa.cli.world",
}


def register_commands(argv: list[str] | None = None) -> None:
    """Import the module of the command ``argv`` names, or every command module when it names none we know."""
    name = next((a for a in argv or [] if not a.startswith("-")), None)
    modules = [COMMAND_MODULES[name]] if name in COMMAND_MODULES else sorted(set(COMMAND_MODULES.values()))
    for module in modules:
        importlib.import_module(module)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the Typer app and maps expected failures to exit code 2."""
    args = bare_ray_to_auto(sys.argv[1:] if argv is None else argv)
    register_commands(args)
    try:
        # Standalone mode: Typer prints usage errors itself and exits with code 2.
        app(args=args, prog_name="lrs-vqa")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except LrsVqaError as exc:  # every error a user causes derives from it (lrs_vqa.errors)
        err.print(f"error: {exc}", markup=False, highlight=False)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
