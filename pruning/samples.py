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


def question_prompts(adapter: ModelAdapter, pairs: Sequence[tuple[str, str]]) -> list[PrefillInputs]:
    """Stock prompts of (image path, question) pairs — e.g. the rows of an LRS-VQA-format question file, so
    a trained pruner learns question-dependent rankings. Each image is read through the Dynamic Image
    Pyramid's coarse level (bounded memory for gigapixel rasters); the processor then sizes it as usual."""
    from PIL import Image

    from pyramid.dip import DynamicImagePyramid

    out = []
    for path, question in pairs:
        with DynamicImagePyramid.open(path) as dip:
            rgb = Image.fromarray(dip.level_image(0).pixels)
        out.append(adapter.stock_prompt(rgb, question)[0].inputs)
    return out
