"""What one question is asked with: the options every entry point (``ask``, ``eval``, ``batch``, the web demo,
the notebook) builds. The defaults are declared here only; the CLI and the app read them from these
dataclasses. (Light on purpose: the CLI imports it to build its options.)"""

from __future__ import annotations

from dataclasses import dataclass, field

from lrs_vqa.c2f_modes import mode_names
from lrs_vqa.engine import POSITION_MODES
from pyramid.dip import PyramidOptions
from pyramid.errors import LrsVqaError

DEFAULT_MODEL = "world"  # the shipped synthetic-world model; pass a hub id or folder for real imagery


class C2FError(LrsVqaError, ValueError):
    """Bad coarse-to-fine settings; one-line message."""


@dataclass(frozen=True)
class C2FOptions:
    mode: str = "default"
    keep_ratio: float = 0.25  # the final prune keeps at most this share of the last level's tokens
    focus_mass: float = 0.6  # focus tokens hold this share of the level's score mass
    max_tiles_per_level: int = 16
    min_focus_share: float = 0.5  # a capped zoom needs this share of the view's score mass ...
    # ... and this share of the mass the chosen tiles could hold beyond their area share (0: a uniform map,
    # 1: all of it), so the test stays passable when the cap covers most of the view (16 of 25 tiles)
    min_gain: float = 0.4
    budget_tokens: int = 4096  # vision tokens into the LLM, thumbnail and newline markers included
    keep_coarse: bool = False  # also keep the coarse level's focus tokens as context
    # Score the thumbnail first: where its focus lands on at most ``jump_tiles`` tiles of a level that pass
    # the concentration test, start at the level needing the fewest reads to native, with those tiles
    # (the coarse level is never encoded whole); otherwise read the coarse level as usual.
    thumbnail_first: bool = False
    jump_tiles: int = 4

    def __post_init__(self) -> None:
        if self.mode not in mode_names():
            raise C2FError(f"unknown mode {self.mode!r}; choose one of {', '.join(mode_names())}")
        if not 0 < self.keep_ratio <= 1:
            raise C2FError(f"keep ratio must be in (0, 1], got {self.keep_ratio}")
        if not 0 < self.focus_mass <= 1:
            raise C2FError(f"focus mass must be in (0, 1], got {self.focus_mass}")
        if self.max_tiles_per_level < 1:
            raise C2FError(f"max tiles per level must be at least 1, got {self.max_tiles_per_level}")
        if not 0 <= self.min_focus_share <= 1 or not 0 <= self.min_gain <= 1:
            raise C2FError("min focus share and min gain must be in [0, 1]")
        if self.budget_tokens < 1:
            raise C2FError(f"token budget must be at least 1, got {self.budget_tokens}")
        if self.jump_tiles < 1:
            raise C2FError(f"jump tiles must be at least 1, got {self.jump_tiles}")


@dataclass(frozen=True)
class AskOptions:
    strategy: str = "c2f"
    level: int | None = None  # tiles-all: pyramid level index (negative from native); default coarse
    max_tiles: int | None = None  # tiles-all: the finest level with at most this many tiles (anyres-pN)
    max_vision_tokens: int = 16384  # tiles-all and region refuse above this
    region: tuple[tuple[int, int, int, int], ...] = ()  # region: level-0 x0, y0, x1, y1 boxes
    max_new_tokens: int = 32
    pyramid: PyramidOptions = field(default_factory=PyramidOptions)
    c2f: C2FOptions = field(default_factory=C2FOptions)
    # c2f: "auto" (the model's trained RFM if it ships one, else attention) | "attention" (training-free, any
    # model) | "rfm" (trained RFM weights)
    scorer: str = "auto"
    scorer_layers: int | None = None  # attention scorer: LLM layers to run (None: a quarter of them)
    rfm: str | None = None  # scorer "rfm": a `lrs-vqa train-rfm` folder (default: the checkpoint's own)
    # A registered token pruner (``pruning.registry``: "fastv", "visionzip+fastv", "fastv:layer=3") and its
    # budget ("64" tokens into the LLM, "avg:128" over layers, "0.25" ratio; a chain takes "192+0.5"). With
    # c2f it compresses the final tiles' tokens in place of the loop's own final prune.
    pruner: str | None = None
    budget: str | None = None
    # RoPE positions of the rows a pruner keeps: "original" (each keeps its own) or "compact" (renumbered)
    positions: str = "original"

    def __post_init__(self) -> None:
        if self.positions not in POSITION_MODES:
            raise C2FError(f"--positions must be original or compact, got {self.positions!r}")
        # The released one-hop loop has its own final prune and encodes without a pruner's hooks, so a
        # budget would silently not be honoured (seen: visionzip at 16 sent 24 tokens): refuse instead.
        if self.pruner and self.strategy == "c2f" and self.c2f.mode == "paper":
            raise C2FError(
                "--mode paper runs the released loop with its own final prune and takes no --pruner; "
                "use --mode default with a pruner"
            )
