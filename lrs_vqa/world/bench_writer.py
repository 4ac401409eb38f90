"""``lrs-vqa world-bench``: a procedural "needle in a gigapixel haystack" benchmark in LRS-VQA's own format.

``OUT/LRS_VQA/image/`` holds the scenes (COGs, and some PNGs up to 8,192 px like the real set's mix),
``OUT/LRS_VQA/scenes/`` their sidecars (every object's box, polygon, category, colour), and
``OUT/LRS_VQA_merged.jsonl`` the questions in the real file's schema — so ``lrs-vqa eval --image-root OUT``
and ``lrs-vqa score`` run on it unchanged. Each row also carries ``target_boxes`` (the level-0 boxes of the
objects that hold the answer), so a run can tell whether the tiles it read contained the answer.

Scene ``i`` of ``--seed S`` has seed ``S * 100_000 + i`` (below 2**31: the world model's training scenes are
drawn at or above 2**32, so a benchmark never shares a scene with training). Every file is written under a
temporary name and renamed when complete; the question file comes last, so a benchmark folder with a
question file is complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lrs_vqa.world.questions import SUFFIX, questions_for
from pyramid.cog import write_cog
from pyramid.errors import LrsVqaError
from pyramid.world import WorldScene, render_world, synthesize_world, write_sidecar

QUESTIONS_FILE = "LRS_VQA_merged.jsonl"
MIN_SIZE = 1024  # below this a scene is a handful of tiles: no haystack
PNG_MAX = 8192  # larger scenes are always COGs (a PNG that size is decoded whole)
SEED_STRIDE = 100_000


class WorldBenchError(LrsVqaError, ValueError):
    """Bad world-bench arguments or output folder; one-line message."""


@dataclass(frozen=True)
class WorldBenchSummary:
    out: Path
    scenes: int
    questions: int
    by_category: dict[str, int]
    questions_file: Path


def scene_seed(seed: int, index: int) -> int:
    return seed * SEED_STRIDE + index


def write_world_bench(
    out: str | Path,
    *,
    scenes: int,
    sizes: tuple[int, ...] = (4096, 8192, 16384, 27328),
    seed: int = 0,
    object_scale: float = 1.0,
    png_every: int = 3,
    overwrite: bool = False,
    progress: bool = False,
) -> WorldBenchSummary:
    """Write ``scenes`` scenes (sizes cycling through ``sizes``) and every unambiguous question about them."""
    if scenes < 1:
        raise WorldBenchError(f"--scenes must be at least 1, got {scenes}")
    if not sizes or min(sizes) < MIN_SIZE:
        raise WorldBenchError(f"every size must be at least {MIN_SIZE} px (a few tiles), got {list(sizes)}")
    if seed < 0 or scene_seed(seed, scenes) >= 2**31:
        raise WorldBenchError(f"--seed must be in 0..{2**31 // SEED_STRIDE - 1}")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise WorldBenchError(f"{root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise WorldBenchError(f"{root} is not empty; pass --overwrite to replace it")
        shutil.rmtree(root)
    images = root / "LRS_VQA" / "image"
    sidecars = root / "LRS_VQA" / "scenes"
    images.mkdir(parents=True, exist_ok=True)
    sidecars.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    bar = _bar(progress, scenes)
    for i in range(scenes):
        size = sizes[i % len(sizes)]
        s = scene_seed(seed, i)
        name = f"world_{s:07d}"
        as_png = png_every > 0 and size <= PNG_MAX and i % png_every == png_every - 1
        scene = (
            _write_png(images, name, size, s, object_scale)
            if as_png
            else _write_cog(images, name, size, s, object_scale)
        )
        write_sidecar(scene, sidecars / f"{name}.json", image_name=f"../image/{scene.path.name}")  # type: ignore[union-attr]
        rng = np.random.default_rng([s, 21])
        for k, q in enumerate(questions_for(scene, rng)):
            boxes = [list(scene.objects[o].pixel_box) for o in q.targets]
            rows.append(
                {
                    "question_id": f"WORLD_{s}_{k}",
                    "image": f"LRS_VQA/image/{scene.path.name}",  # type: ignore[union-attr]
                    "category": q.category,
                    "text": q.text + SUFFIX,
                    "ground_truth": q.answer,
                    "hbox": _union(boxes),
                    "target_boxes": boxes,
                    "image_size": [scene.width, scene.height],
                    "scene_seed": s,
                    "scene_kind": scene.kind,
                    "split": "holdout",
                }
            )
        bar(i + 1)
    questions = root / QUESTIONS_FILE
    tmp = questions.with_suffix(".jsonl.part")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(questions)
    by_cat: dict[str, int] = {}
    for r in rows:
        by_cat[r["category"]] = by_cat.get(r["category"], 0) + 1
    return WorldBenchSummary(root, scenes, len(rows), by_cat, questions)


def _union(boxes: list[list[int]]) -> list[int] | None:
    if not boxes:
        return None
    a = np.array(boxes)
    return [int(a[:, 0].min()), int(a[:, 1].min()), int(a[:, 2].max()), int(a[:, 3].max())]


def _write_cog(images: Path, name: str, size: int, seed: int, object_scale: float) -> WorldScene:
    raw = images / f".{name}.raw.tif"
    final = images / f"{name}.tif"
    part = images / f".{name}.part.tif"
    try:
        scene = synthesize_world(raw, size, seed=seed, object_scale=object_scale)
        part.unlink(missing_ok=True)
        write_cog(raw, part)
        part.replace(final)
    finally:
        raw.unlink(missing_ok=True)
        raw.with_suffix(".json").unlink(missing_ok=True)
        part.unlink(missing_ok=True)
    return WorldScene(**{**scene.__dict__, "path": final, "sidecar_path": None})


def _write_png(images: Path, name: str, size: int, seed: int, object_scale: float) -> WorldScene:
    scene, rgb, _ = render_world(size, seed, object_scale=object_scale)
    final = images / f"{name}.png"
    part = images / f".{name}.part.png"
    if not cv2.imwrite(str(part), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {part}")
    part.replace(final)
    return WorldScene(**{**scene.__dict__, "path": final})


def _bar(enabled: bool, total: int):
    if not enabled:
        return lambda done: None
    from rich.console import Console
    from rich.progress import Progress

    p = Progress(console=Console(stderr=True))
    p.start()
    task = p.add_task("writing world scenes", total=total)

    def update(done: int) -> None:
        p.update(task, completed=done)
        if done >= total:
            p.stop()

    return update
