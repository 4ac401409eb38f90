"""``train-rfm``: train a Region Focus Module for a host model by attention distillation (and/or
ground-truth boxes) from an LRS-VQA-format question file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrs_vqa.cli.base import UsageError, app, err, question_rows


def _layers(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in text.replace("/", ",").split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--layers must be host layer ids like 1,2 — got {text!r}") from None
    if not out:
        raise UsageError("--layers is empty")
    return out


@app.command("train-rfm")
def train_rfm_cmd(
    model: Annotated[str, typer.Argument(help="Host model: hub id, local folder, or 'world'.")],
    questions: Annotated[Path, typer.Option(help="LRS-VQA-format question file (e.g. from world-bench).")],
    out: Annotated[Path, typer.Option(help="Run folder: rfm.safetensors, rfm.json, log, training state.")],
    image_root: Annotated[
        Path | None, typer.Option(help="Folder the question file's image paths are relative to.")
    ] = None,
    layers: Annotated[
        str, typer.Option(help="Host layers the RFM layers 1..N mirror (0-based ids >= 1).")
    ] = "1,2",
    target: Annotated[str, typer.Option(help="distill | boxes (the rows' target_boxes) | both")] = "distill",
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 200,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW).")] = 1e-4,
    accumulate: Annotated[int, typer.Option(help="Samples per optimiser step.")] = 1,
    max_tiles: Annotated[int, typer.Option(help="Tiles of a level per sample.")] = 16,
    limit: Annotated[int | None, typer.Option(help="Use the first N questions.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample order and tile choice.")] = 0,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32",
    stop_at: Annotated[int | None, typer.Option(help="Pause after this step (resume by rerunning).")] = None,
    export_released: Annotated[
        bool, typer.Option(help="Also write OUT/rfm-released.safetensors in the LRS-VQA release's keys.")
    ] = False,
) -> None:
    """Train an RFM for MODEL (frozen) from a question file; resumes from OUT after a kill."""
    from lrs_vqa.answer import pyramid_spec_for
    from lrs_vqa.models.registry import load_adapter, resolve_model
    from pyramid.dip import DynamicImagePyramid, PyramidOptions
    from rfm.training import RFMExample, RFMTrainConfig, plot_losses, train_rfm
    from rfm.training import export_released as export

    cfg = RFMTrainConfig(
        llm_layer_list=_layers(layers),
        target=target,
        steps=steps,
        lr=lr,
        accumulate=accumulate,
        max_tiles=max_tiles,
        seed=seed,
    )
    examples = [
        RFMExample(
            path, q.prompt, tuple(tuple(float(v) for v in b) for b in q.record.get("target_boxes") or ())
        )
        for path, q in question_rows(questions, image_root, limit)
    ]
    adapter = load_adapter(resolve_model(model), device=device, dtype=dtype)
    spec = pyramid_spec_for(adapter)

    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task("training the RFM", total=cfg.steps)
        rfm = train_rfm(
            adapter,
            examples,
            out,
            cfg,
            open_pyramid=lambda p: DynamicImagePyramid.open(p, PyramidOptions(spec=spec)),
            progress=lambda step, logs: bar.update(
                task, completed=step, description=f"loss {logs['loss']:.4f}"
            ),
            stop_at=stop_at,
        )
    curve = plot_losses(out / "train-log.jsonl", out / "loss-curve.png")
    err.print(f"loss curve: {curve}")
    if export_released and stop_at is None:
        err.print(f"released-layout weights: {export(rfm, out / 'rfm-released.safetensors')}")
    err.print(f"RFM in {out}  (lrs-vqa ask IMAGE QUESTION --model {model} --scorer rfm --rfm {out})")
