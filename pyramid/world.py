"""The synthetic *world*: gigapixel scenes whose every object, and so every answer, is known.

A world scene is a :mod:`pyramid.synth` land-cover scene (water, vegetation, fields, urban land, roads,
sensor noise) made *rural* or *urban* by its land-cover shares, with a few **needles**: objects of five
categories with category-distinct shapes, in the seven saturated colours, each in a plausible context —

* ``airplane`` (fuselage + swept wings + tail plane) on a concrete apron;
* ``ship`` (hull with a pointed bow and a deck house) on a patch of water;
* ``storage_tank`` (disc with a shadow ring) in a cluster of 2-6 on a concrete pad;
* ``car`` (body with a dark windscreen) on an asphalt street segment;
* ``building`` (roof with a ridge line) on a paved lot.

Sizes are tens of pixels at native resolution (``object_scale`` scales them), so a needle vanishes in a
thumbnail of a large scene and must be found at native resolution. Every object's box, outline polygon,
category and colour go to the JSON sidecar. A scene is a pure function of its seed and size: written in
streamed 512-row blocks (27,328² in bounded memory) by :func:`synthesize_world`, or rendered into memory
(with an object-id map, for training) by :func:`render_world`.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine

from pyramid.synth import _BLOCK, _COLORS, _profile, _Renderer, _write

__all__ = [
    "CATEGORIES",
    "COLORS",
    "KINDS",
    "WorldObject",
    "WorldScene",
    "compose_world",
    "is_world_sidecar",
    "load_world",
    "render_world",
    "synthesize_world",
]

CATEGORIES: tuple[str, ...] = ("airplane", "ship", "storage_tank", "car", "building")
COLORS: tuple[str, ...] = tuple(_COLORS)
KINDS: tuple[str, ...] = ("rural", "urban")
SIDECAR_FORMAT = "lrs-vqa world scene"

# Land-cover shares (water, vegetation, fields, urban) of each kind: the thumbnail tells them apart.
_SHARES: dict[str, tuple[float, ...]] = {
    "rural": (0.10, 0.44, 0.42, 0.04),
    "urban": (0.06, 0.12, 0.14, 0.68),
}
# How many objects of a category a scene holds, with probabilities: most categories occur once (so
# "the <category>" is one object), some twice or not at all (so questions must be checked for ambiguity).
_COUNT_P: dict[str, tuple[float, ...]] = {  # P(0), P(1), P(2)
    "airplane": (0.25, 0.55, 0.20),
    "ship": (0.25, 0.55, 0.20),
    "storage_tank": (0.35, 0.65, 0.0),  # clusters: 0 or 1 cluster of 2-6 tanks
    "car": (0.20, 0.50, 0.30),
    "building": (0.20, 0.50, 0.30),
}
_CONTEXT_RGB = {
    "apron": (158, 156, 150),
    "water": (28, 62, 92),
    "pad": (176, 172, 160),
    "street": (84, 84, 88),
    "lot": (128, 124, 116),
}


@dataclass(frozen=True)
class WorldObject:
    """One needle: ``pixel_box`` is x0, y0, x1, y1 level-0 pixels (x1/y1 exclusive) of its painted pixels;
    ``polygon`` its outline (level-0 px, x/y pairs); ``cluster`` groups storage tanks."""

    id: int
    category: str
    color: str
    pixel_box: tuple[int, int, int, int]
    polygon: tuple[tuple[float, float], ...]
    context: str
    cluster: int | None = None
    map_box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class WorldScene:
    """A composed scene: its size, kind, objects and where they are. ``path``/``sidecar_path`` are set
    once written."""

    width: int
    height: int
    seed: int
    kind: str
    object_scale: float
    objects: tuple[WorldObject, ...]
    crs: str | None = None
    transform: tuple[float, float, float, float, float, float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    path: Path | None = None
    sidecar_path: Path | None = None

    def of_category(self, category: str) -> list[WorldObject]:
        return [o for o in self.objects if o.category == category]

    def of_color(self, color: str) -> list[WorldObject]:
        return [o for o in self.objects if o.color == color]


@dataclass(frozen=True)
class _Sprite:
    """Pixels painted over the land cover: ``rgb`` (h, w, 3) where ``mask``; ``owner`` is the object id
    (-1 for context)."""

    x0: int
    y0: int
    mask: np.ndarray
    rgb: np.ndarray
    owner: int


# --- shapes (object-local coordinates: x along the object's length, centred on 0) ---------------------


def _shape_polygons(category: str, rng: np.random.Generator, scale: float) -> tuple[list[np.ndarray], float]:
    """Filled polygons (in local px) of one object and the darker-detail polygons; returns (polys, size)."""
    s = scale
    if category == "airplane":
        length = rng.uniform(40, 56) * s
        span = length * rng.uniform(0.85, 1.05)
        fw = length * 0.14
        body = np.array(
            [
                [-length / 2, -fw / 2],
                [length * 0.38, -fw / 2],
                [length / 2, 0],
                [length * 0.38, fw / 2],
                [-length / 2, fw / 2],
            ]
        )
        wx = length * 0.05
        wings = np.array(
            [
                [wx + length * 0.12, -fw / 2],
                [wx - length * 0.12, -span / 2],
                [wx - length * 0.24, -span / 2],
                [wx - length * 0.14, 0],
                [wx - length * 0.24, span / 2],
                [wx - length * 0.12, span / 2],
                [wx + length * 0.12, fw / 2],
            ]
        )
        tx = -length / 2
        tail = np.array(
            [
                [tx + length * 0.16, 0],
                [tx, -span * 0.22],
                [tx + length * 0.06, -span * 0.22],
                [tx + length * 0.2, 0],
                [tx + length * 0.06, span * 0.22],
                [tx, span * 0.22],
            ]
        )
        return [body, wings, tail], max(length, span)
    if category == "ship":
        length, width = rng.uniform(36, 56) * s, rng.uniform(11, 15) * s
        hull = np.array(
            [
                [-length / 2, -width / 2],
                [length * 0.28, -width / 2],
                [length / 2, 0],
                [length * 0.28, width / 2],
                [-length / 2, width / 2],
            ]
        )
        return [hull], length
    if category == "storage_tank":
        d = rng.uniform(18, 26) * s
        return [_unit_circle() * d / 2], d
    if category == "car":
        length, width = rng.uniform(24, 30) * s, rng.uniform(12, 15) * s
        return [_rect(-length / 2, -width / 2, length / 2, width / 2)], length
    if category == "building":
        length, width = rng.uniform(28, 48) * s, rng.uniform(22, 36) * s
        return [_rect(-length / 2, -width / 2, length / 2, width / 2)], max(length, width)
    raise ValueError(f"unknown category {category!r}")


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The corners of an axis-aligned rectangle, clockwise from (x0, y0)."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def _unit_circle(n: int = 32) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _detail_polygons(category: str, polys: list[np.ndarray]) -> list[np.ndarray]:
    """Darker detail drawn inside the object (windscreen, ridge, deck house, shadow ring)."""
    xs = np.concatenate([p[:, 0] for p in polys])
    ys = np.concatenate([p[:, 1] for p in polys])
    length, width = xs.max() - xs.min(), ys.max() - ys.min()
    if category == "car":  # windscreen band a third from the front
        x = xs.max() - length * 0.34
        return [_rect(x, -width * 0.4, x + length * 0.12, width * 0.4)]
    if category == "building":  # ridge along the long axis
        return [_rect(xs.min() + 2, -1.2, xs.max() - 2, 1.2)]
    if category == "ship":  # deck house aft of centre
        return [_rect(-length * 0.3, -width * 0.22, -length * 0.08, width * 0.22)]
    if category == "storage_tank":  # the shadowed rim's inner edge: a ring
        r = width / 2
        return [_unit_circle() * r * 0.62]
    return []


def _rotate(points: np.ndarray, angle: float, cx: float, cy: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([points[:, 0] * c - points[:, 1] * s + cx, points[:, 0] * s + points[:, 1] * c + cy], 1)


def _raster(polys: list[np.ndarray], x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Boolean mask (h, w) of ``polys`` (absolute px) over the box at (x0, y0); 1/16-px vertex precision."""
    mask = np.zeros((h, w), dtype=np.uint8)
    pts = [np.round((p - [x0, y0]) * 16).astype(np.int32) for p in polys]
    cv2.fillPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _noisy(rgb: tuple[int, ...], shape: tuple[int, int], rng: np.random.Generator, amp: int) -> np.ndarray:
    base = np.asarray(rgb, dtype=np.int16)
    noise = rng.integers(-amp, amp + 1, (*shape, 1), dtype=np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


# --- composition -------------------------------------------------------------------------------------


class _Placer:
    """Rejection-samples non-overlapping context footprints (level-0 boxes) inside the scene."""

    def __init__(self, width: int, height: int, rng: np.random.Generator):
        self.width, self.height, self.rng = width, height, rng
        self.boxes: list[tuple[float, float, float, float]] = []

    def place(self, w: float, h: float) -> tuple[float, float] | None:
        margin = 4.0
        if w + 2 * margin >= self.width or h + 2 * margin >= self.height:
            return None
        for _ in range(200):
            x = float(self.rng.uniform(margin, self.width - w - margin))
            y = float(self.rng.uniform(margin, self.height - h - margin))
            box = (x - margin, y - margin, x + w + margin, y + h + margin)
            if all(box[0] >= b[2] or b[0] >= box[2] or box[1] >= b[3] or b[1] >= box[3] for b in self.boxes):
                self.boxes.append(box)
                return x, y
        return None


def compose_world(
    width: int,
    height: int,
    seed: int,
    *,
    kind: str | None = None,
    object_scale: float = 1.0,
    counts: dict[str, int] | None = None,
) -> tuple[WorldScene, list[_Sprite]]:
    """The scene's objects and the sprites that paint them and their contexts (a pure function of the
    arguments). ``counts`` fixes how many objects of each category (tanks: cluster size) instead of drawing
    them; categories that do not fit the scene are left out."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not object_scale > 0:
        raise ValueError(f"object_scale must be > 0, got {object_scale}")
    rng = np.random.default_rng([seed, 11])
    kind = kind or KINDS[int(rng.integers(2))]
    placer = _Placer(width, height, rng)
    objects: list[WorldObject] = []
    sprites: list[_Sprite] = []

    def wanted(category: str) -> int:
        if counts is not None:
            return int(counts.get(category, 0))
        n = int(rng.choice(len(_COUNT_P[category]), p=_COUNT_P[category]))
        if category == "storage_tank" and n:
            return int(rng.integers(2, 7))
        return n

    def add_context(name: str, poly: np.ndarray, amp: int = 3) -> None:
        x0, y0 = np.floor(poly.min(0)).astype(int)
        x1, y1 = np.ceil(poly.max(0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        mask = _raster([poly], x0, y0, x1 - x0, y1 - y0)
        sprites.append(_Sprite(x0, y0, mask, _noisy(_CONTEXT_RGB[name], mask.shape, rng, amp), -1))

    def add_object(
        category: str, color: str, polys: list[np.ndarray], details: list[np.ndarray], context: str
    ) -> None:
        allp = np.concatenate(polys)
        x0, y0 = np.floor(allp.min(0)).astype(int)
        x1, y1 = np.ceil(allp.max(0)).astype(int) + 1
        mask = _raster(polys, x0, y0, x1 - x0, y1 - y0)
        ys, xs = np.nonzero(mask)
        if not len(xs):
            return
        rgb = _noisy(_COLORS[color], mask.shape, rng, 6)
        if details:
            dark = _raster(details, x0, y0, x1 - x0, y1 - y0) & mask
            rgb[dark] = (rgb[dark] * 0.62).astype(np.uint8)
        box = (int(x0 + xs.min()), int(y0 + ys.min()), int(x0 + xs.max() + 1), int(y0 + ys.max() + 1))
        hull = cv2.convexHull(allp.astype(np.float32)).reshape(-1, 2)
        oid = len(objects)
        outline = tuple((round(float(x), 2), round(float(y), 2)) for x, y in hull)
        cluster = 0 if category == "storage_tank" else None
        objects.append(WorldObject(oid, category, color, box, outline, context, cluster))
        sprites.append(_Sprite(int(x0), int(y0), mask, rgb, oid))

    for category in CATEGORIES:
        n = wanted(category)
        if category == "storage_tank":
            if not n:
                continue
            color = COLORS[int(rng.integers(len(COLORS)))]  # one cluster, one colour
            shapes = [_shape_polygons(category, rng, object_scale) for _ in range(n)]
            d = max(size for _, size in shapes)
            cols = math.ceil(math.sqrt(n))
            rows = math.ceil(n / cols)
            pad_w, pad_h = cols * d * 1.35 + d * 0.6, rows * d * 1.35 + d * 0.6
            at = placer.place(pad_w, pad_h)
            if at is None:
                continue
            x, y = at
            add_context("pad", _rect(x, y, x + pad_w, y + pad_h))
            for i, (polys, _) in enumerate(shapes):
                cx = x + d * 0.3 + (i % cols + 0.5) * d * 1.35 + rng.uniform(-1, 1)
                cy = y + d * 0.3 + (i // cols + 0.5) * d * 1.35 + rng.uniform(-1, 1)
                placed = [p + np.array([cx, cy]) for p in polys]
                details = [p + np.array([cx, cy]) for p in _detail_polygons(category, polys)]
                add_object(category, color, placed, details, "pad")
            continue
        for _ in range(n):
            color = COLORS[int(rng.integers(len(COLORS)))]
            polys, size = _shape_polygons(category, rng, object_scale)
            angle = float(rng.uniform(0, 2 * np.pi))
            context = {"airplane": "apron", "ship": "water", "car": "street", "building": "lot"}[category]
            ctx_w = {"apron": 2.0, "water": 3.2, "street": 5.0, "lot": 1.6}[context] * size
            ctx_h = {"apron": 2.0, "water": 2.4, "street": 1.25, "lot": 1.6}[context] * size
            if context == "street":  # along the street's axis, which is horizontal or vertical
                angle = float(rng.choice([0.0, np.pi / 2, np.pi, 3 * np.pi / 2]))
                if angle in (np.pi / 2, 3 * np.pi / 2):
                    ctx_w, ctx_h = ctx_h, ctx_w
            at = placer.place(ctx_w, ctx_h)
            if at is None:
                continue
            x, y = at
            cx, cy = x + ctx_w / 2, y + ctx_h / 2
            if context == "water":
                t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
                add_context("water", np.stack([cx + np.cos(t) * ctx_w / 2, cy + np.sin(t) * ctx_h / 2], 1), 2)
            else:
                add_context(context, _rect(x, y, x + ctx_w, y + ctx_h))
            if context == "street":  # off-centre: cars keep to a lane
                lane = size * 0.18 * (1 if rng.random() < 0.5 else -1)
                cx, cy = (cx, cy + lane) if ctx_w > ctx_h else (cx + lane, cy)
            placed = [_rotate(p, angle, cx, cy) for p in polys]
            details = [_rotate(p, angle, cx, cy) for p in _detail_polygons(category, polys)]
            add_object(category, color, placed, details, context)
    scene = WorldScene(width, height, seed, kind, float(object_scale), tuple(objects))
    return scene, sprites


# --- rendering ---------------------------------------------------------------------------------------


class _WorldRenderer:
    """The land-cover renderer of :mod:`pyramid.synth` with the world's sprites painted over each block
    row; also renders the object-id map (0 = no object, id + 1) for training labels."""

    def __init__(self, scene: WorldScene, sprites: list[_Sprite]):
        self.width, self.height = scene.width, scene.height
        self.base = _Renderer(scene.width, scene.height, scene.seed, (), shares=_SHARES[scene.kind])
        self.sprites = sprites

    def _overlapping(self, y0: int, y1: int) -> list[_Sprite]:
        return [s for s in self.sprites if s.y0 < y1 and s.y0 + s.mask.shape[0] > y0]

    def render(self, row: int) -> np.ndarray:
        img = self.base.render(row)
        y0 = row * _BLOCK
        for s in self._overlapping(y0, y0 + img.shape[0]):
            self._paint(img[..., :3], s, y0, s.rgb)
        return img

    def ids(self, y0: int, y1: int) -> np.ndarray:
        out = np.zeros((y1 - y0, self.width), dtype=np.uint8)
        for s in self._overlapping(y0, y1):
            if s.owner >= 0:
                self._paint(out, s, y0, np.uint8(s.owner + 1))
        return out

    def _paint(self, dst: np.ndarray, s: _Sprite, y0: int, value: np.ndarray | np.uint8) -> None:
        h, w = s.mask.shape
        r0, r1 = max(s.y0, y0), min(s.y0 + h, y0 + dst.shape[0])
        c0, c1 = max(s.x0, 0), min(s.x0 + w, self.width)
        if r0 >= r1 or c0 >= c1:
            return
        m = s.mask[r0 - s.y0 : r1 - s.y0, c0 - s.x0 : c1 - s.x0]
        view = dst[r0 - y0 : r1 - y0, c0:c1]
        if isinstance(value, np.ndarray):
            view[m] = value[r0 - s.y0 : r1 - s.y0, c0 - s.x0 : c1 - s.x0][m]
        else:
            view[m] = value


def render_world(
    size: int | tuple[int, int],
    seed: int,
    *,
    kind: str | None = None,
    object_scale: float = 1.0,
    counts: dict[str, int] | None = None,
) -> tuple[WorldScene, np.ndarray, np.ndarray]:
    """The whole scene in memory: (scene, RGB uint8 (h, w, 3), object-id map uint8 (h, w)). For scenes of
    a few thousand pixels (training); the same pixels as :func:`synthesize_world` writes before JPEG."""
    width, height = _size(size)
    scene, sprites = compose_world(width, height, seed, kind=kind, object_scale=object_scale, counts=counts)
    if len(scene.objects) > 254:
        raise ValueError("at most 254 objects fit the uint8 id map")
    renderer = _WorldRenderer(scene, sprites)
    rows = [renderer.render(r)[..., :3] for r in range(-(-height // _BLOCK))]
    return scene, np.ascontiguousarray(np.concatenate(rows)), renderer.ids(0, height)


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    width, height = (size, size) if isinstance(size, int | np.integer) else size
    width, height = operator.index(width), operator.index(height)
    if width < 64 or height < 64:
        raise ValueError(f"a world scene needs at least 64x64 px, got {width}x{height}")
    return width, height


def synthesize_world(
    out: str | Path,
    size: int | tuple[int, int],
    *,
    seed: int = 0,
    kind: str | None = None,
    object_scale: float = 1.0,
    crs: str = "EPSG:32633",
    pixel_size: float = 0.5,
    origin: tuple[float, float] = (500000.0, 5000000.0),
    compress: str = "jpeg",
    progress: bool = False,
) -> WorldScene:
    """Write a world scene to ``out`` (tiled, georeferenced GeoTIFF) and its sidecar (``.json``), streaming
    512-row blocks. The sidecar is written last, so a sidecar always describes a complete image."""
    width, height = _size(size)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    path = Path(out).resolve()
    sidecar = path.with_suffix(".json")
    if sidecar == path:
        raise ValueError(f"{out}: the image must not have a .json suffix")
    scene, sprites = compose_world(width, height, seed, kind=kind, object_scale=object_scale)
    transform = Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1])
    crs_obj = CRS.from_user_input(crs)
    profile = _profile(width, height, compress)
    profile.update(crs=crs_obj, transform=transform)
    objects = tuple(
        WorldObject(**{**o.__dict__, "map_box": _map_box(transform, o.pixel_box)}) for o in scene.objects
    )
    scene = WorldScene(
        width,
        height,
        seed,
        scene.kind,
        scene.object_scale,
        objects,
        crs=crs_obj.to_string(),
        transform=(transform.a, transform.b, transform.c, transform.d, transform.e, transform.f),
        path=path,
        sidecar_path=sidecar,
    )
    sidecar.unlink(missing_ok=True)
    _write(path, profile, _WorldRenderer(scene, sprites), progress)  # type: ignore[arg-type]
    write_sidecar(scene, sidecar)
    return scene


def _map_box(t: Affine, box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    xs, ys = zip(*(t @ (x, y) for x in (box[0], box[2]) for y in (box[1], box[3])), strict=True)
    return (float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)))


def write_sidecar(scene: WorldScene, sidecar: Path, image_name: str | None = None) -> None:
    """The scene's JSON description (one line per object), written atomically."""
    head = {
        "format": SIDECAR_FORMAT,
        "version": 1,
        "path": image_name or (scene.path.name if scene.path else None),
        "width": scene.width,
        "height": scene.height,
        "seed": scene.seed,
        "kind": scene.kind,
        "object_scale": scene.object_scale,
        "crs": scene.crs,
        "transform": list(scene.transform),
    }
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()]
    objs = ",".join(f"\n  {json.dumps(_object_json(o))}" for o in scene.objects)
    lines.append(f' "objects": [{objs}\n ]' if objs else ' "objects": []')
    tmp = sidecar.with_suffix(".json.part")
    tmp.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    tmp.replace(sidecar)


def _object_json(o: WorldObject) -> dict[str, Any]:
    return {
        "id": o.id,
        "category": o.category,
        "color": o.color,
        "pixel_box": list(o.pixel_box),
        "polygon": [list(p) for p in o.polygon],
        "context": o.context,
        "cluster": o.cluster,
        "map_box": None if o.map_box is None else list(o.map_box),
    }


def is_world_sidecar(path: str | Path) -> bool:
    """True when ``path`` is a JSON file written by :func:`write_sidecar`."""
    try:
        return json.loads(Path(path).read_text()).get("format") == SIDECAR_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_world(sidecar: str | Path) -> WorldScene:
    """Read a world sidecar back; a file that is not one is a ``ValueError`` naming it."""
    sidecar = Path(sidecar).resolve()
    try:
        d = json.loads(sidecar.read_text())
        if d.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format is {d.get('format')!r}")
        objects = tuple(
            WorldObject(
                id=int(o["id"]),
                category=str(o["category"]),
                color=str(o["color"]),
                pixel_box=tuple(int(v) for v in o["pixel_box"]),  # type: ignore[arg-type]
                polygon=tuple((float(x), float(y)) for x, y in o["polygon"]),
                context=str(o["context"]),
                cluster=None if o["cluster"] is None else int(o["cluster"]),
                map_box=None if o["map_box"] is None else tuple(float(v) for v in o["map_box"]),  # type: ignore[arg-type]
            )
            for o in d["objects"]
        )
        a, b, c, e, f, g = (float(x) for x in d["transform"])
        return WorldScene(
            width=int(d["width"]),
            height=int(d["height"]),
            seed=int(d["seed"]),
            kind=str(d["kind"]),
            object_scale=float(d["object_scale"]),
            objects=objects,
            crs=d["crs"],
            transform=(a, b, c, e, f, g),
            path=None if d["path"] is None else sidecar.parent / str(d["path"]),
            sidecar_path=sidecar,
        )
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{sidecar}: not a world-scene sidecar ({err})") from err
