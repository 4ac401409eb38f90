"""LVPruning (pruners.md §1.1): small trained *decision modules* at a few LLM layers decide which vision
tokens go on; the base model stays frozen.

* A decision module is a cross-attention block whose queries are the vision tokens' hidden states and whose
  keys/values are the language tokens' (the question's rows; every row after the image if the question is
  not marked), followed by an MLP that emits two logits (keep, drop) per vision token.
* Training (``train`` / ``lrs-vqa pruner-tool lvpruning train``): the frozen LLM runs layer by layer with
  gradients on; at each decision layer a hard Gumbel-softmax sample (straight-through) gives a keep mask,
  cumulative over the layers, that masks the dropped vision tokens as *keys* in every later layer (an
  additive attention bias ``(m − 1) · mask_scale``, so the gradient reaches the modules). Loss = KL from
  the unpruned model's next-token distribution at the last prompt row to the pruned one + ``ratio_weight``
  · mean squared gap between each layer's kept fraction and its target keep ratio.
* Inference: before each decision layer the vision rows are ranked by the module's keep-minus-drop logit
  and the top ones kept (really removed from the sequence), with counts from the budget solver over the
  trained keep ratios, so any budget is met exactly.
* Checkpoint: a directory with ``lvpruning.safetensors`` (the modules' weights) and ``lvpruning.json``
  (format, hidden size, module sizes, layers, LLM depth, keep ratios, training facts). A mismatch with the
  model raises ``LVPruningCheckpointError``; without a checkpoint the pruner raises
  ``MissingCheckpointError`` naming the training command. ``untrained_seed=N`` explicitly asks for seeded
  random modules (for tests of the plumbing only).

Deviations from the card (see the report): the training loss distils the unpruned model's last-row
distribution instead of the LM loss on labelled answers (no labels needed; the card's base model is also
frozen); inference keeps the top-k by the module's logit margin rather than every token whose argmax is
"keep", so that budgets are exact; default layers (2, 8, 16 of 32) and keep ratios (0.5, 0.25, 0.1) are our
choice ("90 % pruned by the middle layer"), the paper's exact layers were not available.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lrs_vqa.engine.decoder import LayerView, PrefillInputs
from pruning.base import HookSet, ModelTarget, Pruner, ScheduledLayerHook, Signal, Stage
from pruning.budget import Budget, BudgetKind, Schedule, scale_layers, solve_schedule
from pruning.errors import PrunerConfigError
from pruning.registry import register

if TYPE_CHECKING:
    from lrs_vqa.models.base import ModelAdapter

CHECKPOINT_FORMAT = "lvpruning/1"
WEIGHTS = "lvpruning.safetensors"
CONFIG = "lvpruning.json"
TRAIN_HINT = (
    "train them with `lrs-vqa pruner-tool lvpruning train MODEL IMAGE... --out DIR` and pass "
    "lvpruning:checkpoint=DIR"
)


class LVPruningCheckpointError(PrunerConfigError):
    """A decision-module checkpoint that is missing, unreadable or does not fit the model."""


class MissingCheckpointError(LVPruningCheckpointError):
    """LVPruning used without a checkpoint (it never falls back to random modules)."""


# ------------------------------------------------------------------------------------------ modules


class DecisionModule(nn.Module):
    """Vision tokens (queries) attend to language tokens (keys/values); an MLP maps the attended context and
    the token's own projection to (keep, drop) logits."""

    def __init__(self, hidden: int, inner: int = 64, heads: int = 4) -> None:
        super().__init__()
        if inner % heads:
            raise PrunerConfigError(f"lvpruning inner size {inner} is not divisible by {heads} heads")
        self.heads = heads
        self.norm_v = nn.LayerNorm(hidden)
        self.norm_t = nn.LayerNorm(hidden)
        self.q = nn.Linear(hidden, inner)
        self.k = nn.Linear(hidden, inner)
        self.v = nn.Linear(hidden, inner)
        self.mlp = nn.Sequential(nn.Linear(2 * inner, inner), nn.GELU(), nn.Linear(inner, 2))

    def forward(self, vision: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(V, 2) logits for vision states (V, d) given language states (T, d)."""
        vision, text = vision.float(), text.float()
        q = self.q(self.norm_v(vision))
        t = self.norm_t(text)
        k, v = self.k(t), self.v(t)
        h, dim = self.heads, q.shape[-1] // self.heads
        qh = q.reshape(-1, h, dim).transpose(0, 1)  # (h, V, dim)
        kh = k.reshape(-1, h, dim).transpose(0, 1)
        vh = v.reshape(-1, h, dim).transpose(0, 1)
        att = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(dim), dim=-1)
        ctx = (att @ vh).transpose(0, 1).reshape(-1, h * dim)
        return self.mlp(torch.cat([ctx, q], dim=-1))


@dataclass(frozen=True)
class ModuleSpec:
    """Everything a checkpoint must agree on with the model it is used with."""

    hidden_size: int
    n_layers: int
    layers: tuple[int, ...]  # decision before these decoder layers
    keep_ratios: tuple[float, ...]  # trained cumulative keep fraction after each decision layer
    inner: int = 64
    heads: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(k) for k in self.layers))
        object.__setattr__(self, "keep_ratios", tuple(float(r) for r in self.keep_ratios))
        if len(self.layers) != len(self.keep_ratios) or not self.layers:
            raise PrunerConfigError("lvpruning needs one keep ratio per decision layer")
        if list(self.layers) != sorted(set(self.layers)) or not all(
            1 <= k < self.n_layers for k in self.layers
        ):
            raise PrunerConfigError(
                f"lvpruning layers {self.layers} must be increasing within 1..{self.n_layers - 1}"
            )
        if not all(0 < r <= 1 for r in self.keep_ratios) or list(self.keep_ratios) != sorted(
            self.keep_ratios, reverse=True
        ):
            raise PrunerConfigError("lvpruning keep ratios must be non-increasing within (0, 1]")


class DecisionModules(nn.Module):
    def __init__(self, spec: ModuleSpec) -> None:
        super().__init__()
        self.spec = spec
        self.blocks = nn.ModuleList(
            DecisionModule(spec.hidden_size, spec.inner, spec.heads) for _ in spec.layers
        )

    def at(self, layer: int) -> DecisionModule:
        return self.blocks[self.spec.layers.index(layer)]


# ------------------------------------------------------------------------------------------ pure functions


def keep_margin(logits: torch.Tensor) -> torch.Tensor:
    """(V,) keep-minus-drop logit: the ranking used at inference."""
    return logits[:, 0] - logits[:, 1]


def gumbel_keep(logits: torch.Tensor, tau: float, noise: torch.Tensor) -> torch.Tensor:
    """(V,) straight-through hard Gumbel-softmax keep mask: the value is 1 where argmax of
    ``(logits + noise) / tau`` is "keep", else 0; the gradient is that of the soft keep probability."""
    soft = torch.softmax((logits + noise) / tau, dim=-1)[:, 0]
    hard = (soft >= 0.5).to(soft.dtype)
    return hard + soft - soft.detach()


def sample_gumbel(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(tuple(shape), generator=generator).clamp(1e-9, 1 - 1e-9)
    return -torch.log(-torch.log(u))


def masked_causal_bias(keep: torch.Tensor, scale: float) -> torch.Tensor:
    """(1, 1, L, L) additive attention bias: causal (−inf above the diagonal) plus ``(keep_j − 1) · scale``
    on key j for every other query (a token always sees itself)."""
    n = keep.shape[0]
    key = ((keep - 1.0) * scale)[None, :].expand(n, n)
    eye = torch.eye(n, dtype=torch.bool, device=keep.device)
    bias = torch.where(eye, torch.zeros_like(key), key)
    future = torch.triu(torch.ones(n, n, dtype=torch.bool, device=keep.device), diagonal=1)
    return bias.masked_fill(future, float("-inf"))[None, None]


def ratio_loss(kept: Sequence[torch.Tensor], targets: Sequence[float]) -> torch.Tensor:
    """Mean over decision layers of (kept fraction − target)²."""
    return torch.stack([(k - t) ** 2 for k, t in zip(kept, targets, strict=True)]).mean()


def language_rows(vision: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
    """Rows the modules attend to: the question's; every row after the image if none is marked."""
    rows = torch.nonzero(instruction).flatten()
    if rows.numel():
        return rows
    vis = torch.nonzero(vision).flatten()
    start = int(vis[-1]) + 1 if vis.numel() else len(vision) - 1
    return torch.arange(min(start, len(vision) - 1), len(vision))


# ------------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(modules: DecisionModules, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in modules.blocks.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    spec = asdict(modules.spec)
    meta = {"format": CHECKPOINT_FORMAT, **spec, "layers": list(spec["layers"])}
    meta["keep_ratios"] = list(spec["keep_ratios"])
    meta.update(extra or {})
    (out / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_checkpoint(
    path: str | Path, hidden_size: int | None = None, n_layers: int | None = None
) -> DecisionModules:
    """Decision modules from ``path``; ``LVPruningCheckpointError`` if it is missing, malformed or made for
    another hidden size / LLM depth."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    if not (root / CONFIG).is_file() or not (root / WEIGHTS).is_file():
        raise LVPruningCheckpointError(
            f"lvpruning checkpoint {root} lacks {CONFIG} or {WEIGHTS}; {TRAIN_HINT}"
        )
    try:
        meta = json.loads((root / CONFIG).read_text())
    except ValueError as exc:
        raise LVPruningCheckpointError(f"lvpruning checkpoint {root}/{CONFIG} is not JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise LVPruningCheckpointError(f"lvpruning checkpoint {root} is not in format {CHECKPOINT_FORMAT}")
    try:
        spec = ModuleSpec(
            int(meta["hidden_size"]),
            int(meta["n_layers"]),
            tuple(meta["layers"]),
            tuple(meta["keep_ratios"]),
            int(meta.get("inner", 64)),
            int(meta.get("heads", 4)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise LVPruningCheckpointError(f"lvpruning checkpoint {root}/{CONFIG} is malformed: {exc}") from None
    if hidden_size is not None and spec.hidden_size != hidden_size:
        raise LVPruningCheckpointError(
            f"lvpruning checkpoint {root} was trained for hidden size {spec.hidden_size}, "
            f"this model has {hidden_size}"
        )
    if n_layers is not None and spec.n_layers != n_layers:
        raise LVPruningCheckpointError(
            f"lvpruning checkpoint {root} was trained for a {spec.n_layers}-layer LLM, "
            f"this one has {n_layers}"
        )
    modules = DecisionModules(spec)
    try:
        modules.blocks.load_state_dict(load_file(str(root / WEIGHTS)), strict=True)
    except (RuntimeError, SafetensorError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LVPruningCheckpointError(
            f"lvpruning checkpoint {root} weights do not fit its config: {first}"
        ) from None
    return modules.eval()


# ------------------------------------------------------------------------------------------ pruner


@dataclass(frozen=True)
class LVPruningConfig:
    checkpoint: str | None = None  # directory written by `train` / `save_checkpoint`
    untrained_seed: int | None = None  # explicit request for seeded random modules (plumbing tests only)
    layers: tuple[int, ...] = (2, 8, 16)  # for untrained modules only (a checkpoint carries its own); of 32
    depth_ref: int | None = 32

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers or any(not isinstance(k, int) or k < 1 for k in layers):
            raise PrunerConfigError(f"lvpruning layers must be integers >= 1, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)


DEFAULT_KEEP = (0.5, 0.25, 0.1)


class LVPruningHook(ScheduledLayerHook):
    def __init__(self, pruner: LVPruning, budget: Budget, n_layers: int, modules: DecisionModules) -> None:
        super().__init__(pruner, budget, n_layers, modules.spec.layers)
        self.modules = modules

    def query_rows(self, view: LayerView) -> None:
        return None  # no base-model attention is needed

    def stage_scores(
        self, view: LayerView, vision: torch.Tensor, attention: torch.Tensor | None
    ) -> torch.Tensor:
        spec = self.modules.spec
        if view.hidden.shape[-1] != spec.hidden_size:
            raise LVPruningCheckpointError(
                f"lvpruning modules are for hidden size {spec.hidden_size}, "
                f"this model has {view.hidden.shape[-1]}"
            )
        text = language_rows(view.vision, view.instruction)
        module = self.modules.at(view.layer).to(view.hidden.device)
        with torch.inference_mode():
            return keep_margin(module(view.hidden[0, vision], view.hidden[0, text])).cpu()


@register("lvpruning")
class LVPruning(Pruner):
    paper = (
        "Sun et al., 'LVPruning: An Effective yet Simple Language-Guided Vision Token Pruning Approach for "
        "Multi-modal Large Language Models', NAACL Findings 2025, arXiv:2501.13652"
    )
    stages = (Stage.LLM_LAYER,)
    signals = (Signal.LLM_HIDDEN_TRAINED,)
    Config = LVPruningConfig
    trainable = True

    def modules(self, n_layers: int, hidden_size: int | None = None) -> DecisionModules:
        cfg = self.config
        if cfg.checkpoint is not None:
            return load_checkpoint(cfg.checkpoint, hidden_size, n_layers)
        if cfg.untrained_seed is None:
            raise MissingCheckpointError(f"lvpruning needs trained decision modules: {TRAIN_HINT}")
        if hidden_size is None:
            raise PrunerConfigError("lvpruning untrained modules need the model's hidden size: use attach()")
        layers = scale_layers(cfg.layers, n_layers, cfg.depth_ref, "lvpruning")
        ratios = _ratios(len(layers))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.untrained_seed)
            return DecisionModules(ModuleSpec(hidden_size, n_layers, layers, ratios)).eval()

    def stage_labels(self, n_layers: int = 32) -> tuple[str, ...]:
        if self.config.checkpoint is None:
            layers = scale_layers(self.config.layers, n_layers, self.config.depth_ref, "lvpruning")
            return (f"llm layers {', '.join(str(k) for k in layers)} (trained modules)",)
        return ("llm layers from the checkpoint",)

    def plan_with(self, spec: ModuleSpec, budget: Budget, n_vision: int) -> Schedule:
        budget = Budget.parse(budget)
        ratios = spec.keep_ratios
        if budget.kind is BudgetKind.AVG and budget.value > n_vision:
            return solve_schedule(budget, n_vision, spec.n_layers, spec.layers, lambda t: (t,) * len(ratios))

        def profile(t: float) -> tuple[float, ...]:
            return tuple(min(1.0, t * r) for r in ratios)

        return solve_schedule(budget, n_vision, spec.n_layers, spec.layers, profile, 1.0 / min(ratios))

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        cfg = self.config
        if cfg.checkpoint is not None:
            spec = load_checkpoint(cfg.checkpoint, None, n_layers).spec
        else:
            layers = scale_layers(cfg.layers, n_layers, cfg.depth_ref, "lvpruning")
            spec = ModuleSpec(1, n_layers, layers, _ratios(len(layers)))
        return self.plan_with(spec, budget, n_vision)

    def hooks(
        self, budget: Budget | str | int | float, target: ModelTarget, hidden_size: int | None = None
    ) -> HookSet:
        modules = self.modules(target.llm_layers, hidden_size)
        hook = LVPruningHook(self, Budget.parse(budget), target.llm_layers, modules)
        hook.pruner = _Planner(self, modules.spec)  # the schedule follows the modules' trained ratios
        return HookSet((), (hook,))

    def attach(self, adapter: ModelAdapter, budget: Budget | str | int | float) -> Any:
        from pruning.base import Attachment

        hidden = int(adapter.text_model.config.hidden_size)
        return Attachment(self, budget, self.hooks(budget, ModelTarget.from_adapter(adapter), hidden))


class _Planner:
    """What ``ScheduledLayerHook`` calls ``pruner``: plans with the loaded modules' spec."""

    def __init__(self, pruner: LVPruning, spec: ModuleSpec) -> None:
        self.pruner, self.spec, self.config = pruner, spec, pruner.config

    def plan(self, budget: Budget, n_vision: int, n_layers: int) -> Schedule:
        return self.pruner.plan_with(self.spec, budget, n_vision)


def _ratios(stages: int) -> tuple[float, ...]:
    base = DEFAULT_KEEP
    if stages <= len(base):
        return base[:stages] if stages > 1 else base[-1:]
    return (*base, *(base[-1] * 0.5 ** (i + 1) for i in range(stages - len(base))))


# ------------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class TrainConfig:
    layers: tuple[int, ...] = (2, 8, 16)  # of 32 (scaled to the model's depth)
    depth_ref: int | None = 32
    keep_ratios: tuple[float, ...] = DEFAULT_KEEP
    inner: int = 64
    heads: int = 4
    steps: int = 200
    lr: float = 1e-3
    tau: float = 1.0
    ratio_weight: float = 2.0
    mask_scale: float = 30.0
    seed: int = 0


@dataclass
class TrainResult:
    modules: DecisionModules
    losses: list[float]  # per step (with that step's Gumbel noise)
    initial_loss: float  # evaluate() before / after training, with the same fixed noise
    final_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def masked_forward(
    adapter: ModelAdapter,
    inputs: PrefillInputs,
    modules: DecisionModules,
    tau: float,
    generator: torch.Generator,
    mask_scale: float,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Last-row logits of the frozen LLM with Gumbel keep masks at the decision layers, and the kept vision
    fraction after each decision layer (both differentiable with respect to the modules)."""
    dec = adapter.decoder
    hidden = inputs.embeds.detach().clone()
    positions = inputs.position_ids
    cos, sin = dec.rotary(hidden, positions)
    vision = torch.nonzero(inputs.vision).flatten().to(hidden.device)
    text = language_rows(inputs.vision, inputs.instruction).to(hidden.device)
    keep = torch.ones(hidden.shape[1], device=hidden.device)
    fractions: list[torch.Tensor] = []
    bias: torch.Tensor | None = None
    for k, layer in enumerate(dec.layers):
        if k in modules.spec.layers:
            logits = modules.at(k)(hidden[0, vision], hidden[0, text])
            mask = gumbel_keep(logits, tau, sample_gumbel(logits.shape, generator).to(logits.device))
            kept = keep[vision] * mask
            keep = keep.index_put((vision,), kept)
            fractions.append(kept.mean())
            bias = masked_causal_bias(keep, mask_scale).to(hidden.dtype)
        out = layer(hidden, attention_mask=bias, position_embeddings=(cos, sin), use_cache=False)
        hidden = out[0] if isinstance(out, tuple) else out
    return dec.lm_head(dec.norm(hidden[:, -1:]))[0, -1].float(), fractions


def _loss(
    adapter: ModelAdapter,
    modules: DecisionModules,
    sample: PrefillInputs,
    target: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    logits, fractions = masked_forward(adapter, sample, modules, cfg.tau, generator, cfg.mask_scale)
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), target, reduction="sum", log_target=True)
    return kl + cfg.ratio_weight * ratio_loss(fractions, modules.spec.keep_ratios)


def evaluate(
    adapter: ModelAdapter, modules: DecisionModules, samples: Sequence[PrefillInputs], cfg: TrainConfig
) -> float:
    """Mean loss over ``samples`` with Gumbel noise from a fixed seed (comparable across calls)."""
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    targets = _targets(adapter, samples)
    with torch.no_grad():
        return sum(
            float(_loss(adapter, modules, s, t, cfg, generator))
            for s, t in zip(samples, targets, strict=True)
        ) / len(samples)


def _targets(adapter: ModelAdapter, samples: Sequence[PrefillInputs]) -> list[torch.Tensor]:
    return [torch.log_softmax(adapter.decoder.prefill(s).logits[0, -1].float(), -1).clone() for s in samples]


def train(
    adapter: ModelAdapter, samples: Sequence[PrefillInputs], cfg: TrainConfig | None = None
) -> TrainResult:
    """Train decision modules for ``adapter`` (frozen) on ``samples``; deterministic for a given seed."""
    cfg = cfg or TrainConfig()
    if not samples:
        raise PrunerConfigError("lvpruning training needs at least one sample")
    n_layers = len(adapter.decoder.layers)
    layers = scale_layers(cfg.layers, n_layers, cfg.depth_ref, "lvpruning")
    ratios = tuple(cfg.keep_ratios)
    if len(ratios) != len(layers) and ratios == DEFAULT_KEEP:
        ratios = _ratios(len(layers))  # the default layers merged on a shallow LLM
    hidden = int(adapter.text_model.config.hidden_size)
    spec = ModuleSpec(hidden, n_layers, layers, ratios, cfg.inner, cfg.heads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        modules = DecisionModules(spec).to(adapter.device)
    frozen = [(p, p.requires_grad) for p in adapter.model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        initial = evaluate(adapter, modules, samples, cfg)
        targets = _targets(adapter, samples)
        optimiser = torch.optim.AdamW(modules.parameters(), lr=cfg.lr)
        generator = torch.Generator().manual_seed(cfg.seed)
        losses = []
        modules.train()
        for step in range(cfg.steps):
            i = step % len(samples)
            with torch.enable_grad():
                loss = _loss(adapter, modules, samples[i], targets[i], cfg, generator)
                optimiser.zero_grad()
                loss.backward()
            optimiser.step()
            losses.append(loss.item())
        modules.eval()
        final = evaluate(adapter, modules, samples, cfg)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return TrainResult(modules, losses, initial, final)
