"""Fixtures of the pruning tests (module-scoped in each test module): tiny models of every family with
``LLM_LAYERS`` decoder layers, a small random image, a synthetic scene; one intra-op thread throughout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_vqa.models.base import ModelAdapter
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


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelAdapter]:
    root = tmp_path_factory.mktemp("pruning_tiny")
    return {fam: deep_tiny(root / fam, fam) for fam in FAMILIES}


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pruning_scene") / "scene.tif"
    synthesize_scene(out, (300, 220), seed=2)
    return out
