"""AdaptInfer (pruners.md §1.2): text-prior-weighted text→vision attention at a few LLM layers, with a
layer schedule found offline from where the text→vision attention shifts.

* At a stage layer the attention of the *text* rows (every row after the image span: the instruction and
  the chat template's tail; the system prompt is excluded) is read over all keys. The text↔text block
  ``Att`` is symmetrised, ``Sym = Att + Attᵀ − diag(Att)``, and each text token's soft prior is its column
  sum ``prior[t] = Σ_q Sym[q, t]``. A vision token scores ``Σ_t prior[t] · A[t, v]``.
* Stage layers: the card's 1/10/20 of 32 are the first layers that see the reduced counts — the only
  reading under which the published counts average to their labels ((576 + 133·9 + 27·10 + 3·12)/32 =
  64.97 for "64", 128.8 for "128") — so the defaults are ``(1, 10, 20)``, scaled to the model's depth.
* Per-stage counts: for LLaVA-1.5-7B's own shape (576 vision tokens, 32 layers, the default layers) and a
  published label (``avg:128``, ``avg:64``, ``avg:48``) the published table is used verbatim, as the paper
  ran it (so ``avg:64`` averages 64.97); otherwise, the way ``sparsevlm`` does, the entry nearest the budget
  gives the stages' proportions and the solver meets the budget exactly.
* ``analyse_schedule`` (``lrs-vqa pruner-tool adaptinfer analyse``) derives stage layers for a model from
  sample inputs: the per-layer text→vision attention mass is segmented into piecewise-constant parts
  (least squares, exact dynamic programme) and the segment starts are the stage layers. Its JSON output is
  read back with ``adaptinfer:schedule=PATH``.

Deviations from the card (see the report): the ranking at a stage layer uses the previous layer's attention
(the engine drops rows *before* a layer runs; the card's code ranks inside layer l by layer l's own
attention); the prior is per head, ``Σ_h prior_h · A_h`` as in the card's code (``prior=mean`` ranks by the
head-mean attention instead, cheaper); the published
``32`` entry (final count 0) is left out, a budget keeps at least one token; recycling of dropped tokens
(off in the code the card read) is available with ``recycle=true`` and reuses SparseVLM's density-peak
clustering; the change-point analysis segments the per-layer attention mass rather than fitting the
cumulative curve (equivalent: a constant segment of the mass is a straight segment of the cumulative sum).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lrs_vqa.engine.decoder import LayerView, PrefillInputs, Selection
from pruning.base import (
    HookSet,
    ModelTarget,
    Pruner,
    ScheduledLayerHook,
    Signal,
    Stage,
    llm_layers_label,
    map_rows,
)
from pruning.budget import (
    Budget,
    BudgetKind,
    Schedule,
    published_schedule,
    scale_layers,
)
from pruning.errors import PrunerConfigError
from pruning.recycle import recycled_selection
from pruning.registry import register

if TYPE_CHECKING:
    from lrs_vqa.models.base import ModelAdapter

# Published keep counts after the card's layers 1/10/20 for LLaVA-1.5-7B (576 tokens), by avg budget.
PUBLISHED = {128: (290, 72, 18), 64: (133, 27, 3), 48: (80, 24, 2)}
PUBLISHED_TOKENS = 576
SCHEDULE_FORMAT = "adaptinfer-schedule/1"

# ------------------------------------------------------------------------------------------ pure scoring


def published_counts(
    n: int, stage_layers: Sequence[int], counts: Sequence[int], n_layers: int
) -> tuple[int, ...]:
    """Per-layer vision tokens when ``counts[i]`` holds from ``stage_layers[i]`` up to the next stage."""
    out = [n] * n_layers
    for layer, c in zip(stage_layers, counts, strict=True):
        out[layer:] = [c] * (n_layers - layer)
    return tuple(out)


def text_prior(text_attention: torch.Tensor) -> torch.Tensor:
    """(..., T) soft prior of the text tokens from their (..., T, T) attention block (rows: queries,
    columns: keys), per leading index (e.g. per head): column sums of ``Att + Attᵀ − diag(Att)``."""
    att = text_attention.float()
    diag = torch.diag_embed(torch.diagonal(att, dim1=-2, dim2=-1))
    return (att + att.transpose(-1, -2) - diag).sum(-2)


def adaptinfer_scores(text_attention: torch.Tensor, text_to_vision: torch.Tensor) -> torch.Tensor:
    """(V,) scores: the prior-weighted sum over text rows of their attention to each vision token;
    ``text_to_vision`` is (T, V). Given per-head blocks — (H, T, T) and (H, T, V) — the card's form:
    ``Σ_h prior_h · A_h`` (each head's own prior weights that head's rows, summed over heads)."""
    prior = text_prior(text_attention)
    scores = (prior.unsqueeze(-2) @ text_to_vision.float()).squeeze(-2)
    return scores.sum(0) if text_attention.dim() == 3 else scores


def change_points(curve: Sequence[float], stages: int) -> tuple[int, ...]:
    """Starts of the ``stages`` later segments of the least-squares piecewise-constant fit of ``curve``
    with ``stages + 1`` segments (exact dynamic programme; ties: the earlier split). Every start lies
    within 1..len(curve)-1."""
    x = [float(v) for v in curve]
    n = len(x)
    if stages < 1 or stages >= n:
        raise PrunerConfigError(f"cannot place {stages} change points in a curve of {n} layers")
    pre, pre2 = [0.0], [0.0]
    for v in x:
        pre.append(pre[-1] + v)
        pre2.append(pre2[-1] + v * v)

    def sse(a: int, b: int) -> float:  # segment x[a:b]
        s = pre[b] - pre[a]
        return (pre2[b] - pre2[a]) - s * s / (b - a)

    segs = stages + 1
    best = [[math.inf] * (n + 1) for _ in range(segs + 1)]
    back = [[0] * (n + 1) for _ in range(segs + 1)]
    best[0][0] = 0.0
    for s in range(1, segs + 1):
        for b in range(s, n + 1):
            for a in range(s - 1, b):
                cost = best[s - 1][a] + sse(a, b)
                if cost < best[s][b] - 1e-12:
                    best[s][b], back[s][b] = cost, a
    starts, b = [], n
    for s in range(segs, 0, -1):
        a = back[s][b]
        starts.append(a)
        b = a
    return tuple(sorted(starts)[1:])


def text_to_vision_mass(probs: torch.Tensor, vision_cols: torch.Tensor) -> float:
    """Mean over the tapped text rows of the attention mass they put on the vision columns."""
    return float(probs[:, vision_cols].float().sum(-1).mean())


# ------------------------------------------------------------------------------------------ pruner


@dataclass(frozen=True)
class AdaptInferConfig:
    # The first layers that see the reduced counts (of 32): the card's 1/10/20, where the published counts
    # average to their labels (64.97 for "64", 128.8 for "128"); ranked by the previous layer's attention.
    layers: tuple[int, ...] = (1, 10, 20)
    prior: str = "head"  # "head": Σ_h prior_h·A_h as in the card's code; "mean": prior of the head mean
    depth_ref: int | None = 32
    schedule: str | None = None  # JSON from `analyse_schedule`: its layers replace `layers`
    recycle: bool = False  # the card's code has it off
    recycle_share: float = 0.3
    cluster_div: int = 10
    knn: int = 7

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers or any(not isinstance(k, int) or k < 1 for k in layers):
            raise PrunerConfigError(f"adaptinfer layers must be integers >= 1, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        if self.prior not in ("head", "mean"):
            raise PrunerConfigError(f"adaptinfer prior must be head or mean, got {self.prior!r}")
        if not 0 <= self.recycle_share <= 1:
            raise PrunerConfigError(f"adaptinfer recycle_share must be within 0..1, got {self.recycle_share}")
        if self.cluster_div < 1 or self.knn < 1:
            raise PrunerConfigError("adaptinfer cluster_div and knn must be >= 1")


def text_rows(view: LayerView) -> torch.Tensor:
    """Rows after the last vision row (instruction + template tail); the last row if there is no image."""
    vision = torch.nonzero(view.vision).flatten()
    start = int(vision[-1]) + 1 if vision.numel() else view.hidden.shape[1] - 1
    rows = torch.arange(start, view.hidden.shape[1])
    return rows if rows.numel() else torch.tensor([view.hidden.shape[1] - 1])


class AdaptInferHook(ScheduledLayerHook):
    @property
    def tap_heads(self) -> bool:
        return self.pruner.config.prior == "head"

    def query_rows(self, view: LayerView) -> torch.Tensor:
        return text_rows(view)

    def _attention(self, view: LayerView, vision: torch.Tensor) -> torch.Tensor | None:
        # Text↔text block as well as text→vision: keep both, ranked together in `stage_scores`.
        k = view.layer - 1
        if k not in self._tap_orig or k not in view.taps:
            return None
        keys_orig, queries_orig = self._tap_orig[k]
        tap = view.taps[k]
        rows = map_rows(keys_orig[tap.rows.to(keys_orig.device)], queries_orig).to(tap.probs.device)
        vis_cols = map_rows(keys_orig, view.orig_index[vision]).to(tap.probs.device)
        text_cols = map_rows(keys_orig, queries_orig).to(tap.probs.device)
        if self.tap_heads:  # (H, T, keys): the card's per-head prior
            assert tap.per_head is not None
            probs = tap.per_head[:, rows]
            return torch.cat([probs[..., text_cols], probs[..., vis_cols]], dim=-1)
        probs = tap.probs[rows]
        return torch.cat([probs[:, text_cols], probs[:, vis_cols]], dim=1)

    def stage_scores(
        self, view: LayerView, vision: torch.Tensor, attention: torch.Tensor | None
    ) -> torch.Tensor:
        if attention is None:
            raise PrunerConfigError(f"adaptinfer found no attention tap before layer {view.layer}")
        t = attention.shape[-2]
        return adaptinfer_scores(attention[..., :t], attention[..., t:])

    def stage_selection(
        self, view: LayerView, vision: torch.Tensor, scores: torch.Tensor, keep: int
    ) -> Selection:
        cfg = self.pruner.config  # SparseVLM's recycling, off unless asked for
        return recycled_selection(
            view, vision, scores, keep, cfg.recycle, cfg.recycle_share, cfg.cluster_div, cfg.knn
        )


def load_schedule(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PrunerConfigError(f"adaptinfer cannot read schedule {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != SCHEDULE_FORMAT:
        raise PrunerConfigError(f"adaptinfer schedule {path} is not an {SCHEDULE_FORMAT} file")
    layers, depth = data.get("layers"), data.get("n_layers")
    if not isinstance(depth, int) or not isinstance(layers, list) or not layers:
        raise PrunerConfigError(f"adaptinfer schedule {path} lacks 'layers' and 'n_layers'")
    if any(not isinstance(k, int) or not 1 <= k < depth for k in layers):
        raise PrunerConfigError(f"adaptinfer schedule {path} has layers outside 1..{depth - 1}")
    return data


@register("adaptinfer")
class AdaptInfer(Pruner):
    paper = (
        "Zhang et al., 'AdaptInfer: Adaptive Token Pruning for Vision-Language Model Inference with "
        "Dynamical Text Guidance', arXiv:2508.06084"
    )
    stages = (Stage.LLM_LAYER,)
    signals = (Signal.LLM_ATTN_TEXT_ROWS,)
    Config = AdaptInferConfig

    def layers(self, n_layers: int) -> tuple[int, ...]:
        cfg = self.config
        if cfg.schedule is not None:
            data = load_schedule(cfg.schedule)
            ref = None if data["n_layers"] == n_layers else data["n_layers"]
            return scale_layers(data["layers"], n_layers, ref, "adaptinfer")
        return scale_layers(cfg.layers, n_layers, cfg.depth_ref, "adaptinfer")

    def stage_labels(self, n_layers: int = 32) -> tuple[str, ...]:
        return (llm_layers_label(self.layers(n_layers)),)

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        layers = self.layers(n_layers)
        parsed = Budget.parse(budget)
        table = PUBLISHED.get(int(parsed.value)) if parsed.kind is BudgetKind.AVG else None
        reference = n_vision == PUBLISHED_TOKENS and n_layers == 32 and layers == (1, 10, 20)
        if table is not None and reference and parsed.value == int(parsed.value):
            # The paper's own setting: its table verbatim (a label, not an exact average: avg:64 → 64.97).
            return Schedule(n_vision, published_counts(n_vision, layers, table, n_layers), layers)
        return published_schedule(parsed, n_vision, n_layers, layers, PUBLISHED, PUBLISHED_TOKENS)

    def hooks(self, budget: Budget | str | int | float, target: ModelTarget) -> HookSet:
        layers = self.layers(target.llm_layers)
        return HookSet((), (AdaptInferHook(self, Budget.parse(budget), target.llm_layers, layers),))


# ------------------------------------------------------------------------------------------ offline analysis


class _TextTapAll:
    """Taps the text rows at every layer and prunes nothing."""

    active = True

    def llm_tap_rows(self, view: LayerView) -> torch.Tensor:
        return text_rows(view)

    def before_layer(self, view: LayerView) -> None:
        return None

    def deactivate(self) -> None:
        self.active = False


def attention_curve(adapter: ModelAdapter, inputs: PrefillInputs) -> list[float]:
    """Per-layer text→vision attention mass of one prompt (no pruning)."""
    result = adapter.decoder.prefill(inputs, (_TextTapAll(),))
    vision = torch.nonzero(inputs.vision).flatten()
    out = []
    for k in range(len(adapter.decoder.layers)):
        tap = result.taps[k]
        out.append(text_to_vision_mass(tap.probs, vision.to(tap.probs.device)))
    return out


def analyse_schedule(
    adapter: ModelAdapter, samples: Sequence[PrefillInputs], stages: int = 3, out: str | Path | None = None
) -> dict[str, Any]:
    """Stage layers for ``adapter`` from the mean text→vision attention curve of ``samples``; the result
    (``format``, ``layers``, ``n_layers``, ``curve``, ``samples``) is written as JSON to ``out`` if given
    and is what ``adaptinfer:schedule=PATH`` reads."""
    if not samples:
        raise PrunerConfigError("adaptinfer analysis needs at least one sample")
    curves = [attention_curve(adapter, s) for s in samples]
    n_layers = len(curves[0])
    mean = [sum(c[i] for c in curves) / len(curves) for i in range(n_layers)]
    layers = change_points(mean, min(stages, n_layers - 1))
    data = {
        "format": SCHEDULE_FORMAT,
        "layers": list(layers),
        "n_layers": n_layers,
        "curve": mean,
        "samples": len(samples),
        "model": getattr(adapter, "source", ""),
    }
    if out is not None:
        Path(out).write_text(json.dumps(data, indent=2) + "\n")
    return data
