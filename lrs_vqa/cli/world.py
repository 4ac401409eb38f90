"""``world-bench`` and ``train-world-model``: the synthetic world's commands (``lrs_vqa.world.commands``)."""

from __future__ import annotations

from lrs_vqa.cli.base import app
from lrs_vqa.world import commands

commands.register(app)
