"""Budgets and the schedule solver: how many vision tokens each LLM layer sees.

A budget has one of three kinds (pruners.md §0.2 explains why both token accountings exist):

* ``tokens`` — ``"64"`` or ``"tokens:64"``: vision tokens left after the pruner's last stage. For a pruner
  that acts before the LLM these are the vision tokens that enter it; for an in-LLM pruner the "final
  tokens" of the CDPruner/DivPrune tables.
* ``avg`` — ``"avg:128"``: vision tokens averaged over all LLM layers (VScan/PDrop/SparseVLM tables).
* ``ratio`` — ``"0.25"`` or ``"ratio:0.25"``: a fraction of the vision tokens present where the pruner
  starts, counted like ``tokens`` (kept = ``floor(ratio·n + 0.5)``, at least 1).

``solve_schedule`` turns a budget into per-layer counts for a pruner's stage layers and its *profile* (how
the stages' keep fractions relate, e.g. PyramidDrop's λ, λ², λ³) so that the requested figure is met
exactly: the final count equals the tokens budget, or the per-layer counts sum to ``avg · layers``. Integer
rounding can leave a remainder of a few token-layers for an average; it is absorbed by keeping one more
token for the first few layers of a stage, so the schedule may contain one extra *trim* step (a layer where
the count falls by one, ranked by the scores of the stage before it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pruning.errors import (
    BudgetFormatError,
    BudgetTooLargeError,
    BudgetUnreachableError,
    NegativeBudgetError,
    PrunerConfigError,
    ZeroBudgetError,
)

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_FORMS = "a token count (64), an average over LLM layers (avg:128) or a ratio (0.25, ratio:0.25)"

# A stage profile maps one free parameter t to the keep fraction of each stage (non-increasing, each
# non-decreasing in t); the solver searches t.
Profile = Callable[[float], Sequence[float]]


class BudgetKind(StrEnum):
    TOKENS = "tokens"
    AVG = "avg"
    RATIO = "ratio"


def round_half_up(x: float) -> int:
    # Python's round() is banker's rounding: 2.5 -> 2; budgets should not depend on parity.
    return math.floor(x + 0.5)


@dataclass(frozen=True)
class Budget:
    kind: BudgetKind
    value: float

    def __post_init__(self) -> None:
        try:
            kind = BudgetKind(self.kind)
        except ValueError:
            raise BudgetFormatError(
                f"budget kind {self.kind!r} is not one of {', '.join(k.value for k in BudgetKind)}"
            ) from None
        object.__setattr__(self, "kind", kind)
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise BudgetFormatError(f"budget value {v!r} is not a finite number")
        shown = self._shown()
        if v < 0:
            raise NegativeBudgetError(f"budget {shown} is negative; give a positive number of tokens")
        if v == 0:
            raise ZeroBudgetError(f"budget {shown} keeps no token; give at least 1 token or a ratio above 0")
        if kind is BudgetKind.TOKENS and v != int(v):
            raise BudgetFormatError(f"budget {shown} is not a whole number of tokens")
        if kind is BudgetKind.RATIO and v > 1:
            raise BudgetTooLargeError(f"ratio {v:g} is above 1; a ratio keeps a fraction of the tokens")

    def _shown(self) -> str:
        kind = BudgetKind(self.kind)
        return f"{self.value:g}" if kind is BudgetKind.TOKENS else f"{kind.value}:{self.value:g}"

    def __str__(self) -> str:
        return self._shown()

    @staticmethod
    def tokens(n: int) -> Budget:
        return Budget(BudgetKind.TOKENS, n)

    @staticmethod
    def avg(n: float) -> Budget:
        return Budget(BudgetKind.AVG, n)

    @staticmethod
    def ratio(r: float) -> Budget:
        return Budget(BudgetKind.RATIO, r)

    @staticmethod
    def parse(spec: Budget | str | int | float) -> Budget:
        """``64`` / ``"64"`` / ``"tokens:64"`` → tokens; ``"avg:128"``; ``0.25`` / ``"0.25"`` /
        ``"ratio:0.25"`` → ratio. A Python int is a token count, a float a ratio."""
        if isinstance(spec, Budget):
            return spec
        if isinstance(spec, bool):
            raise BudgetFormatError(f"budget {spec!r} is not {_FORMS}")
        if isinstance(spec, int):
            return Budget(BudgetKind.TOKENS, spec)
        if isinstance(spec, float):
            return Budget(BudgetKind.RATIO, spec)
        if not isinstance(spec, str):
            raise BudgetFormatError(f"budget {spec!r} is not {_FORMS}")
        text = spec.strip().lower()
        kind: BudgetKind | None = None
        number = text
        if ":" in text:
            head, number = (part.strip() for part in text.split(":", 1))
            try:
                kind = BudgetKind(head)
            except ValueError:
                raise BudgetFormatError(f"budget {spec!r} is not {_FORMS}") from None
        if _INT.fullmatch(number) and kind in (None, BudgetKind.TOKENS, BudgetKind.AVG):
            return Budget(kind or BudgetKind.TOKENS, int(number))
        if _FLOAT.fullmatch(number):
            value = float(number)
            if kind is BudgetKind.TOKENS:
                return Budget(kind, value)  # raises unless whole (e.g. "tokens:64.0")
            return Budget(kind or BudgetKind.RATIO, value)
        raise BudgetFormatError(f"budget {spec!r} is not {_FORMS}")

    def final_count(self, n: int) -> int:
        """Vision tokens left after the last stage out of ``n`` (tokens / ratio budgets)."""
        if self.kind is BudgetKind.AVG:
            raise BudgetFormatError("an average budget has no single final count; solve a schedule")
        if self.kind is BudgetKind.RATIO:
            return max(1, min(n, round_half_up(self.value * n)))
        k = int(self.value)
        if k > n:
            raise BudgetTooLargeError(f"budget {self} is larger than the {n} vision tokens present")
        return k

    def uniform_count(self, n: int) -> int:
        """Tokens kept by a pruner that acts once before the LLM: every layer sees the same count, so an
        average budget is that count and must be whole."""
        if self.kind is not BudgetKind.AVG:
            return self.final_count(n)
        if self.value > n:
            raise BudgetTooLargeError(f"budget {self} is larger than the {n} vision tokens present")
        if self.value != int(self.value):
            raise BudgetUnreachableError(
                f"budget {self}: a pruner acting before the LLM keeps one count for every layer, so the "
                "average must be a whole number"
            )
        return int(self.value)


def parse_budgets(spec: str | Sequence[Budget | str | int | float], count: int) -> tuple[Budget, ...]:
    """One budget per chained pruner: ``"192+0.5"`` or a sequence; the count must match the chain."""
    parts = spec.split("+") if isinstance(spec, str) else list(spec)
    if len(parts) != count:
        raise BudgetFormatError(
            f"a chain of {count} pruners needs {count} budgets joined by '+' (e.g. '192+0.5'), got {spec!r}"
        )
    return tuple(Budget.parse(p) for p in parts)


@dataclass(frozen=True)
class Schedule:
    """Vision tokens seen by each LLM layer (``counts[l]``: after any drop before layer ``l``)."""

    n_vision: int
    counts: tuple[int, ...]
    stage_layers: tuple[int, ...]  # layers where fresh scores are computed (empty: before the LLM)

    @property
    def steps(self) -> tuple[tuple[int, int], ...]:
        """(layer, count) wherever the count falls."""
        out, prev = [], self.n_vision
        for layer, c in enumerate(self.counts):
            if c != prev:
                out.append((layer, c))
                prev = c
        return tuple(out)

    @property
    def trim_layers(self) -> tuple[int, ...]:
        return tuple(layer for layer, _ in self.steps if layer not in self.stage_layers)

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def avg_tokens(self) -> float:
        return self.total / len(self.counts)

    @property
    def final_tokens(self) -> int:
        return self.counts[-1]

    @property
    def tokens_into_llm(self) -> int:
        return self.counts[0]

    def tflops(self, hidden: int, ffn: int) -> float:
        """LLM TFLOPs counting vision tokens only (pruners.md §0.3)."""
        from lrs_vqa.engine.flops import LayerShape, stack_flops

        return stack_flops(list(self.counts), LayerShape(hidden, ffn, len(self.counts))) / 1e12


def uniform_schedule(n: int, keep: int, n_layers: int) -> Schedule:
    return Schedule(n, (keep,) * n_layers, ())


def scale_layers(layers: Sequence[int], n_layers: int, depth_ref: int | None, who: str) -> tuple[int, ...]:
    """Stage layers given for a ``depth_ref``-layer LLM (LLaVA-1.5-7B: 32), scaled to ``n_layers`` and kept
    within 1..n_layers-1 (a drop before layer 0 has no attention to rank by; one after the last layer is
    useless); ``depth_ref=None`` takes them as they are and refuses out-of-range ones."""
    if n_layers < 2:
        raise PrunerConfigError(f"{who} needs an LLM with at least 2 layers, this one has {n_layers}")
    out = []
    for layer in layers:
        k = layer if depth_ref is None else round_half_up(layer * n_layers / depth_ref)
        if depth_ref is None and not 1 <= k < n_layers:
            raise PrunerConfigError(f"{who} layer {layer} is outside 1..{n_layers - 1} for this LLM")
        out.append(min(max(k, 1), n_layers - 1))
    return tuple(sorted(set(out)))


def _bisect(f: Callable[[float], float], target: float, hi: float) -> float:
    """Largest t in [0, hi] with f(t) <= target, for non-decreasing f (to float precision)."""
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if f(mid) <= target:
            lo = mid
        else:
            hi = mid
    return lo


def solve_schedule(
    budget: Budget,
    n: int,
    n_layers: int,
    stage_layers: Sequence[int],
    profile: Profile,
    t_max: float = 1.0,
) -> Schedule:
    """Per-layer vision-token counts for drops before ``stage_layers`` that meet ``budget`` exactly.

    ``profile(t)`` gives each stage's keep fraction of ``n``; ``profile(t_max)`` must keep everything.
    Tokens / ratio budgets fix the last stage at the budget and place the earlier stages on the profile;
    average budgets choose t so that the counts sum to ``avg · n_layers`` (remainder: see the module doc).
    """
    stages = tuple(sorted(stage_layers))
    if not stages or stages[0] < 1 or stages[-1] >= n_layers:
        raise PrunerConfigError(f"stage layers {stages} must lie within 1..{n_layers - 1}")
    if n < 1:
        raise BudgetUnreachableError("there are no vision tokens to prune")
    m = len(stages)
    widths = [b - a for a, b in zip(stages, (*stages[1:], n_layers), strict=True)]

    def layer_counts(stage_counts: Sequence[int]) -> list[int]:
        counts = [n] * stages[0]
        for c, w in zip(stage_counts, widths, strict=True):
            counts += [c] * w
        return counts

    if budget.kind is BudgetKind.AVG:
        if budget.value > n:
            raise BudgetTooLargeError(f"budget {budget} is larger than the {n} vision tokens present")
        total_f = budget.value * n_layers
        total = round(total_f)
        if abs(total_f - total) > 1e-6:
            raise BudgetUnreachableError(
                f"budget {budget} over {n_layers} layers is {total_f:g} token-layers; an exact average "
                "needs a whole number"
            )
        lowest = stages[0] * n + (n_layers - stages[0])
        if total < lowest:
            raise BudgetUnreachableError(
                f"budget {budget} is below what a first drop at layer {stages[0]} of {n_layers} can reach "
                f"with {n} vision tokens (at least avg:{lowest / n_layers:g}); use an earlier layer"
            )

        def continuous(t: float) -> float:
            fr = profile(t)
            return stages[0] * n + sum(w * min(max(n * f, 1.0), n) for f, w in zip(fr, widths, strict=True))

        t = _bisect(continuous, total, t_max)
        exact = [min(max(n * f, 1.0), n) for f in profile(t)]
        base = []
        for x in exact:
            c = math.floor(x + 1e-9)
            base.append(min(c, base[-1]) if base else c)
        deficit = total - sum(layer_counts(base))
        # Largest remainders first (as in apportionment), so every stage stays within one token of the
        # profile; whatever is left is smaller than a stage and goes to a split below.
        for i in sorted(range(m), key=lambda i: (-(exact[i] - base[i]), i)):
            cap = base[i - 1] if i else n
            if widths[i] <= deficit and base[i] < cap and base[i] < exact[i] + 1 - 1e-9:
                base[i] += 1
                deficit -= widths[i]
        split: tuple[int, int] | None = None  # (stage, first layers of it that keep one more)
        while deficit > 0:
            before = deficit
            for i in reversed(range(m)):
                cap = base[i - 1] if i else n
                q = min(deficit // widths[i], cap - base[i])
                base[i] += q
                deficit -= q * widths[i]
                if 0 < deficit < widths[i] and base[i] < cap:
                    split, deficit = (i, deficit), 0
                if deficit == 0:
                    break
            if deficit == before:  # cannot happen while total <= n * n_layers; guard against a loop
                raise BudgetUnreachableError(f"budget {budget} cannot be met with {n} vision tokens")
        counts = layer_counts(base)
        if split is not None:
            i, extra = split
            for layer in range(stages[i], stages[i] + extra):
                counts[layer] += 1
        if sum(counts) != total:  # the whole point of the solver; fail loudly if arithmetic is off
            raise AssertionError(f"schedule sums to {sum(counts)}, expected {total}")
        return Schedule(n, tuple(counts), stages)

    k = budget.final_count(n)
    t = _bisect(lambda t: n * profile(t)[-1], k, t_max)
    fr = profile(t)
    stage_counts: list[int] = []
    for i in range(m):
        c = k if i == m - 1 else min(max(round_half_up(n * fr[i]), k), n)
        stage_counts.append(min(c, stage_counts[-1]) if stage_counts else c)
    return Schedule(n, tuple(layer_counts(stage_counts)), stages)


# ---------------------------------------------------------------------- schedules shaped by published tables


def published_shape(
    published: Mapping[int, Sequence[int]], budget: Budget, n: int, ref_tokens: int = 576
) -> tuple[float, ...]:
    """Stage proportions (relative to the first stage) of the published schedule nearest the budget;
    ``published`` maps a paper's budget (of ``ref_tokens`` tokens) to its per-stage counts."""
    if budget.kind is BudgetKind.AVG:
        fraction = budget.value / n
        key = min(published, key=lambda b: (abs(b / ref_tokens - fraction), b))
    else:
        fraction = budget.final_count(n) / n
        key = min(published, key=lambda b: (abs(published[b][-1] / ref_tokens - fraction), b))
    first = published[key][0]
    return tuple(c / first for c in published[key])


def shape_profile(shape: Sequence[float], stages: int) -> tuple[Profile, float]:
    """Profile over ``stages`` stages built from a published shape (its first/last entries when fewer;
    continued geometrically when more) and the ``t`` at which it keeps everything."""
    shape = tuple(shape)
    picked = (
        shape if stages == len(shape) else (shape[:1] if stages == 1 else (*shape[: stages - 1], shape[-1]))
    )
    if len(picked) < stages:
        ratio = picked[-1] / picked[-2] if len(picked) > 1 else 0.5
        picked = (*picked, *(picked[-1] * ratio ** (i + 1) for i in range(stages - len(picked))))

    def profile(t: float) -> tuple[float, ...]:
        return tuple(min(1.0, t * s) for s in picked)

    return profile, 1.0 / min(picked)


def published_schedule(
    budget: Budget,
    n: int,
    n_layers: int,
    stage_layers: Sequence[int],
    published: Mapping[int, Sequence[int]],
    ref_tokens: int = 576,
) -> Schedule:
    """:func:`solve_schedule` with the stage proportions of the nearest published schedule."""
    if budget.kind is BudgetKind.AVG and budget.value > n:
        uniform: Profile = lambda t: (t,) * len(stage_layers)  # noqa: E731 - solve_schedule raises here
        return solve_schedule(budget, n, n_layers, stage_layers, uniform)
    profile, t_max = shape_profile(published_shape(published, budget, n, ref_tokens), len(stage_layers))
    return solve_schedule(budget, n, n_layers, stage_layers, profile, t_max)
