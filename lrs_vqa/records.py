"""What one question produces: the answer, the tiles that were read, and the run's statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from shapely.geometry import mapping

from pyramid.dip import Tile


@dataclass(frozen=True)
class TileRecord:
    """A tile read from disk and shown to the model."""

    role: str  # "thumbnail" | "level" | "overview" | "coarse" | "zoom"
    level: int
    level_name: str
    row: int
    col: int
    pixel_box: list[int]  # level-0 x0, y0, x1, y1
    native_box: list[float] | None
    native_crs: str | None
    wgs84: dict[str, object] | None  # GeoJSON polygon (lon/lat)
    tokens_into_llm: int = 0
    score: float | None = None

    @staticmethod
    def from_tile(tile: Tile, role: str, tokens: int = 0, score: float | None = None) -> TileRecord:
        g = tile.geometry
        return TileRecord(
            role=role,
            level=tile.key.level,
            level_name=tile.level_name,
            row=tile.key.row,
            col=tile.key.col,
            pixel_box=tile.box.as_list(),
            native_box=list(g.native_box) if g.native_box is not None else None,
            native_crs=g.native_crs,
            wgs84=mapping(g.wgs84) if g.wgs84 is not None else None,  # type: ignore[arg-type]
            tokens_into_llm=tokens,
            score=score,
        )


@dataclass(frozen=True)
class RunStats:
    vision_tokens_encoded: int  # produced by the vision encoder, before any selection
    tokens_into_llm: int  # prompt rows entering LLM layer 0 (text + vision)
    vision_tokens_into_llm: int
    text_tokens: int
    tokens_per_layer: list[int]
    vision_tokens_per_layer: list[int]
    avg_vision_tokens_over_layers: float
    final_vision_tokens: int  # vision rows in the last LLM layer
    images_encoded: int
    tiles_read: int
    tflops_vision: float
    tflops_llm_vision_only: float  # the pruning literature's convention (vision tokens only)
    tflops_llm: float
    tflops_total: float  # vision + LLM + region scoring
    seconds: dict[str, float] = field(default_factory=dict)  # read, encode, prefill, decode, total
    peak_memory_mb: float = 0.0
    peak_memory_kind: str = "rss"  # "rss" (CPU process) or "cuda" (max allocated)
    tflops_scoring: float = 0.0  # c2f: the region scorer's passes over each level


WORLD_MODEL_NOTE = (
    "synthetic-world model: trained on the project's procedural scenes only, not a real remote-sensing model"
)


@dataclass(frozen=True)
class AnswerRecord:
    question: str
    answer: str
    model: str
    model_family: str
    random_weights: bool  # True: a tiny random test model; the answer is meaningless
    strategy: str
    image: dict[str, object]
    tiles: list[TileRecord]
    stats: RunStats
    generated_tokens: int
    settings: dict[str, object] = field(default_factory=dict)
    levels: list[dict[str, object]] = field(default_factory=list)  # c2f: what happened at each level
    synthetic_world: bool = False  # the model knows only the project's synthetic world scenes

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        if self.random_weights:
            out["warning"] = "random tiny model: the answer is meaningless"
        elif self.synthetic_world:
            out["warning"] = WORLD_MODEL_NOTE
        return out
