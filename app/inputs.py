"""Which file a request asks about: an upload, a bundled example or an allowed server-side path."""

from __future__ import annotations

from pathlib import Path

from app.config import UPLOAD_SUFFIXES, ServeConfig
from pyramid.errors import LrsVqaError
from pyramid.remote import is_location


class InputError(LrsVqaError, ValueError):
    """A request the page answers with a readable one-line error."""


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in UPLOAD_SUFFIXES:
        raise InputError(f"{path.name}: unsupported file type; upload one of {', '.join(UPLOAD_SUFFIXES)}")


def resolve_input(
    upload: str | None,
    example: str | None,
    server_path: str | None,
    config: ServeConfig,
    examples: dict[str, Path],
) -> Path | str:
    """The image to open. An upload wins over a server path, which wins over an example. A server path
    may be a COG URL or a STAC item URL when the server allows remote input (returned as written)."""
    if upload:
        path = Path(upload)
        _check_suffix(path)
        size = path.stat().st_size
        if size > config.max_upload_mb * 2**20:
            raise InputError(
                f"{path.name} is {size / 2**20:.0f} MB, above the {config.max_upload_mb} MB limit"
            )
        return path
    if server_path and is_location(server_path.strip()):
        if not config.allow_remote:
            raise InputError("remote URLs are disabled (start the server with --allow-remote)")
        return server_path.strip()
    if server_path and server_path.strip():
        if config.allow_dir is None:
            raise InputError("server-side paths are disabled (start the server with --allow-dir)")
        root = config.allow_dir.resolve()
        path = (root / server_path.strip()).resolve()
        if not path.is_relative_to(root):
            raise InputError(f"{server_path}: outside the allowed folder {root}")
        if not path.is_file():
            raise InputError(f"{server_path}: no such file in {root}")
        _check_suffix(path)
        return path
    if example:
        if example not in examples:
            raise InputError(f"unknown example {example!r}")
        return examples[example]
    raise InputError("upload an image, pick an example or give a server-side path")
