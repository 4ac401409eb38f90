"""The pruner interface (pruners.md §9, adapted to this engine) and the hook plumbing the baselines share.

A ``Pruner`` is a configured algorithm (a frozen config dataclass) that, given a ``Budget`` and a
``ModelTarget`` (the few facts about the model it needs), produces hook objects implementing the engine's
``VisionHook`` (``after_encoder`` / ``after_projector``) and ``LayerHook`` (before LLM layer k) protocols.
Nothing is installed on the model by ``hooks()``: the caller passes the hooks to ``answer()`` or to
``DecoderLoop.prefill``. ``attach(adapter, budget)`` additionally installs the per-instance PyTorch forward
hooks a pruner may need (VisionZip's encoder keys) and returns an ``Attachment`` whose ``detach()`` removes
them and switches the hook objects off; no class is patched and no global state is kept.

Conventions shared by the in-LLM pruners (stated once here, relied on by every card):

* a stage "at layer K" drops tokens *before* decoder layer K runs, ranking them with attention captured
  *during* layer K-1 (FastV's definition). PyramidDrop and SparseVLM rank with layer K's own projections in
  their code; the engine only taps a layer while it runs, so they use K-1 here (see the report).
* stage layers are given for a 32-layer LLM (LLaVA-1.5-7B, the cards' reference) and scaled to the model's
  depth unless ``depth_ref=None``.
* vision rows are what the engine marks as vision (LLaVA-NeXT/OneVision newline markers included), which is
  also what ``RunStats`` counts, so budgets are met in the engine's own accounting.
"""

from __future__ import annotations

import dataclasses
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch

from lrs_vqa.engine.decoder import LayerView, Selection
from pruning.budget import Budget, Schedule
from pruning.errors import PrunerConfigError

if TYPE_CHECKING:
    from lrs_vqa.engine.hooks import VisionContext
    from lrs_vqa.engine.taps import RowSelector
    from lrs_vqa.engine.tokens import TokenMeta
    from lrs_vqa.models.base import ModelAdapter


class Stage(StrEnum):
    AFTER_ENCODER = "after_encoder"  # encoder features before the projector
    AFTER_PROJECTOR = "after_projector"  # the same tokens in the LLM's embedding space
    LLM_LAYER = "llm_layer"  # before decoder layer k (prefill only)


class Signal(StrEnum):
    LLM_ATTN_LAST_ROW = "llm attention: last prompt token -> vision"
    LLM_ATTN_TEXT_RATERS = "llm attention: instruction (rater) rows -> vision"
    LLM_INPUT_EMBEDDINGS = "llm input embeddings (rater choice)"
    LLM_HIDDEN = "llm hidden states (merging)"
    LLM_TRANSITIONS = "llm token transitions (attention / FFN input -> output)"
    VIT_ATTN_CLS = "encoder attention: CLS row (no CLS: mean received attention)"
    VIT_KEYS = "encoder keys (head mean)"
    VISION_FEATURES = "vision features"
    RANDOM = "none (seeded random)"
    LLM_ATTN_TEXT_ROWS = "llm attention: text rows -> text and vision"
    LLM_HIDDEN_TRAINED = "llm hidden states of vision and question rows (trained modules)"
    VIT_ATTN_ALL = "encoder attention: all rows (received attention, context rows)"
    PIXELS = "pixels (patch grey-level entropy)"


@dataclass(frozen=True)
class ModelTarget:
    """What a pruner needs to know about the model it is attached to."""

    family: str
    llm_layers: int
    vision_layers: int = 0
    feature_layer: int = -1  # index (>= 0) of the encoder attention module whose layer yields the features
    cls_token: bool = False  # the encoder has a CLS token at position 0 (CLIP)
    merge: int = 1  # encoder patches per token side (Qwen-VL's 2x2 patch merger: 2)
    window_order: bool = False  # encoder blocks see patches in window order (Qwen2.5-VL), not raster order

    @staticmethod
    def from_adapter(adapter: ModelAdapter) -> ModelTarget:
        modules = adapter.vision_attention_modules()
        depth = len(modules)
        cfg = adapter.model.config
        feature = depth - 1
        fl = getattr(adapter, "feature_layer", None)
        if isinstance(fl, list):
            fl = fl[-1]  # several concatenated layers: rank with the deepest one
        if isinstance(fl, int):
            # hidden_states[i] is the output of layer i-1; negative indices count from the end.
            feature = depth + fl if fl < 0 else max(fl - 1, 0)
        cls = getattr(cfg.vision_config, "model_type", "") == "clip_vision_model"
        return ModelTarget(
            family=adapter.family,
            llm_layers=len(adapter.decoder.layers),
            vision_layers=depth,
            feature_layer=feature,
            cls_token=cls,
            merge=int(getattr(adapter, "merge", 1)),
            window_order=getattr(cfg.vision_config, "fullatt_block_indexes", None) is not None,
        )


class HookSet(NamedTuple):
    """Unpacks as ``(vision_hooks, llm_hooks)``, the two keyword arguments of ``answer()``."""

    vision: tuple[Any, ...]
    llm: tuple[Any, ...]


class PrunerHook:
    """Base of every hook object: can be switched off by ``Attachment.detach``."""

    active: bool = True

    def deactivate(self) -> None:
        self.active = False


class Attachment:
    """Hooks of one pruner for one model instance; ``detach()`` (or leaving the ``with``) undoes it."""

    def __init__(self, pruner: Pruner, budget: Any, hooks: HookSet, handles: Sequence[Any] = ()) -> None:
        self.pruner = pruner
        self.budget = budget
        self.hooks = hooks
        self._handles = list(handles)
        self.attached = True

    @property
    def vision_hooks(self) -> tuple[Any, ...]:
        return self.hooks.vision

    @property
    def llm_hooks(self) -> tuple[Any, ...]:
        return self.hooks.llm

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for hook in (*self.hooks.vision, *self.hooks.llm):
            hook.deactivate()
        self.attached = False

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def with_overrides(config: Any, overrides: dict[str, Any], who: str) -> Any:
    names = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise PrunerConfigError(f"{who} has no option {unknown[0]!r}; its options are: {', '.join(names)}")
    try:
        return dataclasses.replace(config, **overrides)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, PrunerConfigError):
            raise
        raise PrunerConfigError(f"{who}: {exc}") from None


class Pruner(ABC):
    """A registered token-pruning algorithm with its configuration."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    stages: ClassVar[tuple[Stage, ...]] = ()
    signals: ClassVar[tuple[Signal, ...]] = ()
    Config: ClassVar[type[Any]]

    def __init__(self, config: Any | None = None, **overrides: Any) -> None:
        base = config if config is not None else self.Config()
        self.config = with_overrides(base, overrides, self.name or type(self).__name__)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return dataclasses.asdict(cls.Config())

    def stage_labels(self, n_layers: int = 32) -> tuple[str, ...]:
        """Where this configuration acts, for an ``n_layers``-deep LLM."""
        return tuple(s.value for s in self.stages)

    @abstractmethod
    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        """Per-layer vision-token counts for ``n_vision`` tokens entering an ``n_layers`` LLM (pure)."""

    @abstractmethod
    def hooks(self, budget: Budget | str | int | float, target: ModelTarget) -> HookSet:
        """Fresh hook objects that apply this pruner at ``budget``."""

    def instrument(self, adapter: ModelAdapter, hooks: HookSet) -> list[Any]:
        """Per-instance forward hooks on the model (removable handles); none by default."""
        return []

    def attach(self, adapter: ModelAdapter, budget: Budget | str | int | float) -> Attachment:
        hooks = self.hooks(budget, ModelTarget.from_adapter(adapter))
        return Attachment(self, budget, hooks, self.instrument(adapter, hooks))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


# ------------------------------------------------------------------------------------------ pure helpers


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, in ascending index order; ties go to the lower index."""
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    return torch.sort(order[:k]).values


def map_rows(orig_then: torch.Tensor, orig_now: torch.Tensor) -> torch.Tensor:
    """Positions in an earlier row list (``orig_then``, sorted original indices) of the rows ``orig_now``;
    lets a hook read attention captured before other hooks dropped rows."""
    then = orig_then.to(orig_now.device)
    pos = torch.searchsorted(then, orig_now).clamp(max=len(then) - 1)
    if not bool((then[pos] == orig_now).all()):
        raise PrunerConfigError("attention was captured for rows that no longer line up with the sequence")
    return pos


def selection_keeping(
    view: LayerView, vision_keep: torch.Tensor, hidden: torch.Tensor | None = None
) -> Selection:
    """All non-vision rows plus the vision rows ``vision_keep`` (row indices), sorted."""
    other = torch.nonzero(~view.vision).flatten()
    keep = torch.sort(torch.cat([other, vision_keep.to(other.device)])).values
    return Selection(keep, hidden)


# ------------------------------------------------------------------------------------------ LLM-side hook


class ScheduledLayerHook(PrunerHook):
    """Drops vision rows before the layers of a solved ``Schedule``.

    At a stage layer K it asks (during layer K-1) for the attention of ``query_rows`` and ranks the vision
    rows with ``stage_scores``; at a trim layer (an average budget's remainder) it reuses the last stage's
    scores. The schedule is solved when layer 0 is reached, from the vision rows present then.
    """

    def __init__(self, pruner: Pruner, budget: Budget, n_layers: int, stage_layers: Sequence[int]) -> None:
        self.pruner = pruner
        self.budget = budget
        self.n_layers = n_layers
        self.stage_layers = tuple(stage_layers)
        self.schedule: Schedule | None = None
        self._tap_orig: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (keys', queries' orig)
        self._scores: tuple[torch.Tensor, torch.Tensor] | None = None  # (orig index, score) of the last stage

    # -- to override ------------------------------------------------------------------------------------
    def query_rows(self, view: LayerView) -> torch.Tensor | None:
        """Rows (current indices) whose attention ranks the vision rows; None: no attention needed."""
        return torch.tensor([view.hidden.shape[1] - 1])

    def start(self, view: LayerView) -> None:
        """Called at layer 0 of every prefill, before the schedule is solved."""

    def stage_scores(
        self, view: LayerView, vision: torch.Tensor, attention: torch.Tensor | None
    ) -> torch.Tensor:
        """Scores of the vision rows ``vision``; ``attention``: (queries, len(vision)) head-mean rows."""
        assert attention is not None
        return attention.mean(0)

    def stage_selection(
        self, view: LayerView, vision: torch.Tensor, scores: torch.Tensor, keep: int
    ) -> Selection:
        return selection_keeping(view, vision[top_k(scores, keep)])

    # -- LayerHook protocol -----------------------------------------------------------------------------
    def llm_tap_rows(self, view: LayerView) -> torch.Tensor | None:
        if not self.active or view.layer + 1 not in self.stage_layers:
            return None
        rows = self.query_rows(view)
        if rows is None:
            return None
        rows = rows.to(view.orig_index.device)
        self._tap_orig[view.layer] = (view.orig_index.clone(), view.orig_index[rows].clone())
        return rows

    def before_layer(self, view: LayerView) -> Selection | None:
        if not self.active:
            return None
        if view.layer == 0:
            self._tap_orig.clear()
            self._scores = None
            self.start(view)
            self.schedule = self.pruner.plan(self.budget, int(view.vision.sum()), self.n_layers)
        if self.schedule is None:
            return None
        target = self.schedule.counts[view.layer]
        vision = torch.nonzero(view.vision).flatten()
        if target >= len(vision):
            return None
        if view.layer in self.stage_layers or self._scores is None:
            scores = self.stage_scores(view, vision, self._attention(view, vision))
            self._scores = (view.orig_index[vision].clone(), scores)
            return self.stage_selection(view, vision, scores, target)
        orig, stored = self._scores
        scores = stored[map_rows(orig, view.orig_index[vision]).to(stored.device)]
        return selection_keeping(view, vision[top_k(scores, target)])

    def _attention(self, view: LayerView, vision: torch.Tensor) -> torch.Tensor | None:
        k = view.layer - 1
        if k not in self._tap_orig or k not in view.taps:
            return None
        keys_orig, queries_orig = self._tap_orig[k]
        tap = view.taps[k]
        # Tap rows are indices at layer k; find ours by original index (other hooks may add rows).
        tap_rows_orig = keys_orig[tap.rows.to(keys_orig.device)]
        rows = map_rows(tap_rows_orig, queries_orig)
        cols = map_rows(keys_orig, view.orig_index[vision])
        return tap.probs[rows.to(tap.probs.device)][:, cols.to(tap.probs.device)]


# ------------------------------------------------------------------------------------------ vision-side hook


class BudgetedVisionHook(PrunerHook):
    """Keeps ``budget`` tokens of every encoded group of tiles at one vision-side stage.

    The engine calls vision hooks once per ``encode_tiles`` call (the global strategy: once; tiles-all and
    c2f: once per level), so the budget applies per group. Newline markers that LLaVA-NeXT/OneVision add
    after the hooks (tiles only, not the thumbnail) are not part of the count.
    """

    stage: Stage = Stage.AFTER_PROJECTOR

    def __init__(self, pruner: Pruner, budget: Budget, target: ModelTarget) -> None:
        self.pruner = pruner
        self.budget = budget
        self.target = target
        self.calls: list[tuple[int, int]] = []  # (tokens seen, tokens kept) per encoded group

    def select(self, feats: torch.Tensor, meta: TokenMeta, ctx: VisionContext, keep: int) -> Selection:
        raise NotImplementedError

    def vision_tap_rows(self) -> dict[int, RowSelector]:
        return {}

    def after_encoder(self, feats: torch.Tensor, meta: TokenMeta, ctx: VisionContext) -> Selection | None:
        return self._apply(Stage.AFTER_ENCODER, feats, meta, ctx)

    def after_projector(self, embeds: torch.Tensor, meta: TokenMeta, ctx: VisionContext) -> Selection | None:
        return self._apply(Stage.AFTER_PROJECTOR, embeds, meta, ctx)

    def _apply(
        self, stage: Stage, feats: torch.Tensor, meta: TokenMeta, ctx: VisionContext
    ) -> Selection | None:
        if not self.active or stage is not self.stage:
            return None
        n = int(feats.shape[0])
        keep = self.budget.uniform_count(n)
        self.calls.append((n, keep))
        if keep >= n:
            return None
        return self.select(feats, meta, ctx, keep)


def fingerprints(rows: torch.Tensor) -> list[bytes]:
    """Fingerprint of each row (a 128-bit hash of its fp32 values): lets the LLM stage find a token it saw
    on the vision side whatever happened in between (newline markers inserted, rows dropped by a region
    search)."""
    data = rows.detach().float().cpu().contiguous().numpy()
    return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in data]


def all_rows(q_len: int, kv_len: int) -> torch.Tensor:
    """Row selector for an encoder tap: every query row."""
    return torch.arange(q_len)


def cls_row(q_len: int, kv_len: int) -> torch.Tensor:
    """Row selector for an encoder tap: the CLS query row only."""
    return torch.tensor([0])


def saliency_rows(target: ModelTarget) -> dict[int, RowSelector]:
    """Encoder tap rows for attention saliency at the feature layer: the CLS row, or every row without CLS."""
    return {target.feature_layer: cls_row if target.cls_token else all_rows}


def llm_layers_label(layers: Sequence[int]) -> str:
    """``"llm layers 2, 6, 15"``: where a scheduled pruner acts, for ``stage_labels``."""
    return f"llm layers {', '.join(str(k) for k in layers)}"
