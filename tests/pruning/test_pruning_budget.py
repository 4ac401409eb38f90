"""Budgets: parsing, typed one-line errors, and the schedule solver meeting each accounting exactly (golden
schedules worked out by hand in the comments)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pruning.budget import (
    Budget,
    BudgetKind,
    Schedule,
    parse_budgets,
    round_half_up,
    scale_layers,
    solve_schedule,
    uniform_schedule,
)
from pruning.errors import (
    BudgetFormatError,
    BudgetTooLargeError,
    BudgetUnreachableError,
    NegativeBudgetError,
    NonPositiveBudgetError,
    PrunerConfigError,
    PruningError,
    ZeroBudgetError,
)


def one_stage(t: float) -> tuple[float]:
    return (t,)


def pdrop_profile(t: float) -> tuple[float, float, float]:
    return (t, t * t, t**3)


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("64", BudgetKind.TOKENS, 64),
        (" tokens:64 ", BudgetKind.TOKENS, 64),
        ("tokens:64.0", BudgetKind.TOKENS, 64),
        ("avg:128", BudgetKind.AVG, 128),
        ("AVG:96.5", BudgetKind.AVG, 96.5),
        ("0.25", BudgetKind.RATIO, 0.25),
        ("ratio:0.25", BudgetKind.RATIO, 0.25),
        ("1.0", BudgetKind.RATIO, 1.0),
        (".5", BudgetKind.RATIO, 0.5),
        (64, BudgetKind.TOKENS, 64),
        (0.5, BudgetKind.RATIO, 0.5),
    ],
)
def test_parse(text: str | int | float, kind: BudgetKind, value: float) -> None:
    b = Budget.parse(text)
    assert b.kind is kind
    assert b.value == value
    assert Budget.parse(str(b)) == b  # str() round-trips
    assert Budget.parse(b) is b


@pytest.mark.parametrize(
    ("text", "error", "words"),
    [
        ("-3", NegativeBudgetError, "negative"),
        ("avg:-1", NegativeBudgetError, "negative"),
        ("0", ZeroBudgetError, "keeps no token"),
        ("ratio:0", ZeroBudgetError, "keeps no token"),
        ("0.0", ZeroBudgetError, "keeps no token"),
        ("1.5", BudgetTooLargeError, "above 1"),
        ("ratio:2", BudgetTooLargeError, "above 1"),
        ("tokens:64.5", BudgetFormatError, "whole number"),
        ("avg:", BudgetFormatError, "is not a token count"),
        ("lots", BudgetFormatError, "is not a token count"),
        ("mean:64", BudgetFormatError, "is not a token count"),
        ("64:avg", BudgetFormatError, "is not a token count"),
        ("nan", BudgetFormatError, "is not a token count"),
        ("", BudgetFormatError, "is not a token count"),
        (True, BudgetFormatError, "is not a token count"),
        (None, BudgetFormatError, "is not a token count"),
    ],
)
def test_bad_budgets_give_typed_one_line_errors(text: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words) as info:
        Budget.parse(text)  # type: ignore[arg-type]
    assert isinstance(info.value, PruningError)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_error_family() -> None:
    assert issubclass(ZeroBudgetError, NonPositiveBudgetError)
    assert issubclass(NegativeBudgetError, NonPositiveBudgetError)
    with pytest.raises(BudgetFormatError, match="kind 'mean'"):
        Budget("mean", 3)  # type: ignore[arg-type]


def test_counts_against_the_tokens_present() -> None:
    assert Budget.parse("64").final_count(576) == 64
    assert Budget.parse("0.25").final_count(10) == 3  # 2.5 rounds half up (not to even)
    assert Budget.parse("0.01").final_count(10) == 1  # a ratio keeps at least one token
    assert Budget.parse("avg:12").uniform_count(16) == 12
    with pytest.raises(BudgetTooLargeError, match="larger than the 16 vision tokens"):
        Budget.parse("64").final_count(16)
    with pytest.raises(BudgetTooLargeError, match="larger than the 16"):
        Budget.parse("avg:17").uniform_count(16)
    with pytest.raises(BudgetUnreachableError, match="whole number"):
        Budget.parse("avg:12.5").uniform_count(16)


def test_round_half_up() -> None:
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.4999)] == [1, 2, 3, 2]


def test_chain_budgets() -> None:
    assert parse_budgets("192+0.5", 2) == (Budget.tokens(192), Budget.ratio(0.5))
    assert parse_budgets(["avg:64", 32], 2) == (Budget.avg(64), Budget.tokens(32))
    with pytest.raises(BudgetFormatError, match="chain of 2 pruners needs 2 budgets"):
        parse_budgets("64", 2)


def test_fastv_average_schedule_by_hand() -> None:
    # 576 tokens, 32 layers, drop before layer 2: 2·576 + 30·k = 64·32 = 2048 → k = 29.87.
    # 30 layers at 29 leave 26 token-layers: the first 26 layers of the stage keep 30, then a trim to 29.
    s = solve_schedule(Budget.avg(64), 576, 32, [2], one_stage)
    assert s.steps == ((2, 30), (28, 29))
    assert s.counts == (576, 576, *([30] * 26), 29, 29, 29, 29)
    assert s.total == 2048
    assert s.avg_tokens == 64
    assert s.stage_layers == (2,)
    assert s.trim_layers == (28,)


def test_fastv_tokens_and_ratio_schedules() -> None:
    assert solve_schedule(Budget.tokens(64), 576, 32, [2], one_stage).steps == ((2, 64),)
    s = solve_schedule(Budget.ratio(0.5), 576, 32, [2], one_stage)
    assert s.steps == ((2, 288),)  # FastV's R = 50 % → fast_v_attention_rank = 288
    assert s.final_tokens == 288


def test_pyramiddrop_default_lambda_is_recovered_exactly() -> None:
    # λ = 0.5 at layers 8/16/24 keeps 288/144/72: average (8·576 + 8·288 + 8·144 + 8·72)/32 = 270.
    s = solve_schedule(Budget.avg(270), 576, 32, [8, 16, 24], pdrop_profile)
    assert s.steps == ((8, 288), (16, 144), (24, 72))
    assert s.trim_layers == ()
    # Final-token accounting: 72 = 576·λ³ → λ = 0.5 again.
    assert solve_schedule(Budget.tokens(72), 576, 32, [8, 16, 24], pdrop_profile).steps == (
        (8, 288),
        (16, 144),
        (24, 72),
    )


@pytest.mark.parametrize("avg", [192, 200, 333, 575])
def test_pyramiddrop_average_is_exact_and_follows_lambda(avg: int) -> None:
    s = solve_schedule(Budget.avg(avg), 576, 32, [8, 16, 24], pdrop_profile)
    assert sum(s.counts) == avg * 32
    assert all(a >= b for a, b in itertools.pairwise(s.counts))
    assert len(s.trim_layers) <= 1
    # Independent λ: the real root of 8·576·(1 + λ + λ² + λ³) = avg·32.
    roots = np.roots([1, 1, 1, 1 - avg * 32 / (8 * 576)])
    lam = float(next(r.real for r in roots if abs(r.imag) < 1e-9 and 0 < r.real <= 1))
    for stage, layer in enumerate((8, 16, 24), start=1):
        assert abs(s.counts[layer] - 576 * lam**stage) <= 1.0 + 1e-9


def test_pyramiddrop_average_with_clipped_stages() -> None:
    # avg 150: 4800 token-layers; stages 2 and 3 clip at one token (8 + 8), so stage 1 keeps
    # (4800 - 8·576 - 16) / 8 = 22 exactly.
    s = solve_schedule(Budget.avg(150), 576, 32, [8, 16, 24], pdrop_profile)
    assert s.steps == ((8, 22), (16, 1))
    assert s.total == 4800


def test_pyramiddrop_cannot_reach_below_its_first_layer() -> None:
    # pruners.md §2.3: with the first drop at layer 8 the average cannot go below 576·8/32 = 144.
    with pytest.raises(BudgetUnreachableError, match=r"at least avg:144\.75"):
        solve_schedule(Budget.avg(64), 576, 32, [8, 16, 24], pdrop_profile)


def test_average_budget_errors() -> None:
    with pytest.raises(BudgetTooLargeError, match="larger than the 576"):
        solve_schedule(Budget.avg(600), 576, 32, [2], one_stage)
    with pytest.raises(BudgetUnreachableError, match="whole number"):
        solve_schedule(Budget.avg(100.3), 576, 32, [2], one_stage)
    with pytest.raises(PrunerConfigError, match="stage layers"):
        solve_schedule(Budget.avg(100), 576, 32, [32], one_stage)


def test_keep_all_budgets_keep_all() -> None:
    for b in (Budget.avg(576), Budget.tokens(576), Budget.ratio(1.0)):
        s = solve_schedule(b, 576, 32, [8, 16, 24], pdrop_profile)
        assert s.counts == (576,) * 32
        assert s.steps == ()


def test_small_models() -> None:
    # 2 layers, one stage at 1: (16 + k)/2 = 10 → k = 4; avg 10.5 → k = 5.
    assert solve_schedule(Budget.avg(10), 16, 2, [1], one_stage).counts == (16, 4)
    assert solve_schedule(Budget.avg(10.5), 16, 2, [1], one_stage).counts == (16, 5)
    assert uniform_schedule(16, 5, 2) == Schedule(16, (5, 5), ())


def test_scale_layers() -> None:
    assert scale_layers([8, 16, 24], 32, 32, "x") == (8, 16, 24)
    assert scale_layers([8, 16, 24], 28, 32, "x") == (7, 14, 21)
    assert scale_layers([2], 24, 32, "x") == (2,)  # 1.5 rounds half up
    assert scale_layers([8, 16, 24], 2, 32, "x") == (1,)  # collapses onto the only legal layer
    assert scale_layers([2], 8, None, "x") == (2,)
    with pytest.raises(PrunerConfigError, match=r"layer 9 is outside 1\.\.7"):
        scale_layers([9], 8, None, "x")
    with pytest.raises(PrunerConfigError, match="at least 2 layers"):
        scale_layers([1], 1, 32, "x")


def test_schedule_accounting_matches_flops_anchor() -> None:
    # VScan's avg-64 schedule (96 → 32 at layer 16) is 0.415 TFLOPs on LLaVA-1.5-7B (pruners.md §0.3).
    s = Schedule(576, (96,) * 16 + (32,) * 16, (16,))
    assert s.avg_tokens == 64
    assert s.tflops(4096, 11008) == pytest.approx(0.415, abs=1e-3)
