"""Fixtures of the pruning tests: tiny checkpoints of every family deepened to ``LLM_LAYERS`` decoder layers
(written once per session), their adapters (per module), a small random image and a synthetic scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_vqa.models.base import ModelAdapter
from lrs_vqa.models.registry import load_adapter
from lrs_vqa.tiny import FAMILIES
from pyramid.synth import synthesize_scene
from tests.pruning.helpers import deep_tiny


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """Tiny tensors gain nothing from intra-op threads, and on a shared 2-core box the threads' spinning
    makes these tests several times slower; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def deep_tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pruning_tiny")
    return {fam: deep_tiny(root / fam, fam) for fam in FAMILIES}


@pytest.fixture(scope="module", name="adapters")
def adapters_fixture(deep_tiny_paths: dict[str, str]) -> dict[str, ModelAdapter]:
    return {fam: load_adapter(path) for fam, path in deep_tiny_paths.items()}


@pytest.fixture(scope="module", name="image")
def image_fixture() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))


@pytest.fixture(scope="module", name="scene")
def scene_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pruning_scene") / "scene.tif"
    synthesize_scene(out, (300, 220), seed=2)
    return out
