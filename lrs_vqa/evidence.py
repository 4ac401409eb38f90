"""GeoJSON evidence (RFC 7946): one Feature per tile that was read, WGS84 polygons when georeferenced."""

from __future__ import annotations

import json
from pathlib import Path

from lrs_vqa.records import AnswerRecord


def evidence_geojson(record: AnswerRecord) -> dict[str, object]:
    features = []
    for rank, tile in enumerate(record.tiles):
        props: dict[str, object] = {
            "rank": rank,
            "role": tile.role,
            "level": tile.level,
            "level_name": tile.level_name,
            "row": tile.row,
            "col": tile.col,
            "pixel_bbox": tile.pixel_box,
            "native_bbox": tile.native_box,
            "native_crs": tile.native_crs,
            "tokens_into_llm": tile.tokens_into_llm,
            "score": tile.score,
            "coordinate_system": "wgs84" if tile.wgs84 is not None else "pixel",
        }
        features.append({"type": "Feature", "geometry": tile.wgs84, "properties": props})
    return {
        "type": "FeatureCollection",
        "features": features,
        # Foreign members (allowed by RFC 7946): what the evidence is evidence for.
        "question": record.question,
        "answer": record.answer,
        "model": record.model,
        "random_weights": record.random_weights,
        "strategy": record.strategy,
        "image": record.image.get("path"),
        # A STAC item's id, datetime and bbox, and a remote file's transfer counters, when there are any.
        **{k: record.image[k] for k in ("stac", "remote") if k in record.image},
    }


def write_evidence(record: AnswerRecord, path: str | Path) -> Path:
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(evidence_geojson(record), indent=1))
    tmp.replace(out)  # never leave a half-written file behind
    return out
