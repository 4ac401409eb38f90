"""TransPrune (pruners.md §1.5): in-LLM pruning by Token Transition Variation (TTV), optionally fused with
Instruction-Guided Attention (IGA).

* TTV: how much a layer changes a token. For a transition x → y (y the module's output for input x):
  magnitude m = ‖y‖/‖x‖, direction d = cos(y, x); TTV = softmax over the vision tokens of (1 − |d|), times m.
  It is summed over the accumulation layers (1-based 7..12 of 32: 0-based 6..11) for every vision token.
* IGA: mean over the post-image rows (the instruction and the chat template's tail, as the released code
  does; ``iga_rows=instruction``: the question's own rows) of their head-mean attention to each vision
  token.
* At each stage (prune before 0-based layers 7, 9, 12 of 32, i.e. after 1-based 7, 9, 12) the score is
  α·TTV/ΣTTV + (1−α)·IGA/ΣIGA (both L1-normalised, as the released code does) and the top ones are kept.
  ``attention=false`` (or α = 1) ranks by TTV alone and taps no attention at all.

The card's keep fractions of the original image tokens, 0.875 / 0.625 / 0.125 ("TransPrune-High"), give
the stages' proportions; the budget solver scales them so that the budget is met exactly.

Deviations from the card (see also ``pruning.base`` for the shared conventions):

* TTV per module (``ttv=module``, the default): forward hooks that ``attach`` installs on the attention
  and FFN modules of the accumulation layers see x = the module's input (after the layer's pre-norm) and
  y = its output (before the residual add); the two terms are summed per layer as in the paper. Bare
  ``hooks()`` cannot reach the modules, so they (and ``ttv=layer``) measure one transition per layer on
  the layer's whole residual update: x = h_l (the layer's input), y = h_{l+1} − h_l.
* IGA uses the attention captured during layer K−1 (FastV's convention), not layer K's projections
  recomputed from its input as the released code does.
* The softmax runs over the vision tokens present (the paper's "over tokens"), not over the whole
  sequence as in the released code; the released code's signed 1 − cos is ``abs_cos=false``.
* Kept tokens keep their original RoPE positions by default; the released code renumbers them compactly
  (card §9.4): ``positions=compact`` does that, to reproduce the paper's numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lrs_vqa.engine import POSITION_MODES
from lrs_vqa.engine.decoder import LayerView, Selection
from pruning.base import HookSet, ModelTarget, Pruner, ScheduledLayerHook, Signal, Stage, map_rows
from pruning.budget import Budget, Profile, Schedule, round_half_up, scale_layers, solve_schedule
from pruning.errors import PrunerConfigError
from pruning.registry import register

if TYPE_CHECKING:
    from lrs_vqa.models.base import ModelAdapter

_EPS = 1e-6
TTV_MODES = ("module", "layer")
IGA_ROWS = ("after_image", "instruction")

# ------------------------------------------------------------------------------------------ pure scoring


def transition_variation(x: torch.Tensor, y: torch.Tensor, abs_cos: bool = True) -> torch.Tensor:
    """(n,) TTV of n tokens whose states x (n, d) became y (n, d): softmax over the tokens of 1 − |cos(y, x)|
    (1 − cos with ``abs_cos=False``), times ‖y‖ / ‖x‖."""
    x, y = x.float(), y.float()
    magnitude = y.norm(dim=-1) / x.norm(dim=-1).clamp(min=_EPS)
    cos = torch.nn.functional.cosine_similarity(y, x, dim=-1, eps=_EPS)
    direction = 1.0 - (cos.abs() if abs_cos else cos)
    return torch.softmax(direction, dim=0) * magnitude


def layer_transition(before: torch.Tensor, after: torch.Tensor, abs_cos: bool = True) -> torch.Tensor:
    """TTV of one decoder layer from its input and output states: the transition is the layer's residual
    update, x = before, y = after − before."""
    return transition_variation(before, after.float() - before.float(), abs_cos)


def instruction_attention(attention: torch.Tensor) -> torch.Tensor:
    """(V,) IGA: mean over the instruction rows of their (head-mean) attention to each vision token."""
    return attention.float().mean(0)


def iga_rows(vision: torch.Tensor, instruction: torch.Tensor, which: str) -> torch.Tensor:
    """IGA query rows: every row after the last vision row (the released code: the instruction and the
    chat template's tail), or the question's own rows; the last row when there are none."""
    n = vision.shape[0]
    if which == "after_image":
        vis = torch.nonzero(vision).flatten()
        start = int(vis[-1]) + 1 if vis.numel() else 0
        rows = torch.arange(start, n)
    else:
        rows = torch.nonzero(instruction).flatten().cpu()
    return rows if rows.numel() else torch.tensor([n - 1])


def l1_normalised(x: torch.Tensor) -> torch.Tensor:
    total = x.float().abs().sum()
    return x.float() / total if float(total) > 0 else torch.zeros_like(x, dtype=torch.float32)


def transprune_scores(ttv: torch.Tensor, iga: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """α·TTV/ΣTTV + (1−α)·IGA/ΣIGA; TTV alone when there is no IGA."""
    if iga is None:
        return l1_normalised(ttv)
    return alpha * l1_normalised(ttv) + (1.0 - alpha) * l1_normalised(iga)


def ratio_profile(ratios: Sequence[float], stages: int) -> tuple[Profile, float]:
    """Profile keeping the card's proportions between stages, for ``stages`` stages (the first ones and the
    last one of ``ratios`` when scaling merged some stage layers), and the parameter that keeps all."""
    r = tuple(ratios)
    picked = r if stages >= len(r) else (r[:1] if stages == 1 else (*r[: stages - 1], r[-1]))
    shape = tuple(x / picked[0] for x in picked)

    def profile(t: float) -> tuple[float, ...]:
        return tuple(min(1.0, t * s) for s in shape)

    return profile, 1.0 / min(shape)


# ------------------------------------------------------------------------------------------ pruner


@dataclass(frozen=True)
class TransPruneConfig:
    layers: tuple[int, ...] = (7, 9, 12)  # prune before these (0-based) layers of a 32-layer LLM
    ratios: tuple[float, ...] = (0.875, 0.625, 0.125)  # card's keep fractions (proportions used); % in specs
    ttv_from: int = 6  # accumulate the transitions of layers ttv_from..ttv_to (0-based, 32-layer LLM)
    ttv_to: int = 11
    depth_ref: int | None = 32
    alpha: float = 0.5  # weight of TTV against IGA
    attention: bool = True  # False: TTV alone, no attention tapped
    abs_cos: bool = True  # paper: 1 − |cos|; released code: 1 − cos
    iga_rows: str = "after_image"  # IGA queries: "after_image" (all post-image rows) or "instruction"
    ttv: str = "module"  # "module": attention and FFN transitions (needs attach); "layer": the layer's update
    # RoPE positions after a drop: "original" (the engine's default) or "compact" (renumbered 0..n−1, as
    # the released code does: set it to reproduce the paper's numbers, card §9.4)
    positions: str = "original"

    def __post_init__(self) -> None:
        if self.positions not in POSITION_MODES:
            raise PrunerConfigError(
                f"transprune positions must be original or compact, got {self.positions!r}"
            )
        layers = tuple(self.layers)
        if not layers or any(not isinstance(k, int) or k < 1 for k in layers):
            raise PrunerConfigError(f"transprune layers must be integers >= 1, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        # A spec gives whole numbers ("ratios=88/63/13"): read values above 1 as percentages.
        ratios = tuple(float(r) / 100 if r > 1 else float(r) for r in self.ratios)
        if (
            not ratios
            or any(not 0 < r <= 1 for r in ratios)
            or any(a < b for a, b in itertools.pairwise(ratios))
        ):
            raise PrunerConfigError(
                f"transprune ratios must be non-increasing fractions in (0, 1], got {self.ratios!r}"
            )
        object.__setattr__(self, "ratios", ratios)
        if (
            not isinstance(self.ttv_from, int)
            or not isinstance(self.ttv_to, int)
            or not (0 <= self.ttv_from <= self.ttv_to)
        ):
            raise PrunerConfigError(
                f"transprune needs 0 <= ttv_from <= ttv_to, got {self.ttv_from!r}..{self.ttv_to!r}"
            )
        if not 0 <= self.alpha <= 1:
            raise PrunerConfigError(f"transprune alpha must be within 0..1, got {self.alpha}")
        if self.iga_rows not in IGA_ROWS:
            raise PrunerConfigError(
                f"transprune iga_rows must be one of {', '.join(IGA_ROWS)}, got {self.iga_rows!r}"
            )
        if self.ttv not in TTV_MODES:
            raise PrunerConfigError(f"transprune ttv must be one of {', '.join(TTV_MODES)}, got {self.ttv!r}")


class TransPruneHook(ScheduledLayerHook):
    def __init__(
        self, pruner: Pruner, budget: Budget, n_layers: int, stages: Sequence[int], ttv: tuple[int, int]
    ) -> None:
        super().__init__(pruner, budget, n_layers, stages)
        self.ttv_layers = ttv  # inclusive range of layers whose transitions are accumulated
        self._acc: torch.Tensor | None = None  # accumulated TTV by original row index
        self._prev: tuple[torch.Tensor, torch.Tensor] | None = None  # (orig index, states) entering a layer
        self.instrumented = False  # module-level transitions arrive through forward hooks (attach)
        # (layer, original row index, vision mask) of the layer about to run
        self._rows: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _module_level(self) -> bool:
        return self.instrumented and self.pruner.config.ttv == "module"

    def llm_tap_rows(self, view: LayerView) -> torch.Tensor | None:
        # Called after every hook's selection, just before the layer runs: the rows it will see.
        if self.active:
            self._rows = (view.layer, view.orig_index, view.vision)
        return super().llm_tap_rows(view)

    def on_module(self, layer: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward-hook callback: a sub-module of ``layer`` turned ``x`` into ``y`` (1, L', d)."""
        if not self.active or not self._module_level() or self._rows is None or self._acc is None:
            return
        lo, hi = self.ttv_layers
        at, orig, vision = self._rows
        if at != layer or not lo <= layer <= hi or x.dim() != 3 or x.shape[1] != len(orig) or len(orig) < 2:
            return  # another layer, a decode step, or a forward this hook is not part of
        rows = torch.nonzero(vision).flatten()
        if rows.numel():
            ttv = transition_variation(x[0, rows], y[0, rows], self.pruner.config.abs_cos)
            self._acc[orig[rows].cpu()] += ttv.cpu()

    def _uses_attention(self) -> bool:
        cfg = self.pruner.config
        return bool(cfg.attention) and cfg.alpha < 1

    def query_rows(self, view: LayerView) -> torch.Tensor | None:
        if not self._uses_attention():
            return None
        return iga_rows(view.vision, view.instruction, self.pruner.config.iga_rows)

    def stage_scores(
        self, view: LayerView, vision: torch.Tensor, attention: torch.Tensor | None
    ) -> torch.Tensor:
        orig = view.orig_index[vision]
        assert self._acc is not None
        ttv = self._acc[orig.to(self._acc.device)]
        iga = None
        if self._uses_attention():
            if attention is None:
                raise PrunerConfigError(f"transprune found no attention tap before layer {view.layer}")
            iga = instruction_attention(attention).to(ttv.device)
        return transprune_scores(ttv, iga, self.pruner.config.alpha)

    def before_layer(self, view: LayerView) -> Selection | None:
        if not self.active:
            return None
        lo, hi = self.ttv_layers
        if view.layer == 0:
            self._acc = torch.zeros(int(view.orig_index.max()) + 1, dtype=torch.float32)
            self._prev = None
        vision = torch.nonzero(view.vision).flatten()
        if self._module_level():
            self._prev = None
        elif self._prev is not None and lo <= view.layer - 1 <= hi and vision.numel():
            prev_orig, prev_states = self._prev
            orig = view.orig_index[vision]
            before = prev_states[map_rows(prev_orig, orig).to(prev_states.device)]
            ttv = layer_transition(before, view.hidden[0, vision], self.pruner.config.abs_cos)
            assert self._acc is not None
            self._acc[orig.cpu()] += ttv.cpu()
        self._prev = None
        selection = super().before_layer(view)
        if lo <= view.layer <= hi and not self._module_level():
            keep = selection.keep if selection is not None else torch.arange(view.hidden.shape[1])
            keep = keep.to(view.hidden.device)
            hidden = selection.hidden if selection is not None and selection.hidden is not None else None
            states = hidden if hidden is not None else view.hidden[:, keep]
            is_vision = view.vision[keep]
            self._prev = (view.orig_index[keep][is_vision].clone(), states[0, is_vision].clone())
        return selection


@register("transprune")
class TransPrune(Pruner):
    paper = (
        "Li et al., 'TransPrune: Token Transition Pruning for Efficient Large Vision-Language Model', "
        "CVPR 2026, arXiv:2507.20630"
    )
    stages = (Stage.LLM_LAYER,)
    signals = (Signal.LLM_TRANSITIONS, Signal.LLM_ATTN_TEXT_RATERS)
    Config = TransPruneConfig

    def layers(self, n_layers: int) -> tuple[int, ...]:
        return scale_layers(self.config.layers, n_layers, self.config.depth_ref, "transprune")

    def ttv_layers(self, n_layers: int) -> tuple[int, int]:
        """Inclusive range of accumulated transitions, scaled; it starts no later than the layer before the
        first stage so that every stage has at least one transition to rank by."""
        cfg = self.config

        def scale(k: int) -> int:
            k = k if cfg.depth_ref is None else round_half_up(k * n_layers / cfg.depth_ref)
            return min(max(k, 0), n_layers - 1)

        first = self.layers(n_layers)[0]
        return min(scale(cfg.ttv_from), first - 1), max(scale(cfg.ttv_to), first - 1)

    def stage_labels(self, n_layers: int = 32) -> tuple[str, ...]:
        lo, hi = self.ttv_layers(n_layers)
        how = "TTV + IGA" if self.config.attention and self.config.alpha < 1 else "TTV only"
        return (
            f"llm layers {', '.join(str(k) for k in self.layers(n_layers))} ({how}; TTV of layers {lo}-{hi})",
        )

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        layers = self.layers(n_layers)
        profile, t_max = ratio_profile(self.config.ratios, len(layers))
        return solve_schedule(Budget.parse(budget), n_vision, n_layers, layers, profile, t_max)

    def hooks(self, budget: Budget | str | int | float, target: ModelTarget) -> HookSet:
        n = target.llm_layers
        hook = TransPruneHook(self, Budget.parse(budget), n, self.layers(n), self.ttv_layers(n))
        hook.positions = self.config.positions  # read by the decoder loop
        return HookSet((), (hook,))

    def instrument(self, adapter: ModelAdapter, hooks: HookSet) -> list[Any]:
        """Forward hooks on the attention and FFN modules of the accumulation layers (module-level TTV);
        ``detach`` removes them."""
        ours = [h for h in hooks.llm if isinstance(h, TransPruneHook)]
        if not ours or self.config.ttv != "module":
            return []
        layers = adapter.decoder.layers
        lo, hi = ours[0].ttv_layers
        handles = []
        for k in range(lo, min(hi, len(layers) - 1) + 1):
            for name in ("self_attn", "mlp"):
                module = getattr(layers[k], name, None)
                if module is None:  # not a LLaMA/Qwen-style layer: fall back to layer-level TTV
                    for handle in handles:
                        handle.remove()
                    return []
                handles.append(module.register_forward_hook(_module_hook(ours, k), with_kwargs=True))
        for hook in ours:
            hook.instrumented = True
        return handles


def _module_hook(hooks: Sequence[TransPruneHook], layer: int) -> Any:
    def on_forward(module: torch.nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        x = args[0] if args else kwargs.get("hidden_states")
        y = out[0] if isinstance(out, tuple) else out
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            for hook in hooks:
                hook.on_module(layer, x, y)

    return on_forward
