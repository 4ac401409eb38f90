"""Errors of loading a checkpoint and wrapping it in an adapter (one line each, for the CLI and the app)."""

from pyramid.errors import LrsVqaError


class UnsupportedModelError(LrsVqaError, ValueError):
    """The checkpoint's architecture has no adapter."""


class ModelLoadError(LrsVqaError, RuntimeError):
    """The checkpoint could not be found or loaded (offline, bad path, ...)."""
