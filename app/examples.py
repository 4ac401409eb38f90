"""Bundled examples: small synthetic-world scenes (``pyramid.world``) with a question each and its ground
truth, generated into a cache folder at first start (never committed as binaries)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrs_vqa.world.questions import SUFFIX, WorldQuestion, questions_for
from pyramid.world import WorldScene, compose_world, synthesize_world


def scene_questions(scene: WorldScene) -> list[WorldQuestion]:
    """The questions the page offers about a world scene (templates drawn from the scene's seed, so the
    page and the viewer's ground truth agree)."""
    return questions_for(scene, np.random.default_rng([scene.seed, 21]))


def find_question(scene: WorldScene, asked: str) -> WorldQuestion | None:
    """The scene's question that was asked (with or without the LRS-VQA answer-format suffix)."""
    text = asked.strip().removesuffix(SUFFIX.strip()).strip()
    return next((q for q in scene_questions(scene) if q.text == text), None)


@dataclass(frozen=True)
class Example:
    name: str
    size: tuple[int, int]
    seed: int
    category: str  # which of the scene's questions is offered

    @property
    def question(self) -> str:
        return self._question()[0]

    @property
    def ground_truth(self) -> str:
        return self._question()[1]

    def _question(self) -> tuple[str, str]:
        scene, _ = compose_world(*self.size, self.seed)
        qs = [q for q in scene_questions(scene) if q.category == self.category]
        return qs[0].text + SUFFIX, qs[0].answer  # the LRS-VQA prompt, as the world model was trained


EXAMPLES = (
    Example("world-2048 (synthetic world, 2048×2048)", (2048, 2048), 7, "object color"),
    Example("world-1600x1024 (synthetic world)", (1600, 1024), 3, "rural or urban"),
)


def _file_name(example: Example) -> str:
    w, h = example.size
    return f"world_{w}x{h}_s{example.seed}.tif"


def ensure_examples(folder: Path) -> dict[str, Path]:
    """Example name → GeoTIFF path, writing the scenes that are missing (a second start reuses them)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for example in EXAMPLES:
        path = folder / _file_name(example)
        if not path.is_file():
            tmp = folder / f".{path.name}.partial.tif"
            synthesize_world(tmp, example.size, seed=example.seed)
            tmp.with_suffix(".json").replace(path.with_suffix(".json"))
            tmp.replace(path)
        out[example.name] = path
    return out
