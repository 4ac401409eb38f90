"""``lrs-vqa ask`` end to end on a synthetic GeoTIFF with a tiny model of each family, and the token
metadata that maps every vision token back to the image."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lrs_vqa.answer import AskOptions, StrategyError, answer, get_adapter, pyramid_spec_for
from lrs_vqa.cli import main
from lrs_vqa.models.errors import ModelLoadError, UnsupportedModelError
from lrs_vqa.models.registry import load_adapter
from lrs_vqa.tiny import FAMILIES
from pyramid import DynamicImagePyramid, PyramidOptions
from pyramid.synth import synthesize_scene


@pytest.fixture(scope="module")
def tiny_paths(tiny_checkpoint) -> dict[str, str]:
    return {fam: tiny_checkpoint(fam, 5) for fam in FAMILIES}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scene") / "scene.tif"
    synthesize_scene(out, (1300, 900), seed=2)
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", ["global", "anyres", "tiles-all"])
def test_ask_cli_json_and_evidence(
    family: str, strategy: str, tiny_paths: dict[str, str], scene: Path, tmp_path: Path, capsys
) -> None:
    evidence = tmp_path / "ev.geojson"
    code = main(
        [
            "ask",
            str(scene),
            "how many cars are there?",
            "--model",
            tiny_paths[family],
            "--strategy",
            strategy,
            "--json",
            "--evidence",
            str(evidence),
            "--max-new-tokens",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    record = json.loads(out)
    assert record["random_weights"] is True
    assert record["warning"] == "random tiny model: the answer is meaningless"
    assert record["strategy"] == strategy
    stats = record["stats"]
    assert stats["tokens_into_llm"] == stats["vision_tokens_into_llm"] + stats["text_tokens"]
    assert stats["tokens_per_layer"] == [stats["tokens_into_llm"]] * len(stats["tokens_per_layer"])
    assert stats["final_vision_tokens"] == stats["vision_tokens_into_llm"]
    assert stats["tflops_total"] == pytest.approx(stats["tflops_vision"] + stats["tflops_llm"])
    assert 0 < stats["tflops_llm_vision_only"] < stats["tflops_llm"]
    assert 1 <= record["generated_tokens"] <= 4
    tiles = record["tiles"]
    expected_tiles = {"global": 1, "anyres": 1, "tiles-all": 1 + 9}[strategy]  # coarse level is 3x3 tiles
    assert len(tiles) == expected_tiles
    assert stats["tiles_read"] == expected_tiles
    if strategy == "anyres" and family == "qwen2_vl":  # dynamic resolution: no newline rows
        assert stats["vision_tokens_encoded"] == stats["vision_tokens_into_llm"]
    elif strategy == "anyres":  # encoder outputs = crops x tokens per crop; newline rows are not encoded
        per_crop = get_adapter(tiny_paths[family]).tokens_per_tile
        assert stats["vision_tokens_encoded"] == stats["images_encoded"] * per_crop
    else:
        # every vision token is attributed to exactly one tile, newline markers excepted
        assert sum(t["tokens_into_llm"] for t in tiles) <= stats["vision_tokens_into_llm"]
        assert all(t["tokens_into_llm"] > 0 for t in tiles)
    geo = json.loads(evidence.read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == expected_tiles
    assert geo["question"] == "how many cars are there?" and geo["random_weights"] is True
    for feature, tile in zip(geo["features"], tiles, strict=True):
        assert feature["geometry"]["type"] == "Polygon"
        lon, lat = feature["geometry"]["coordinates"][0][0]
        assert 14.9 < lon < 15.1 and 45.0 < lat < 45.2  # EPSG:32633 origin 500000, 5000000
        assert feature["properties"]["pixel_bbox"] == tile["pixel_box"]


@pytest.mark.parametrize("family", FAMILIES)
def test_token_boxes_lie_in_their_tiles_and_cover_them(
    family: str, tiny_paths: dict[str, str], scene: Path
) -> None:
    adapter = get_adapter(tiny_paths[family])
    with DynamicImagePyramid.open(scene, PyramidOptions(spec=pyramid_spec_for(adapter))) as dip:
        level = dip.levels[0]
        tiles = list(dip.stream(dip.all_tiles(0)))
        seg = adapter.encode_tiles(tiles, newlines=True, level=0)
    meta = seg.meta
    real = ~meta.newline
    assert torch.isnan(meta.boxes[meta.newline]).all()
    assert (meta.level == 0).all()
    for t_idx, tile in enumerate(tiles):
        b = meta.boxes[real & (meta.tile == t_idx)]
        if family == "qwen2_vl":  # Qwen segments keep padding tokens until the prompt drops them
            b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
        assert len(b) > 0
        box = tile.box
        assert (b[:, 0] >= box.x0 - 1e-3).all() and (b[:, 2] <= box.x1 + 1e-3).all()
        assert (b[:, 1] >= box.y0 - 1e-3).all() and (b[:, 3] <= box.y1 + 1e-3).all()
        area = float(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sum())
        assert area == pytest.approx(box.area, rel=1e-4)  # token cells tile the tile exactly
    if family == "llava_onevision":  # one newline per token row holding real pixels (4 tokens per tile)
        cell = adapter.tile_size / 4
        assert int(meta.newline.sum()) == math.ceil(level.height / cell)


def test_tiles_all_refuses_above_token_limit(tiny_paths: dict[str, str], scene: Path, capsys) -> None:
    with pytest.raises(StrategyError, match="above the limit"):
        answer(
            scene,
            "how many cars?",
            model=tiny_paths["llava"],
            options=AskOptions(strategy="tiles-all", level=-1, max_vision_tokens=100),
        )
    code = main(
        [
            "ask",
            str(scene),
            "how many?",
            "--model",
            tiny_paths["llava"],
            "--strategy",
            "tiles-all",
            "--level",
            "-1",
            "--max-vision-tokens",
            "100",
        ]
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "above the limit" in errors[0]


def test_bad_strategy_unknown_model_and_offline_hub(tmp_path: Path, scene: Path, tiny_paths, capsys) -> None:
    assert main(["ask", str(scene), "q?", "--model", tiny_paths["llava"], "--strategy", "nope"]) == 2
    assert "unknown strategy" in capsys.readouterr().err
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(
        UnsupportedModelError, match="supported: llava, llava_next, llava_onevision, qwen2_5_vl"
    ):
        load_adapter(str(bert))
    assert main(["ask", str(scene), "q?", "--model", str(bert)]) == 2
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_adapter(str(tmp_path / "missing-model"))
    assert main(["ask", str(tmp_path / "missing.tif"), "q?", "--model", tiny_paths["llava"]]) == 2


def test_plain_output_labels_random_model(tiny_paths: dict[str, str], scene: Path, capsys) -> None:
    assert main(["ask", str(scene), "what color is the car?", "--model", tiny_paths["qwen2_vl"]]) == 0
    captured = capsys.readouterr()
    assert "[random tiny model: the answer below is meaningless]" in captured.err
    assert captured.out.strip() != ""


def test_make_tiny_model_cli(tmp_path: Path, capsys) -> None:
    assert main(["make-tiny-model", str(tmp_path / "m"), "--family", "llava"]) == 0
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert "meaningless" in capsys.readouterr().err
    assert main(["make-tiny-model", str(tmp_path / "m"), "--family", "llava"]) == 2  # exists
    assert main(["make-tiny-model", str(tmp_path / "x"), "--family", "gpt"]) == 2


def test_tiles_all_max_tiles_picks_the_finest_level_that_fits(
    tiny_paths: dict[str, str], scene: Path
) -> None:
    """anyres-pN on the pyramid: the finest level whose grid has at most N tiles."""
    options = AskOptions(strategy="tiles-all", max_tiles=30, max_new_tokens=1)
    record = answer(scene, "q?", model=tiny_paths["llava"], options=options)
    levels = record.image["levels"]
    fitting = [lv["index"] for lv in levels if lv["grid"][0] * lv["grid"][1] <= 30]
    chosen = {t.level for t in record.tiles if t.role == "level"}
    assert chosen == {fitting[-1]} and len(fitting) < len(levels)
    assert record.stats.tiles_read == 1 + levels[fitting[-1]]["grid"][0] * levels[fitting[-1]]["grid"][1]
    with pytest.raises(StrategyError, match="not both"):
        answer(
            scene,
            "q?",
            model=tiny_paths["llava"],
            options=AskOptions(strategy="tiles-all", level=0, max_tiles=4),
        )


def test_cli_defaults_are_the_options_dataclasses():
    from lrs_vqa.cli.ask_options import _parameters, _run
    from lrs_vqa.options import DEFAULT_MODEL

    run = _run({p.name: p.default for p in _parameters()})
    assert run.options == AskOptions() and (run.model, run.device, run.dtype) == (
        DEFAULT_MODEL,
        "cpu",
        "auto",  # answer()'s default too: lrs_vqa.models.dtypes.resolve_dtype
    )


def test_bad_c2f_settings_are_one_line_errors(scene: Path, capsys) -> None:
    """Rejected while the CLI builds the options, before any model is loaded: still exit code 2."""
    for bad in (["--mode", "bogus"], ["--keep-ratio", "7"]):
        assert main(["ask", str(scene), "q?", *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
