"""The world's commands on the ``lrs-vqa`` CLI: ``world-bench`` and ``train-world-model``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

err = Console(stderr=True, soft_wrap=True)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"error: {exc}", markup=False, highlight=False)
    return typer.Exit(2)


def world_bench(
    out: Annotated[Path, typer.Argument(help="Output folder (LRS_VQA/image/*, LRS_VQA_merged.jsonl).")],
    scenes: Annotated[int, typer.Option(help="Number of scenes.")] = 36,
    sizes: Annotated[str, typer.Option(help="Scene sides in px, cycled through: e.g. 4096,8192.")] = (
        "4096,8192,16384,27328"
    ),
    seed: Annotated[int, typer.Option(help="Benchmark seed: scene i has seed S*100000+i.")] = 0,
    object_scale: Annotated[float, typer.Option(help="Scale of the objects (1 = tens of px).")] = 1.0,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
) -> None:
    """A procedural needle-in-a-gigapixel-haystack benchmark in the LRS-VQA format (eval, score run on it)."""
    from lrs_vqa.world.bench_writer import WorldBenchError, write_world_bench

    try:
        parsed = tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError:
        raise _fail(ValueError(f"--sizes must be comma-separated integers, got {sizes!r}")) from None
    try:
        summary = write_world_bench(
            out,
            scenes=scenes,
            sizes=parsed,
            seed=seed,
            object_scale=object_scale,
            overwrite=overwrite,
            progress=True,
        )
    except (WorldBenchError, ValueError) as exc:
        raise _fail(exc) from None
    cats = ", ".join(f"{k} {v}" for k, v in sorted(summary.by_category.items()))
    err.print(f"wrote {summary.scenes} scenes and {summary.questions} questions ({cats}) to {summary.out}")
    err.print(
        f"questions: {summary.questions_file}  (lrs-vqa eval --questions ... --image-root {summary.out})"
    )


def train_world_model(
    out: Annotated[
        Path, typer.Option(help="Run folder: checkpoints, log, curve, and the model in out/model.")
    ],
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (default: the recipe's).")] = None,
    batch: Annotated[int | None, typer.Option(help="Samples per step (default: the recipe's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the weights and of every batch.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes that render training samples.")] = 1,
    quick: Annotated[
        bool, typer.Option(help="A small model for a minute or two (tests, smoke checks).")
    ] = False,
    resume: Annotated[bool, typer.Option(help="Continue from out/train-state.pt when present.")] = True,
    stop_at: Annotated[
        int | None, typer.Option(help="Pause after this step (checkpointed); run again to continue.")
    ] = None,
) -> None:
    """Train the synthetic-world VLM from scratch (resumable; the EMA weights land in OUT/model)."""
    from lrs_vqa.world.train import TrainConfig, TrainingError
    from lrs_vqa.world.train import train_world_model as train

    cfg = TrainConfig.quick(seed) if quick else TrainConfig(seed=seed)
    cfg = replace(cfg, workers=workers)
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    if batch is not None:
        cfg = replace(cfg, batch=batch)
    if cfg.steps < 1 or cfg.batch < 1 or workers < 0:
        raise _fail(ValueError("--steps and --batch must be positive and --workers >= 0"))
    try:
        final = train(out, cfg, progress=True, resume=resume, stop_at=stop_at)
    except TrainingError as exc:
        raise _fail(exc) from None
    if final is None:
        err.print(f"paused at step {stop_at}; the same command without --stop-at continues")
        return
    err.print(f"model: {final}  (lrs-vqa ask IMAGE QUESTION --model {final})")


def register(app: typer.Typer) -> None:
    app.command("world-bench")(world_bench)
    app.command("train-world-model")(train_world_model)
