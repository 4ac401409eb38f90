"""Helpers the pruning tests share (their fixtures are in ``tests/pruning/conftest.py``): tiny checkpoints
of every family deepened to ``LLM_LAYERS`` decoder layers, stock and thumbnail prompts."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

from lrs_vqa.engine.decoder import PrefillInputs
from lrs_vqa.models.base import ModelAdapter
from lrs_vqa.tiny import make_tiny_model
from pyramid.dip import DynamicImagePyramid, PyramidOptions

QUESTION = "what is the color of the car?"
LLM_LAYERS = 8


def deep_tiny(out: Path, family: str) -> str:
    """The family's tiny checkpoint with ``LLM_LAYERS`` decoder layers (seeded random weights): its folder."""
    path = make_tiny_model(out, family, seed=5).path
    cfg = AutoConfig.from_pretrained(path)
    text = cfg.text_config
    text.num_hidden_layers = LLM_LAYERS
    if getattr(text, "layer_types", None):
        text.layer_types = [text.layer_types[0]] * LLM_LAYERS
    generation = GenerationConfig.from_pretrained(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(cfg)
    model.generation_config = generation
    model.save_pretrained(path)
    return str(path)


def stock(adapter: ModelAdapter, image: Image.Image, question: str = QUESTION) -> PrefillInputs:
    return adapter.stock_prompt(image, question)[0].inputs


def thumbnail_prompt(adapter: ModelAdapter, scene: Path, cache: Path, hooks=()) -> PrefillInputs:
    from lrs_vqa.answer import pyramid_spec_for

    options = PyramidOptions(spec=pyramid_spec_for(adapter), cache_dir=cache)
    with DynamicImagePyramid.open(scene, options) as dip:
        seg = adapter.encode_tiles([dip.thumbnail()], newlines=False, level=-1, hooks=hooks)
    return adapter.build_prompt(QUESTION, [seg]).inputs
