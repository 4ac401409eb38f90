"""The registry: lookup by name and spec, clear errors for unknown names and options, chains, and the rows a
``pruners`` listing prints."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pruning import (
    Budget,
    BudgetFormatError,
    Chain,
    ModelTarget,
    PrunerConfigError,
    PruningError,
    UnknownPrunerError,
    describe_pruners,
    get_pruner,
    known_pruners,
    register,
)
from pruning.base import Pruner
from pruning.fastv import FastV
from pruning.registry import PRUNERS

BASELINES = {"divprune", "fastv", "pyramiddrop", "random", "sparsevlm", "visionzip"}


def test_every_baseline_is_registered() -> None:
    assert set(known_pruners()) >= BASELINES
    assert {"fastv", "random"} <= set(known_pruners())


def test_get_pruner_with_defaults_and_options() -> None:
    p = get_pruner("fastv")
    assert isinstance(p, FastV)
    assert p.config.layer == 2 and p.config.depth_ref == 32
    q = get_pruner(" FastV : layer=3, depth_ref=none ")
    assert q.config.layer == 3 and q.config.depth_ref is None
    assert get_pruner("fastv", layer=5).config.layer == 5
    assert get_pruner("random:seed=7,layer=2").config.seed == 7


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownPrunerError, match=r"unknown pruner 'fastw'; known pruners: .*fastv.*random"):
        get_pruner("fastw")
    with pytest.raises(UnknownPrunerError, match="unknown pruner 'nope'"):
        get_pruner("fastv+nope")
    with pytest.raises(UnknownPrunerError, match="empty pruner name"):
        get_pruner("fastv+")
    assert issubclass(UnknownPrunerError, PruningError)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("fastv:k=3", "fastv has no option 'k'; its options are: layer, depth_ref"),
        ("fastv:layer", "needs the form key=value"),
        ("fastv:layer=two", "layer='two' is not a valid int"),
        ("fastv:layer=0", "layer must be an integer >= 1"),
        ("random:seed=x", "seed='x' is not a valid int"),
    ],
)
def test_bad_options(spec: str, words: str) -> None:
    with pytest.raises(PrunerConfigError, match=words):
        get_pruner(spec)


def test_keyword_options_are_checked_too() -> None:
    with pytest.raises(PrunerConfigError, match="fastv has no option 'rank'"):
        get_pruner("fastv", rank=3)
    with pytest.raises(PrunerConfigError, match="options for a chain go into its spec"):
        get_pruner("random+fastv", layer=3)


def test_chain_composes_hooks_in_order_with_one_budget_each() -> None:
    chain = get_pruner("random+fastv:layer=3")
    assert isinstance(chain, Chain)
    assert chain.name == "random+fastv"
    assert [m.name for m in chain.members] == ["random", "fastv"]
    assert chain.stage_labels(32) == ("random: after_projector", "fastv: llm layer 3")
    target = ModelTarget(family="llava", llm_layers=8)
    vision, llm = chain.hooks("12+0.5", target)
    assert len(vision) == 1 and vision[0].budget == Budget.tokens(12)
    assert len(llm) == 1 and llm[0].budget == Budget.ratio(0.5) and llm[0].stage_layers == (1,)
    assert chain.hooks(["12", Budget.ratio(0.5)], target).llm[0].budget == Budget.ratio(0.5)
    with pytest.raises(BudgetFormatError, match="chain of 2 pruners needs 2 budgets"):
        chain.hooks("12", target)
    with pytest.raises(PruningError, match="no single schedule"):
        chain.plan(Budget.tokens(3), 10, 8)


def test_describe_rows() -> None:
    rows = {r.name: r for r in describe_pruners()}
    assert set(rows) == set(known_pruners())
    fastv = rows["fastv"]
    assert fastv.stages == ("llm layer 2",)
    assert fastv.defaults == {"layer": 2, "depth_ref": 32}
    assert "FastV" in fastv.paper and "2024" in fastv.paper
    assert fastv.signals == ("llm attention: last prompt token -> vision",)
    assert rows["random"].stages == ("after_projector",)
    for row in rows.values():
        assert row.stages and row.signals and row.paper


def test_register_refuses_duplicates_and_bad_names() -> None:
    @dataclass(frozen=True)
    class NoConfig:
        pass

    class Dummy(Pruner):
        Config = NoConfig

        def plan(self, budget, n_vision, n_layers):  # pragma: no cover - never called
            raise NotImplementedError

        def hooks(self, budget, target):  # pragma: no cover
            raise NotImplementedError

    with pytest.raises(PruningError, match="already registered"):
        register("fastv")(Dummy)
    for bad in ("Fast", "a+b", "a:b", ""):
        with pytest.raises(PruningError, match="bad pruner name"):
            register(bad)
    assert PRUNERS["fastv"] is FastV


def test_visionzip_refuses_a_window_ordered_encoder() -> None:
    target = ModelTarget(
        family="qwen2_vl", llm_layers=28, vision_layers=32, feature_layer=31, window_order=True
    )
    with pytest.raises(PrunerConfigError, match=r"Qwen2\.5-VL"):
        get_pruner("visionzip").hooks("64", target)
