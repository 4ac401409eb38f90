"""What the deep-zoom viewer draws over the image: the tiles read at each level, the evidence (the tiles of
the deepest level the answer saw), the heatmap, and for a world scene the ground-truth object boxes. Built
as JSON for ``app/static/viewer.js``; the page embeds only a container that names the JSON's URL."""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.examples import find_question
from app.render import colour_map, level_label, selected_tiles
from app.tiles import PREFIX
from lrs_vqa.records import AnswerRecord
from pyramid.dip import DynamicImagePyramid
from pyramid.levels import PixelBox
from pyramid.world import is_world_sidecar, load_world

# Loaded once per page by gr.HTML's ``head`` (deduplicated by src); relative URLs follow a proxy prefix.
HEAD = (
    f'<link rel="stylesheet" href="{PREFIX}/static/viewer.css">'
    f'<script src="{PREFIX}/static/vendor/openseadragon/openseadragon.min.js"></script>'
    f'<script src="{PREFIX}/static/viewer.js"></script>'
)
# gr.HTML runs this with ``element`` and ``watch``; viewer.js re-initialises whenever the value changes.
ON_LOAD = (
    "const start = () => window.lrsViewer ? window.lrsViewer.attach(element, watch) : setTimeout(start, 50);"
    " start();"
)
EMPTY = '<div class="lrs-viewer-empty">The deep-zoom viewer opens with the first question.</div>'


@dataclass(frozen=True)
class ViewerTile:
    """One tile read by the run, as the viewer draws and describes it."""

    level: int
    level_name: str
    role: str
    row: int
    col: int
    box: tuple[int, int, int, int]  # level-0 pixels x0, y0, x1, y1
    score: float | None
    wgs84_bbox: tuple[float, float, float, float] | None  # west, south, east, north
    colour: str
    evidence: bool  # among the deepest tiles the answer saw


@dataclass(frozen=True)
class TruthBox:
    """A world scene's object that holds the answer ("where the answer was")."""

    box: tuple[int, int, int, int]
    label: str
    wgs84_bbox: tuple[float, float, float, float] | None


def dzi_url(token: str) -> str:
    return f"{PREFIX}/dzi/{token}.dzi"


def overlay_url(token: str, revision: int) -> str:
    return f"{PREFIX}/view/{token}/overlay.json?rev={revision}"  # a new answer, a new URL: no stale JSON


def container(token: str, revision: int) -> str:
    """The gr.HTML value: a container naming its overlay; viewer.js builds the viewer in it."""
    url = html.escape(overlay_url(token, revision), quote=True)
    return f'<div class="lrs-viewer-host" data-overlay="{url}"></div>'


def _bbox(polygon: dict[str, Any] | None) -> tuple[float, float, float, float] | None:
    if not polygon:
        return None
    lon, lat = zip(*polygon["coordinates"][0], strict=True)
    return (min(lon), min(lat), max(lon), max(lat))


def base_overlay(token: str, width: int, height: int) -> dict[str, Any]:
    """The image alone (while the question runs)."""
    return {
        "dzi": dzi_url(token),
        "width": width,
        "height": height,
        "tiles": [],
        "truth": [],
        "heatmap": None,
    }


def viewer_tiles(record: AnswerRecord) -> list[ViewerTile]:
    """Every tile read below the thumbnail (which is the whole image), coloured as on the overview."""
    colours = colour_map(max([t.level + 1 for t in record.tiles] + [1]))
    deepest = {(t.level, t.row, t.col) for t in selected_tiles(record)}
    out = []
    for t in record.tiles:
        if t.role == "thumbnail":
            continue
        out.append(
            ViewerTile(
                level=t.level,
                level_name=t.level_name,
                role=t.role,
                row=t.row,
                col=t.col,
                box=tuple(int(v) for v in t.pixel_box),  # type: ignore[arg-type]
                score=t.score,
                wgs84_bbox=_bbox(t.wgs84),
                colour=colours[level_label(t.level)],
                evidence=(t.level, t.row, t.col) in deepest,
            )
        )
    return out


def ground_truth(image: Path | str, question: str, dip: DynamicImagePyramid) -> tuple[str, list[TruthBox]]:
    """For a world scene (an image with its world sidecar) asked one of its own questions: the answer and
    the boxes of the objects holding it; ("", []) otherwise."""
    if not isinstance(image, Path):
        return "", []
    sidecar = image.with_suffix(".json")
    if not sidecar.is_file() or not is_world_sidecar(sidecar):
        return "", []
    scene = load_world(sidecar)
    q = find_question(scene, question)
    if q is None:
        return "", []
    objects = {o.id: o for o in scene.objects}
    boxes = []
    for oid in q.targets:
        o = objects[oid]
        polygon = dip.geometry(PixelBox(*o.pixel_box)).wgs84
        bounds = tuple(float(v) for v in polygon.bounds) if polygon is not None else None
        boxes.append(TruthBox(o.pixel_box, f"{o.color} {o.category.replace('_', ' ')}", bounds))  # type: ignore[arg-type]
    return q.answer, boxes


def answer_overlay(
    token: str,
    record: AnswerRecord,
    dip: DynamicImagePyramid,
    image: Path | str,
    heatmap: bool,
) -> dict[str, Any]:
    """The overlay after an answer: tiles by level, evidence, heatmap URL, ground truth when known."""
    truth_answer, truth = ground_truth(image, record.question, dip)
    levels = sorted({(t.level, t.level_name, t.colour) for t in viewer_tiles(record)})
    return {
        **base_overlay(token, dip.info.width, dip.info.height),
        "tiles": [asdict(t) for t in viewer_tiles(record)],
        "levels": [{"level": k, "name": n, "colour": c} for k, n, c in levels],
        "heatmap": f"{PREFIX}/view/{token}/heatmap.png" if heatmap else None,
        "truth": [asdict(b) for b in truth],
        "truth_answer": truth_answer,
        "answer": record.answer,
    }
