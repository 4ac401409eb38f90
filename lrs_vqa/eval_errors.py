"""Typed errors of ``score``, ``eval``, ``merge`` and ``batch``: one-line messages the CLI prints as they are
(exit code 2)."""

from __future__ import annotations

from pyramid.errors import LrsVqaError


class EvalError(LrsVqaError):
    """Base class: bad input files, options or state of an evaluation or batch run."""


class InputFileError(EvalError):
    """A question, answer or batch file that cannot be used at all (missing, unreadable, no usable row)."""


class MalformedRowsError(EvalError):
    """A question or batch file with malformed rows; ``bad_rows`` lists every one."""

    def __init__(self, message: str, bad_rows: tuple[object, ...]) -> None:
        super().__init__(message)
        self.bad_rows = bad_rows


class PathEscapeError(EvalError):
    """An image path that would leave the image root (absolute, or ``..`` past it)."""


class ResumeError(EvalError):
    """An output file that exists without ``--resume``, or a resume whose settings differ from the run's."""


class MergeError(EvalError):
    """Shards that cannot be merged (different runs, missing or repeated shards, repeated question ids)."""
