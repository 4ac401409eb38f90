"""Frozen settings of the web demo: how the server runs, and what one question is asked with."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lrs_vqa.options import DEFAULT_MODEL, AskOptions, C2FOptions
from lrs_vqa.strategies import get_strategy, strategy_names
from pyramid.dip import PyramidOptions
from rfm.scorers import scorer_names

UPLOAD_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
APP_SCORERS = scorer_names()
NO_PRUNER = "none"
_ASK, _C2F = AskOptions(), C2FOptions()


def app_strategies() -> tuple[str, ...]:
    """From the registry; tiles-all has in_app=False (it stays on the command line: it can be huge). A
    function, not a constant: looking the flags up imports the strategies, and the CLI imports this module."""
    return tuple(s for s in strategy_names() if get_strategy(s).in_app)


def default_cache_dir() -> Path:
    """Where the bundled example scenes are generated: next to the pyramid cache."""
    root = os.environ.get("LRS_VQA_CACHE_DIR")
    base = Path(root).parent if root else Path.home() / ".cache" / "lrs-vqa"
    return base / "app-examples"


@dataclass(frozen=True)
class ServeConfig:
    """``lrs-vqa serve``: loopback by default, never a share link, one model job at a time."""

    host: str = "127.0.0.1"
    port: int = 7860
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    device: str = "cpu"
    dtype: str = "auto"  # lrs_vqa.models.dtypes.resolve_dtype: bf16 where the hardware runs it natively
    allow_dir: Path | None = None  # server-side paths under this folder may be asked about
    # Remote COG URLs / STAC items in the server-path field: off by default, since the server would fetch
    # whatever URL a visitor types (from its own network and with its own credentials).
    allow_remote: bool = False
    max_upload_mb: int = 2048
    examples_dir: Path = field(default_factory=default_cache_dir)
    queue_size: int = 16  # jobs waiting behind the running one
    # The deep-zoom viewer's decoded-block cache, shared by the images it keeps open (``viewer_images``).
    tile_cache_bytes: int = PyramidOptions().tile_cache_bytes
    viewer_images: int = 4

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("at least one model is needed")
        if self.max_upload_mb < 1:
            raise ValueError(f"the upload limit must be at least 1 MB, got {self.max_upload_mb}")


@dataclass(frozen=True)
class RunSettings:
    """One question's settings, with the ``lrs-vqa ask`` defaults (read from the options dataclasses)."""

    model: str
    strategy: str = _ASK.strategy
    scorer: str = _ASK.scorer
    keep_ratio: float = _C2F.keep_ratio
    max_tiles_per_level: int = _C2F.max_tiles_per_level
    budget_tokens: int = _C2F.budget_tokens
    max_new_tokens: int = _ASK.max_new_tokens
    pruner: str | None = (
        None  # a registered token pruner spec ("fastv", "visionzip+fastv"); None: the loop's own
    )
    budget: str | None = None  # the pruner's budget ("64" tokens, "avg:128", "0.25" ratio)

    def ask_options(self) -> AskOptions:
        return AskOptions(
            strategy=self.strategy,
            scorer=self.scorer,
            max_new_tokens=self.max_new_tokens,
            pruner=self.pruner,
            budget=self.budget,
            c2f=C2FOptions(
                keep_ratio=self.keep_ratio,
                max_tiles_per_level=self.max_tiles_per_level,
                budget_tokens=self.budget_tokens,
            ),
        )
