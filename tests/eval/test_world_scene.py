"""The synthetic world (pyramid.world), its questions and the world-bench writer: values, not just runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from lrs_vqa.questions import load_questions
from lrs_vqa.world.bench_writer import QUESTIONS_FILE, WorldBenchError, write_world_bench
from lrs_vqa.world.questions import NAMES, SUFFIX, questions_for
from pyramid.synth import _COLORS
from pyramid.world import CATEGORIES, COLORS, compose_world, load_world, render_world, synthesize_world


def test_render_is_deterministic_and_paints_every_object() -> None:
    a_scene, a_rgb, a_ids = render_world(1500, 3)
    b_scene, b_rgb, b_ids = render_world(1500, 3)
    assert a_scene == b_scene
    assert np.array_equal(a_rgb, b_rgb) and np.array_equal(a_ids, b_ids)
    assert a_scene.kind in ("rural", "urban") and a_scene.objects
    for o in a_scene.objects:
        x0, y0, x1, y1 = o.pixel_box
        mask = a_ids[y0:y1, x0:x1] == o.id + 1
        # the box is exactly the painted pixels' extent, and the pixels carry the object's colour (or its
        # darker detail at 0.62 of it)
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
        pixels = a_rgb[y0:y1, x0:x1][mask].astype(int)
        want = np.array(_COLORS[o.color])
        near = np.abs(pixels - want).max(1) <= 6
        dark = np.abs(pixels - (want * 0.62)).max(1) <= 6
        assert (near | dark).all() and near.mean() > 0.5, o


def test_shapes_differ_by_category() -> None:
    counts = dict.fromkeys(CATEGORIES, 1)
    counts["storage_tank"] = 3
    fill: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    for seed in range(6):
        scene, _, ids = render_world(1200, seed, counts=counts)
        for o in scene.objects:
            x0, y0, x1, y1 = o.pixel_box
            fill[o.category].append(float((ids[y0:y1, x0:x1] == o.id + 1).mean()))
    # a disc fills pi/4 of its box; a rotated plane with swept wings much less; cars run along a street
    # (axis-aligned: all of it); a rotated rectangle at least half
    assert 0.72 < np.mean(fill["storage_tank"]) < 0.85
    assert np.mean(fill["airplane"]) < 0.5
    assert min(fill["car"]) > 0.95
    assert min(fill["building"]) > 0.45 and np.mean(fill["building"]) < 0.95


def test_objects_sit_in_their_context() -> None:
    scene, rgb, ids = render_world(2000, 5, counts={"ship": 2, "car": 2, "airplane": 1})
    context_rgb = {"water": (28, 62, 92), "street": (84, 84, 88), "apron": (158, 156, 150)}
    for o in scene.objects:
        x0, y0, x1, y1 = o.pixel_box
        ring = rgb[max(y0 - 3, 0) : y1 + 3, max(x0 - 3, 0) : x1 + 3][
            ids[max(y0 - 3, 0) : y1 + 3, max(x0 - 3, 0) : x1 + 3] == 0
        ]
        assert len(ring), o
        share = (np.abs(ring.astype(int) - context_rgb[o.context]).max(1) <= 4).mean()
        assert share > 0.6, (o, share)


def test_streamed_file_equals_memory_render_and_sidecar_round_trips(tmp_path: Path) -> None:
    scene = synthesize_world(tmp_path / "w.tif", (1300, 1100), seed=9, compress="none")
    _, rgb, _ = render_world((1300, 1100), 9)
    with rasterio.open(scene.path) as src:
        assert src.crs is not None
        assert np.array_equal(src.read().transpose(1, 2, 0), rgb)
    back = load_world(scene.sidecar_path)
    assert back.objects == scene.objects and back.kind == scene.kind and back.path == scene.path
    assert all(o.map_box is not None for o in back.objects)
    with pytest.raises(ValueError, match="not a world-scene sidecar"):
        load_world(tmp_path / "w.tif")


def test_questions_are_unambiguous_and_true() -> None:
    rng = np.random.default_rng(0)
    seen = set()
    for seed in range(40):
        scene, _ = compose_world(4000, 4000, seed)
        qs = questions_for(scene, rng)
        presence = [q for q in qs if q.category == "object presence"]
        assert sum(q.answer == "yes" for q in presence) == sum(q.answer == "no" for q in presence)
        for q in qs:
            seen.add(q.category)
            if q.category == "object color":
                (oid,) = q.targets
                obj = scene.objects[oid]
                assert len(scene.of_category(obj.category)) == 1 and q.answer == obj.color
                assert NAMES[obj.category] in q.text
            elif q.category == "object category":
                (oid,) = q.targets
                obj = scene.objects[oid]
                assert len(scene.of_color(obj.color)) == 1 and q.answer == NAMES[obj.category]
            elif q.category == "object presence":
                exists = any(f"{o.color} {NAMES[o.category]}" in q.text for o in scene.objects)
                assert q.answer == ("yes" if exists else "no")
            elif q.category == "count":
                assert q.answer == str(len(scene.of_category("storage_tank")))
            else:
                assert q.answer == scene.kind
    assert seen == {"object color", "object category", "object presence", "count", "rural or urban"}
    assert set(COLORS) == set(_COLORS)


def test_world_bench_writes_an_lrs_vqa_file(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    summary = write_world_bench(out, scenes=3, sizes=(1024, 1536), seed=2)
    rows = [json.loads(x) for x in (out / QUESTIONS_FILE).read_text().splitlines()]
    assert summary.questions == len(rows) and sum(summary.by_category.values()) == len(rows)
    qf = load_questions(out / QUESTIONS_FILE, out)
    assert not qf.bad_rows and qf.benchmark == "lrs-vqa" and len(qf.questions) == len(rows)
    images = {r["image"] for r in rows}
    assert (
        len(images) == 3
        and any(i.endswith(".png") for i in images)
        and any(i.endswith(".tif") for i in images)
    )
    for r in rows:
        assert r["text"].endswith(SUFFIX) and r["split"] == "holdout" and r["scene_seed"] < 2**31
        w, h = r["image_size"]
        for x0, y0, x1, y1 in r["target_boxes"]:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    # the sidecars describe the images beside them
    for side in (out / "LRS_VQA" / "scenes").iterdir():
        scene = load_world(side)
        assert scene.path is not None and scene.path.is_file()
    with pytest.raises(WorldBenchError, match="not empty"):
        write_world_bench(out, scenes=1, sizes=(1024,))
    assert not list(out.rglob("*.part*"))  # nothing half-written left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "512"], "at least 1024"),
        (["--scenes", "0"], "at least 1"),
        (["--sizes", "4k"], "comma-separated integers"),
    ],
)
def test_world_bench_bad_input_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "lrs_vqa", "world-bench", str(tmp_path / "b"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
