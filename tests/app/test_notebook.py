"""notebooks/worked_example.ipynb is committed with its outputs (the world model's real answers, pictures);
re-executed headless, it gives the same answers."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "worked_example.ipynb"


def _text(nb) -> str:
    return "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )


def _images(nb) -> int:
    return sum(
        "image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c["outputs"]
    )


def _answers(text: str) -> list[str]:
    keep = ("question:", "ground truth:", "answer ", "answer with", "the asked object is in")
    return [line.split(" vision tokens")[0] for line in text.splitlines() if line.startswith(keep)]


def test_worked_example_is_committed_with_outputs_and_reproduces_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LRS_VQA_MODEL", raising=False)
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert _images(committed) >= 5, "commit the notebook with its outputs (a code host shows them)"
    want = _answers(_text(committed))
    assert len(want) >= 6 and any(line.startswith("answer oracle") for line in want), want
    fresh = copy.deepcopy(committed)
    client = nbclient.NotebookClient(
        fresh, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute(env={**os.environ})
    text = _text(fresh)
    assert _answers(text) == want
    assert "synthetic-world model: True" in text
    assert "evidence features" in text and "vision tokens per LLM layer" in text
    assert _images(fresh) >= 5
