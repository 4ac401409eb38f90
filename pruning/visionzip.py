"""VisionZip (pruners.md §2.4): text-agnostic selection right after the vision encoder.

* Dominant tokens: the D patches the CLS token attends to most at the feature layer (head mean). Encoders
  without CLS (SigLIP, Qwen-ViT) use the mean attention each patch *receives* (pruners.md §4), averaged over
  Qwen's 2x2 merge unit.
* Contextual tokens: of the remaining tokens, C evenly spaced ones (step = len // C) are targets; every other
  remaining token joins its most similar target by cosine of the feature layer's head-mean keys, and a
  target becomes target + mean(its members).

Budget k = D + C with C = round(k · 10/64) (the card's 54+10 / 108+20 / 162+30).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lrs_vqa.engine.decoder import Selection
from pruning.base import (
    BudgetedVisionHook,
    HookSet,
    ModelTarget,
    Pruner,
    Signal,
    Stage,
    saliency_rows,
    top_k,
)
from pruning.budget import Budget, Schedule, round_half_up, uniform_schedule
from pruning.errors import PrunerConfigError
from pruning.registry import register
from pruning.scores import cls_dominance, received_dominance

if TYPE_CHECKING:
    from lrs_vqa.engine.hooks import VisionContext
    from lrs_vqa.engine.taps import RowSelector
    from lrs_vqa.engine.tokens import TokenMeta
    from lrs_vqa.models.base import ModelAdapter

METRICS = ("keys", "features")

# ------------------------------------------------------------------------------------------ pure


def contextual_count(keep: int, share: float) -> int:
    """C of a k = D + C budget, leaving at least one dominant token."""
    return min(max(round_half_up(keep * share), 0), keep - 1)


def visionzip_select(
    dominance: torch.Tensor, metric: torch.Tensor, feats: torch.Tensor, dominant: int, contextual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted kept indices, their features): ``dominant`` top tokens unchanged, ``contextual`` merged ones
    placed at their target's index."""
    n = feats.shape[0]
    dom = top_k(dominance, dominant)
    rest_mask = torch.ones(n, dtype=torch.bool)
    rest_mask[dom] = False
    rest = torch.nonzero(rest_mask).flatten()
    if contextual == 0 or rest.numel() == 0:
        return dom, feats[dom.to(feats.device)]
    step = max(1, len(rest) // contextual)
    pick = torch.arange(0, len(rest), step)[:contextual]
    targets = rest[pick]
    others_mask = torch.ones(len(rest), dtype=torch.bool)
    others_mask[pick] = False
    others = rest[others_mask]
    merged = feats[targets.to(feats.device)].clone()
    if others.numel():
        unit = torch.nn.functional.normalize(metric.float(), dim=-1)
        sim = unit[others] @ unit[targets].T  # (others, targets)
        assign = torch.argmax(sim, dim=-1)  # first target on ties
        sums = torch.zeros(len(targets), feats.shape[1], dtype=torch.float32)
        sums.index_add_(0, assign, feats[others.to(feats.device)].float().cpu())
        counts = torch.bincount(assign, minlength=len(targets))
        has = counts > 0
        merged[has.to(feats.device)] += (sums[has] / counts[has, None]).to(merged)
    keep = torch.cat([dom, targets])
    order = torch.argsort(keep)
    new = torch.cat([feats[dom.to(feats.device)], merged])[order.to(feats.device)]
    return keep[order], new


# ------------------------------------------------------------------------------------------ pruner


@dataclass(frozen=True)
class VisionZipConfig:
    contextual_share: float = 10 / 64  # C / (D + C)
    metric: str = "keys"  # similarity for the contextual merge: encoder keys, or the features themselves

    def __post_init__(self) -> None:
        if not 0 <= self.contextual_share < 1:
            raise PrunerConfigError(
                f"visionzip contextual_share must be in [0, 1), got {self.contextual_share}"
            )
        if self.metric not in METRICS:
            raise PrunerConfigError(
                f"visionzip metric must be one of {', '.join(METRICS)}, got {self.metric!r}"
            )


class VisionZipHook(BudgetedVisionHook):
    stage = Stage.AFTER_ENCODER

    def __init__(self, pruner: Pruner, budget: Budget, target: ModelTarget) -> None:
        super().__init__(pruner, budget, target)
        self.keys: torch.Tensor | None = None  # (tiles, tokens, head_dim) captured during this encode
        self._armed = False

    def vision_tap_rows(self) -> dict[int, RowSelector]:
        if not self.active:
            return {}
        # Called when an encode starts: from here until after_encoder, captured keys belong to it.
        self.keys, self._armed = None, True
        return saliency_rows(self.target)

    def capture_keys(self, keys: torch.Tensor) -> None:
        if self._armed and self.active:
            self.keys = keys.detach()

    def _metric(self, feats: torch.Tensor, ctx: VisionContext, tiles: int) -> torch.Tensor:
        keys, self.keys, self._armed = self.keys, None, False
        if keys is not None and keys.dim() == 2 and keys.shape[0] % tiles == 0:
            keys = keys.reshape(tiles, -1, keys.shape[-1])  # Qwen-VL: all tiles' tokens in one sequence
        if self.pruner.config.metric == "keys" and keys is not None and keys.dim() == 3:
            cls = 1 if self.target.cls_token else 0
            tiles, tokens = keys.shape[0], keys.shape[1] - cls
            # Keys line up with the grid unless an in-encoder drop shortened the sequence.
            if int(ctx.tile_index.max()) < tiles and int(ctx.token_index.max()) < tokens:
                return keys[ctx.tile_index, cls + ctx.token_index]
        return feats

    def select(self, feats: torch.Tensor, meta: TokenMeta, ctx: VisionContext, keep: int) -> Selection:
        layer = self.target.feature_layer
        if layer not in ctx.taps:
            raise PrunerConfigError("visionzip found no encoder attention for this group of tiles")
        att = ctx.taps[layer].cpu()
        tile, token = ctx.tile_index.cpu(), ctx.token_index.cpu()
        if self.target.cls_token:
            dominance = cls_dominance(att, tile, token)
        else:
            dominance = received_dominance(att, tile, token, self.target.merge)
        metric = self._metric(feats, ctx, att.shape[0]).cpu()
        contextual = contextual_count(keep, self.pruner.config.contextual_share)
        index, new = visionzip_select(dominance, metric, feats, keep - contextual, contextual)
        return Selection(index, new)


@register("visionzip")
class VisionZip(Pruner):
    paper = (
        "Yang et al., 'VisionZip: Longer is Better but Not Necessary in Vision Language Models', CVPR 2025, "
        "arXiv:2412.04467"
    )
    stages = (Stage.AFTER_ENCODER,)
    signals = (Signal.VIT_ATTN_CLS, Signal.VIT_KEYS)
    Config = VisionZipConfig

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        return uniform_schedule(n_vision, Budget.parse(budget).uniform_count(n_vision), n_layers)

    def hooks(self, budget: Budget | str | int | float, target: ModelTarget) -> HookSet:
        if target.window_order:
            # Its encoder taps and keys come in window order; mapping them back to tokens is not done yet.
            raise PrunerConfigError("visionzip does not support Qwen2.5-VL's windowed encoder yet")
        return HookSet((VisionZipHook(self, Budget.parse(budget), target),), ())

    def instrument(self, adapter: ModelAdapter, hooks: HookSet) -> list[Any]:
        """A forward hook on the feature layer's key projection (removed by ``detach``)."""
        ours = [h for h in hooks.vision if isinstance(h, VisionZipHook)]
        if not ours or self.config.metric != "keys":
            return []
        target = ours[0].target
        attn = adapter.vision_attention_modules()[target.feature_layer]
        heads = int(getattr(attn, "num_heads", 1))
        if hasattr(attn, "k_proj"):  # CLIP / SigLIP: (tiles, seq, heads * head_dim)

            def on_keys(module: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
                keys = out.reshape(*out.shape[:-1], heads, -1).mean(-2)
                for hook in ours:
                    hook.capture_keys(keys)

            return [attn.k_proj.register_forward_hook(on_keys)]
        if hasattr(attn, "qkv"):  # Qwen-VL: (patches of all tiles, 3 * heads * head_dim), tiles equal-sized

            def on_qkv(module: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
                keys = out.reshape(out.shape[0], 3, heads, -1)[:, 1].mean(1)  # (patches, head_dim)
                group = target.merge * target.merge  # a token's patches are consecutive
                per_token = keys.reshape(-1, group, keys.shape[-1]).mean(1)  # (tokens of all tiles, head_dim)
                for hook in ours:
                    hook.capture_keys(per_token)

            return [attn.qkv.register_forward_hook(on_qkv)]
        return []
