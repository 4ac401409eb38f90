"""AdaptInfer, VFlowOpt and LVPruning: golden values for their pure functions (worked by hand or by plain
re-implementations here, never by the code under test), budgets met exactly and keep-all runs equal to
unpruned runs on tiny models of every family, the planted/independent checks, and the offline tools
(AdaptInfer's schedule analysis, VFlowOpt's calibration, LVPruning's training and checkpoints)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_vqa.engine.decoder import PrefillInputs
from lrs_vqa.models.base import ModelAdapter
from lrs_vqa.tiny import FAMILIES
from pruning import ModelTarget, PrunerConfigError, describe_pruners, get_pruner
from pruning.adaptinfer import (
    adaptinfer_scores,
    analyse_schedule,
    change_points,
    text_prior,
    text_to_vision_mass,
)
from pruning.budget import Budget
from pruning.lvpruning import (
    DecisionModule,
    DecisionModules,
    LVPruningCheckpointError,
    MissingCheckpointError,
    ModuleSpec,
    TrainConfig,
    gumbel_keep,
    keep_margin,
    language_rows,
    load_checkpoint,
    masked_causal_bias,
    ratio_loss,
    save_checkpoint,
    train,
)
from pruning.vflowopt import (
    calibrate,
    context_relevance,
    grey_entropy,
    grid_cells,
    importance,
    recycle_merge,
    vision_keep,
)
from tests.pruning.helpers import LLM_LAYERS, QUESTION, stock


def test_describe_pruners_lists_the_three() -> None:
    rows = {r.name: r for r in describe_pruners()}
    for name in ("adaptinfer", "vflowopt", "lvpruning"):
        assert name in rows, name
        assert rows[name].paper and rows[name].stages and rows[name].signals and rows[name].defaults


# ========================================================================================== AdaptInfer


def test_text_prior_and_scores_by_hand() -> None:
    # Att = [[1, 0], [.5, .5]] → Sym = Att + Attᵀ − diag(Att) = [[1, .5], [.5, .5]] → prior = (1.5, 1.0).
    att = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert text_prior(att).tolist() == pytest.approx([1.5, 1.0])
    # scores = 1.5·(.2, .8) + 1.0·(.6, .4) = (.9, 1.6)
    t2v = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    assert adaptinfer_scores(att, t2v).tolist() == pytest.approx([0.9, 1.6])


def test_adaptinfer_scores_match_a_plain_python_version() -> None:
    g = torch.Generator().manual_seed(1)
    att, t2v = torch.rand(4, 4, generator=g), torch.rand(4, 6, generator=g)
    a, m = att.tolist(), t2v.tolist()
    prior = [sum(a[q][t] + a[t][q] - (a[t][t] if q == t else 0.0) for q in range(4)) for t in range(4)]
    expected = [sum(prior[t] * m[t][v] for t in range(4)) for v in range(6)]
    assert adaptinfer_scores(att, t2v).tolist() == pytest.approx(expected, rel=1e-5)


def test_change_points_find_the_steps() -> None:
    # Four flat segments (zero error) start at 0, 3, 6 and 8.
    assert change_points([0, 0, 0, 5, 5, 5, 2, 2, 1, 1], 3) == (3, 6, 8)
    # One split of (1, 1, 1, 9): after the third value.
    assert change_points([1, 1, 1, 9], 1) == (3,)
    with pytest.raises(PrunerConfigError):
        change_points([1, 2], 2)


def test_text_to_vision_mass() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]])
    # rows' mass on columns 1, 2: 0.9 and 0.5 → mean 0.7
    assert text_to_vision_mass(probs, torch.tensor([1, 2])) == pytest.approx(0.7)


@pytest.mark.parametrize("family", FAMILIES)
def test_adaptinfer_keep_all_and_exact_budgets(
    family: str, adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    adapter = adapters[family]
    inputs = stock(adapter, image)
    n = int(inputs.vision.sum())
    plain = adapter.decoder.prefill(inputs, all_logits=True)
    for keep_all in (str(n), f"avg:{n}", "1.0"):
        with get_pruner("adaptinfer").attach(adapter, keep_all) as att:
            pruned = adapter.decoder.prefill(inputs, att.llm_hooks, all_logits=True)
        assert pruned.vision_tokens_per_layer == [n] * LLM_LAYERS
        torch.testing.assert_close(pruned.logits, plain.logits, rtol=0, atol=0)
    pruner = get_pruner("adaptinfer")
    first = pruner.layers(LLM_LAYERS)[0]
    k = max(1, n // 4)
    avg = (first * n + (LLM_LAYERS - first) * k + 1) / LLM_LAYERS
    for budget, check in (
        (str(k), lambda c: c[-1] == k),
        (f"avg:{avg!r}", lambda c: sum(c) == round(avg * LLM_LAYERS)),
        ("0.5", lambda c: c[-1] == (n + 1) // 2),
    ):
        hooks = pruner.hooks(budget, ModelTarget.from_adapter(adapter))
        counts = adapter.decoder.prefill(inputs, hooks.llm).vision_tokens_per_layer
        assert check(counts), (budget, counts)
        assert tuple(counts) == hooks.llm[0].schedule.counts
        assert all(a >= b for a, b in itertools.pairwise(counts))


def test_adaptinfer_recycling_meets_the_budget_with_merged_tokens(
    adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    adapter = adapters["llava"]
    inputs = stock(adapter, image)
    spec = "adaptinfer:layers=3,depth_ref=none,recycle=true,recycle_share=1.0,cluster_div=2"
    with get_pruner(spec).attach(adapter, 6) as att:
        result = adapter.decoder.prefill(inputs, att.llm_hooks, all_logits=True)
    with get_pruner("adaptinfer:layers=3,depth_ref=none").attach(adapter, 6) as att:
        plain = adapter.decoder.prefill(inputs, att.llm_hooks, all_logits=True)
    assert result.vision_tokens_per_layer[3:] == plain.vision_tokens_per_layer[3:] == [6] * 5
    assert not torch.equal(result.logits, plain.logits)  # cluster tokens carry merged states


@pytest.mark.parametrize("prior", ["head", "mean"])
def test_adaptinfer_keeps_what_eager_attention_ranks_highest(
    prior: str, adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    """``head`` (default, the card's code): Σ_h prior_h·A_h from every head's eager attention; ``mean``: the
    prior and weights of the head-mean attention."""
    adapter = adapters["llava"]
    prompt, stock_inputs = adapter.stock_prompt(image, QUESTION)
    inputs = prompt.inputs
    layer, k = 3, 5
    att = get_pruner(f"adaptinfer:layers={layer},depth_ref=none,prior={prior}").attach(adapter, k)
    result = adapter.decoder.prefill(inputs, att.llm_hooks)
    kept = result.kept_orig_index[layer]
    kept_vision = kept[inputs.vision[kept]]
    adapter.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            eager = adapter.model(**stock_inputs, output_attentions=True).attentions
    finally:
        adapter.model.set_attn_implementation("lrs_vqa_sdpa_tap")
    heads = eager[layer - 1][0].float()  # (H, L, L)
    per = [heads.mean(0)] if prior == "mean" else list(heads)
    vision_cols = torch.nonzero(inputs.vision).flatten().tolist()
    text = list(range(vision_cols[-1] + 1, heads.shape[-1]))
    scores = [0.0] * len(vision_cols)
    for probs in per:
        a = probs.tolist()
        pri = {t: sum(a[q][t] + a[t][q] for q in text) - a[t][t] for t in text}
        for i, v in enumerate(vision_cols):
            scores[i] += sum(pri[t] * a[t][v] for t in text)
    order = sorted(range(len(vision_cols)), key=lambda i: (-scores[i], i))[:k]
    assert kept_vision.tolist() == sorted(vision_cols[i] for i in order)


def test_adaptinfer_head_prior_differs_from_the_head_mean() -> None:
    # Two heads with opposite text priors: the per-head sum is not the head-mean formula.
    att = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    t2v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    per_head = adaptinfer_scores(att, t2v)
    expected = adaptinfer_scores(att[0], t2v[0]) + adaptinfer_scores(att[1], t2v[1])
    assert per_head.tolist() == pytest.approx(expected.tolist())
    assert per_head.tolist() != pytest.approx(adaptinfer_scores(att.mean(0), t2v.mean(0)).tolist())


@pytest.mark.parametrize(("label", "counts", "total"), [(64, (133, 27, 3), 2079), (128, (290, 72, 18), 4122)])
def test_adaptinfer_reproduces_the_published_count_tables(label: int, counts: tuple, total: int) -> None:
    """LLaVA-1.5-7B's shape (576 tokens, 32 layers): the table verbatim, reduced counts from layers 1/10/20,
    whose average is the label's published value (not an exact budget)."""
    schedule = get_pruner("adaptinfer").plan(f"avg:{label}", 576, 32)
    c1, c2, c3 = counts
    assert schedule.counts == (576,) + (c1,) * 9 + (c2,) * 10 + (c3,) * 12
    assert sum(schedule.counts) == total  # averages 64.97 and 128.8, as the card computes
    assert schedule.stage_layers == (1, 10, 20)
    # any other budget is met exactly by the solver
    assert sum(get_pruner("adaptinfer").plan("avg:100", 576, 32).counts) == 100 * 32


def test_adaptinfer_analysis_gives_a_schedule_the_pruner_uses(
    adapters: dict[str, ModelAdapter], image: Image.Image, tmp_path: Path
) -> None:
    adapter = adapters["llava"]
    other = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    samples = [stock(adapter, image), stock(adapter, other, "how many cars are there?")]
    out = tmp_path / "schedule.json"
    data = analyse_schedule(adapter, samples, stages=2, out=out)
    layers = data["layers"]
    assert json.loads(out.read_text())["layers"] == layers
    assert len(layers) == 2 and layers == sorted(set(layers))
    assert all(1 <= k < LLM_LAYERS for k in layers)
    assert data["n_layers"] == LLM_LAYERS and len(data["curve"]) == LLM_LAYERS
    assert all(0.0 <= v <= 1.0 + 1e-6 for v in data["curve"])
    pruner = get_pruner(f"adaptinfer:schedule={out}")
    assert pruner.layers(LLM_LAYERS) == tuple(layers)
    hooks = pruner.hooks("3", ModelTarget.from_adapter(adapter))
    counts = adapter.decoder.prefill(samples[0], hooks.llm).vision_tokens_per_layer
    assert hooks.llm[0].schedule.stage_layers == tuple(layers)
    n = int(samples[0].vision.sum())
    assert counts[: layers[0]] == [n] * layers[0] and counts[-1] == 3
    assert {layer for layer, _ in hooks.llm[0].schedule.steps} <= set(layers)  # drops only there
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "nope"}))
    with pytest.raises(PrunerConfigError, match="schedule"):
        get_pruner(f"adaptinfer:schedule={bad}").layers(LLM_LAYERS)


# ========================================================================================== VFlowOpt


def test_context_relevance_by_hand() -> None:
    att = torch.tensor([[0.5, 0.25, 0.25], [0.6, 0.2, 0.2], [0.7, 0.1, 0.2]])
    # received = (.6, .1833, .2167), mean 1/3. t = 1.5: only token 0 passes (.6 > .5) → row 0.
    assert context_relevance(att, 1.5).tolist() == pytest.approx([0.5, 0.25, 0.25])
    # t = 0.5: everybody passes (> 1/6) → the mean of all rows = received.
    assert context_relevance(att, 0.5).tolist() == pytest.approx([0.6, 0.55 / 3, 0.65 / 3])
    # t = 10: nobody passes → the most-received token (0) is the context.
    assert context_relevance(att, 10.0).tolist() == pytest.approx([0.5, 0.25, 0.25])


def test_grey_entropy_by_hand() -> None:
    grey = torch.tensor([[0, 0, 255, 255], [7, 7, 7, 7], [0, 64, 128, 192], [0, 0, 0, 1]])
    # two equal bins: 1 bit; one bin: 0; four bins: 2 bits; (3/4, 1/4): 0.8113 bits
    h34 = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert grey_entropy(grey).tolist() == pytest.approx([1.0, 0.0, 2.0, h34], abs=1e-6)


def test_importance_and_cells_by_hand() -> None:
    # softmax(0, ln 3) = (1/4, 3/4); 1 + .5/4 = 1.125, 2 + .5·3/4 = 2.375
    ent = torch.tensor([0.0, math.log(3)])
    assert importance(torch.tensor([1.0, 2.0]), ent, 0.5).tolist() == pytest.approx([1.125, 2.375])
    assert importance(torch.tensor([1.0, 2.0]), ent, 0.0).tolist() == [1.0, 2.0]
    # 4×4 grid, 2×2 cells: {0, 1, 4, 5} {2, 3, 6, 7} {8, 9, 12, 13} {10, 11, 14, 15}; tile 1 apart
    cells = grid_cells(torch.tensor([0] * 16 + [1]), torch.tensor([*range(16), 0]), 4, 2.0).tolist()
    groups = [{i for i in range(16) if cells[i] == cells[j]} for j in (0, 2, 8, 10)]
    assert groups == [{0, 1, 4, 5}, {2, 3, 6, 7}, {8, 9, 12, 13}, {10, 11, 14, 15}]
    assert cells[16] not in cells[:16]


def test_recycle_merge_by_hand() -> None:
    imp = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.3, 0.05])
    feats = torch.tensor([[10.0], [20.0], [30.0], [40.0], [50.0], [60.0]])
    cells = torch.tensor([0, 0, 1, 1, 2, 2])
    # Ascending: 5, 1, 2, 4, 3, 0. Low sets of size 2, 3, 4 leave 6, 6, 5 tokens; size 5 → {5,1,2,4,3} in
    # cells {0: [1], 1: [2, 3], 2: [5, 4]} → 6 − 5 + 3 = 4 kept: 0, and representatives 1, 3, 4 carrying
    # 20, (.2·30 + .8·40)/1 = 38 and (.05·60 + .3·50)/.35.
    out = recycle_merge(imp, feats, cells, 4)
    assert out is not None
    kept, new = out
    assert kept.tolist() == [0, 1, 3, 4]
    assert new.flatten().tolist() == pytest.approx([10.0, 20.0, 38.0, 18 / 0.35])
    assert recycle_merge(imp[:3], feats[:3], torch.tensor([0, 1, 2]), 1) is None  # every token its own cell
    kept, new = recycle_merge(imp, feats, cells, 6)  # type: ignore[misc]
    assert kept.tolist() == list(range(6)) and torch.equal(new, feats)


def test_vision_keep() -> None:
    # tokens 6 with r1·r2 = .5 → 12 enter the LLM; ratio .25 of 16 → 4 → 8
    assert vision_keep(Budget.tokens(6), 16, 8, (3, 5), 1.0, 0.5) == 12
    assert vision_keep(Budget.ratio(0.25), 16, 8, (3, 5), 1.0, 0.5) == 8
    assert vision_keep(Budget.tokens(6), 10, 8, (3, 5), 1.0, 0.5) == 10  # capped at what is there
    # avg 8 over 8 layers = 64 token-layers; per entering token 3 + 2·1 + 3·.5 = 6.5 → ⌈9.85⌉ = 10
    assert vision_keep(Budget.avg(8), 16, 8, (3, 5), 1.0, 0.5) == 10


@pytest.fixture(scope="module")
def noise_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One half random noise (high grey-level entropy), the other half one flat grey; left and right."""
    import rasterio
    from rasterio.transform import from_origin

    root = tmp_path_factory.mktemp("methods_b_noise")
    noise = np.random.default_rng(3).integers(0, 256, (220, 150), dtype=np.uint8)[None]
    out = {}
    for side, cols in (("left", slice(0, 150)), ("right", slice(150, 300))):
        data = np.full((3, 220, 300), 128, dtype=np.uint8)
        data[:, :, cols] = noise
        profile = {"driver": "GTiff", "width": 300, "height": 220, "count": 3, "dtype": "uint8"}
        profile.update(crs="EPSG:32633", transform=from_origin(500000.0, 5000000.0, 0.5, 0.5))
        out[side] = root / f"noise_{side}.tif"
        with rasterio.open(out[side], "w", **profile) as dst:
            dst.write(data)
    return out


@pytest.fixture(scope="module")
def half_noise(noise_images: dict[str, Path]) -> Path:
    return noise_images["left"]


def thumb_segment(adapter: ModelAdapter, image: Path, cache: Path, hooks=()):
    from lrs_vqa.answer import pyramid_spec_for
    from pyramid.dip import DynamicImagePyramid, PyramidOptions

    options = PyramidOptions(spec=pyramid_spec_for(adapter), cache_dir=cache)
    with DynamicImagePyramid.open(image, options) as dip:
        return adapter.encode_tiles([dip.thumbnail()], newlines=False, level=-1, hooks=hooks)


def thumb_prompt(adapter: ModelAdapter, image: Path, cache: Path, hooks=()) -> PrefillInputs:
    return adapter.build_prompt(QUESTION, [thumb_segment(adapter, image, cache, hooks)]).inputs


@pytest.mark.parametrize("family", FAMILIES)
def test_vflowopt_keep_all_and_exact_budgets(
    family: str, adapters: dict[str, ModelAdapter], scene: Path, tmp_path: Path
) -> None:
    adapter = adapters[family]
    plain_inputs = thumb_prompt(adapter, scene, tmp_path)
    n = int(plain_inputs.vision.sum())
    plain = adapter.decoder.prefill(plain_inputs, all_logits=True)
    for keep_all in (str(n), f"avg:{n}", "1.0"):
        with get_pruner("vflowopt").attach(adapter, keep_all) as att:
            inputs = thumb_prompt(adapter, scene, tmp_path, att.vision_hooks)
            pruned = adapter.decoder.prefill(inputs, att.llm_hooks, all_logits=True)
        assert pruned.vision_tokens_per_layer == [n] * LLM_LAYERS
        torch.testing.assert_close(pruned.logits, plain.logits, rtol=0, atol=0)
    pruner = get_pruner("vflowopt:r1=0.8,r2=0.5,cell=2")
    layers = pruner.layers(LLM_LAYERS)
    k = max(1, n // 4)
    for budget, check in (
        (str(k), lambda c: c[-1] == k),
        ("avg:5.5", lambda c: sum(c) == 44),
        ("0.5", lambda c: c[-1] == (n + 1) // 2),
    ):
        with pruner.attach(adapter, budget) as att:
            inputs = thumb_prompt(adapter, scene, tmp_path, att.vision_hooks)
            counts = adapter.decoder.prefill(inputs, att.llm_hooks).vision_tokens_per_layer
        assert check(counts), (budget, counts)
        assert att.vision_hooks[0].calls == [(n, counts[0])]
        assert tuple(counts) == pruner.plan(Budget.parse(budget), n, LLM_LAYERS).counts
        schedule = att.llm_hooks[0].schedule
        assert schedule.stage_layers == layers  # (an average's remainder may add one trim step)
        assert all(layer >= layers[0] for layer, _ in schedule.steps[1:])
        assert all(a >= b for a, b in itertools.pairwise(counts))


def test_vflowopt_llm_stage_needs_its_vision_stage(
    adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    adapter = adapters["llava"]
    with get_pruner("vflowopt").attach(adapter, "4") as att, pytest.raises(PrunerConfigError, match="vision"):
        adapter.decoder.prefill(stock(adapter, image), att.llm_hooks)


@pytest.mark.parametrize("family", FAMILIES)
def test_vflowopt_entropy_keeps_the_planted_noise(
    family: str, adapters: dict[str, ModelAdapter], noise_images: dict[str, Path], tmp_path: Path
) -> None:
    adapter = adapters[family]
    k = 4
    for side, image in noise_images.items():
        n = len(adapter.present_rows(thumb_segment(adapter, image, tmp_path)))
        with get_pruner("vflowopt:alpha=1000,r1=1,r2=1,cell=100").attach(adapter, k) as att:
            seg = thumb_segment(adapter, image, tmp_path, att.vision_hooks)
        meta = seg.meta.select(adapter.present_rows(seg))  # Qwen-VL's segment keeps its full grid
        assert n > 2 * k and len(meta) == k
        centres = (meta.boxes[:, 0] + meta.boxes[:, 2]) / 2
        in_noise = centres < 150 if side == "left" else centres > 150
        assert bool(in_noise.all()), (side, centres)  # every survivor lies in the noisy half
    with pytest.raises(PrunerConfigError, match="attach"):  # no pixels without the pre-hook
        hooks = get_pruner("vflowopt:alpha=1").hooks(k, ModelTarget.from_adapter(adapter))
        thumb_segment(adapter, noise_images["left"], tmp_path, hooks.vision)


def test_vflowopt_calibration_picks_the_lowest_discrepancy(
    adapters: dict[str, ModelAdapter], scene: Path, half_noise: Path, tmp_path: Path
) -> None:
    adapter = adapters["llava"]
    samples = [(scene, QUESTION), (half_noise, "is there noise?")]
    space = {"t": (0.5, 39.26), "r2": (0.3, 1.0), "cell": (1.0, 17.39)}
    out = tmp_path / "calibration.json"
    result = calibrate(adapter, samples, "3", space=space, trials=5, seed=1, out=out)
    assert len(result.trials) == 5

    # Independent measurement of every tried setting: our own norm hook, our own encoding.
    def last_state(inputs: PrefillInputs, hooks=()) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        h = adapter.text_model.norm.register_forward_hook(lambda m, a, o: seen.append(a[0][0, -1].clone()))
        try:
            adapter.decoder.prefill(inputs, hooks)
        finally:
            h.remove()
        return seen[-1]

    measured = []
    for setting, reported in result.trials:
        spec = "vflowopt:" + ",".join(f"{k}={v}" for k, v in setting.items())
        total = 0.0
        for img, q in samples:
            ref = last_state(adapter.build_prompt(q, [thumb_segment(adapter, img, tmp_path)]).inputs)
            with get_pruner(spec).attach(adapter, "3") as att:
                seg = thumb_segment(adapter, img, tmp_path, att.vision_hooks)
                state = last_state(adapter.build_prompt(q, [seg]).inputs, att.llm_hooks)
            a, b = ref.double(), state.double()
            total += 1 - float(a @ b / (a.norm() * b.norm()))
        measured.append(total / len(samples))
        assert reported == pytest.approx(measured[-1], abs=1e-5)
    assert len({round(m, 6) for m in measured}) > 1  # the settings do differ
    best = min(range(len(measured)), key=lambda i: measured[i])
    assert result.setting == result.trials[best][0]
    assert result.discrepancy == pytest.approx(min(measured), abs=1e-5)
    loaded = get_pruner(f"vflowopt:calibration={out}")
    assert {k: getattr(loaded.config, k) for k in result.setting} == pytest.approx(result.setting)
    assert get_pruner(f"vflowopt:calibration={out},r1=0.5").config.r1 == 0.5  # explicit options win


# ========================================================================================== LVPruning


def test_gumbel_keep_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    mask = gumbel_keep(logits, 1.0, torch.zeros(2, 2))
    assert mask.tolist() == [1.0, 0.0]  # argmax keep / drop
    mask.sum().backward()
    # straight-through: the gradient of the soft keep probability σ(l0 − l1): σ'(2) and σ'(−1)
    s = [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1))]
    d = [s[0] * (1 - s[0]), s[1] * (1 - s[1])]
    assert logits.grad is not None
    assert logits.grad.tolist() == [pytest.approx([d[0], -d[0]]), pytest.approx([d[1], -d[1]])]
    # the noise shifts the decision: +3 on "drop" of the first token flips it
    assert gumbel_keep(logits, 1.0, torch.tensor([[0.0, 3.0], [0.0, 0.0]])).tolist() == [0.0, 0.0]


def test_masked_causal_bias_and_ratio_loss_by_hand() -> None:
    bias = masked_causal_bias(torch.tensor([1.0, 0.0, 1.0]), 30.0)[0, 0]
    inf = float("-inf")
    assert bias.tolist() == [[0.0, inf, inf], [0.0, 0.0, inf], [0.0, -30.0, 0.0]]
    # ((.5 − .25)² + (.2 − .1)²) / 2 = (.0625 + .01) / 2
    loss = ratio_loss([torch.tensor(0.5), torch.tensor(0.2)], [0.25, 0.1])
    assert float(loss) == pytest.approx(0.03625)
    assert keep_margin(torch.tensor([[1.0, 3.0], [2.0, -1.0]])).tolist() == [-2.0, 3.0]


def test_language_rows() -> None:
    vision = torch.tensor([False, True, True, False, False])
    assert language_rows(vision, torch.tensor([False, False, False, True, False])).tolist() == [3]
    assert language_rows(vision, torch.zeros(5, dtype=torch.bool)).tolist() == [3, 4]


def test_decision_module_scores_each_vision_token_from_text_only() -> None:
    torch.manual_seed(0)
    module = DecisionModule(16, inner=8, heads=2).eval()
    vision, text = torch.randn(5, 16), torch.randn(3, 16)
    out = module(vision, text)
    assert out.shape == (5, 2)
    changed = vision.clone()
    changed[2] = torch.randn(16)
    again = module(changed, text)  # vision tokens are queries only: the others' logits do not move
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(again[keep], out[keep])
    assert not torch.allclose(again[2], out[2])
    # plain re-implementation of the block
    q = module.q(module.norm_v(vision))
    t = module.norm_t(text)
    k, v = module.k(t), module.v(t)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        att = torch.softmax(q[:, sl] @ k[:, sl].T / 2.0, dim=-1)
        heads.append(att @ v[:, sl])
    expected = module.mlp(torch.cat([torch.cat(heads, dim=-1), q], dim=-1))
    torch.testing.assert_close(out, expected)


def test_lvpruning_refuses_without_a_checkpoint(adapters: dict[str, ModelAdapter], tmp_path: Path) -> None:
    adapter = adapters["llava"]
    with pytest.raises(MissingCheckpointError, match=r"lrs-vqa pruner-tool lvpruning train") as err:
        get_pruner("lvpruning").attach(adapter, "4")
    assert "\n" not in str(err.value)
    with pytest.raises(MissingCheckpointError):
        get_pruner("lvpruning").hooks("4", ModelTarget.from_adapter(adapter))
    with pytest.raises(LVPruningCheckpointError, match="lacks"):
        get_pruner(f"lvpruning:checkpoint={tmp_path}").attach(adapter, "4")


@pytest.mark.parametrize("family", FAMILIES)
def test_lvpruning_keep_all_and_exact_budgets(
    family: str, adapters: dict[str, ModelAdapter], image: Image.Image
) -> None:
    adapter = adapters[family]
    inputs = stock(adapter, image)
    n = int(inputs.vision.sum())
    plain = adapter.decoder.prefill(inputs, all_logits=True)
    spec = "lvpruning:untrained_seed=3"
    for keep_all in (str(n), f"avg:{n}", "1.0"):
        with get_pruner(spec).attach(adapter, keep_all) as att:
            pruned = adapter.decoder.prefill(inputs, att.llm_hooks, all_logits=True)
        assert pruned.vision_tokens_per_layer == [n] * LLM_LAYERS
        torch.testing.assert_close(pruned.logits, plain.logits, rtol=0, atol=0)
    k = max(1, n // 4)
    first = get_pruner(spec).attach(adapter, "1").llm_hooks[0].stage_layers[0]
    avg = (first * n + (LLM_LAYERS - first) * k + 1) / LLM_LAYERS
    for budget, check in (
        (str(k), lambda c: c[-1] == k),
        (f"avg:{avg!r}", lambda c: sum(c) == round(avg * LLM_LAYERS)),
        ("0.5", lambda c: c[-1] == (n + 1) // 2),
    ):
        with get_pruner(spec).attach(adapter, budget) as att:
            counts = adapter.decoder.prefill(inputs, att.llm_hooks).vision_tokens_per_layer
        assert check(counts), (budget, counts)
        assert tuple(counts) == att.llm_hooks[0].schedule.counts
        assert counts[:first] == [n] * first
        assert all(a >= b for a, b in itertools.pairwise(counts))


def test_lvpruning_training_lowers_the_loss_and_its_checkpoint_prunes_by_the_modules(
    adapters: dict[str, ModelAdapter], image: Image.Image, tmp_path: Path
) -> None:
    adapter = adapters["llava"]
    other = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    samples = [stock(adapter, image), stock(adapter, other, "how many cars are there?")]
    before = [p.detach().clone() for p in adapter.model.parameters()]
    result = train(adapter, samples, TrainConfig(steps=30, lr=3e-3, seed=0))
    assert result.final_loss < result.initial_loss
    assert len(result.losses) == 30
    # the base model is frozen and untouched
    assert all(torch.equal(a, b) for a, b in zip(before, adapter.model.parameters(), strict=True))

    ckpt = save_checkpoint(result.modules, tmp_path / "ckpt")
    meta = json.loads((ckpt / "lvpruning.json").read_text())
    assert meta["format"] == "lvpruning/1" and meta["n_layers"] == LLM_LAYERS
    assert (ckpt / "lvpruning.safetensors").is_file()
    loaded = load_checkpoint(ckpt, meta["hidden_size"], LLM_LAYERS)
    for a, b in zip(result.modules.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b)

    # Inference honours the budget and keeps the module's top-k at the first decision layer.
    inputs = samples[0]
    n, k = int(inputs.vision.sum()), 3
    with get_pruner(f"lvpruning:checkpoint={ckpt}").attach(adapter, k) as att:
        res = adapter.decoder.prefill(inputs, att.llm_hooks)
        schedule = att.llm_hooks[0].schedule
    assert res.vision_tokens_per_layer[-1] == k
    layer = loaded.spec.layers[0]
    first_count = schedule.counts[layer]
    assert res.vision_tokens_per_layer[:layer] == [n] * layer and first_count < n
    seen: list[torch.Tensor] = []
    h = adapter.decoder.layers[layer].register_forward_pre_hook(lambda m, a: seen.append(a[0][0].clone()))
    try:
        adapter.decoder.prefill(inputs)
    finally:
        h.remove()
    hidden = seen[0]
    vision = torch.nonzero(inputs.vision).flatten()
    text = torch.nonzero(inputs.instruction).flatten()
    with torch.no_grad():
        logits = loaded.at(layer)(hidden[vision], hidden[text])
    margin = (logits[:, 0] - logits[:, 1]).tolist()
    order = sorted(range(len(margin)), key=lambda i: (-margin[i], i))[:first_count]
    kept = res.kept_orig_index[layer]
    assert kept[inputs.vision[kept]].tolist() == sorted(vision[i].item() for i in order)


def test_lvpruning_checkpoint_mismatch_is_a_typed_error(
    adapters: dict[str, ModelAdapter], tmp_path: Path
) -> None:
    adapter = adapters["llava"]
    hidden = int(adapter.text_model.config.hidden_size)
    modules = DecisionModules(ModuleSpec(hidden, LLM_LAYERS, (2, 4), (0.5, 0.25), inner=8, heads=2))
    ckpt = save_checkpoint(modules, tmp_path / "ok")
    assert load_checkpoint(ckpt, hidden, LLM_LAYERS).spec.layers == (2, 4)
    wide = save_checkpoint(
        DecisionModules(ModuleSpec(hidden + 4, LLM_LAYERS, (2, 4), (0.5, 0.25), inner=8, heads=2)),
        tmp_path / "wide",
    )
    with pytest.raises(LVPruningCheckpointError, match="hidden size"):
        get_pruner(f"lvpruning:checkpoint={wide}").attach(adapter, 4)
    with pytest.raises(LVPruningCheckpointError, match="8-layer"):
        load_checkpoint(ckpt, hidden, LLM_LAYERS + 1)
    meta = json.loads((ckpt / "lvpruning.json").read_text())
    meta["inner"] = 16  # the weights no longer fit the declared sizes
    (ckpt / "lvpruning.json").write_text(json.dumps(meta))
    with pytest.raises(LVPruningCheckpointError, match="do not fit") as err:
        load_checkpoint(ckpt, hidden, LLM_LAYERS)
    assert "\n" not in str(err.value)
    (ckpt / "lvpruning.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(LVPruningCheckpointError, match="format"):
        get_pruner(f"lvpruning:checkpoint={ckpt}").attach(adapter, 4)


# ========================================================================================== entry points


def test_offline_commands_run_on_a_tiny_model(
    adapters: dict[str, ModelAdapter], image: Image.Image, scene: Path, tmp_path: Path
) -> None:
    from lrs_vqa.cli import main

    model = adapters["llava"].source
    png = tmp_path / "sample.png"
    image.save(png)
    schedule = tmp_path / "schedule.json"
    tool = ["pruner-tool", "adaptinfer", "analyse", model, str(png), "--stages", "2", "--out", str(schedule)]
    assert main(tool) == 0
    assert len(json.loads(schedule.read_text())["layers"]) == 2
    calibration = tmp_path / "calibration.json"
    args = ["calibrate", model, str(scene), "--budget", "4", "--trials", "2", "--out", str(calibration)]
    assert main(["pruner-tool", "vflowopt", *args]) == 0
    assert len(json.loads(calibration.read_text())["trials"]) == 2
    ckpt = tmp_path / "lv"
    lv = ["pruner-tool", "lvpruning", "train", model, str(png), "--question", "What color is the car?"]
    assert main([*lv, "--steps", "2", "--out", str(ckpt)]) == 0
    assert get_pruner(f"lvpruning:checkpoint={ckpt}").attach(adapters["llava"], 4).llm_hooks


def test_lvpruning_trains_from_a_question_file_and_has_no_question_blind_default(
    adapters: dict[str, ModelAdapter], tmp_path: Path, image: Image.Image, capsys: pytest.CaptureFixture
) -> None:
    from lrs_vqa.cli import main
    from lrs_vqa.world.bench_writer import QUESTIONS_FILE, write_world_bench

    model = adapters["llava"].source
    write_world_bench(tmp_path / "b", scenes=1, sizes=(1024,), seed=3)
    qfile = tmp_path / "b" / QUESTIONS_FILE
    ckpt = tmp_path / "lv"
    args = ["pruner-tool", "lvpruning", "train", model, "--questions", str(qfile), "--limit", "2"]
    assert main([*args, "--steps", "2", "--out", str(ckpt)]) == 0
    meta = json.loads((ckpt / "lvpruning.json").read_text())
    assert meta["steps"] == 2
    png = tmp_path / "sample.png"
    image.save(png)
    capsys.readouterr()
    # an image without questions is refused (one fixed prompt would learn a question-blind ranking)
    assert main(["pruner-tool", "lvpruning", "train", model, str(png), "--out", str(tmp_path / "x")]) == 2
    assert main(["pruner-tool", "lvpruning", "train", model, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--questions" in err and "Traceback" not in err


def test_module_entry_point_runs_as_a_script(adapters: dict[str, ModelAdapter], tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "lrs_vqa", "pruner-tool", "adaptinfer", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "analyse" in out.stdout, out.stderr
