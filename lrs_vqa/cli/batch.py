"""``batch``: many questions about your own images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lrs_vqa.cli.ask_options import AskRun, with_ask_options
from lrs_vqa.cli.base import app, err, out, print_bad_rows
from lrs_vqa.cli.ray_options import CpusPerWorker, GpusPerWorker, Ray, Workers, ray_options
from lrs_vqa.cli.run_options import Json, Progress, Resume, SkipBad


@app.command()
@with_ask_options
def batch(
    run: AskRun,
    questions: Annotated[
        Path, typer.Argument(help="JSONL/JSON/CSV of image, question[, id]; with --images: questions only.")
    ],
    output_dir: Annotated[Path, typer.Option(help="Where answers.jsonl, evidence/ and summary.json go.")],
    images: Annotated[
        Path | None, typer.Option(help="A folder of rasters: every question is asked about every image.")
    ] = None,
    image_root: Annotated[
        Path | None, typer.Option(help="Relative image paths start here (default: the list's folder).")
    ] = None,
    resume: Resume = False,
    skip_bad_rows: SkipBad = False,
    progress: Progress = True,
    as_json: Json = False,
    ray: Ray = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
    cpus_per_worker: CpusPerWorker = 1.0,
) -> None:
    """Answer many questions about your own images: resumable answers.jsonl, one GeoJSON evidence file per
    answer, and a summary at the end. --ray spreads the images over Ray workers (GPUs, machines)."""
    from lrs_vqa.batch import BatchConfig, run_batch

    ray_opts = ray_options(ray, workers, gpus_per_worker, cpus_per_worker)
    cfg = BatchConfig(
        questions=questions,
        output_dir=output_dir,
        model=run.model,
        images=images,
        image_root=image_root,
        device=run.device,
        dtype=run.dtype,
        options=run.options,
        resume=resume,
        skip_bad_rows=skip_bad_rows,
        progress=progress,
        ray=ray_opts,
    )
    try:
        summary = run_batch(cfg)
    except KeyboardInterrupt:
        err.print(f"interrupted; answered rows are kept in {output_dir}; rerun with --resume", markup=False)
        raise typer.Exit(130) from None
    if as_json:
        print(json.dumps(summary.to_dict(), indent=1, default=str))
        return
    table = Table(title=f"batch summary: {summary.answers_path}", show_header=False, title_justify="left")
    mean = summary.mean_seconds_per_answer
    for key, value in (
        ("questions", summary.items),
        ("answered before (resume)", summary.answered_before),
        ("answered now", summary.answered_now),
        ("failed (rows with an error)", summary.errors),
        ("wall time now", f"{summary.seconds:.1f} s ({summary.questions_per_second:.2f} questions/s)"),
        ("mean time per answer", "-" if mean is None else f"{mean:.2f} s"),
        ("TFLOPs, all answers", f"{summary.total_tflops:.4g}"),
        ("tiles read, all answers", summary.tiles_read),
        ("evidence", str(summary.evidence_dir)),
    ):
        table.add_row(key, str(value))
    out.print(table)
    print_bad_rows(summary.bad_rows, "rows skipped (--skip-bad-rows)")
