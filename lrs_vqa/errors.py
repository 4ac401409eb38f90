"""The project's one error base (defined in the lowest layer, :mod:`pyramid.errors`): every user-facing error
derives from :class:`LrsVqaError`, and the CLI catches it once (one line, exit code 2)."""

from pyramid.errors import LrsVqaError

__all__ = ["LrsVqaError"]
