"""Helpers and fixtures the pruning tests share: tiny checkpoints of every family deepened to
``LLM_LAYERS`` decoder layers, a small random image, a synthetic scene, stock and thumbnail prompts.

A test module imports the fixtures it uses (``adapters_fixture`` provides ``adapters``, and so on); they
are module-scoped there, and ``one_thread`` is autouse in every module that imports it. (Not a conftest:
the pyramid tests import the top-level ``conftest`` by name.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

from lrs_vqa.engine.decoder import PrefillInputs
from lrs_vqa.models.base import ModelAdapter
from lrs_vqa.models.registry import load_adapter
from lrs_vqa.tiny import FAMILIES, make_tiny_model
from pyramid.dip import DynamicImagePyramid, PyramidOptions
from pyramid.synth import synthesize_scene

QUESTION = "what is the color of the car?"
LLM_LAYERS = 8


def deep_tiny(out: Path, family: str) -> ModelAdapter:
    """The family's tiny checkpoint with ``LLM_LAYERS`` decoder layers (seeded random weights)."""
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
    return load_adapter(str(path))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """Tiny tensors gain nothing from intra-op threads, and on a shared 2-core box the threads' spinning
    makes these tests several times slower; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", name="adapters")
def adapters_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelAdapter]:
    root = tmp_path_factory.mktemp("pruning_tiny")
    return {fam: deep_tiny(root / fam, fam) for fam in FAMILIES}


@pytest.fixture(scope="module", name="image")
def image_fixture() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))


@pytest.fixture(scope="module", name="scene")
def scene_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pruning_scene") / "scene.tif"
    synthesize_scene(out, (300, 220), seed=2)
    return out


def stock(adapter: ModelAdapter, image: Image.Image, question: str = QUESTION) -> PrefillInputs:
    return adapter.stock_prompt(image, question)[0].inputs


def thumbnail_prompt(adapter: ModelAdapter, scene: Path, cache: Path, hooks=()) -> PrefillInputs:
    from lrs_vqa.answer import pyramid_spec_for

    options = PyramidOptions(spec=pyramid_spec_for(adapter), cache_dir=cache)
    with DynamicImagePyramid.open(scene, options) as dip:
        seg = adapter.encode_tiles([dip.thumbnail()], newlines=False, level=-1, hooks=hooks)
    return adapter.build_prompt(QUESTION, [seg]).inputs
