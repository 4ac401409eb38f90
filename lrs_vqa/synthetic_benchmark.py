"""A small synthetic stand-in for the LRS-VQA benchmark, laid out like the real one, for tests and timing.

``root/LRS_VQA/image/<name>.tif|png`` plus ``root/LRS_VQA/LRS_VQA_merged.jsonl``: FAIR questions on GeoTIFFs,
GLH-Bridge and STAR questions on PNGs, as in the real file. The scenes come from
:func:`pyramid.synth.synthesize_scene` and each ground truth is computed from its planted objects (a count, a
colour, urban or rural), so a model that could see would be scored meaningfully.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import rasterio
from PIL import Image

from pyramid.synth import SceneInfo, synthesize_scene

SUFFIX = "\n Answer the question using a single word or phrase."
SUBSETS = (("FAIR", ".tif"), ("GLH-Bridge", ".png"), ("STAR", ".png"))


def _questions(scene: SceneInfo) -> list[tuple[str, str, str]]:
    """(category, question, ground truth) about ``scene``, in a fixed order."""
    counts = Counter(o.category for o in scene.objects)
    common = max(sorted(counts), key=lambda c: counts[c])
    single = next((o for o in scene.objects if counts[o.category] == 1), scene.objects[0])
    name = single.category.replace("_", " ")
    return [
        ("count", f"How many {common.replace('_', ' ')} objects are there?", str(counts[common])),
        ("object color", f"What is the color of the {name}?", single.color),
        (
            "rural or urban",
            "Is this an urban or a rural area?",
            "urban" if counts["building"] >= 2 else "rural",
        ),
    ]


def write_synthetic_benchmark(
    root: str | Path,
    *,
    images: int = 6,
    questions_per_image: int = 3,
    size: tuple[int, int] = (700, 500),
    seed: int = 0,
) -> Path:
    """Write the dataset under ``root``; return the question file. Deterministic for given arguments."""
    base = Path(root) / "LRS_VQA"
    image_dir = base / "image"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    counters: Counter[str] = Counter()
    for i in range(images):
        subset, suffix = SUBSETS[i % len(SUBSETS)]
        out = image_dir / f"{1000 + i}{suffix}"
        tif = out if suffix == ".tif" else image_dir / f".{out.stem}.tmp.tif"
        scene = synthesize_scene(tif, size, seed=seed + i, n_objects=6)
        if suffix == ".png":
            with rasterio.open(tif) as src:
                Image.fromarray(src.read().transpose(1, 2, 0)).save(out, compress_level=1)
            tif.unlink()
        scene.sidecar_path.unlink()
        asked = _questions(scene)
        for k in range(questions_per_image):
            category, question, truth = asked[k % len(asked)]
            counters[subset] += 1
            rows.append(
                {
                    "question_id": f"{subset}_{counters[subset]}",
                    "image": f"LRS_VQA/image/{out.name}",
                    "category": category,
                    "text": question + SUFFIX,
                    "ground_truth": truth,
                    "image_size": [scene.width, scene.height],
                }
            )
    path = base / "LRS_VQA_merged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
