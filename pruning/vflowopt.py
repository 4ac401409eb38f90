"""VFlowOpt (pruners.md §1.6): an importance map from the vision encoder (context relevance + patch entropy)
drives a vision-side pruning with recycling and a progressive pruning inside the LLM; its hyper-parameters
are calibrated offline by minimising the last-token discrepancy to the unpruned model.

* Importance at encoder layer ``vit_layer`` (default: the feature layer), from head-mean attention over the
  patch tokens (a CLIP CLS row/column is left out): received attention r_j = mean over queries; the
  *context* tokens K = {j : r_j > t · mean(r)} (the most-received token if none is); context relevance
  I_j = mean over i ∈ K of A[i, j]; importance = I + α · softmax(patch entropy), the entropy being the
  Shannon entropy (bits) of a 256-bin grey-level histogram of the token's pixels. Qwen-VL's 2×2 merged
  tokens average their patches' relevance.
* Vision stage (after the projector), keeping ``into`` tokens: the lowest-importance tokens are grouped by
  ``cell``×``cell`` cells of the token grid (per tile); each group is merged into its most important member
  (importance-weighted mean of the group's features) and the rest of the group is dropped ("recycling").
* LLM stage: before layers 9 and 18 of 28 (scaled) the survivors are ranked by the same importance map and
  fractions ``r1`` then ``r2`` are kept (no LLM attention is needed).
* ``calibrate`` (``lrs-vqa pruner-tool vflowopt calibrate``) tries settings of (t, cell, alpha, r1, r2) on
  sample images and keeps the one with the lowest mean ``1 − cos`` between the last layer's last-token
  hidden state with and without pruning; ``vflowopt:calibration=PATH`` loads the chosen setting.

Budget: the whole pruner meets one budget in the LLM's accounting. A tokens/ratio budget k is the count
after the last LLM stage; the vision stage keeps ``into = round(k / (r1 · r2))`` (at most all tokens) and
the LLM stages solve the rest exactly. An average budget picks ``into`` from the continuous average of the
profile (1, r1, r1·r2) and the LLM stages meet the average exactly.

Deviations from the card (see the report): ranking uses the engine's feature layer by default instead of
SigLIP layer 25; the vision stage always recycles (the card's single-image path does a plain top-k); the
number of merged groups is adjusted (more low tokens, or a doubled cell size if a cell grid cannot reach
it) so that the budget is met exactly; AnyRes redistribution over sub-images is not done (the map is
computed per tile); calibration is a seeded grid/random search rather than Gaussian-process Bayesian
optimisation, on ``1 − cos`` (the card maximises the cosine sum: the same optimum); patch entropy is
computed from the pixels the encoder receives (captured by a pre-hook, so alpha > 0 needs ``attach()``);
the LLM stage needs this pruner's own vision stage in the same run; LLM vision rows it did not score
(another encoded group such as c2f's thumbnail, newline markers) are found by embedding fingerprint and
rank last.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lrs_vqa.engine.decoder import LayerView, PrefillInputs, Selection
from pruning.base import (
    HookSet,
    ModelTarget,
    Pruner,
    PrunerHook,
    Signal,
    Stage,
    all_rows,
    fingerprints,
    llm_layers_label,
    map_rows,
    selection_keeping,
    top_k,
    with_overrides,
)
from pruning.budget import (
    Budget,
    BudgetKind,
    Schedule,
    round_half_up,
    scale_layers,
    solve_schedule,
)
from pruning.errors import BudgetTooLargeError, PrunerConfigError
from pruning.registry import register

if TYPE_CHECKING:
    from lrs_vqa.engine.hooks import VisionContext
    from lrs_vqa.engine.taps import RowSelector
    from lrs_vqa.engine.tokens import TokenMeta
    from lrs_vqa.models.base import ModelAdapter

CALIBRATION_FORMAT = "vflowopt-calibration/1"
TUNABLE = ("t", "cell", "alpha", "r1", "r2")

# ------------------------------------------------------------------------------------------ pure scoring


def context_relevance(att: torch.Tensor, t: float) -> torch.Tensor:
    """(N,) relevance from an (N, N) attention map (rows: queries): the mean attention the context tokens
    {j : received_j > t · mean(received)} pay to each token; the most-received token if none passes."""
    att = att.float()
    received = att.mean(0)
    context = received > t * received.mean()
    if not bool(context.any()):
        context = torch.zeros_like(context)
        context[int(torch.argmax(received))] = True
    return att[context].mean(0)


def grey_entropy(grey: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """(P,) Shannon entropy in bits of the ``bins``-bin histogram of each row of grey levels in [0, 255]."""
    levels = grey.float().clamp(0, 255).mul(bins / 256).floor().clamp(max=bins - 1).long()
    counts = torch.zeros(grey.shape[0], bins)
    counts.scatter_add_(1, levels.cpu(), torch.ones(levels.shape))
    p = counts / counts.sum(1, keepdim=True)
    return -(p * torch.log2(p.clamp(min=1e-30))).sum(1)


def importance(relevance: torch.Tensor, entropy: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """relevance + α · softmax(entropy) (the entropy term only where α != 0)."""
    if alpha == 0 or entropy is None:
        return relevance.float()
    return relevance.float() + alpha * torch.softmax(entropy.float(), dim=0)


def grid_cells(tile: torch.Tensor, token: torch.Tensor, grid_w: int, cell: float) -> torch.Tensor:
    """Cell id of each token: (tile, ⌊row / cell⌋, ⌊col / cell⌋) of its position in its tile's grid."""
    row = torch.div(token, grid_w, rounding_mode="floor").float()
    col = (token % grid_w).float()
    r, c = torch.floor(row / cell).long(), torch.floor(col / cell).long()
    width = math.ceil(grid_w / cell) + 1
    return (tile.long() * (width * width + 1) + r * width + c).long()


def recycle_merge(
    imp: torch.Tensor, feats: torch.Tensor, cells: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Keep exactly ``keep`` tokens: the fewest lowest-importance tokens (at least ``N − keep``) whose
    cell groups bring the count to ``keep`` are merged per cell into the group's most important member
    (importance-weighted mean; a plain mean if the weights sum to 0). Returns (sorted kept indices, their
    features) or None when no number of low tokens reaches ``keep`` with these cells."""
    n = imp.shape[0]
    if keep >= n:
        return torch.arange(n), feats
    low_order = torch.sort(imp.float(), stable=True).indices  # ascending; ties: lower index first
    for size in range(n - keep, n + 1):
        low = low_order[:size]
        groups = torch.unique(cells[low])
        if n - size + len(groups) == keep:
            break
    else:
        return None
    is_low = torch.zeros(n, dtype=torch.bool)
    is_low[low] = True
    new = feats.clone()
    reps = []
    for g in groups.tolist():
        members = low[cells[low] == g]
        w = imp[members].float()
        rep = members[torch.sort(-w, stable=True).indices[0]]  # most important (ties: lowest index)
        x = feats[members.to(feats.device)].float()
        total = float(w.sum())
        mean = (w[:, None].to(x.device) * x).sum(0) / total if total > 0 else x.mean(0)
        new[int(rep)] = mean.to(feats.dtype)
        reps.append(int(rep))
    kept = torch.sort(
        torch.cat([torch.nonzero(~is_low).flatten(), torch.tensor(reps, dtype=torch.long)])
    ).values
    return kept, new[kept.to(feats.device)]


def stage_fractions(stages: int, r1: float, r2: float) -> tuple[float, ...]:
    """Cumulative keep fractions of the LLM stages: (r1, r1·r2); one stage (a shallow LLM where both
    layers scale to the same one) keeps r1·r2."""
    return (r1, r1 * r2) if stages == 2 else (r1 * r2,)


def vision_keep(budget: Budget, n: int, n_layers: int, layers: Sequence[int], r1: float, r2: float) -> int:
    """Tokens the vision stage keeps so that the LLM stages (fractions r1, r1·r2) can meet ``budget``."""
    s1 = layers[0]
    fr = stage_fractions(len(layers), r1, r2)
    if budget.kind is BudgetKind.AVG:
        if budget.value > n:
            raise BudgetTooLargeError(f"budget {budget} is larger than the {n} vision tokens present")
        total = budget.value * n_layers
        widths = [b - a for a, b in zip(layers, (*layers[1:], n_layers), strict=True)]
        per_token = s1 + sum(w * f for w, f in zip(widths, fr, strict=True))
        into = min(n, math.ceil(total / per_token - 1e-9))
        # a first LLM drop at s1 cannot go below one token per later layer
        into = min(into, max(1, math.floor((total - (n_layers - s1)) / s1 + 1e-9)))
        return max(into, math.ceil(budget.value - 1e-9))
    k = budget.final_count(n)
    return min(n, max(k, round_half_up(k / max(math.prod(fr), 1e-9))))


# ------------------------------------------------------------------------------------------ pruner


@dataclass(frozen=True)
class VFlowOptConfig:
    t: float = 39.26  # context-token threshold (× mean received attention); the card's 10 % setting
    alpha: float = 0.0  # entropy weight (0 in all three shipped configs)
    cell: float = 17.39  # recycling cell side, in tokens of the grid
    r1: float = 1.0  # LLM keep fraction at the first LLM layer
    r2: float = 0.6011  # ... and of the survivors at the second
    layers: tuple[int, ...] = (9, 18)  # LLM stage layers, for a 28-layer LLM
    depth_ref: int | None = 28
    vit_layer: int | None = None  # encoder layer of the attention map; None: the feature layer
    calibration: str | None = None  # JSON written by `calibrate`: its setting replaces the defaults

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not 1 <= len(layers) <= 2 or any(not isinstance(k, int) or k < 1 for k in layers):
            raise PrunerConfigError(f"vflowopt layers must be one or two integers >= 1, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        for name in ("r1", "r2"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise PrunerConfigError(f"vflowopt {name} must be within (0, 1], got {v}")
        if self.cell <= 0 or self.t < 0 or self.alpha < 0:
            raise PrunerConfigError("vflowopt cell must be > 0, t and alpha >= 0")


@dataclass
class _Shared:
    """Handed from the vision stage to the LLM stage of one run."""

    importance: torch.Tensor | None = None  # per vision token, in prompt order
    keys: list[bytes] | None = None  # fingerprint of each of those tokens' embeddings (to find them again)
    budget: Budget | None = None  # the LLM stages' budget (tokens or avg)


class VFlowVisionHook(PrunerHook):
    def __init__(self, pruner: VFlowOpt, budget: Budget, target: ModelTarget, shared: _Shared) -> None:
        self.pruner = pruner
        self.budget = budget
        self.target = target
        self.shared = shared
        self.calls: list[tuple[int, int]] = []
        self.pixels: torch.Tensor | None = None  # LLaVA: (tiles, 3, H, W) pixels in [0, 255]
        self.token_pixels: torch.Tensor | None = None  # Qwen-VL: (tokens of all tiles, pixels) grey levels
        self.patch = 0
        self._layer = target.feature_layer if pruner.config.vit_layer is None else pruner.config.vit_layer

    def vision_tap_rows(self) -> dict[int, RowSelector]:
        if not self.active:
            return {}
        self.pixels = self.token_pixels = None
        return {self._layer: all_rows}

    def capture_pixels(self, pixels: torch.Tensor) -> None:
        if self.active:
            self.pixels = pixels.detach().float()

    def capture_token_pixels(self, grey: torch.Tensor) -> None:
        if self.active:
            self.token_pixels = grey.detach().float()

    def after_encoder(self, feats: torch.Tensor, meta: TokenMeta, ctx: VisionContext) -> Selection | None:
        return None

    def _entropy(self, ctx: VisionContext) -> torch.Tensor | None:
        if self.pruner.config.alpha == 0:
            return None
        if self.token_pixels is not None:  # Qwen-VL: equal-sized tiles, tokens of each tile consecutive
            tiles = int(ctx.taps[self._layer].shape[0]) if self._layer in ctx.taps else 1
            per_tile = self.token_pixels.shape[0] // max(tiles, 1)
            rows = self.token_pixels[ctx.tile_index.cpu() * per_tile + ctx.token_index.cpu()]
            return grey_entropy(rows)
        if self.pixels is None or not self.patch:
            raise PrunerConfigError("vflowopt alpha > 0 needs the pixels: attach() the pruner to the model")
        pix = self.pixels.mean(1)  # (tiles, H, W) grey
        p = self.patch
        tiles, h, w = pix.shape
        patches = pix.reshape(tiles, h // p, p, w // p, p).permute(0, 1, 3, 2, 4).reshape(tiles, -1, p * p)
        rows = patches[ctx.tile_index.cpu(), ctx.token_index.cpu()]
        return grey_entropy(rows)

    def _importance(self, ctx: VisionContext) -> torch.Tensor:
        key = self._layer if self._layer in ctx.taps else None
        if key is None:
            raise PrunerConfigError("vflowopt found no encoder attention for this group of tiles")
        att = ctx.taps[key].float().cpu()  # (tiles, queries, keys)
        cls = 1 if self.target.cls_token else 0
        att = att[:, cls:, cls:]
        rel = torch.stack([context_relevance(a, self.pruner.config.t) for a in att])  # (tiles, patches)
        group = self.target.merge * self.target.merge
        rel = rel.reshape(rel.shape[0], -1, group).mean(-1)
        rel = rel[ctx.tile_index.cpu(), ctx.token_index.cpu()]
        return importance(rel, self._entropy(ctx), self.pruner.config.alpha)

    def after_projector(self, embeds: torch.Tensor, meta: TokenMeta, ctx: VisionContext) -> Selection | None:
        if not self.active:
            return None
        cfg = self.pruner.config
        n = int(embeds.shape[0])
        layers = self.pruner.layers(self.target.llm_layers)
        into = vision_keep(self.budget, n, self.target.llm_layers, layers, cfg.r1, cfg.r2)
        self.shared.budget = (
            self.budget if self.budget.kind is BudgetKind.AVG else Budget.tokens(self.budget.final_count(n))
        )
        imp = self._importance(ctx)
        self.calls.append((n, into))
        if into >= n:
            self.shared.importance, self.shared.keys = imp, fingerprints(embeds)
            return None
        cell, result = cfg.cell, None
        while result is None:
            cells = grid_cells(ctx.tile_index.cpu(), ctx.token_index.cpu(), ctx.grid[1], cell)
            result = recycle_merge(imp, embeds, cells, into)
            cell *= 2
        kept, new = result
        self.shared.importance = imp[kept]
        self.shared.keys = fingerprints(embeds[kept] if new is None else new)
        return Selection(kept, new)


class VFlowLLMHook(PrunerHook):
    def __init__(self, pruner: VFlowOpt, n_layers: int, shared: _Shared) -> None:
        self.pruner = pruner
        self.n_layers = n_layers
        self.shared = shared
        self.schedule: Schedule | None = None
        self._orig: torch.Tensor | None = None
        self._imp: torch.Tensor | None = None

    def llm_tap_rows(self, view: LayerView) -> torch.Tensor | None:
        return None

    def before_layer(self, view: LayerView) -> Selection | None:
        if not self.active:
            return None
        vision = torch.nonzero(view.vision).flatten()
        if view.layer == 0:
            imp, budget, keys = self.shared.importance, self.shared.budget, self.shared.keys
            self.shared.importance = self.shared.budget = self.shared.keys = None  # one run's map, once
            if imp is None or budget is None:
                raise PrunerConfigError(
                    "vflowopt's LLM stage ranks by its vision-stage importance map: encode the image with "
                    "this attachment's vision_hooks"
                )
            if len(imp) != len(vision):
                imp = align_importance(imp, keys, fingerprints(view.hidden[0, vision]))
            self._orig, self._imp = view.orig_index[vision].clone(), imp
            layers = self.pruner.layers(self.n_layers)
            self.schedule = self.pruner.llm_plan(budget, len(vision), self.n_layers, layers)
        if self.schedule is None or self._orig is None or self._imp is None:
            return None
        target = self.schedule.counts[view.layer]
        if target >= len(vision):
            return None
        scores = self._imp[map_rows(self._orig, view.orig_index[vision]).cpu()]
        return selection_keeping(view, vision[top_k(scores, target)])


def align_importance(imp: torch.Tensor, keys: list[bytes] | None, rows: list[bytes]) -> torch.Tensor:
    """Importance of each LLM vision row, found by its embedding's fingerprint among the rows the vision
    stage scored (equal fingerprints matched in order). Rows it never saw — another encoded group such as the
    coarse-to-fine loop's global thumbnail, newline markers — rank below every scored row."""
    table: dict[bytes, list[float]] = {}
    for key, value in zip(keys or [], imp.tolist(), strict=True):
        table.setdefault(key, []).append(value)
    floor = float(imp.min()) - 1.0 if imp.numel() else 0.0
    out = [table[k].pop(0) if table.get(k) else floor for k in rows]
    if not any(v != floor for v in out):
        raise PrunerConfigError(
            "vflowopt's LLM stage found none of the tokens its vision stage scored among the LLM vision rows"
        )
    return torch.tensor(out)


def load_calibration(path: str | Path) -> dict[str, float]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PrunerConfigError(f"vflowopt cannot read calibration {path}: {exc}") from None
    setting = data.get("setting") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format") != CALIBRATION_FORMAT
        or not isinstance(setting, dict)
    ):
        raise PrunerConfigError(f"vflowopt calibration {path} is not a {CALIBRATION_FORMAT} file")
    unknown = sorted(set(setting) - set(TUNABLE))
    if unknown:
        raise PrunerConfigError(f"vflowopt calibration {path} sets unknown option {unknown[0]!r}")
    return {k: float(v) for k, v in setting.items()}


@register("vflowopt")
class VFlowOpt(Pruner):
    paper = (
        "Yang et al., 'VFlowOpt: A Token Pruning Framework for LMMs with Visual Information Flow-Guided "
        "Optimization', ICCV 2025, arXiv:2508.05211"
    )
    stages = (Stage.AFTER_PROJECTOR, Stage.LLM_LAYER)
    signals = (Signal.VIT_ATTN_ALL, Signal.PIXELS, Signal.VISION_FEATURES)
    Config = VFlowOptConfig

    def __init__(self, config: Any | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        if self.config.calibration is not None:
            setting = load_calibration(self.config.calibration)
            chosen = {k: v for k, v in setting.items() if k not in overrides}  # explicit options win
            self.config = with_overrides(self.config, chosen, "vflowopt")

    def layers(self, n_layers: int) -> tuple[int, ...]:
        return scale_layers(self.config.layers, n_layers, self.config.depth_ref, "vflowopt")

    def stage_labels(self, n_layers: int = 32) -> tuple[str, ...]:
        return ("after_projector", llm_layers_label(self.layers(n_layers)))

    def llm_plan(self, budget: Budget, n: int, n_layers: int, layers: Sequence[int]) -> Schedule:
        fr = stage_fractions(len(layers), self.config.r1, self.config.r2)
        lowest = min(fr)

        def profile(t: float) -> tuple[float, ...]:
            return tuple(min(1.0, t * f) for f in fr)

        return solve_schedule(budget, n, n_layers, layers, profile, 1.0 / lowest)

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        """The whole schedule: the vision stage's count enters the LLM, its stages meet the budget."""
        budget = Budget.parse(budget)
        layers = self.layers(n_layers)
        into = vision_keep(budget, n_vision, n_layers, layers, self.config.r1, self.config.r2)
        llm_budget = budget if budget.kind is BudgetKind.AVG else Budget.tokens(budget.final_count(n_vision))
        inner = self.llm_plan(llm_budget, into, n_layers, layers)
        return Schedule(n_vision, inner.counts, inner.stage_layers)

    def hooks(self, budget: Budget | str | int | float, target: ModelTarget) -> HookSet:
        if target.window_order:
            raise PrunerConfigError("vflowopt does not support Qwen2.5-VL's windowed encoder yet")
        shared = _Shared()
        b = Budget.parse(budget)
        return HookSet(
            (VFlowVisionHook(self, b, target, shared),), (VFlowLLMHook(self, target.llm_layers, shared),)
        )

    def instrument(self, adapter: ModelAdapter, hooks: HookSet) -> list[Any]:
        """With alpha > 0: a forward pre-hook on the encoder's patch embedding captures the pixels."""
        ours = [h for h in hooks.vision if isinstance(h, VFlowVisionHook)]
        if not ours or self.config.alpha == 0:
            return []
        visual = getattr(adapter.model.model, "visual", None)
        if visual is not None and hasattr(visual, "patch_embed"):
            return [self._instrument_qwen(adapter, visual.patch_embed, ours)]
        parts = getattr(adapter, "_tower_parts", None)
        mean, std = getattr(adapter, "mean", None), getattr(adapter, "std", None)
        if parts is None or mean is None or std is None:
            raise PrunerConfigError(
                f"vflowopt alpha > 0 (patch entropy) is not supported for {adapter.family}"
            )
        embeddings = parts()[0]
        patch = int(adapter.model.config.vision_config.patch_size)
        for hook in ours:
            hook.patch = patch

        def on_pixels(module: torch.nn.Module, args: Any) -> None:
            pixels = args[0].detach().float().cpu() * std + mean  # back to [0, 1]
            for hook in ours:
                hook.capture_pixels(pixels.mul(255).clamp(0, 255))

        return [embeddings.register_forward_pre_hook(on_pixels)]

    @staticmethod
    def _instrument_qwen(
        adapter: ModelAdapter, patch_embed: torch.nn.Module, ours: list[VFlowVisionHook]
    ) -> Any:
        """Qwen-VL's patch embedding gets (patches, C·T·P·P) rows, channel first, the patches of one merged
        token consecutive: un-normalise, average the channels, and join each token's patches."""
        ip = adapter.processor.image_processor  # type: ignore[attr-defined]
        mean = torch.tensor(ip.image_mean, dtype=torch.float32)[None, :, None]
        std = torch.tensor(ip.image_std, dtype=torch.float32)[None, :, None]
        group = int(getattr(adapter, "merge", 1)) ** 2

        def on_patches(module: torch.nn.Module, args: Any) -> None:
            flat = args[0].detach().float().cpu()
            pix = flat.reshape(flat.shape[0], len(ip.image_mean), -1) * std + mean
            grey = pix.mul(255).clamp(0, 255).mean(1)  # (patches, T·P·P)
            for hook in ours:
                hook.capture_token_pixels(grey.reshape(-1, group * grey.shape[1]))

        return patch_embed.register_forward_pre_hook(on_patches)


# ------------------------------------------------------------------------------------------ calibration


@dataclass
class CalibrationResult:
    setting: dict[str, float]  # the chosen values of the tuned options
    discrepancy: float  # its mean 1 − cos over the samples
    trials: list[tuple[dict[str, float], float]] = field(default_factory=list)  # every tried setting


def last_token_state(
    adapter: ModelAdapter, inputs: PrefillInputs, llm_hooks: Sequence[Any] = ()
) -> torch.Tensor:
    """The last layer's hidden state of the last prompt token (before the final norm)."""
    seen: list[torch.Tensor] = []
    handle = adapter.decoder.norm.register_forward_pre_hook(
        lambda m, args: seen.append(args[0][0, -1].float())
    )
    try:
        adapter.decoder.prefill(inputs, llm_hooks)
    finally:
        handle.remove()
    return seen[-1]


def encode_global(adapter: ModelAdapter, image: str | Path, question: str, vision_hooks: Sequence[Any] = ()):
    """The global-strategy prompt (the image's thumbnail as one tile) with ``vision_hooks`` applied."""
    from lrs_vqa.models.base import pyramid_spec_for
    from pyramid.dip import DynamicImagePyramid, PyramidOptions

    with tempfile.TemporaryDirectory() as cache:
        options = PyramidOptions(spec=pyramid_spec_for(adapter), cache_dir=Path(cache))
        with DynamicImagePyramid.open(Path(image), options) as dip:
            seg = adapter.encode_tiles([dip.thumbnail()], newlines=False, level=-1, hooks=vision_hooks)
    return adapter.build_prompt(question, [seg]).inputs


def discrepancy(
    adapter: ModelAdapter,
    samples: Sequence[tuple[str | Path, str]],
    budget: Budget | str | int | float,
    setting: Mapping[str, float],
    references: Sequence[torch.Tensor] | None = None,
) -> float:
    """Mean over samples of 1 − cos(last-token state unpruned, pruned with ``setting``)."""
    pruner = VFlowOpt(**dict(setting))
    total = 0.0
    for i, (image, question) in enumerate(samples):
        if references is None:
            ref = last_token_state(adapter, encode_global(adapter, image, question))
        else:
            ref = references[i]
        with pruner.attach(adapter, budget) as att:
            inputs = encode_global(adapter, image, question, att.vision_hooks)
            state = last_token_state(adapter, inputs, att.llm_hooks)
        total += 1.0 - float(torch.nn.functional.cosine_similarity(ref, state, dim=0))
    return total / len(samples)


DEFAULT_SPACE: dict[str, tuple[float, ...]] = {
    "t": (1.0, 4.0, 39.26),
    "cell": (2.0, 4.0, 17.39),
    "alpha": (0.0, 0.5),
    "r1": (1.0, 0.8),
    "r2": (0.6011, 0.8, 1.0),
}


def calibrate(
    adapter: ModelAdapter,
    samples: Sequence[tuple[str | Path, str]],
    budget: Budget | str | int | float,
    space: Mapping[str, Sequence[float]] | None = None,
    trials: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
) -> CalibrationResult:
    """Try the settings of ``space`` (all of them, or ``trials`` drawn without replacement with ``seed``)
    and keep the one with the lowest discrepancy (ties: the first tried). Writes the result as JSON to
    ``out`` if given (read back by ``vflowopt:calibration=PATH``)."""
    if not samples:
        raise PrunerConfigError("vflowopt calibration needs at least one sample")
    space = dict(space if space is not None else DEFAULT_SPACE)
    unknown = sorted(set(space) - set(TUNABLE))
    if unknown:
        raise PrunerConfigError(f"vflowopt cannot tune {unknown[0]!r}; tunable: {', '.join(TUNABLE)}")
    names = sorted(space)
    grid = [dict(zip(names, values, strict=True)) for values in itertools.product(*(space[k] for k in names))]
    if trials is not None and trials < len(grid):
        grid = random.Random(seed).sample(grid, trials)
    refs = [last_token_state(adapter, encode_global(adapter, img, q)) for img, q in samples]
    tried: list[tuple[dict[str, float], float]] = []
    for setting in grid:
        try:
            VFlowOpt(**setting)
        except PrunerConfigError:
            continue
        tried.append((setting, discrepancy(adapter, samples, budget, setting, refs)))
    if not tried:
        raise PrunerConfigError("vflowopt calibration found no valid setting in the search space")
    best = min(range(len(tried)), key=lambda i: (tried[i][1], i))
    result = CalibrationResult(tried[best][0], tried[best][1], tried)
    if out is not None:
        data = {
            "format": CALIBRATION_FORMAT,
            "budget": str(Budget.parse(budget)),
            "setting": result.setting,
            "discrepancy": result.discrepancy,
            "trials": [{"setting": s, "discrepancy": d} for s, d in tried],
            "model": getattr(adapter, "source", ""),
        }
        Path(out).write_text(json.dumps(data, indent=2) + "\n")
    return result
