"""RFM training (rfm/training.py) on a tiny host: only the RFM learns, the loss falls, a killed run resumes
exactly, a checkpoint loads back for its host and is refused by another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lrs_vqa.models.registry import load_adapter
from lrs_vqa.models.rfm_checkpoint import load_rfm
from pyramid.dip import DynamicImagePyramid, PyramidOptions, TileKey
from pyramid.levels import PixelBox
from pyramid.synth import synthesize_scene
from rfm.training import (
    RFMExample,
    RFMTrainConfig,
    RFMTrainingError,
    query_row_logits,
    train_rfm,
)


@pytest.fixture(scope="module")
def host(tiny_checkpoint):
    return load_adapter(tiny_checkpoint("llava_onevision", 11))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rfm-scene") / "scene.tif"
    synthesize_scene(out, (700, 600), seed=4)
    return out


def opener(tmp_path: Path, adapter):
    from lrs_vqa.answer import pyramid_spec_for

    return lambda p: DynamicImagePyramid.open(
        p, PyramidOptions(spec=pyramid_spec_for(adapter), cache_dir=tmp_path / "cache")
    )


def examples(scene: Path) -> list[RFMExample]:
    return [
        RFMExample(str(scene), "what color is the car?", ((100.0, 100.0, 160.0, 150.0),)),
        RFMExample(str(scene), "is there a ship?", ((400.0, 300.0, 470.0, 380.0),)),
    ]


def test_raw_rows_are_the_layers_own_logits(host) -> None:
    """The tap's raw row equals q·k·scale from the layer's own projections (post-norm, post-RoPE), and its
    softmax is the attention row the probability tap gives."""
    from transformers import DynamicCache

    from lrs_vqa.engine.taps import TapRecorder, last_row, recording

    inputs = host.stock_prompt(
        __import__("PIL.Image", fromlist=["Image"]).new("RGB", (64, 48), (90, 140, 60)), "what is it?"
    )[0].inputs
    dec = host.decoder
    with torch.no_grad():
        raw = query_row_logits(dec.layers, dec.rotary, dec.config, inputs, [1])[0]  # (heads, L)
        hidden = inputs.embeds
        cos, sin = dec.rotary(hidden, inputs.position_ids)
        cache = DynamicCache(config=dec.config)
        hidden = dec._layer(dec.layers[0], hidden, cos, sin, cache)
        rec = TapRecorder({id(dec.layers[1].self_attn): 1}, {1: last_row}, head_mean=False)
        with recording(rec):
            dec._layer(dec.layers[1], hidden, cos, sin, DynamicCache(config=dec.config))
        probs = rec.result(1)[0, :, 0]
    torch.testing.assert_close(torch.softmax(raw, -1), probs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", ["distill", "boxes"])
def test_only_the_rfm_learns_and_the_loss_falls(host, scene: Path, tmp_path: Path, target: str) -> None:
    before = {k: v.clone() for k, v in host.model.state_dict().items()}
    cfg = RFMTrainConfig(
        llm_layer_list=(1,), target=target, steps=12, lr=3e-3, max_tiles=4, checkpoint_every=6
    )
    out = tmp_path / "rfm"
    train_rfm(host, examples(scene)[:1], out, cfg, open_pyramid=opener(tmp_path, host))
    after = host.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the host, bit for bit
    rows = [__import__("json").loads(x) for x in (out / "train-log.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first, (first, last)
    rfm = load_rfm(out, host)
    assert rfm.llm_layer_list == (1,)


def test_a_paused_run_resumes_exactly(host, scene: Path, tmp_path: Path) -> None:
    cfg = RFMTrainConfig(
        llm_layer_list=(1,), target="both", steps=6, lr=1e-3, max_tiles=3, checkpoint_every=3
    )
    whole = train_rfm(host, examples(scene), tmp_path / "a", cfg, open_pyramid=opener(tmp_path, host))
    train_rfm(host, examples(scene), tmp_path / "b", cfg, open_pyramid=opener(tmp_path, host), stop_at=3)
    resumed = train_rfm(host, examples(scene), tmp_path / "b", cfg, open_pyramid=opener(tmp_path, host))
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    other = RFMTrainConfig(llm_layer_list=(1,), target="distill", steps=6, max_tiles=3)
    with pytest.raises(RFMTrainingError, match="another run"):
        train_rfm(host, examples(scene), tmp_path / "b", other, open_pyramid=opener(tmp_path, host))


def test_bad_setups_are_one_line_errors(host, tiny_checkpoint, scene: Path, tmp_path: Path) -> None:
    with pytest.raises(RFMTrainingError, match="outside the host"):
        train_rfm(
            host,
            examples(scene),
            tmp_path / "x",
            RFMTrainConfig(llm_layer_list=(1, 99)),
            open_pyramid=opener(tmp_path, host),
        )
    with pytest.raises(RFMTrainingError, match="--target"):
        RFMTrainConfig(target="nope")
    no_boxes = [RFMExample(str(scene), "q?")]
    with pytest.raises(RFMTrainingError, match="ground-truth boxes"):
        train_rfm(
            host,
            no_boxes,
            tmp_path / "y",
            RFMTrainConfig(target="boxes"),
            open_pyramid=opener(tmp_path, host),
        )
    qwen = load_adapter(tiny_checkpoint("qwen2_vl", 11))
    with pytest.raises(RFMTrainingError, match="1-D rotary"):
        train_rfm(
            qwen,
            examples(scene),
            tmp_path / "z",
            RFMTrainConfig(llm_layer_list=(1,)),
            open_pyramid=opener(tmp_path, qwen),
        )


def test_cli_trains_on_a_world_bench_and_ask_uses_the_rfm(tmp_path: Path, capsys) -> None:
    """`lrs-vqa train-rfm world --questions (world-bench) --target both`, then `ask --scorer rfm --rfm DIR`;
    bad inputs are one-line errors."""
    import json

    from lrs_vqa.cli import main
    from lrs_vqa.world.bench_writer import QUESTIONS_FILE, write_world_bench

    write_world_bench(tmp_path / "b", scenes=1, sizes=(1024,), seed=5)
    qfile = tmp_path / "b" / QUESTIONS_FILE
    out = tmp_path / "rfm"
    args = ["train-rfm", "world", "--questions", str(qfile), "--out", str(out), "--layers", "1,2"]
    assert (
        main(
            [
                *args,
                "--target",
                "both",
                "--steps",
                "2",
                "--max-tiles",
                "4",
                "--limit",
                "3",
                "--export-released",
            ]
        )
        == 0
    )
    assert (out / "rfm-released.safetensors").is_file() and (out / "loss-curve.png").stat().st_size > 5000
    meta = json.loads((out / "rfm.json").read_text())
    assert meta["llm_layer_list"] == [1, 2] and meta["steps"] == 2
    row = json.loads(qfile.read_text().splitlines()[0])
    image = tmp_path / "b" / row["image"] if (tmp_path / "b" / row["image"]).exists() else None
    assert image is not None
    ask = ["ask", str(image), "What color is the car?", "--model", "world", "--json"]
    capsys.readouterr()
    assert main([*ask, "--scorer", "rfm", "--rfm", str(out), "--max-new-tokens", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["rfm"] == str(out)
    # --rfm with the default scorer (auto) uses it; bad input: another run's folder, a layer outside the
    # host, --rfm with --scorer attention
    assert main([*args, "--target", "distill", "--steps", "2"]) == 2
    assert "another run" in capsys.readouterr().err
    assert (
        main(
            [
                "train-rfm",
                "world",
                "--questions",
                str(qfile),
                "--out",
                str(tmp_path / "r2"),
                "--layers",
                "1,9",
            ]
        )
        == 2
    )
    assert "outside the host" in capsys.readouterr().err
    assert main([*ask, "--scorer", "attention", "--rfm", str(out)]) == 2
    assert "--scorer rfm" in capsys.readouterr().err
    assert main([*ask, "--rfm", str(out), "--max-new-tokens", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["scorer"] == "rfm"


def test_released_layout_export_round_trips(host, tmp_path: Path) -> None:
    """Exported under the released keys, routed back by the released loader's key split, loaded into a
    fresh RFM of the released loader's construction: equal, key for key."""
    from safetensors.torch import load_file

    from lrs_vqa.models.largeimg_checkpoint import rfm_depth, split_state_dict
    from lrs_vqa.models.region_focus import RegionFocusModule
    from rfm.training import export_released

    rfm = RegionFocusModule.from_host(host, llm_layer_list=[1])
    with torch.no_grad():
        for p in rfm.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not just the host's copy
    path = export_released(rfm, tmp_path / "released.safetensors")
    parts, unexpected = split_state_dict(load_file(str(path)))
    assert unexpected == [] and rfm_depth(parts["rfm"]) == 1
    fresh = RegionFocusModule(host.decoder.config, 1)
    fresh.load_state_dict(parts["rfm"], strict=False)
    ours = {k: v for k, v in rfm.state_dict().items() if "rotary" not in k}
    assert set(parts["rfm"]) == set(ours)
    for k, v in ours.items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_questions_without_boxes_distill_only(host, scene: Path, tmp_path: Path) -> None:
    """target=both: a question without a target (an absent object, rural/urban) still distils; target=boxes
    trains on the questions that have boxes only."""
    mixed = [RFMExample(str(scene), "is this rural or urban?"), *examples(scene)]
    for target in ("both", "boxes"):
        cfg = RFMTrainConfig(llm_layer_list=(1,), target=target, steps=4, max_tiles=3)
        train_rfm(host, mixed, tmp_path / target, cfg, open_pyramid=opener(tmp_path, host))
        rows = (tmp_path / target / "train-log.jsonl").read_text().splitlines()
        assert len(rows) == 4


def test_a_box_trained_rfm_finds_the_planted_target_the_untrained_one_misses(host, tmp_path: Path) -> None:
    """On a world scene (objects planted, boxes known), an RFM trained on the target's box ranks the target's
    tile first among the native tiles around it; the host-initialised RFM it starts from ranks another."""
    import json

    from lrs_vqa.c2f import tile_mass
    from lrs_vqa.models.region_focus import RegionFocusModule
    from lrs_vqa.world.bench_writer import QUESTIONS_FILE, write_world_bench
    from rfm.module import RFMScorer
    from rfm.training import window_shape

    bench = tmp_path / "bench"
    write_world_bench(bench, scenes=1, sizes=(1024,), seed=3)
    rows = [json.loads(x) for x in (bench / QUESTIONS_FILE).read_text().splitlines()]
    row = next(r for r in rows if r.get("target_boxes") and r["category"] == "object color")
    image, box = str(bench / row["image"]), tuple(row["target_boxes"][0])
    example = RFMExample(image, row["text"], (box,))
    open_pyramid = opener(tmp_path, host)
    dip = open_pyramid(image)
    native = len(dip.levels) - 1

    def top_tile_is_target(rfm: RegionFocusModule) -> bool:
        lvl = dip.level(native)
        h, w = window_shape(lvl.rows, lvl.cols, 16)
        anchor = dip.tiles_covering(native, PixelBox(*(round(v) for v in box)))[0]
        r0, c0 = min(anchor.row, lvl.rows - h), min(anchor.col, lvl.cols - w)
        keys = [TileKey(native, r, c) for r in range(r0, r0 + h) for c in range(c0, c0 + w)]
        with torch.no_grad():
            thumb = host.encode_tiles([dip.thumbnail()], newlines=False, level=-1)
            seg = host.encode_tiles(list(dip.stream(keys)), newlines=True, level=native)
            mass = tile_mass(RFMScorer(rfm).score(host, row["text"], [thumb, seg], 1), len(keys))
        best = keys[max(range(len(keys)), key=mass.__getitem__)]
        targets = dip.tiles_covering(native, PixelBox(*(round(v) for v in box)))
        return best in targets and len(keys) > len(targets)

    untrained = RegionFocusModule.from_host(host, llm_layer_list=[1]).eval()
    cfg = RFMTrainConfig(llm_layer_list=(1,), target="boxes", steps=30, lr=3e-3, max_tiles=16)
    trained = train_rfm(host, [example], tmp_path / "rfm", cfg, open_pyramid=open_pyramid)
    assert not top_tile_is_target(untrained)
    assert top_tile_is_target(trained)
    dip.close()


def test_a_model_folder_ships_its_rfm_and_auto_uses_it(tiny_checkpoint, scene: Path, tmp_path: Path) -> None:
    """A model folder with an ``rfm/`` from train-rfm: the loader attaches it, ``--scorer auto`` (the default)
    runs it and the record says so; a folder without one keeps the attention scorer."""
    import shutil

    from lrs_vqa.answer import AskOptions, answer
    from rfm.scorers import resolve_scorer_name

    plain = tiny_checkpoint("llava_onevision", 11)
    model = tmp_path / "model"
    shutil.copytree(plain, model)
    host = load_adapter(str(model))
    assert resolve_scorer_name("auto", host) == "attention"
    cfg = RFMTrainConfig(llm_layer_list=(1,), target="boxes", steps=2, max_tiles=3)
    trained = train_rfm(host, examples(scene), model / "rfm", cfg, open_pyramid=opener(tmp_path, host))
    shipped = load_adapter(str(model))
    assert resolve_scorer_name("auto", shipped) == "rfm"
    for (k, v), (k2, v2) in zip(
        trained.state_dict().items(), shipped.region_focus_module.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    record = answer(scene, "what color is the car?", model=shipped, options=AskOptions(max_new_tokens=1))
    assert record.settings["scorer"] == "rfm"
    record = answer(scene, "what color is the car?", model=host, options=AskOptions(max_new_tokens=1))
    assert record.settings["scorer"] == "attention"
