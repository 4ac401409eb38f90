"""Pruners on tiny random models of the three families (8 LLM layers, so multi-stage schedules have room):
keep-all budgets reproduce unpruned logits, every baseline meets its budget exactly in the engine's own
accounting, FastV keeps what eager attention says, chains compose and detach restores the model."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from PIL import Image

from lrs_vqa.answer import AskOptions, answer
from lrs_vqa.models.base import ModelAdapter
from lrs_vqa.tiny import FAMILIES
from pruning import BudgetTooLargeError, BudgetUnreachableError, get_pruner
from pyramid.dip import PyramidOptions
from tests.pruning.helpers import LLM_LAYERS, QUESTION, stock, thumbnail_prompt

LLM_PRUNERS = ["fastv", "pyramiddrop", "sparsevlm", "random:layer=2"]
VISION_PRUNERS = ["visionzip", "divprune", "random"]


# ------------------------------------------------------------------------------------------ keep-all


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", LLM_PRUNERS)
def test_keep_all_budget_equals_no_pruning_in_the_llm(
    spec: str, family: str, adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    adapter = adapters[family]
    inputs = stock(adapter, image)
    n = int(inputs.vision.sum())
    plain = adapter.decoder.prefill(inputs, all_logits=True)
    # One kind of keep-all budget per family keeps the run short; together they cover all three.
    budget = {"llava": str(n), "llava_onevision": f"avg:{n}", "qwen2_vl": "1.0"}[family]
    with get_pruner(spec).attach(adapter, budget) as att:
        pruned = adapter.decoder.prefill(inputs, att.llm_hooks, all_logits=True)
    assert pruned.vision_tokens_per_layer == [n] * LLM_LAYERS
    torch.testing.assert_close(pruned.logits, plain.logits, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", VISION_PRUNERS)
def test_keep_all_budget_equals_no_pruning_before_the_llm(
    spec: str, family: str, adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    adapter = adapters[family]
    plain_inputs = thumbnail_prompt(adapter, scene, tmp_path)
    n = int(plain_inputs.vision.sum())
    with get_pruner(spec).attach(adapter, n) as att:
        inputs = thumbnail_prompt(adapter, scene, tmp_path, att.vision_hooks)
    calls = [c for h in att.vision_hooks for c in h.calls]
    assert len(calls) == 1 and calls[0][0] == calls[0][1] > 0  # the hook ran on the group and kept all
    plain = adapter.decoder.prefill(plain_inputs, all_logits=True)
    pruned = adapter.decoder.prefill(inputs, all_logits=True)
    torch.testing.assert_close(pruned.logits, plain.logits, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ budgets


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", LLM_PRUNERS)
def test_llm_pruners_meet_each_budget_exactly(
    spec: str, family: str, adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    adapter = adapters[family]
    inputs = stock(adapter, image)
    n = int(inputs.vision.sum())
    pruner = get_pruner(spec)
    first = pruner.layers(LLM_LAYERS)[0]
    k = max(1, n // 3)
    # An average the schedule can reach but not with one count per stage (forces the remainder trim).
    avg = (first * n + (LLM_LAYERS - first) * k + 1) / LLM_LAYERS
    for budget, check in (
        (str(k), lambda c: c[-1] == k),
        (f"avg:{avg!r}", lambda c: sum(c) == round(avg * LLM_LAYERS)),
        ("0.5", lambda c: c[-1] == (n + 1) // 2),
    ):
        hooks = pruner.hooks(budget, _target(adapter))
        result = adapter.decoder.prefill(inputs, hooks.llm)
        counts = result.vision_tokens_per_layer
        assert check(counts), (budget, counts)
        assert tuple(counts) == hooks.llm[0].schedule.counts
        assert counts[:first] == [n] * first  # nothing dropped before the first stage
        assert all(a >= b for a, b in itertools.pairwise(counts))


def _target(adapter: ModelAdapter):
    from pruning import ModelTarget

    return ModelTarget.from_adapter(adapter)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", VISION_PRUNERS)
def test_vision_pruners_meet_each_budget_exactly_through_answer(
    spec: str, family: str, adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    adapter = adapters[family]
    n = int(thumbnail_prompt(adapter, scene, tmp_path).vision.sum())
    options = AskOptions(
        strategy="global", max_new_tokens=1, pyramid=PyramidOptions(cache_dir=tmp_path / "cache")
    )
    for budget, expected in ((str(n // 2), n // 2), (f"avg:{n // 3}", n // 3), ("0.25", round(n / 4 + 1e-9))):
        with get_pruner(spec).attach(adapter, budget) as att:
            record = answer(scene, QUESTION, model=adapter, options=options, vision_hooks=att.vision_hooks)
        stats = record.stats
        assert stats.vision_tokens_into_llm == expected, budget
        assert stats.vision_tokens_per_layer == [expected] * LLM_LAYERS
        assert stats.avg_vision_tokens_over_layers == expected
        assert att.vision_hooks[0].calls == [(n, expected)]


def test_in_llm_average_budget_through_answer(
    adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    adapter = adapters["llava"]
    n = int(thumbnail_prompt(adapter, scene, tmp_path).vision.sum())  # 12: padding-only tokens are gone
    options = AskOptions(
        strategy="global", max_new_tokens=1, pyramid=PyramidOptions(cache_dir=tmp_path / "cache")
    )
    with get_pruner("fastv").attach(adapter, "avg:7.5") as att:
        record = answer(scene, QUESTION, model=adapter, options=options, llm_hooks=att.llm_hooks)
    assert record.stats.avg_vision_tokens_over_layers == 7.5
    assert record.stats.vision_tokens_into_llm == n


def test_budget_errors_at_run_time(adapters: dict[str, ModelAdapter], image: Image.Image) -> None:
    adapter = adapters["llava"]
    inputs = stock(adapter, image)  # 16 vision tokens
    with get_pruner("fastv").attach(adapter, "17") as att, pytest.raises(BudgetTooLargeError, match="16"):
        adapter.decoder.prefill(inputs, att.llm_hooks)
    unreachable = pytest.raises(BudgetUnreachableError, match="layer 4")
    with get_pruner("fastv:layer=4,depth_ref=none").attach(adapter, "avg:2") as att, unreachable:
        adapter.decoder.prefill(inputs, att.llm_hooks)


# ------------------------------------------------------------------------------------------ FastV's choice


@pytest.mark.parametrize("family", FAMILIES)
def test_fastv_keeps_the_tokens_eager_attention_ranks_highest(
    family: str, adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    adapter = adapters[family]
    prompt, stock_inputs = adapter.stock_prompt(image, QUESTION)
    inputs = prompt.inputs
    layer, k = 3, 5
    att = get_pruner(f"fastv:layer={layer},depth_ref=none").attach(adapter, k)
    result = adapter.decoder.prefill(inputs, att.llm_hooks)
    kept = result.kept_orig_index[layer]
    kept_vision = kept[inputs.vision[kept]]
    # Independent: the stock model's eager attention at layer-1, last row, head mean, vision columns.
    adapter.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            eager = adapter.model(**stock_inputs, output_attentions=True).attentions
    finally:
        adapter.model.set_attn_implementation("lrs_vqa_sdpa_tap")
    row = eager[layer - 1][0].float().mean(0)[-1]
    vision_cols = torch.nonzero(inputs.vision).flatten()
    if family == "qwen2_vl":  # the stock sequence also holds the padding-free rows only
        assert row.shape[0] == inputs.length
    expected = torch.sort(vision_cols[row[vision_cols].topk(k).indices]).values
    assert torch.equal(kept_vision, expected)


# ------------------------------------------------------------------------------------------ chains, detach


@pytest.mark.parametrize("family", FAMILIES)
def test_chain_applies_both_budgets(
    family: str, adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    adapter = adapters[family]
    n = int(thumbnail_prompt(adapter, scene, tmp_path).vision.sum())
    with get_pruner("random+fastv").attach(adapter, f"{n // 2}+0.5") as att:
        inputs = thumbnail_prompt(adapter, scene, tmp_path, att.vision_hooks)
        result = adapter.decoder.prefill(inputs, att.llm_hooks)
    first = get_pruner("fastv").layers(LLM_LAYERS)[0]
    half = n // 2
    assert result.vision_tokens_per_layer == [half] * first + [(half + 1) // 2] * (LLM_LAYERS - first)


def test_detach_restores_the_unpruned_run(
    adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    adapter = adapters["llava"]
    plain_inputs = thumbnail_prompt(adapter, scene, tmp_path)
    plain = adapter.decoder.prefill(plain_inputs, all_logits=True)
    att = get_pruner("random+fastv").attach(adapter, "6+3")
    assert att.attached
    pruned_inputs = thumbnail_prompt(adapter, scene, tmp_path, att.vision_hooks)
    assert int(pruned_inputs.vision.sum()) == 6
    att.detach()
    assert not att.attached
    att.detach()  # idempotent
    inputs = thumbnail_prompt(adapter, scene, tmp_path, att.vision_hooks)
    after = adapter.decoder.prefill(inputs, att.llm_hooks, all_logits=True)
    assert after.vision_tokens_per_layer == plain.vision_tokens_per_layer
    torch.testing.assert_close(after.logits, plain.logits, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_visionzip_merges_with_the_encoders_keys_and_detach_removes_the_key_hook(
    family: str, adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    adapter = adapters[family]
    n = int(thumbnail_prompt(adapter, scene, tmp_path).vision.sum())
    modules = adapter.vision_attention_modules()
    projections = [getattr(m, "k_proj", None) or m.qkv for m in modules]
    before = [len(p._forward_hooks) for p in projections]
    by_keys = get_pruner("visionzip").attach(adapter, n // 2)
    assert sum(len(p._forward_hooks) for p in projections) == sum(before) + 1
    seen: list[torch.Tensor] = []
    hook = by_keys.vision_hooks[0]
    original = hook.capture_keys
    hook.capture_keys = lambda keys: (seen.append(keys), original(keys))  # type: ignore[method-assign]
    keys_inputs = thumbnail_prompt(adapter, scene, tmp_path, by_keys.vision_hooks)
    assert len(seen) == 1 and hook.keys is None  # captured once for this encode, consumed by the merge
    by_keys.detach()
    assert [len(p._forward_hooks) for p in projections] == before
    with get_pruner("visionzip:metric=features").attach(adapter, n // 2) as by_feats:
        feats_inputs = thumbnail_prompt(adapter, scene, tmp_path, by_feats.vision_hooks)
    assert int(keys_inputs.vision.sum()) == int(feats_inputs.vision.sum()) == n // 2


@pytest.mark.parametrize("family", FAMILIES)
def test_visionzip_contextual_merge_follows_the_keys(
    family: str, adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    """The merge groups tokens by their keys' similarity: feeding the same encode other keys (shuffled over
    the tokens) changes the merged tokens, and only them — the dominant tokens are chosen by attention."""
    adapter = adapters[family]
    n = int(thumbnail_prompt(adapter, scene, tmp_path).vision.sum())

    def run(shuffle: bool) -> torch.Tensor:
        # half the kept tokens are contextual (merged), so the merge has something to show
        with get_pruner("visionzip:contextual_share=0.5").attach(adapter, n // 2) as att:
            hook = att.vision_hooks[0]
            original = hook.capture_keys

            def capture(keys: torch.Tensor) -> None:
                if shuffle:
                    g = torch.Generator().manual_seed(0)
                    keys = keys[..., torch.randperm(keys.shape[-2], generator=g), :]
                original(keys)

            hook.capture_keys = capture  # type: ignore[method-assign]
            inputs = thumbnail_prompt(adapter, scene, tmp_path, att.vision_hooks)
        return inputs.embeds[0, inputs.vision]

    same, other = run(False), run(True)
    assert same.shape == other.shape
    changed = (same - other).abs().amax(-1) > 1e-6
    assert 0 < int(changed.sum()) < len(changed)  # the contextual tokens moved, the dominant ones did not
