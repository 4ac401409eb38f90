"""What every test shares: no model hub, CI strictness, and the tiny random checkpoints (built once per
session per family and seed). Each layer's folder has its own conftest for its own fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

# No test may reach the model hub: set before any test module imports transformers / huggingface_hub, which
# read it once at import (test modules are collected in path order, so none of them can be relied on).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `--dtype auto` (the default) reads the CPU's flags: pin them empty so it resolves to fp32 on every host, in
# subprocesses too, and a test's numbers do not depend on whether the machine has AVX-512 BF16 / AMX.
os.environ.setdefault("LRS_VQA_CPU_FLAGS", "")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], str]:
    """``tiny_checkpoint(family, seed)`` → the folder of that tiny random checkpoint, written once per session
    (read-only for the tests: copy it before changing it)."""
    from lrs_vqa.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("tiny_checkpoints")
    built: dict[tuple[str, int], str] = {}

    def get(family: str, seed: int) -> str:
        if (family, seed) not in built:
            built[family, seed] = str(make_tiny_model(root / f"{family}-{seed}", family, seed=seed).path)
        return built[family, seed]

    return get


# Under CI a missing system dependency (WordNet, chromium, gradio/playwright/nbclient) must fail, not skip:
# .ci/run installs them all. Only data that never lives in the repository (the benchmark's question file
# under ../shared) may be absent there.
_CI = bool(os.environ.get("CI"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if _CI and report.skipped and "question file" not in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (CI must provide it): {report.longrepr}"
