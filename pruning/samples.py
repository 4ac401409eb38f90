"""Sample prompts for the pruners' offline tools (AdaptInfer's analysis, LVPruning's training): each image
asked each question with the model's own processing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrs_vqa.engine.decoder import PrefillInputs
    from lrs_vqa.models.base import ModelAdapter


def sample_prompts(
    adapter: ModelAdapter, images: Sequence[str], questions: Sequence[str]
) -> list[PrefillInputs]:
    from PIL import Image

    out = []
    for path in images:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            out += [adapter.stock_prompt(rgb, q)[0].inputs for q in questions]
    return out
