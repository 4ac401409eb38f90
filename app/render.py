"""Pictures and tables for the page: the annotated overview, the selected tiles, the statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from lrs_vqa.records import WORLD_MODEL_NOTE, AnswerRecord, TileRecord
from pyramid.dip import DynamicImagePyramid

Box = tuple[float, float, float, float]
Annotation = tuple[tuple[int, int, int, int], str]
MAX_GALLERY = 24

# A colour per pyramid level in the legend (thumbnail, coarse, then finer levels).
LEVEL_COLOURS = ("#888888", "#00e5ff", "#00ff5a", "#ffffff", "#ff3df5", "#ffd400", "#ff7a00")


def level_label(level: int) -> str:
    return "thumbnail" if level < 0 else f"level {level}"


def colour_map(levels: int = 8) -> dict[str, str]:
    """Legend colours of the box labels (fixed, so streamed updates keep their colours)."""
    out = {"thumbnail": LEVEL_COLOURS[0]}
    for k in range(levels):
        out[level_label(k)] = LEVEL_COLOURS[1 + k % (len(LEVEL_COLOURS) - 1)]
    return out


def overview_boxes(boxes: Sequence[Box], label: str, factor_x: float, factor_y: float) -> list[Annotation]:
    """Level-0 pixel boxes → overview-pixel boxes, one label each (one legend entry per level)."""
    out: list[Annotation] = []
    for x0, y0, x1, y1 in boxes:
        out.append(
            (
                (int(x0 / factor_x), int(y0 / factor_y), int(x1 / factor_x) - 1, int(y1 / factor_y) - 1),
                label,
            )
        )
    return out


def outline_masks(
    boxes: Sequence[Annotation], width: int, height: int, border: int = 2
) -> list[tuple[np.ndarray, str]]:
    """One outline mask per label (a legend entry per level; the heatmap stays visible inside the boxes).

    ``gr.AnnotatedImage`` fills box annotations at half opacity, which would hide the token scores."""
    masks: dict[str, np.ndarray] = {}
    for (x0, y0, x1, y1), label in boxes:
        m = masks.setdefault(label, np.zeros((height, width), np.float32))
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, width - 1), min(y1, height - 1)
        if x1 < x0 or y1 < y0:
            continue
        m[y0 : y0 + border, x0 : x1 + 1] = 1
        m[max(y1 - border + 1, y0) : y1 + 1, x0 : x1 + 1] = 1
        m[y0 : y1 + 1, x0 : x0 + border] = 1
        m[y0 : y1 + 1, max(x1 - border + 1, x0) : x1 + 1] = 1
    return [(m, label) for label, m in masks.items()]


def record_annotations(record: AnswerRecord, factor_x: float, factor_y: float) -> list[Annotation]:
    """Every tile the run read below the thumbnail, drawn on the overview, labelled by level."""
    out: list[Annotation] = []
    for tile in record.tiles:
        if tile.role == "thumbnail":
            continue
        box = tuple(float(v) for v in tile.pixel_box)
        out += overview_boxes([box], level_label(tile.level), factor_x, factor_y)  # type: ignore[list-item]
    return out


def selected_tiles(record: AnswerRecord) -> list[TileRecord]:
    """The finest tiles the answer saw: the zoomed tiles of the deepest level, else the coarse ones."""
    tiles = [t for t in record.tiles if t.role != "thumbnail"] or list(record.tiles)
    deepest = max(t.level for t in tiles)
    return [t for t in tiles if t.level == deepest][:MAX_GALLERY]


def gallery(dip: DynamicImagePyramid, tiles: Sequence[TileRecord]) -> list[tuple[np.ndarray, str]]:
    out: list[tuple[np.ndarray, str]] = []
    for t in tiles:
        if t.level < 0:
            pixels = dip.thumbnail().pixels
        elif t.role == "overview":
            pixels = dip.level_image(0).pixels
        else:
            pixels = dip.tile(t.level, t.row, t.col).pixels
        score = "" if t.score is None else f" · score {t.score:.3f}"
        out.append((pixels, f"level {t.level} ({t.level_name}) r{t.row} c{t.col}{score}"))
    return out


def statistics(record: AnswerRecord) -> dict[str, object]:
    s = record.stats
    return {
        "vision tokens encoded": s.vision_tokens_encoded,
        "tokens into the LLM": s.tokens_into_llm,
        "vision tokens into the LLM": s.vision_tokens_into_llm,
        "TFLOPs (total)": round(s.tflops_total, 6),
        "time (s)": s.seconds.get("total"),
        f"peak memory (MB, {s.peak_memory_kind})": s.peak_memory_mb,
        "tiles read": s.tiles_read,
        "levels": [f"{lv['level_name']}: {len(lv['tiles'])} tiles, {lv['decision']}" for lv in record.levels],  # type: ignore[arg-type]
    }


def answer_markdown(record: AnswerRecord) -> str:
    text = record.answer.strip() or "(empty answer)"
    body = f"### Answer\n\n{text}\n\n<sub>{record.model} · {record.strategy}</sub>"
    if record.random_weights:
        body += (
            "\n\n> ⚠️ **Random tiny model: this answer is meaningless.** It only shows the pipeline "
            "working; serve a real checkpoint with `--model` for real answers."
        )
    elif record.synthetic_world:
        body += f"\n\n> ℹ️ **Synthetic-world model.** {WORLD_MODEL_NOTE[0].upper()}{WORLD_MODEL_NOTE[1:]}."
    return body


def to_pil(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels)
