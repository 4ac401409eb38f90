"""Launch the demo: loopback by default, no share link, one model job at a time with a bounded queue."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machines: no phone-home

import gradio as gr

from app.config import ServeConfig
from app.ui import build_demo


def launch(config: ServeConfig, *, block: bool = True) -> gr.Blocks:
    """Start the server; with ``block=False`` return at once (tests), close with ``demo.close()``."""
    demo = build_demo(config)
    demo.queue(max_size=config.queue_size, default_concurrency_limit=1)
    demo.launch(
        server_name=config.host,
        server_port=config.port,
        share=False,
        max_file_size=f"{config.max_upload_mb}mb",
        prevent_thread_lock=not block,
        quiet=not block,
        show_error=True,
    )
    return demo
