"""What the web-demo tests share: a served scene, the app launched on a free loopback port with a tiny model,
the ``/ask`` API's arguments, and headless Debian chromium."""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.config import RunSettings, ServeConfig
from app.examples import EXAMPLES
from app.server import Served, launch
from pyramid.synth import synthesize_scene

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# headless in a container: no sandbox or GPU, /tmp for shared memory, no background traffic or updates
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_scene(workdir: Path) -> Path:
    """The 1300×900 synthetic scene the tests serve, alone in ``workdir/served`` (the allowed folder)."""
    out = workdir / "served" / "scene.tif"
    out.parent.mkdir()
    synthesize_scene(out, (1300, 900), seed=2)
    return out


@contextlib.contextmanager
def launched(
    workdir: Path, scene: Path, model: Path, **config: Any
) -> Iterator[tuple[str, ServeConfig, Served]]:
    """The app on a free loopback port serving ``model``, the scene's folder allowed; closed on exit."""
    cfg = ServeConfig(
        port=free_port(),
        models=(str(model),),
        allow_dir=scene.parent,
        max_upload_mb=5,
        examples_dir=workdir / "examples",
        **config,
    )
    served = launch(cfg, block=False)
    try:
        yield f"http://127.0.0.1:{cfg.port}/", cfg, served
    finally:
        served.close()


def ask_args(
    config: ServeConfig,
    upload: object = None,
    example: str | None = None,
    path: str = "",
    question: str = EXAMPLES[0].question,  # the question box starts with the first example's
) -> list:
    """The ``/ask`` endpoint's arguments with the page's default settings."""
    d = RunSettings(model=config.models[0])
    return [
        upload,
        example,
        path,
        question,
        d.model,
        d.strategy,
        d.scorer,
        d.keep_ratio,
        d.max_tiles_per_level,
        d.budget_tokens,
        "none",
        "",
    ]
