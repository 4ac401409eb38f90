"""``serve``: the web demo (``app/``). The CLI is the top layer: it is the one place that launches the app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.config import ServeConfig
from lrs_vqa.cli.base import UsageError, app
from lrs_vqa.options import DEFAULT_MODEL

_SERVE = ServeConfig()  # the defaults, declared once there


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = _SERVE.host,
    port: Annotated[int, typer.Option(help="TCP port.")] = _SERVE.port,
    model: Annotated[
        list[str] | None, typer.Option(help="Hub id or local checkpoint folder; repeat to offer several.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = _SERVE.device,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = _SERVE.dtype,
    allow_dir: Annotated[
        Path | None, typer.Option(help="Also accept server-side paths of files under this folder.")
    ] = None,
    max_upload_mb: Annotated[
        int, typer.Option(help="Upload size limit, MB (shown in the page).")
    ] = _SERVE.max_upload_mb,
    allow_remote: Annotated[
        bool,
        typer.Option(help="Also accept COG / STAC item URLs in the server-path field (fetched by range)."),
    ] = _SERVE.allow_remote,
) -> None:
    """Start the web demo (Gradio): upload or pick an image, ask, watch the coarse-to-fine loop."""
    if allow_dir is not None and not allow_dir.is_dir():
        raise UsageError(f"--allow-dir {allow_dir}: not a folder")
    try:
        config = ServeConfig(
            host=host,
            port=port,
            models=tuple(model or [DEFAULT_MODEL]),
            device=device,
            dtype=dtype,
            allow_dir=allow_dir,
            max_upload_mb=max_upload_mb,
            allow_remote=allow_remote,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    import importlib.util

    if importlib.util.find_spec("gradio") is None:  # the web demo is an optional extra
        raise UsageError('the web demo needs Gradio: pip install "lrs-vqa[app]"')
    from app.server import launch

    launch(config)
