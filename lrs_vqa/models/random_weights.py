"""Recognising a checkpoint with random weights (written by ``lrs_vqa.tiny``), so that every record, the
terminal and the web demo can say its answers are meaningless."""

from __future__ import annotations

import json
from pathlib import Path

MARKER_KEY = "lrs_vqa_tiny_random"  # set to true in config.json by lrs_vqa.tiny.make_tiny_model


def is_random_tiny_model(path: str | Path) -> bool:
    """True if ``path`` is a checkpoint folder written by :func:`make_tiny_model`."""
    cfg = Path(path) / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get(MARKER_KEY) is True
