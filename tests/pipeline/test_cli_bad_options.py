"""Every command, fed the bad options a new user types: exit code 2, one line on stderr, never a traceback.
The CLI catches the project's one error base (``lrs_vqa.errors.LrsVqaError``) in one place."""

from __future__ import annotations

import json
import sys

import pytest

from lrs_vqa.cli import main
from lrs_vqa.errors import LrsVqaError
from pyramid.synth import synthesize_scene


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-options")
    scene = root / "scene.tif"
    synthesize_scene(scene, (600, 500), seed=1)
    notes = root / "notes.txt"
    notes.write_text("not a raster\n")
    empty = root / "empty.jsonl"
    empty.write_text("")
    full = root / "full"
    full.mkdir()
    (full / "x").write_text("x")
    bert = root / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return {
        "scene": str(scene),
        "notes": str(notes),
        "empty": str(empty),
        "full": str(full),
        "bert": str(bert),
        "missing": str(root / "missing.tif"),
        "model": tiny_checkpoint("llava", 5),
        "root": str(root),
    }


# (command line with {placeholders}, a phrase the one-line error must contain)
BAD = [
    ("ask {scene} q? --model {model} --dtype fp8", "--dtype must be one of"),
    ("ask {scene} q? --model {model} --strategy c2f --scorer-layers 999", "--scorer-layers must be between"),
    ("ask {scene} q? --model {model} --strategy nope", "unknown strategy"),
    ("ask {scene} q? --model {model} --pruner nope --budget 8", "nope"),
    ("ask {scene} q? --model {model} --pruner visionzip --budget -3", "budget"),
    ("ask {scene} q? --model {bert}", "bert"),
    ("ask {missing} q? --model {model}", "missing.tif"),
    ("ask {notes} q? --model {model}", "notes.txt"),
    ("ask {scene} q? --mode bogus", "bogus"),
    ("ask {scene} q? --keep-ratio 7", "keep"),
    ("ask {scene} q? --model {model} --mode paper --pruner visionzip --budget 16", "--mode paper"),
    ("inspect {missing}", "missing.tif"),
    ("preview {notes} {root}/p.png", "notes.txt"),
    ("cog {missing} {root}/o.tif", "missing.tif"),
    ("synth {full} --size 10x10", "is a folder"),
    ("score {empty}", ""),
    ("eval {empty} --model {model} --image-root {root} --out {root}/a.jsonl", ""),
    ("make-tiny-model {full} --family llava", "not empty"),
    ("make-tiny-model {root}/t --family nope", "nope"),
    ("world-bench {root}/wb --scenes 0", "scenes"),
    ("world-bench {root}/wb --sizes 10", "tile"),
    ("train-world-model --out {notes}", "not a folder"),
    ("pruner-tool lvpruning train {model} --out {root}/lv", "--questions"),
    ("pruners --check nope", ""),
]


@pytest.mark.parametrize(
    ("line", "phrase"), BAD, ids=[b[0].split(" {")[0] + f"-{i}" for i, b in enumerate(BAD)]
)
def test_bad_option_is_one_line_and_exit_2(files: dict[str, str], line: str, phrase: str, capsys) -> None:
    argv = line.format(**files).split()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert err.strip(), "the error must be said"
    if phrase:
        assert phrase in err, err


def test_serve_without_gradio_names_the_extra(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a)
    )
    monkeypatch.delitem(sys.modules, "gradio", raising=False)
    assert main(["serve", "--port", "7999"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "lrs-vqa[app]"' in err and "Traceback" not in err


def test_every_user_facing_error_derives_from_the_one_base() -> None:
    from app.inputs import InputError
    from lrs_vqa.cli.base import UsageError
    from lrs_vqa.eval_errors import EvalError
    from lrs_vqa.models.errors import ModelLoadError, UnsupportedModelError
    from lrs_vqa.options import C2FError
    from lrs_vqa.strategies import StrategyError
    from lrs_vqa.world.bench_writer import WorldBenchError
    from lrs_vqa.world.train import TrainingError
    from pruning.errors import PruningError
    from pyramid.cog import OutputExistsError
    from pyramid.errors import RasterInputError
    from rfm.scorers import ScorerUnavailableError, UnknownScorerError

    errors = [InputError, UsageError, EvalError, ModelLoadError, UnsupportedModelError, C2FError]
    errors += [StrategyError, WorldBenchError, TrainingError, PruningError, OutputExistsError]
    errors += [RasterInputError, ScorerUnavailableError, UnknownScorerError]
    assert [e for e in errors if not issubclass(e, LrsVqaError)] == []
    # still the builtin kinds callers caught before
    assert issubclass(UsageError, ValueError) and issubclass(OutputExistsError, FileExistsError)
