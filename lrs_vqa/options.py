"""What one question is asked with: the options every entry point (``ask``, ``eval``, ``batch``, the web demo,
the notebook) builds. The defaults are declared here and in ``C2FOptions`` only; the CLI and the app read
them from these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

from lrs_vqa.c2f import C2FOptions
from pyramid.dip import PyramidOptions

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"


@dataclass(frozen=True)
class AskOptions:
    strategy: str = "c2f"
    level: int | None = None  # tiles-all: pyramid level index (negative from native); default coarse
    max_tiles: int | None = None  # tiles-all: the finest level with at most this many tiles (anyres-pN)
    max_vision_tokens: int = 16384  # tiles-all refuses above this
    max_new_tokens: int = 32
    pyramid: PyramidOptions = field(default_factory=PyramidOptions)
    c2f: C2FOptions = field(default_factory=C2FOptions)
    scorer: str = "attention"  # c2f: "attention" (training-free, any model) | "rfm" (trained RFM weights)
    scorer_layers: int | None = None  # attention scorer: LLM layers to run (None: a quarter of them)
    # A registered token pruner (``pruning.registry``: "fastv", "visionzip+fastv", "fastv:layer=3") and its
    # budget ("64" tokens into the LLM, "avg:128" over layers, "0.25" ratio; a chain takes "192+0.5"). With
    # c2f it compresses the final tiles' tokens in place of the loop's own final prune.
    pruner: str | None = None
    budget: str | None = None
