"""Questions with verifiable answers about a world scene (:mod:`pyramid.world`).

Only unambiguous questions are asked: the colour of the *only* object of a category, the category of the
*only* object of a colour, whether an object of a colour and category exists (yes and no balanced), how many
storage tanks the scene's one cluster holds, and whether the scene is rural or urban (answerable from the
thumbnail: the control category). Categories use LRS-VQA's names where they fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyramid.world import CATEGORIES, COLORS, WorldScene

SUFFIX = "\n Answer the question using a single word or phrase."
QUESTION_CATEGORIES = ("object color", "object category", "object presence", "count", "rural or urban")

NAMES = {c: c.replace("_", " ") for c in CATEGORIES}  # storage_tank -> "storage tank"
PLURALS = {"airplane": "airplanes", "ship": "ships", "storage_tank": "storage tanks", "car": "cars"}
PLURALS["building"] = "buildings"

_COLOR_TEMPLATES = ("What is the color of the {name}?", "What color is the {name}?")
_CATEGORY_TEMPLATES = ("What is the {color} object?", "What kind of object is {color}?")
_PRESENCE_TEMPLATES = ("Is there {a} {color} {name} in the image?", "Is there {a} {color} {name}?")
_COUNT_TEMPLATES = ("How many {plural} are there?", "How many {plural} are in the image?")
_RURAL_TEMPLATES = ("Is this a rural or urban area?", "Is this image rural or urban?")


@dataclass(frozen=True)
class WorldQuestion:
    category: str  # one of QUESTION_CATEGORIES
    text: str  # the question, without SUFFIX
    answer: str
    targets: tuple[int, ...]  # object ids holding the answer (empty: absent object or whole scene)


def questions_for(scene: WorldScene, rng: np.random.Generator) -> list[WorldQuestion]:
    """Every question the scene answers unambiguously (presence: as many 'no' as 'yes'); templates are
    drawn from ``rng``."""

    def pick(templates: tuple[str, ...]) -> str:
        return templates[int(rng.integers(len(templates)))]

    out: list[WorldQuestion] = []
    for category in CATEGORIES:
        objs = scene.of_category(category)
        if len(objs) == 1:
            text = pick(_COLOR_TEMPLATES).format(name=NAMES[category])
            out.append(WorldQuestion("object color", text, objs[0].color, (objs[0].id,)))
    for color in COLORS:
        objs = scene.of_color(color)
        if len(objs) == 1:
            text = pick(_CATEGORY_TEMPLATES).format(color=color)
            out.append(WorldQuestion("object category", text, NAMES[objs[0].category], (objs[0].id,)))
    present = sorted({(o.color, o.category) for o in scene.objects})
    absent = [(c, k) for c in COLORS for k in CATEGORIES if (c, k) not in present]
    n = min(len(present), len(absent), 3)
    for i in rng.permutation(len(present))[:n]:
        color, category = present[int(i)]
        ids = tuple(o.id for o in scene.objects if o.color == color and o.category == category)
        text = pick(_PRESENCE_TEMPLATES).format(a=_article(color), color=color, name=NAMES[category])
        out.append(WorldQuestion("object presence", text, "yes", ids))
    for i in rng.permutation(len(absent))[:n]:
        color, category = absent[int(i)]
        text = pick(_PRESENCE_TEMPLATES).format(a=_article(color), color=color, name=NAMES[category])
        out.append(WorldQuestion("object presence", text, "no", ()))
    tanks = scene.of_category("storage_tank")
    if len(tanks) >= 2:
        text = pick(_COUNT_TEMPLATES).format(plural=PLURALS["storage_tank"])
        out.append(WorldQuestion("count", text, str(len(tanks)), tuple(o.id for o in tanks)))
    out.append(WorldQuestion("rural or urban", pick(_RURAL_TEMPLATES), scene.kind, ()))
    return out


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
