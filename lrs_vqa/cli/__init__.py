"""The ``lrs-vqa`` command line: one Typer app (``lrs_vqa.cli.base.app``) and one module per command group,
each registering its commands on it. Bad input → one line on stderr and exit code 2, never a traceback.

A new command group is one module here that does ``from lrs_vqa.cli.base import app`` and decorates its
functions with ``@app.command(...)``, plus its import below.
"""

from __future__ import annotations

import sys

from lrs_vqa.cli import ask, batch, evaluate, models, pruners, raster, serve, world  # noqa: F401  (they register)
from lrs_vqa.cli.base import EXIT_BAD_INPUT, UsageError, app, err
from pyramid.errors import RasterInputError

__all__ = ["app", "main"]


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors a user causes (bad input, model, strategy settings, pruner): one line and exit code 2."""
    from lrs_vqa.eval_errors import EvalError
    from lrs_vqa.models.errors import ModelLoadError, UnsupportedModelError
    from lrs_vqa.options import C2FError
    from lrs_vqa.strategies import StrategyError

    own = (EvalError, StrategyError, C2FError, UnsupportedModelError, ModelLoadError)
    if "pruning.errors" in sys.modules:  # only loaded with a pruner (it brings torch)
        from pruning.errors import PruningError

        own = (*own, PruningError)
    return own


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the Typer app and maps expected failures to exit code 2."""
    try:
        # Standalone mode: Typer prints usage errors itself and exits with code 2.
        app(args=argv, prog_name="lrs-vqa")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (RasterInputError, UsageError, FileExistsError, *_user_errors()) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
