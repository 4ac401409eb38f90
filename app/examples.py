"""Bundled examples: small synthetic georeferenced scenes, generated into a cache folder at first start
(never committed as binaries)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyramid.synth import synthesize_scene


@dataclass(frozen=True)
class Example:
    name: str
    size: tuple[int, int]
    seed: int
    question: str


EXAMPLES = (
    Example("scene-2048 (synthetic, 2048×2048)", (2048, 2048), 7, "How many cars are in the image?"),
    Example("scene-1600x1024 (synthetic)", (1600, 1024), 3, "Is there a ship near the harbour?"),
)


def _file_name(example: Example) -> str:
    w, h = example.size
    return f"scene_{w}x{h}_s{example.seed}.tif"


def ensure_examples(folder: Path) -> dict[str, Path]:
    """Example name → GeoTIFF path, writing the scenes that are missing (a second start reuses them)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for example in EXAMPLES:
        path = folder / _file_name(example)
        if not path.is_file():
            tmp = folder / f".{path.name}.partial.tif"
            synthesize_scene(tmp, example.size, seed=example.seed)
            tmp.replace(path)
            sidecar = tmp.with_suffix(".json")
            if sidecar.is_file():
                sidecar.replace(path.with_suffix(".json"))
        out[example.name] = path
    return out
