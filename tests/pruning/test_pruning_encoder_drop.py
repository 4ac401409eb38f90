"""VScan's ``drop_at=local`` (issue 15): stage 1 selects and merges before the local-scan layer, so that
layer and every later encoder layer run on the kept tokens only. On towers deeper than the shared tiny
models (4 encoder layers): a hook on each encoder layer counts the tokens it sees; the kept tokens' features
equal a by-hand run of the same layers on the kept (or merged) subset; keep-all equals no pruning; budgets
are met exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

from lrs_vqa.answer import pyramid_spec_for
from lrs_vqa.engine.hooks import encoder_drop_layers
from lrs_vqa.models.base import ModelAdapter
from lrs_vqa.models.registry import load_adapter
from lrs_vqa.tiny import make_tiny_model
from pruning import ModelTarget, PrunerConfigError, get_pruner
from pyramid.dip import DynamicImagePyramid, PyramidOptions
from pyramid.synth import synthesize_scene
from tests.pruning.helpers import LLM_LAYERS, thumbnail_prompt

TOWER_LAYERS = 4
FAMILIES = ["llava", "llava_onevision"]  # CLIP (CLS, feature layer −2) and SigLIP (no CLS, layer −1)
LOCAL = "vscan:drop_at=local,local_layer=1,vision_depth_ref=none"


def deep_tower(out: Path, family: str) -> str:
    """The family's tiny checkpoint with a ``TOWER_LAYERS``-layer vision tower and ``LLM_LAYERS`` decoder
    layers (seeded random weights): the shared tiny towers have 2 layers, too few for a layer before the
    drop and several after it."""
    path = make_tiny_model(out, family, seed=5).path
    cfg = AutoConfig.from_pretrained(path)
    cfg.vision_config.num_hidden_layers = TOWER_LAYERS
    cfg.text_config.num_hidden_layers = LLM_LAYERS
    if getattr(cfg.text_config, "layer_types", None):
        cfg.text_config.layer_types = [cfg.text_config.layer_types[0]] * LLM_LAYERS
    generation = GenerationConfig.from_pretrained(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = AutoModelForImageTextToText.from_config(cfg)
    model.generation_config = generation
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", name="towers")
def towers_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelAdapter]:
    root = tmp_path_factory.mktemp("deep_tower")
    return {fam: load_adapter(deep_tower(root / fam, fam)) for fam in FAMILIES}


@pytest.fixture(scope="module", name="square")
def square_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A square scene: its thumbnail has no padding-only patches, which stage 1 may keep (the engine drops
    them afterwards, so fewer tokens than kept would reach the LLM and the counts here would not be exact)."""
    out = tmp_path_factory.mktemp("square_scene") / "scene.tif"
    synthesize_scene(out, (224, 224), seed=3)
    return out


def thumb_pixels(adapter: ModelAdapter, scene: Path, cache: Path) -> torch.Tensor:
    options = PyramidOptions(spec=pyramid_spec_for(adapter), cache_dir=cache)
    with DynamicImagePyramid.open(scene, options) as dip:
        return adapter._pixels([dip.thumbnail()])


def run_layers(layers: list[torch.nn.Module], hidden: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        out = layer(hidden, attention_mask=None)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def by_hand_merge(states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Each dropped token joins the kept token of highest cosine similarity; kept = (x + Σ) / (1 + count)."""
    kept_set = set(keep.tolist())
    sums = {k: states[k].double().clone() for k in keep.tolist()}
    counts = dict.fromkeys(keep.tolist(), 1)
    for i in range(states.shape[0]):
        if i in kept_set:
            continue
        sims = [
            float(torch.nn.functional.cosine_similarity(states[i], states[k], dim=0)) for k in keep.tolist()
        ]
        best = keep.tolist()[sims.index(max(sims))]
        sums[best] += states[i].double()
        counts[best] += 1
    return torch.stack([sums[k] / counts[k] for k in keep.tolist()]).to(states.dtype)


@pytest.mark.parametrize("family", FAMILIES)
def test_later_encoder_layers_see_fewer_tokens(
    family: str, towers: dict[str, ModelAdapter], square: Path, tmp_path: Path
) -> None:
    """Sequence length entering each encoder layer: all patches before the local-scan layer (1), the kept
    ones from it on; with the default ``drop_at=feature`` only the feature layer runs on fewer tokens."""
    adapter = towers[family]
    layers = adapter._tower_parts()[2]
    seen: list[int] = []

    def count(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(int(hidden.shape[1]))

    handles = [layer.register_forward_pre_hook(count, with_kwargs=True) for layer in layers]
    cls = 1 if family == "llava" else 0
    n = 16  # 4×4 patches per 56 px tile
    depth = TOWER_LAYERS - 1 if family == "llava" else TOWER_LAYERS  # CLIP's feature layer is −2
    try:
        for spec, drop in ((LOCAL, 1), ("vscan:local_layer=1,vision_depth_ref=none", depth - 1)):
            seen.clear()
            with get_pruner(spec).attach(adapter, "2") as att:
                thumbnail_prompt(adapter, square, tmp_path, att.vision_hooks)
                (calls,) = att.vision_hooks[0].calls
            kept = calls[1]  # one tile: first-stage keep = 2 / share (1/3) = 6
            assert kept == 6
            assert seen == [cls + n] * drop + [cls + kept] * (depth - drop)
        seen.clear()
        thumbnail_prompt(adapter, square, tmp_path)  # unpruned: the stock tower runs every layer on all
        assert seen == [cls + n] * TOWER_LAYERS
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_reduced_encoder_equals_the_same_layers_run_by_hand_on_the_kept_tokens(
    family: str, merge: bool, towers: dict[str, ModelAdapter], square: Path, tmp_path: Path
) -> None:
    """The features of the reduced path = layers 0 on every patch, then (kept patches [+ CLS], merged or
    not) through layers 1..feature by hand."""
    adapter = towers[family]
    embeddings, pre_norm, layers = adapter._tower_parts()
    pixels = thumb_pixels(adapter, square, tmp_path)
    spec = f"{LOCAL},merge={str(merge).lower()}"
    with torch.inference_mode(), get_pruner(spec).attach(adapter, "2") as att:
        wanted = encoder_drop_layers(att.vision_hooks, len(layers))
        assert sorted(wanted) == [1]
        feats, grid_index = adapter._encoder_features_dropping(pixels, wanted)
        hidden = embeddings(pixels)
        if pre_norm is not None:
            hidden = pre_norm(hidden)
        hidden = run_layers(layers[:1], hidden)
    cls = family == "llava"
    depth = TOWER_LAYERS - 1 if cls else TOWER_LAYERS
    keep = grid_index[0]
    assert keep.shape == (6,) and bool((keep[1:] > keep[:-1]).all())
    patches = hidden[0, 1:] if cls else hidden[0]
    kept = by_hand_merge(patches, keep) if merge else patches[keep]
    sub = torch.cat([hidden[0, :1], kept]) if cls else kept
    with torch.inference_mode():
        expected = run_layers(layers[1:depth], sub[None])
    expected = expected[:, 1:] if cls else expected
    assert feats.shape == expected.shape == (1, 6, expected.shape[-1])
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_local_drop_keep_all_equals_no_pruning_and_budgets_are_exact(
    family: str, towers: dict[str, ModelAdapter], square: Path, tmp_path: Path
) -> None:
    adapter = towers[family]
    plain_inputs = thumbnail_prompt(adapter, square, tmp_path)
    plain = adapter.decoder.prefill(plain_inputs, all_logits=True)
    n = int(plain_inputs.vision.sum())
    layer = get_pruner(LOCAL).layers(LLM_LAYERS)[0]
    for budget in (str(n), "3", "avg:4.125"):
        with get_pruner(LOCAL).attach(adapter, budget) as att:
            inputs = thumbnail_prompt(adapter, square, tmp_path, att.vision_hooks)
            result = adapter.decoder.prefill(inputs, att.llm_hooks, all_logits=True)
        counts = result.vision_tokens_per_layer
        if budget == str(n):
            assert counts == [n] * LLM_LAYERS
            # the in-encoder path runs the tower layer by layer: equal up to float reassociation
            torch.testing.assert_close(result.logits, plain.logits, rtol=1e-5, atol=1e-5)
            continue
        n1 = counts[0]
        assert n1 < n and counts[:layer] == [n1] * layer
        if budget == "3":
            assert counts[-1] == 3
        else:
            assert sum(counts) == round(4.125 * LLM_LAYERS)


def test_local_drop_ranks_both_scans_by_the_local_layer() -> None:
    """Planted attention on a 4×4 grid (2×2 windows), budget 6 with share 1/2 -> 12 kept of 2 tiles, 6 per
    tile: 3 by the local scan (the best 3 by layer-0 attention: window quotas are ⌊3/4⌋ = 0), then 3 global
    ones, ranked by the same layer-0 attention because the drop comes before any deeper layer runs."""
    tgt = ModelTarget("llava", llm_layers=8, vision_layers=3, feature_layer=2, cls_token=True)
    spec = "vscan:windows=2,share=0.5,local_layer=0,vision_depth_ref=none,drop_at=local"
    hook = get_pruner(spec).hooks(6, tgt).vision[0]
    assert hook.encoder_drop_layers() == (0,)
    shallow = torch.zeros(2, 16)
    shallow[:, [5, 9, 14, 2, 7, 11, 0]] = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    hook._attention = lambda layer, hidden: {0: shallow}[layer]  # type: ignore[method-assign]
    sel = hook.inside_encoder(0, torch.randn(2, 17, 4), torch.arange(16).expand(2, 16))
    assert sel is not None
    assert sel.keep.tolist() == [[2, 5, 7, 9, 11, 14]] * 2
    assert hook.records == [(32, 12)]


def test_bad_drop_point_is_a_one_line_error() -> None:
    with pytest.raises(PrunerConfigError, match=r"drop_at must be one of feature, local, got 'early'") as err:
        get_pruner("vscan:drop_at=early")
    assert "\n" not in str(err.value)
