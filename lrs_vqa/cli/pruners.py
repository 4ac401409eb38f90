"""Pruner commands: ``pruners`` (the registry's table) and ``pruner-tool`` (the offline tools of
AdaptInfer, VFlowOpt and LVPruning, as sub-commands)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lrs_vqa.cli.base import UsageError, app, out, question_rows


@app.command()
def pruners(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the registered token pruners: stages, signals they need, default options and their paper."""
    from pruning.registry import describe_pruners

    rows = describe_pruners()
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=1, default=str))
        return
    table = Table(title="token pruners (--pruner NAME[:key=value,...], chains with +)", title_justify="left")
    for col in ("name", "stages (32-layer LLM)", "signals", "defaults", "paper"):
        table.add_column(col, overflow="fold")
    for r in rows:
        defaults = ", ".join(f"{k}={v}" for k, v in dict(r.defaults).items())
        table.add_row(r.name, "; ".join(r.stages), ", ".join(r.signals), defaults, r.paper)
    out.print(table)


tools = typer.Typer(
    help="Offline tools of the pruners: `adaptinfer analyse` (a schedule from attention shifts), `vflowopt "
    "calibrate` (tune by last-token discrepancy), `lvpruning train` (decision modules).",
    no_args_is_help=True,
)
adaptinfer = typer.Typer(help="AdaptInfer: stage layers from attention shifts.", no_args_is_help=True)
vflowopt = typer.Typer(help="VFlowOpt: hyper-parameters by last-token discrepancy.", no_args_is_help=True)
lvpruning = typer.Typer(help="LVPruning: the decision modules, base model frozen.", no_args_is_help=True)
tools.add_typer(adaptinfer, name="adaptinfer")
tools.add_typer(vflowopt, name="vflowopt")
tools.add_typer(lvpruning, name="lvpruning")
app.add_typer(tools, name="pruner-tool")

_Model = Annotated[str, typer.Argument(help="Model path or hub id (as for lrs-vqa ask).")]
_Question = Annotated[str, typer.Option(help="The question asked about each sample image.")]


@adaptinfer.command("analyse")
def adaptinfer_analyse(
    model: _Model,
    images: Annotated[list[str], typer.Argument(help="Sample images.")],
    out_path: Annotated[Path, typer.Option("--out", help="Schedule JSON to write.")],
    question: _Question = "Describe the image.",
    stages: Annotated[int, typer.Option(help="Number of pruning stages.")] = 3,
) -> None:
    """Derive AdaptInfer stage layers from sample images."""
    from lrs_vqa.models.registry import load_adapter
    from pruning.adaptinfer import analyse_schedule
    from pruning.samples import sample_prompts

    adapter = load_adapter(model)
    data = analyse_schedule(adapter, sample_prompts(adapter, images, [question]), stages, out_path)
    print(f"adaptinfer layers {data['layers']} of {data['n_layers']} -> {out_path}")


@vflowopt.command("calibrate")
def vflowopt_calibrate(
    model: _Model,
    images: Annotated[list[str], typer.Argument(help="Sample images (unlabelled).")],
    out_path: Annotated[Path, typer.Option("--out", help="Calibration JSON to write.")],
    question: _Question = "Describe the image.",
    budget: Annotated[str, typer.Option(help="The budget to calibrate for.")] = "0.1",
    trials: Annotated[int | None, typer.Option(help="Random subset of the grid (default: all).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the subset.")] = 0,
) -> None:
    """Tune VFlowOpt's hyper-parameters on sample images."""
    from lrs_vqa.models.registry import load_adapter
    from pruning.vflowopt import calibrate

    adapter = load_adapter(model)
    samples = [(img, question) for img in images]
    result = calibrate(adapter, samples, budget, trials=trials, seed=seed, out=out_path)
    print(f"vflowopt {result.setting} discrepancy {result.discrepancy:.6f} -> {out_path}")


@lvpruning.command("train")
def lvpruning_train(
    model: _Model,
    out_path: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write.")],
    images: Annotated[
        list[str] | None, typer.Argument(help="Training images (with --question); or use --questions.")
    ] = None,
    questions: Annotated[
        Path | None,
        typer.Option(
            help="LRS-VQA-format question file (e.g. `lrs-vqa world-bench`'s): image + question rows."
        ),
    ] = None,
    image_root: Annotated[
        Path | None, typer.Option(help="Folder the question file's image paths are relative to.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use the first N questions of --questions.")] = None,
    question: Annotated[
        list[str] | None, typer.Option(help="Question(s) to pair with each image (repeat).")
    ] = None,
    layers: Annotated[str, typer.Option(help="Decision layers for a 32-layer LLM (scaled).")] = "2/8/16",
    keep_ratios: Annotated[str, typer.Option(help="Keep ratio after each decision layer.")] = "0.5/0.25/0.1",
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 200,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation.")] = 0,
) -> None:
    """Train LVPruning decision modules (the model stays frozen)."""
    from lrs_vqa.models.registry import load_adapter
    from pruning.lvpruning import TrainConfig, save_checkpoint, train
    from pruning.samples import question_prompts

    cfg = TrainConfig(
        layers=tuple(int(x) for x in layers.split("/")),
        keep_ratios=tuple(float(x) for x in keep_ratios.split("/")),
        steps=steps,
        lr=lr,
        seed=seed,
    )
    pairs = _training_pairs(images, question, questions, image_root, limit)
    adapter = load_adapter(model)
    result = train(adapter, question_prompts(adapter, pairs), cfg)
    extra = {"model": model, "steps": cfg.steps, "initial_loss": result.initial_loss}
    save_checkpoint(result.modules, out_path, {**extra, "final_loss": result.final_loss})
    print(f"lvpruning loss {result.initial_loss:.4f} -> {result.final_loss:.4f}; checkpoint {out_path}")


def _training_pairs(
    images: list[str] | None,
    question: list[str] | None,
    questions: Path | None,
    image_root: Path | None,
    limit: int | None,
) -> list[tuple[str, str]]:
    """(image, question) pairs: the rows of ``--questions``, or each image with each ``--question``. There is
    no default question: one fixed prompt would teach a question-blind ranking."""
    if questions is not None:
        if images:
            raise UsageError("give either --questions or IMAGE... --question, not both")
        return [(path, q.prompt) for path, q in question_rows(questions, image_root, limit)]
    if not images:
        raise UsageError("give --questions Q.jsonl (LRS-VQA format) or IMAGE... with --question")
    if not question:
        raise UsageError(
            "give the questions to train with: --questions Q.jsonl, or --question TEXT per image set"
        )
    return [(img, q) for img in images for q in question]
