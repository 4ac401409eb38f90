"""Launch the demo: loopback by default, no share link, one model job at a time with a bounded queue."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machines: no phone-home

from dataclasses import dataclass

import gradio as gr

from app.config import ServeConfig
from app.tiles import TileService
from app.ui import build_demo


@dataclass(frozen=True)
class Served:
    """A running demo: the Gradio app and the deep-zoom tile service mounted on it."""

    demo: gr.Blocks
    tiles: TileService

    def close(self) -> None:
        self.demo.close()
        self.tiles.close()


def launch(config: ServeConfig, *, block: bool = True) -> Served:
    """Start the server; with ``block=False`` return at once (tests), close with ``close()``."""
    tiles = TileService(config.tile_cache_bytes, config.viewer_images)
    demo = build_demo(config, tiles)
    demo.queue(max_size=config.queue_size, default_concurrency_limit=1)
    demo.launch(
        server_name=config.host,
        server_port=config.port,
        share=False,
        max_file_size=f"{config.max_upload_mb}mb",
        prevent_thread_lock=True,  # the viewer's routes go onto the app Gradio just built, then we block
        quiet=not block,
        show_error=True,
    )
    tiles.mount(demo.app)  # same process, same origin: the tiles, overlays and the vendored viewer
    served = Served(demo, tiles)
    if block:
        try:
            demo.block_thread()
        finally:
            tiles.close()
    return served
