"""VScan (pruners.md §1.7): a global and a local scan with token merging in the vision encoder, then
pruning at a middle LLM layer.

Stage 1, inside the encoder (the engine's in-encoder hook; LLaVA family, CLIP / SigLIP towers), per tile:

* local scan: the patch grid is cut into ``windows``×``windows`` windows (the card's 4×4 windows of 6×6 on
  24×24) and each window keeps its top tokens by the shallow layer's attention (CLIP layer index 5 of 24,
  scaled to the tower's depth);
* global scan: the remaining share of the tokens are the top ones by the feature layer's attention among
  those the local scan did not take;
* attention = the head-mean CLS → patch row; towers without CLS (SigLIP) use the mean attention each patch
  receives over all queries;
* merging: every unselected token joins the selected token it is most cosine-similar to, and a selected
  token becomes (x + Σ members) / (1 + count).

Stage 2, before LLM layer K = 16 of 32: the survivors are ranked by the head-mean attention of the last
prompt token and ``share`` = 1/3 of them are kept. One budget covers both stages (``pruning.two_stage``):
VScan's rule, e.g. avg 64 → 96 tokens into the LLM and 32 after layer 16.

Deviations:

* The scans and the merge act on the hidden states *entering* the feature layer (the last encoder layer
  that runs), where the in-encoder hook sits; the feature layer then runs on the kept, merged tokens only.
  The card selects and merges on the projected outputs of the full encoder. The feature layer's attention
  (the global scan's signal) is the one computed from those entering states, as in the card.
* Both scans' attention rows are recomputed from the layer's input with the layer's own norm and Q/K
  projections (exactly what the layer computes), so ``attach()`` is needed to reach the modules.
* A window's quota is ⌊local / windows²⌋; the local tokens left over go to the best remaining tokens by the
  shallow attention, wherever they are. Per-tile keep counts are equal (the encoder batch stays
  rectangular): ⌈n1 / tiles⌉, capped at the patches per tile, so a group may keep a few more tokens than n1
  and padding-only patches can be among them (the engine drops those afterwards); the LLM stage still meets
  the budget exactly.
* Stage 2 ranks with layer K−1's attention (FastV's convention in this engine), not layer K's recomputed Q/K.
* Qwen-VL (no in-encoder hook) is refused with a ``PrunerConfigError``.
* Kept tokens keep their original RoPE positions by default; the released code renumbers them compactly
  (card §9.4): ``positions=compact`` does that, to reproduce the paper's numbers.

Encoder cost (``drop_at``, issue 15): the published design runs the whole encoder on every patch (the scans
read attention at layer 5 *and* at the feature layer), so it cannot make the encoder cheaper, and on a CPU
the encoder costs more than the pruned LLM prefill. ``drop_at=local`` is our extension, not the card's:
select and merge before the local-scan layer itself, so that layer and every later one (CLIP-L: layers 5..22
of 0..22, 18 of 23) run on the kept tokens only. The feature layer's attention does not exist yet there, so
the global scan ranks by the local-scan layer's attention as well (a global top-k over the tile instead of
per-window quotas). ``drop_at=feature`` (default) is the behaviour described above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lrs_vqa.engine import POSITION_MODES
from lrs_vqa.engine.hooks import EncoderSelection
from pruning.base import HookSet, ModelTarget, Pruner, PrunerHook, Signal, Stage, top_k
from pruning.budget import Budget, Schedule, round_half_up
from pruning.errors import PrunerConfigError
from pruning.registry import register
from pruning.scores import QUERIES
from pruning.two_stage import SecondStageHook, check_share, first_stage_keep, stage_layer, two_stage_plan

if TYPE_CHECKING:
    from lrs_vqa.engine.decoder import Selection
    from lrs_vqa.engine.hooks import VisionContext
    from lrs_vqa.engine.taps import RowSelector
    from lrs_vqa.engine.tokens import TokenMeta
    from lrs_vqa.models.base import ModelAdapter

LLAVA_FAMILIES = ("llava",)
DROP_POINTS = ("feature", "local")  # where stage 1 selects and merges inside the encoder

# ------------------------------------------------------------------------------------------ pure


def window_ids(grid: int, windows: int) -> torch.Tensor:
    """(grid²,) window of each raster-order patch of a grid×grid map cut into windows×windows windows."""
    w = min(windows, grid)
    rows = torch.arange(grid) * w // grid
    return (rows[:, None] * w + rows[None, :]).flatten()


def vscan_select(
    shallow: torch.Tensor, deep: torch.Tensor, window: torch.Tensor, keep: int, local_share: float
) -> torch.Tensor:
    """Sorted indices of ``keep`` tokens: round(keep·local_share) by the local scan (⌊local / windows⌋ per
    window by ``shallow``, the rest the best remaining by ``shallow``), the others the best remaining by
    ``deep`` (global scan)."""
    n = shallow.shape[0]
    keep = min(keep, n)
    local = min(round_half_up(keep * local_share), keep)
    taken = torch.zeros(n, dtype=torch.bool)
    wins = torch.unique(window)
    quota = local // len(wins) if len(wins) else 0
    for w in wins.tolist():
        members = torch.nonzero(window == w).flatten()
        taken[members[top_k(shallow[members], min(quota, len(members)))]] = True
    left = local - int(taken.sum())
    if left > 0:
        rest = torch.nonzero(~taken).flatten()
        taken[rest[top_k(shallow[rest], left)]] = True
    rest = torch.nonzero(~taken).flatten()
    taken[rest[top_k(deep[rest], keep - int(taken.sum()))]] = True
    return torch.nonzero(taken).flatten()


def merge_unselected(states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(len(keep), d): every unselected token joins its most cosine-similar kept token (first on ties);
    a kept token becomes (x + Σ members) / (1 + count)."""
    n = states.shape[0]
    keep = keep.to(states.device)
    mask = torch.ones(n, dtype=torch.bool, device=states.device)
    mask[keep] = False
    others = torch.nonzero(mask).flatten()
    kept = states[keep].float()
    if others.numel() == 0:
        return kept.to(states.dtype)
    unit = torch.nn.functional.normalize(states.float(), dim=-1)
    assign = torch.argmax(unit[others] @ unit[keep].T, dim=-1)
    sums = kept.clone().index_add_(0, assign, states[others].float())
    counts = 1 + torch.bincount(assign, minlength=len(keep)).float()
    return (sums / counts[:, None]).to(states.dtype)


def layer_attention(
    layer: torch.nn.Module, hidden: torch.Tensor, cls: bool, chunk: int = 256
) -> torch.Tensor:
    """(tiles, patches) head-mean attention of a CLIP/SigLIP encoder layer computed from its input states
    (tiles, [CLS +] patches, d): the CLS row over the patches, or without CLS the mean over all queries."""
    attn = layer.self_attn
    x = layer.layer_norm1(hidden)
    heads = int(attn.num_heads)
    b, s, _ = x.shape
    k = attn.k_proj(x).reshape(b, s, heads, -1).transpose(1, 2).float()
    scale = float(getattr(attn, "scale", k.shape[-1] ** -0.5))

    def rows_attention(rows: torch.Tensor) -> torch.Tensor:  # (tiles, rows, s), head mean
        q = attn.q_proj(rows).reshape(b, rows.shape[1], heads, -1).transpose(1, 2).float()
        return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1).mean(1)

    if cls:
        return rows_attention(x[:, :1])[:, 0, 1:]
    # Mean over all queries, in chunks of queries so that memory stays O(chunk · s) (pruners.md §9.3).
    total = torch.zeros(b, s, dtype=torch.float32, device=x.device)
    for start in range(0, s, chunk):
        total += rows_attention(x[:, start : start + chunk]).sum(1)
    return total / s


# ------------------------------------------------------------------------------------------ pruner


@dataclass(frozen=True)
class VScanConfig:
    local_layer: int = 5  # encoder layer (0-based) of the local scan, for a 24-layer tower
    vision_depth_ref: int | None = 24
    windows: int = 4  # windows per grid side for the local scan
    local_share: float = 0.5  # share of the stage-1 tokens chosen by the local scan
    merge: bool = True
    layer: int = 16  # stage 2: before this layer of a 32-layer LLM
    depth_ref: int | None = 32
    share: float = 1 / 3  # stage 2 keeps this share of stage 1's survivors
    query: str = "last"
    # RoPE positions after stage 2: "original" (the engine's default) or "compact" (renumbered 0..n−1, as
    # the released code does: set it to reproduce the paper's numbers, card §9.4)
    positions: str = "original"
    # stage 1 acts before the feature layer ("feature", the card's scans) or before the local-scan layer
    # ("local": later encoder layers run on the kept tokens; both scans read that layer's attention)
    drop_at: str = "feature"

    def __post_init__(self) -> None:
        if self.drop_at not in DROP_POINTS:
            raise PrunerConfigError(
                f"vscan drop_at must be one of {', '.join(DROP_POINTS)}, got {self.drop_at!r}"
            )
        if self.positions not in POSITION_MODES:
            raise PrunerConfigError(f"vscan positions must be original or compact, got {self.positions!r}")
        if not isinstance(self.local_layer, int) or self.local_layer < 0:
            raise PrunerConfigError(f"vscan local_layer must be an integer >= 0, got {self.local_layer!r}")
        if not isinstance(self.windows, int) or self.windows < 1:
            raise PrunerConfigError(f"vscan windows must be an integer >= 1, got {self.windows!r}")
        if not 0 <= self.local_share <= 1:
            raise PrunerConfigError(f"vscan local_share must be within 0..1, got {self.local_share}")
        if not isinstance(self.layer, int) or self.layer < 1:
            raise PrunerConfigError(f"vscan layer must be an integer >= 1, got {self.layer!r}")
        check_share(self.share, "vscan")
        if self.query not in QUERIES:
            raise PrunerConfigError(f"vscan query must be one of {', '.join(QUERIES)}, got {self.query!r}")


class VScanEncoderHook(PrunerHook):
    """The in-encoder stage: remembers the shallow attention, selects and merges before the feature layer."""

    def __init__(
        self,
        pruner: Pruner,
        budget: Budget,
        target: ModelTarget,
        layers: tuple[int, int],
        llm_layer: int,
        records: list[tuple[int, int]],
    ) -> None:
        self.pruner = pruner
        self.budget = budget
        self.target = target
        self.shallow_layer, self.deep_layer = layers
        # the layer before which stage 1 selects and merges
        self.drop_layer = self.shallow_layer if pruner.config.drop_at == "local" else self.deep_layer
        self.llm_layer = llm_layer
        self.records = records
        self.calls: list[tuple[int, int]] = []  # (patches seen, kept) per encoded group
        self.encoder_layers: list[torch.nn.Module] | None = None  # set by attach
        self._shallow: torch.Tensor | None = None

    # -- VisionHook protocol: nothing after the encoder -----------------------------------------------
    def vision_tap_rows(self) -> dict[int, RowSelector]:
        return {}

    def after_encoder(self, feats: torch.Tensor, meta: TokenMeta, ctx: VisionContext) -> Selection | None:
        return None

    def after_projector(self, embeds: torch.Tensor, meta: TokenMeta, ctx: VisionContext) -> Selection | None:
        return None

    # -- in-encoder ------------------------------------------------------------------------------------
    def encoder_drop_layers(self) -> tuple[int, ...]:
        if not self.active:
            return ()
        return tuple(sorted({self.shallow_layer, self.drop_layer}))

    def _attention(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        if self.encoder_layers is None:
            raise PrunerConfigError("vscan reads the encoder's layers: use attach(adapter, budget)")
        return layer_attention(self.encoder_layers[layer], hidden, self.target.cls_token).cpu()

    def inside_encoder(
        self, layer: int, hidden: torch.Tensor, grid_index: torch.Tensor
    ) -> EncoderSelection | None:
        if not self.active:
            return None
        if layer == self.shallow_layer:
            self._shallow = self._attention(layer, hidden)
        if layer != self.drop_layer:
            return None
        shallow, self._shallow = self._shallow, None
        # drop_at=local: the global scan reads the same (local-scan) layer, the deepest one run so far
        deep = (
            shallow if shallow is not None and layer == self.shallow_layer else self._attention(layer, hidden)
        )
        if shallow is None:
            shallow = deep
        tiles, n = grid_index.shape
        cfg = self.pruner.config
        n1 = first_stage_keep(self.budget, tiles * n, self.target.llm_layers, self.llm_layer, cfg.share)
        per_tile = min(n, math.ceil(n1 / tiles))
        self.calls.append((tiles * n, tiles * per_tile))
        self.records.append((tiles * n, tiles * per_tile))
        if per_tile >= n:
            return None
        grid = math.isqrt(n)
        if grid * grid != n:
            raise PrunerConfigError(f"vscan needs a square patch grid, got {n} patches per tile")
        window = window_ids(grid, cfg.windows)[grid_index.cpu()]
        cls = 1 if self.target.cls_token else 0
        keeps, merged = [], []
        for t in range(tiles):
            keep = vscan_select(shallow[t], deep[t], window[t], per_tile, cfg.local_share)
            keeps.append(keep)
            if cfg.merge:
                merged.append(merge_unselected(hidden[t, cls:], keep.to(hidden.device)))
        keep_all = torch.stack(keeps)
        return EncoderSelection(keep_all, torch.stack(merged) if cfg.merge else None)


@register("vscan")
class VScan(Pruner):
    paper = (
        "Zhang et al., 'VScan: Rethinking Visual Token Reduction for Efficient Large Vision-Language "
        "Models', TMLR 2026, arXiv:2505.22654"
    )
    stages = (Stage.AFTER_ENCODER, Stage.LLM_LAYER)
    signals = (Signal.VIT_ATTN_CLS, Signal.VISION_FEATURES, Signal.LLM_ATTN_LAST_ROW)
    Config = VScanConfig

    def layers(self, n_layers: int) -> tuple[int, ...]:
        return (stage_layer(self.config.layer, n_layers, self.config.depth_ref, "vscan"),)

    def encoder_layers(self, target: ModelTarget) -> tuple[int, int]:
        """(local-scan layer, feature layer) as encoder layer indices."""
        deep = target.feature_layer
        cfg = self.config
        ref = cfg.vision_depth_ref
        depth = target.vision_layers or deep + 1
        shallow = cfg.local_layer if ref is None else round_half_up(cfg.local_layer * depth / ref)
        return min(shallow, deep), deep

    def stage_labels(self, n_layers: int = 32) -> tuple[str, ...]:
        where = "its feature layer" if self.config.drop_at == "feature" else "the local-scan layer"
        return (
            f"inside the encoder, before {where} (local scan at layer {self.config.local_layer} "
            "of 24, global scan, merge)",
            f"llm layer {self.layers(n_layers)[0]} (last-token attention, keeps {self.config.share:.3g})",
        )

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        """Both stages for ``n_vision`` encoder tokens (one tile, no padding or newline markers)."""
        return two_stage_plan(
            Budget.parse(budget), n_vision, n_layers, self.layers(n_layers)[0], self.config.share
        )

    def hooks(self, budget: Budget | str | int | float, target: ModelTarget) -> HookSet:
        if target.family not in LLAVA_FAMILIES:
            raise PrunerConfigError(
                f"vscan merges tokens inside the vision encoder, which the engine supports for the LLaVA "
                f"family (CLIP/SigLIP towers) only, not {target.family}"
            )
        budget = Budget.parse(budget)
        layer = self.layers(target.llm_layers)[0]
        records: list[tuple[int, int]] = []
        vision = VScanEncoderHook(self, budget, target, self.encoder_layers(target), layer, records)
        llm = SecondStageHook(self, budget, target.llm_layers, layer, records)
        llm.positions = self.config.positions  # read by the decoder loop
        return HookSet((vision,), (llm,))

    def instrument(self, adapter: ModelAdapter, hooks: HookSet) -> list[Any]:
        """Hands the encoder layers to the in-encoder hook (nothing is installed on the model)."""
        owners = {
            id(module.self_attn): module
            for module in adapter.model.modules()
            if hasattr(module, "layer_norm1") and hasattr(module, "self_attn")
        }
        try:
            layers = [owners[id(m)] for m in adapter.vision_attention_modules()]
        except KeyError:
            raise PrunerConfigError("vscan could not find the encoder layers of this model") from None
        for hook in hooks.vision:
            if isinstance(hook, VScanEncoderHook):
                hook.encoder_layers = layers
        return []
