"""``ask --pruner/--budget``: a token pruner compresses the tokens of the tiles the c2f loop picked;
``lrs-vqa pruners`` lists the registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrs_vqa.answer import AskOptions, StrategyError, answer
from lrs_vqa.cli import main
from lrs_vqa.strategies.c2f import split_budget
from pruning.registry import known_pruners
from pyramid.dip import PyramidOptions


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> str:
    return tiny_checkpoint("llava", 2)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("pruner_scene") / "scene.png"
    Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).resize((1400, 1000)).save(path)
    return path


def ask(tiny: str, scene: Path, tmp_path: Path, **kw: object):
    options = AskOptions(max_new_tokens=2, pyramid=PyramidOptions(cache_dir=tmp_path / "cache"), **kw)
    return answer(scene, "what is there?", model=tiny, options=options)


def test_pruners_lists_every_required_method(capsys) -> None:
    assert main(["pruners", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(known_pruners())  # the registry's contract: tests/pruning
    assert all(r["stages"] and r["paper"] for r in rows)


def test_llm_side_pruner_after_c2f_honours_its_budget(tiny: str, scene: Path, tmp_path: Path) -> None:
    plain = ask(tiny, scene, tmp_path)
    rec = ask(tiny, scene, tmp_path, pruner="fastv", budget="16")
    # The pruner replaces the loop's final prune: every token of the final tiles enters the LLM ...
    assert rec.stats.vision_tokens_into_llm > plain.stats.vision_tokens_into_llm
    # ... and fastv keeps exactly 16 vision tokens from its layer on.
    assert rec.stats.final_vision_tokens == 16
    assert rec.stats.vision_tokens_per_layer[-1] == 16
    assert rec.settings["pruner"] == "fastv" and rec.settings["budget"] == "16"
    assert [lv["tiles"] for lv in rec.levels] == [lv["tiles"] for lv in plain.levels]  # same tiles picked


def test_vision_side_pruner_shares_its_budget_between_the_views(
    tiny: str, scene: Path, tmp_path: Path
) -> None:
    thumb = ask(tiny, scene, tmp_path, strategy="global").stats.vision_tokens_into_llm
    rec = ask(tiny, scene, tmp_path, pruner="random", budget="16")
    # Before the LLM: the thumbnail and the final tiles are each cut to their share; together, the budget.
    assert rec.stats.vision_tokens_into_llm == 16
    assert rec.stats.vision_tokens_per_layer == [16] * len(rec.stats.vision_tokens_per_layer)
    assert 1 <= rec.tiles[0].tokens_into_llm < thumb  # the thumbnail's share
    assert split_budget("16", [12, 100]) == ["2", "14"]
    assert split_budget("0.5", [12, 100]) == ["0.5", "0.5"]
    with pytest.raises(StrategyError, match="below one token"):
        split_budget("1", [12, 100])


def test_chain_and_detach(tiny: str, scene: Path, tmp_path: Path) -> None:
    from lrs_vqa.answer import get_adapter

    model = get_adapter(tiny).model
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    before_hooks = hooks()
    before = ask(tiny, scene, tmp_path, strategy="global")
    rec = ask(tiny, scene, tmp_path, pruner="random+fastv", budget="32+16")
    # The chain's first budget compresses the final (zoom) level before the LLM; the thumbnail passes whole
    # (a chain with an LLM stage is not split over the views); its second budget holds in the LLM.
    zoom = sum(t.tokens_into_llm for t in rec.tiles if t.role == "zoom")
    thumb = sum(t.tokens_into_llm for t in rec.tiles if t.role == "thumbnail")
    assert zoom == 32 and rec.stats.vision_tokens_into_llm == 32 + thumb
    assert rec.stats.final_vision_tokens == 16  # and its second, in the LLM
    # Detached afterwards: no hook left on the model, and the same adapter answers exactly as before.
    assert hooks() == before_hooks
    again = ask(tiny, scene, tmp_path, strategy="global")
    assert again.stats.vision_tokens_per_layer == before.stats.vision_tokens_per_layer
    assert again.answer == before.answer


def test_bad_pruner_settings_are_one_line_errors(tiny: str, scene: Path, capsys) -> None:
    base = ["ask", str(scene), "q?", "--model", tiny]
    assert main([*base, "--pruner", "nope", "--budget", "16"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main([*base, "--pruner", "fastv"]) == 2
    assert "needs a budget" in capsys.readouterr().err
    for bad in ("-3", "0", "100000"):
        assert main([*base, "--pruner", "fastv", "--budget", bad]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(StrategyError, match="anyres"):
        answer(scene, "q?", model=tiny, options=AskOptions(strategy="anyres", pruner="random", budget="8"))


def test_pruner_tool_runs_the_adaptinfer_analysis(tiny: str, scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "schedule.json"
    args = ["pruner-tool", "adaptinfer", "analyse", tiny, str(scene), "--stages", "2", "--out", str(out)]
    assert main(args) == 0
    schedule = json.loads(out.read_text())
    assert schedule  # the analysis wrote a schedule the pruner can read back ...
    rec = ask(tiny, scene, tmp_path, pruner=f"adaptinfer:schedule={out}", budget="16")
    assert rec.stats.final_vision_tokens == 16  # ... and honours the budget with it
    assert main(["pruner-tool", "nope"]) == 2


SPECS = {"lvpruning": "lvpruning:untrained_seed=0"}  # no trained modules for the tiny model (plumbing only)


@pytest.mark.parametrize("name", known_pruners())
def test_every_pruner_composes_with_c2f(name: str, tiny: str, scene: Path, tmp_path: Path) -> None:
    """After the loop picks the tiles, each pruner meets its budget on the LLaVA layout of the tiny model."""
    rec = ask(tiny, scene, tmp_path, pruner=SPECS.get(name, name), budget="16")
    final = rec.stats.final_vision_tokens
    assert final == 16, (name, final)
    assert rec.strategy == "c2f" and rec.levels
