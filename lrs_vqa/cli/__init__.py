"""The ``lrs-vqa`` command line: one Typer app (``lrs_vqa.cli.base.app``) and one module per command group,
each registering its commands on it. Bad input → one line on stderr and exit code 2, never a traceback.

A new command group is one module here that does ``from lrs_vqa.cli.base import app`` and decorates its
functions with ``@app.command(...)``, plus its import below.
"""

from __future__ import annotations

import sys

from lrs_vqa.cli import (  # noqa: F401  (they register)
    ask,
    batch,
    evaluate,
    models,
    pruners,
    raster,
    rfm_train,
    serve,
    world,
)
from lrs_vqa.cli.base import EXIT_BAD_INPUT, app, err
from lrs_vqa.cli.ray_options import bare_ray_to_auto
from lrs_vqa.errors import LrsVqaError

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the Typer app and maps expected failures to exit code 2."""
    try:
        # Standalone mode: Typer prints usage errors itself and exits with code 2.
        app(args=bare_ray_to_auto(sys.argv[1:] if argv is None else argv), prog_name="lrs-vqa")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except LrsVqaError as exc:  # every error a user causes derives from it (lrs_vqa.errors)
        err.print(f"error: {exc}", markup=False, highlight=False)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
