"""Errors of loading a checkpoint and wrapping it in an adapter (one line each, for the CLI and the app)."""


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture has no adapter."""


class ModelLoadError(RuntimeError):
    """The checkpoint could not be found or loaded (offline, bad path, ...)."""
