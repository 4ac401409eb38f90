"""The in-encoder hook point (LLaVA family): keep-all equals the stock path, drops equal a by-hand
recomputation with the tower's own layers, merges and bad selections, and an end-to-end run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lrs_vqa.answer import AskOptions, answer, get_adapter, pyramid_spec_for
from lrs_vqa.engine.hooks import EncoderSelection
from lrs_vqa.models.errors import UnsupportedModelError
from lrs_vqa.tiny import make_tiny_model
from pyramid.dip import DynamicImagePyramid, PyramidOptions
from pyramid.synth import synthesize_scene

LLAVA_FAMILIES = ["llava", "llava_onevision"]  # CLIP (with CLS) and SigLIP (without)


@pytest.fixture(scope="module")
def tiny_paths(tiny_checkpoint) -> dict[str, str]:
    return {fam: tiny_checkpoint(fam, 11) for fam in LLAVA_FAMILIES}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scene") / "scene.tif"
    synthesize_scene(out, (700, 500), seed=4)
    return out


class InsideHook:
    """Keeps ``keep(grid_index)`` patch tokens per tile before encoder layer ``layer``."""

    def __init__(self, layer: int, keep=None, merge: bool = False) -> None:
        self.layer, self.keep, self.merge = layer, keep, merge
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def vision_tap_rows(self) -> dict:
        return {}

    def after_encoder(self, feats, meta, ctx):
        return None

    def after_projector(self, embeds, meta, ctx):
        return None

    def encoder_drop_layers(self) -> tuple[int, ...]:
        return (self.layer,)

    def inside_encoder(self, layer: int, hidden: torch.Tensor, grid_index: torch.Tensor):
        self.seen.append((hidden.clone(), grid_index.clone()))
        n = grid_index.shape[1]
        keep = self.keep(n) if self.keep is not None else torch.arange(n)
        keep = keep.expand(hidden.shape[0], -1)
        if not self.merge:
            return EncoderSelection(keep)
        cls = hidden.shape[1] - n
        merged = hidden[:, cls:][:, keep[0]] * 0.5  # any replacement: it must land where the kept rows go
        return EncoderSelection(keep, merged)


def last_layer(adapter) -> int:
    """The last encoder layer a drop can precede: the feature layer's input (tiny CLIP: 0, SigLIP: 1)."""
    tower = adapter.model.model.vision_tower
    vm = tower.vision_model if hasattr(tower, "vision_model") else tower
    fl = adapter.feature_layer
    return (len(vm.encoder.layers) + 1 + fl if fl < 0 else fl) - 1


def tiles_of(adapter, scene: Path):
    dip = DynamicImagePyramid.open(scene, PyramidOptions(spec=pyramid_spec_for(adapter)))
    return dip, list(dip.stream(dip.all_tiles(0)))


@pytest.mark.parametrize("family", LLAVA_FAMILIES)
def test_keep_all_inside_the_encoder_equals_the_stock_path(
    family: str, tiny_paths: dict[str, str], scene: Path
) -> None:
    adapter = get_adapter(tiny_paths[family])
    dip, tiles = tiles_of(adapter, scene)
    hook = InsideHook(layer=last_layer(adapter))
    with dip:
        plain = adapter.encode_tiles(tiles, newlines=True, level=0)
        hooked = adapter.encode_tiles(tiles, newlines=True, level=0, hooks=[hook])
    assert len(hook.seen) == 1 and hook.seen[0][0].shape[0] == len(tiles)  # the hook ran, on every tile
    torch.testing.assert_close(hooked.embeds, plain.embeds, rtol=1e-5, atol=1e-5)
    assert torch.equal(hooked.meta.tile, plain.meta.tile)
    torch.testing.assert_close(hooked.meta.boxes, plain.meta.boxes, equal_nan=True)


@pytest.mark.parametrize("family", LLAVA_FAMILIES)
def test_drop_before_a_layer_equals_a_by_hand_recomputation(
    family: str, tiny_paths: dict[str, str], scene: Path
) -> None:
    adapter = get_adapter(tiny_paths[family])
    even = lambda n: torch.arange(0, n, 2)  # noqa: E731
    layer_k = last_layer(adapter)
    hook = InsideHook(layer=layer_k, keep=even)
    dip, tiles = tiles_of(adapter, scene)
    with dip:
        seg = adapter.encode_tiles(tiles, newlines=False, level=0, hooks=[hook])
    # By hand: the states entering layer k, the even patch tokens kept (CLS kept), then the remaining layers.
    hidden, grid = hook.seen[0]
    tower = adapter.model.model.vision_tower
    vm = tower.vision_model if hasattr(tower, "vision_model") else tower
    cls = 1 if family == "llava" else 0
    n = grid.shape[1]
    x = torch.cat([hidden[:, :cls], hidden[:, cls:][:, torch.arange(0, n, 2)]], dim=1)
    layers = list(vm.encoder.layers)
    fl = adapter.feature_layer
    depth = len(layers) + 1 + fl if fl < 0 else fl
    with torch.inference_mode():
        for layer in layers[layer_k:depth]:
            out = layer(x, attention_mask=None)
            x = out[0] if isinstance(out, tuple) else out
        feats = x[:, cls:]
        expected = adapter.model.model.multi_modal_projector(feats)  # (tiles, n/2, d)
    # Every surviving token of every tile: same embedding, box of its own grid cell.
    g = adapter.model.config.vision_config.image_size // adapter.model.config.vision_config.patch_size
    kept_cells = torch.arange(0, n, 2)
    assert len(seg.meta) <= len(tiles) * len(kept_cells)
    assert seg.tokens_encoded == len(tiles) * len(kept_cells)
    for t in range(len(tiles)):
        rows = torch.nonzero(seg.meta.tile == t).flatten()
        for r in rows.tolist():
            # recover the grid cell from the box: the tile's token grid is g x g over the padded tile
            box = seg.meta.boxes[r]
            tile = tiles[t]
            sx = tile.box.width / tile.level_box.width * adapter.tile_size / g
            sy = tile.box.height / tile.level_box.height * adapter.tile_size / g
            j = round(float(box[0] - tile.box.x0) / sx)
            i = round(float(box[1] - tile.box.y0) / sy)
            cell = i * g + j
            assert cell % 2 == 0
            pos = int((kept_cells == cell).nonzero()[0, 0])
            torch.testing.assert_close(seg.embeds[r], expected[t, pos], rtol=1e-4, atol=1e-5)


def test_merge_replaces_the_kept_states(tiny_paths: dict[str, str], scene: Path) -> None:
    """The replacement states (half the kept rows' states) are what the remaining layers run on: the
    output equals a by-hand run of those layers from them, token by token."""
    adapter = get_adapter(tiny_paths["llava"])
    first_half = lambda n: torch.arange(n // 2)  # noqa: E731
    dip, tiles = tiles_of(adapter, scene)
    hook = InsideHook(0, first_half, True)
    with dip:
        dropped = adapter.encode_tiles(tiles, newlines=False, level=0, hooks=[InsideHook(0, first_half)])
        merged = adapter.encode_tiles(tiles, newlines=False, level=0, hooks=[hook])
    assert torch.equal(dropped.meta.tile, merged.meta.tile)
    hidden, grid = hook.seen[0]
    n, cls = grid.shape[1], 1  # tiny llava: CLIP with a CLS token
    x = torch.cat([hidden[:, :cls], hidden[:, cls:][:, : n // 2] * 0.5], dim=1)
    tower = adapter.model.model.vision_tower
    vm = tower.vision_model if hasattr(tower, "vision_model") else tower
    layers = list(vm.encoder.layers)
    fl = adapter.feature_layer
    depth = len(layers) + 1 + fl if fl < 0 else fl
    with torch.inference_mode():
        for layer in layers[0:depth]:
            out = layer(x, attention_mask=None)
            x = out[0] if isinstance(out, tuple) else out
        expected = adapter.model.model.multi_modal_projector(x[:, cls:])  # (tiles, n/2, d)
    g = adapter.model.config.vision_config.image_size // adapter.model.config.vision_config.patch_size
    checked = 0
    for t, tile in enumerate(tiles):
        for r in torch.nonzero(merged.meta.tile == t).flatten().tolist():
            box = merged.meta.boxes[r]
            sx = tile.box.width / tile.level_box.width * adapter.tile_size / g
            sy = tile.box.height / tile.level_box.height * adapter.tile_size / g
            cell = round(float(box[1] - tile.box.y0) / sy) * g + round(float(box[0] - tile.box.x0) / sx)
            torch.testing.assert_close(merged.embeds[r], expected[t, cell], rtol=1e-4, atol=1e-5)
            checked += 1
    assert checked == len(merged.meta) > 0


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (lambda h, g: EncoderSelection(torch.empty(g.shape[0], 0, dtype=torch.long)), "dropped every"),
        (lambda h, g: EncoderSelection(torch.tensor([[1, 0]]).expand(g.shape[0], -1)), "sorted"),
        (lambda h, g: EncoderSelection(torch.tensor([[0, g.shape[1]]]).expand(g.shape[0], -1)), "within"),
        (lambda h, g: EncoderSelection(torch.tensor([0, 1])), "one row of keep indices per tile"),
    ],
)
def test_bad_in_encoder_selections(selection, message: str, tiny_paths: dict[str, str], scene: Path) -> None:
    adapter = get_adapter(tiny_paths["llava"])

    class Bad(InsideHook):
        def inside_encoder(self, layer, hidden, grid_index):
            return selection(hidden, grid_index)

    dip, tiles = tiles_of(adapter, scene)
    with dip, pytest.raises(ValueError, match=message):
        adapter.encode_tiles(tiles, newlines=False, level=0, hooks=[Bad(0)])


def test_drop_layer_out_of_range(tiny_paths: dict[str, str], scene: Path) -> None:
    adapter = get_adapter(tiny_paths["llava"])
    dip, tiles = tiles_of(adapter, scene)
    with dip, pytest.raises(ValueError, match="outside"):
        adapter.encode_tiles(tiles, newlines=False, level=0, hooks=[InsideHook(layer=99)])


def test_end_to_end_fewer_tokens_into_the_llm(tiny_paths: dict[str, str], scene: Path) -> None:
    options = AskOptions(strategy="tiles-all", max_new_tokens=2)
    plain = answer(scene, "what is there?", model=tiny_paths["llava"], options=options)
    hook = InsideHook(layer=0, keep=lambda n: torch.arange(0, n, 4))
    pruned = answer(scene, "what is there?", model=tiny_paths["llava"], options=options, vision_hooks=[hook])
    assert pruned.stats.vision_tokens_into_llm < plain.stats.vision_tokens_into_llm
    assert pruned.stats.vision_tokens_encoded < plain.stats.vision_tokens_encoded


def test_qwen_refuses_in_encoder_drops_clearly(tmp_path: Path, scene: Path) -> None:
    path = str(make_tiny_model(tmp_path / "qwen", "qwen2_vl", seed=1).path)
    adapter = get_adapter(path)
    dip, tiles = tiles_of(adapter, scene)
    with dip, pytest.raises(UnsupportedModelError, match="LLaVA family"):
        adapter.encode_tiles(tiles, newlines=False, level=0, hooks=[InsideHook(layer=0)])
