"""What every command module shares: the one Typer app they register onto, the consoles, and the one-line
usage error (exit code 2)."""

from __future__ import annotations

import typer
from rich.console import Console

from pyramid.errors import LrsVqaError

app = typer.Typer(
    name="lrs-vqa",
    help="Question answering over gigapixel remote-sensing images (LRS-VQA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True, soft_wrap=True)

EXIT_BAD_INPUT = 2


class UsageError(LrsVqaError, ValueError):
    """A bad argument value the CLI reports in one line (exit code 2)."""


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise UsageError(f"--bands must be comma-separated 1-based indexes, got {text!r}") from None


def print_bad_rows(bad_rows: tuple[object, ...] | list[object], what: str, limit: int = 20) -> None:
    if not bad_rows:
        return
    err.print(f"{len(bad_rows)} {what}:", markup=False, highlight=False)
    for b in list(bad_rows)[:limit]:
        err.print(f"  {b.describe()}", markup=False, highlight=False)  # type: ignore[attr-defined]
    if len(bad_rows) > limit:
        err.print(f"  ... and {len(bad_rows) - limit} more (all of them with --json)", markup=False)
