"""Benchmark commands: ``score``, ``eval``, ``merge`` (any benchmark of ``lrs_vqa.benchmarks``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lrs_vqa.cli.ask_options import AskRun, with_ask_options
from lrs_vqa.cli.base import app, err, out, print_bad_rows
from lrs_vqa.cli.ray_options import CpusPerWorker, GpusPerWorker, Ray, Workers, ray_options
from lrs_vqa.cli.run_options import Json, Normalize, Progress, Resume, SkipBad


def _print_report(report: object) -> None:
    from lrs_vqa.benchmarks import get_benchmark

    get_benchmark(report.benchmark).print_report(report, out, err)  # type: ignore[attr-defined]
    for note in report.notes:  # type: ignore[attr-defined]
        err.print(f"note: {note}", markup=False, highlight=False)
    print_bad_rows(report.bad_rows, "bad rows (listed, not silently dropped)")  # type: ignore[attr-defined]


@app.command()
def score(
    answers: Annotated[
        Path, typer.Argument(help="Answer file (JSONL or JSON list) from eval or the official scripts.")
    ],
    as_json: Json = False,
    normalize: Normalize = False,
    strict: Annotated[bool, typer.Option(help="Exit with code 1 when the file has bad rows.")] = False,
) -> None:
    """Score an LRS-VQA answer file with the official rule (OA, AA and per category, per sub-dataset);
    MME-RealWorld answer files are recognised and scored by option letter."""
    from lrs_vqa.benchmarks import score_file

    report = score_file(answers, normalize=normalize)
    if as_json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        _print_report(report)
    if strict and report.bad_rows:
        raise typer.Exit(1)


@app.command("eval")
@with_ask_options
def eval_cmd(
    run: AskRun,
    questions: Annotated[
        Path, typer.Option(help="LRS_VQA_merged.jsonl, or MME-RealWorld's RS question JSON.")
    ],
    image_root: Annotated[Path, typer.Option(help="The folder the question file's image paths start from.")],
    output_dir: Annotated[Path, typer.Option(help="Where answers, settings and results go.")],
    limit: Annotated[int | None, typer.Option(help="Ask at most N questions (of this shard).")] = None,
    offset: Annotated[int, typer.Option(help="Skip the first N questions (of this shard).")] = 0,
    num_chunks: Annotated[
        int, typer.Option(help="Split the questions into N shards (GPUs or machines).")
    ] = 1,
    chunk_idx: Annotated[int, typer.Option(help="Which shard this run asks, 0-based.")] = 0,
    resume: Resume = False,
    skip_bad_rows: SkipBad = False,
    score_answers: Annotated[
        bool, typer.Option("--score/--no-score", help="Score the answers at the end.")
    ] = True,
    normalize: Normalize = False,
    progress: Progress = True,
    as_json: Json = False,
    ray: Ray = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
    cpus_per_worker: CpusPerWorker = 1.0,
) -> None:
    """Run a model over a benchmark question file: one answer row per question, written as it goes
    (--resume continues after a crash), then a results JSON with the scores, settings and versions.
    --ray spreads the images over Ray workers (GPUs, machines); the files are the same."""
    from lrs_vqa.evaluate import EvalConfig, run_eval

    ray_opts = ray_options(ray, workers, gpus_per_worker, cpus_per_worker)
    cfg = EvalConfig(
        questions=questions,
        image_root=image_root,
        output_dir=output_dir,
        model=run.model,
        device=run.device,
        dtype=run.dtype,
        options=run.options,
        num_chunks=num_chunks,
        chunk_idx=chunk_idx,
        offset=offset,
        limit=limit,
        resume=resume,
        skip_bad_rows=skip_bad_rows,
        score=score_answers,
        normalize=normalize,
        progress=progress,
        ray=ray_opts,
    )
    try:
        result = run_eval(cfg, on_bad_rows=lambda bad: print_bad_rows(bad, "malformed question rows"))
    except KeyboardInterrupt:
        err.print(f"interrupted; answered rows are kept in {output_dir}; rerun with --resume", markup=False)
        raise typer.Exit(130) from None
    if as_json:
        print(json.dumps(result.results, indent=1, default=str))
        return
    err.print(
        f"{result.selected} questions selected: {result.answered_before} already answered, "
        f"{result.answered_now} answered now ({result.answer_errors} failed) in {result.seconds:.1f} s "
        f"({result.questions_per_second:.2f} questions/s, {result.images_opened} images opened); "
        f"answers: {result.answers_path}; results: {result.results_path}",
        markup=False,
        highlight=False,
    )
    scores = result.results.get("scores")
    if scores is not None:
        from lrs_vqa.benchmarks import score_file

        _print_report(score_file(result.answers_path, normalize=normalize))


@app.command()
def merge(
    inputs: Annotated[
        list[Path], typer.Argument(help="Shard answer files, or folders holding answers-K-of-N.jsonl.")
    ],
    output_dir: Annotated[Path, typer.Option(help="Where the merged answers.jsonl and results.json go.")],
    allow_partial: Annotated[
        bool, typer.Option(help="Merge even when shards or answers are missing.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing merged answers.jsonl.")] = False,
    score_answers: Annotated[
        bool, typer.Option("--score/--no-score", help="Score the merged answers.")
    ] = True,
    normalize: Normalize = False,
    as_json: Json = False,
) -> None:
    """Join the shards of a sharded eval (--num-chunks) into one answers file and score it."""
    from lrs_vqa.evaluate import merge_shards

    result = merge_shards(
        inputs,
        output_dir,
        allow_partial=allow_partial,
        overwrite=overwrite,
        score=score_answers,
        normalize=normalize,
    )
    if as_json:
        print(json.dumps(result.results, indent=1, default=str))
        return
    err.print(
        f"merged {len(result.shards)} shards, {result.rows} rows -> {result.answers_path}"
        + (f"; {len(result.missing)} questions unanswered" if result.missing else ""),
        markup=False,
        highlight=False,
    )
    if score_answers:
        from lrs_vqa.benchmarks import score_file

        _print_report(score_file(result.answers_path, normalize=normalize))
