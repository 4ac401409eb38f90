"""The project's one error base, and the typed errors for bad raster input.

Every error a user can cause — a bad file, option, model, budget, question file — derives from
:class:`LrsVqaError` (re-exported as :mod:`lrs_vqa.errors`), carries a one-line message, and is what the CLI
turns into exit code 2 in one place. It lives here because this is the lowest layer: every package can
import it without importing anything heavier. Raster errors are subclasses of :class:`RasterInputError`.
"""

from __future__ import annotations


class LrsVqaError(Exception):
    """Base of every error a user causes (bad input or settings); ``str(err)`` is one line."""


class RasterInputError(LrsVqaError):
    """Base class: the input cannot be used as a raster. ``str(err)`` is one line."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # keep it on one line
        super().__init__(f"{self.path}: {self.reason}")


class RasterNotFoundError(RasterInputError):
    """The path does not exist."""


class NotAFileError(RasterInputError):
    """The path is a directory or another non-regular file."""


class EmptyFileError(RasterInputError):
    """The file has zero bytes."""


class NotARasterError(RasterInputError):
    """The file is not in any raster format we can read."""


class CorruptRasterError(RasterInputError):
    """The file looks like a raster but its header or pixel data cannot be decoded (e.g. truncated)."""


class UnsupportedRasterError(RasterInputError):
    """A readable raster we cannot turn into RGB tiles (dtype, band layout, band selection...)."""


class RasterTooLargeError(RasterInputError):
    """The header declares dimensions beyond the configured limit (decompression-bomb guard)."""


class RemoteRasterError(RasterInputError):
    """A remote raster cannot be read: host unreachable, server without range support, a bad answer."""


class RemoteAccessError(RemoteRasterError):
    """The server refused access (HTTP 401/403, or missing object-store credentials)."""


class RemoteLayoutError(RemoteRasterError):
    """A remote raster that is not cloud-optimized: reading it would mean downloading all of it."""


class StacItemError(RasterInputError):
    """A STAC item that cannot be used: unreadable, or without a raster asset to open."""
