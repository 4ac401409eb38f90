"""The one registry of model adapters, and loading a checkpoint from a hub id or a local path."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lrs_vqa.models.base import ModelAdapter
from lrs_vqa.models.dtypes import resolve_dtype, torch_dtype
from lrs_vqa.models.errors import ModelLoadError, UnsupportedModelError
from lrs_vqa.models.largeimg import LargeImgAdapter
from lrs_vqa.models.llava import LlavaAdapter
from lrs_vqa.models.qwen2_vl import Qwen2VLAdapter
from lrs_vqa.models.random_weights import is_random_tiny_model
from lrs_vqa.models.rfm_checkpoint import attached_rfm, load_rfm

ADAPTERS: dict[str, type[ModelAdapter]] = {}


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    for model_type in cls.model_types:
        if model_type in ADAPTERS:
            raise KeyError(f"model type {model_type!r} already has an adapter")
        ADAPTERS[model_type] = cls
    return cls


register_adapter(LlavaAdapter)
register_adapter(Qwen2VLAdapter)

# Adapters picked by the checkpoint's layout before any model-type lookup (their configs are not loadable
# with AutoConfig): each has ``claims(source)`` and ``from_checkpoint(source, device=, dtype=)``.
LAYOUT_ADAPTERS: list[type[LargeImgAdapter]] = [LargeImgAdapter]

# Short names for checkpoints that ship with the project. ``world``: the synthetic-world model
# (lrs_vqa/world/checkpoint; trained on procedural scenes only, see its README.md model card).
WORLD_MODEL_DIR = Path(__file__).resolve().parents[1] / "world" / "checkpoint"
MODEL_ALIASES: dict[str, Path] = {"world": WORLD_MODEL_DIR}
WORLD_MARKER = "lrs_vqa_world_model"


def resolve_model(source: str) -> str:
    """An alias (``world``) → its folder; anything else unchanged."""
    path = MODEL_ALIASES.get(source)
    if path is None:
        return source
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"the {source!r} model is missing from this installation ({path})")
    return str(path)


def is_world_model(source: str) -> bool:
    """True for a checkpoint trained on the synthetic world only (its config carries the marker)."""
    try:
        data = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get(WORLD_MARKER) is True


def _model_type(source: str) -> str:
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        hint = (
            "" if Path(source).exists() else " (no local folder of that name; hub downloads need a network)"
        )
        raise ModelLoadError(f"cannot load model {source!r}: {first}{hint}") from None
    return cfg.model_type


def load_adapter(source: str, *, device: str = "cpu", dtype: str = "float32") -> ModelAdapter:
    """Load a checkpoint (hub id or local folder) with stock ``transformers`` and wrap it in its adapter.

    ``dtype`` may be ``auto`` (:func:`~lrs_vqa.models.dtypes.resolve_dtype`). The default stays float32 in
    this, the library's loader: benchmarks and tests that name no dtype keep the numbers their results were
    recorded with; the user-facing entry points (``get_adapter``, ``answer()``, the CLI, the app) default to
    ``auto``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from lrs_vqa.engine.taps import TAP_ATTENTION

    resolved = torch_dtype(resolve_dtype(dtype, device))
    source = resolve_model(source)
    for layout_cls in LAYOUT_ADAPTERS:
        if layout_cls.claims(source):
            return layout_cls.from_checkpoint(source, device=device, dtype=resolved)
    model_type = _model_type(source)
    adapter_cls = ADAPTERS.get(model_type)
    if adapter_cls is None:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported: {', '.join(sorted(ADAPTERS))}"
        )
    try:
        processor = AutoProcessor.from_pretrained(source)
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=resolved, attn_implementation=TAP_ATTENTION
        ).to(device)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelLoadError(f"cannot load model {source!r}: {first}") from None
    random_weights = os.path.isdir(source) and is_random_tiny_model(source)
    adapter = adapter_cls(model, processor, source=source, random_weights=random_weights)
    adapter.synthetic_world = os.path.isdir(source) and is_world_model(source)
    rfm_folder = attached_rfm(source) if os.path.isdir(source) else None
    if rfm_folder is not None:  # the model ships a trained Region Focus Module (``--scorer auto`` uses it)
        adapter.region_focus_module = load_rfm(rfm_folder, adapter)
    return adapter


def describe_supported() -> str:
    return json.dumps(sorted(ADAPTERS))
