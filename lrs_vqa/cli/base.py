"""What every command module shares: the one Typer app they register onto, the consoles, and the one-line
usage error (exit code 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


@app.callback()
def _group() -> None:
    # A callback keeps the app a command group even when a run registers one command (see lrs_vqa.cli):
    # a lone command would otherwise take the command's name as its first argument.
    pass


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


def question_rows(questions: Path, image_root: Path | None, limit: int | None) -> list[tuple[str, Any]]:
    """(absolute image path, question row) of every row of an LRS-VQA-format file (images relative to
    ``image_root``, default the file's folder), the first ``limit``; any unusable row is a one-line error."""
    from lrs_vqa.questions import load_questions, resolve_image

    root = image_root if image_root is not None else questions.parent
    loaded = load_questions(questions, root)
    if loaded.bad_rows:
        first = loaded.bad_rows[0]
        raise UsageError(
            f"{questions}: {len(loaded.bad_rows)} unusable row(s), "
            f"first at line {first.line}: {first.problem}"
        )
    rows = loaded.questions[:limit] if limit is not None else loaded.questions
    if not rows:
        raise UsageError(f"{questions}: no usable question rows")
    return [(str(resolve_image(root, q.image)), q) for q in rows]
