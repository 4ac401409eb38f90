"""The ``lrs-vqa`` command line: one Typer app (``lrs_vqa.cli.base.app``) and one module per command group,
each registering its commands on it. Bad input → one line on stderr and exit code 2, never a traceback.

A new command group is one module here that does ``from lrs_vqa.cli.base import app`` and decorates its
functions with ``@app.command(...)``, plus its import below.
"""

from __future__ import annotations

import sys

from lrs_vqa.cli import ask, batch, evaluate, models, pruners, raster, serve  # noqa: F401  (they register)
from lrs_vqa.cli.base import EXIT_BAD_INPUT, UsageError, app, err
from pyramid.errors import RasterInputError

__all__ = ["app", "main"]


def _engine_errors() -> tuple[type[Exception], ...]:
    """Engine errors a user causes (bad model, bad strategy settings); imported only when needed."""
    import sys as _sys

    own: tuple[type[Exception], ...] = ()
    if "lrs_vqa.eval_errors" in _sys.modules:  # score / eval / merge / batch
        from lrs_vqa.eval_errors import EvalError

        own = (EvalError,)
    if "pruning.errors" in _sys.modules:  # a bad pruner name, option or budget
        from pruning.errors import PruningError

        own = (*own, PruningError)
    if "lrs_vqa.answer" not in _sys.modules:
        return own
    from lrs_vqa.answer import StrategyError
    from lrs_vqa.c2f import C2FError
    from lrs_vqa.models.errors import ModelLoadError, UnsupportedModelError

    return (StrategyError, C2FError, UnsupportedModelError, ModelLoadError, *own)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the Typer app and maps expected failures to exit code 2."""
    try:
        # Standalone mode: Typer prints usage errors itself and exits with code 2.
        app(args=argv, prog_name="lrs-vqa")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (RasterInputError, UsageError, FileExistsError, *_engine_errors()) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
