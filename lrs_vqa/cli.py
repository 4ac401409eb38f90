"""The ``lrs-vqa`` command line. Bad input → one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from pyramid.errors import RasterInputError

if TYPE_CHECKING:
    from lrs_vqa.answer import AskOptions

app = typer.Typer(
    name="lrs-vqa",
    help="Question answering over gigapixel remote-sensing images (LRS-VQA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True, soft_wrap=True)

EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """A bad argument value the CLI reports in one line (exit code 2)."""


def _parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("×", "x").split("x")]
    except ValueError:
        raise UsageError(f"--size must be N or WIDTHxHEIGHT, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise UsageError(f"--size must be N or WIDTHxHEIGHT with positive numbers, got {text!r}")
    return parts[0], parts[1]


def _parse_bands(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise UsageError(f"--bands must be comma-separated 1-based indexes, got {text!r}") from None


@app.command()
def inspect(
    image: Annotated[Path, typer.Argument(help="A raster: GeoTIFF/COG, PNG, JPEG or any GDAL format.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    tile_size: Annotated[int, typer.Option(help="Tile size of the pyramid, px.")] = 336,
    coarse_long_side: Annotated[int, typer.Option(help="Long side of the coarse level, px.")] = 1008,
    bands: Annotated[str | None, typer.Option(help="1-based R,G,B band indexes, e.g. 3,2,1.")] = None,
) -> None:
    """Size, bands, dtype, CRS, layout class, overviews and the pyramid's levels with their tile grids."""
    from pyramid.dip import DynamicImagePyramid, PyramidOptions
    from pyramid.levels import PyramidSpec

    spec = PyramidSpec(tile_size=tile_size, coarse_long_side=coarse_long_side)
    options = PyramidOptions(spec=spec, bands=_parse_bands(bands))
    with DynamicImagePyramid.open(image, options) as dip:
        desc = dip.describe()
    if as_json:
        print(json.dumps(desc, indent=1))
        return
    table = Table(title=str(image), show_header=False, title_justify="left")
    for key in ("driver", "layout", "width", "height", "bands", "dtype", "crs", "nodata", "compression"):
        table.add_row(key, str(desc[key]))
    table.add_row("block shape", "x".join(str(v) for v in desc["block_shape"]))  # type: ignore[attr-defined]
    table.add_row("overviews", ", ".join(str(f) for f in desc["overviews"]) or "none")  # type: ignore[attr-defined]
    table.add_row("colour bands", f"RGB <- bands {desc['bands_rgb']}, alpha {desc['alpha_band']}")
    table.add_row("read paths", ", ".join(f"{k}: {v}" for k, v in desc["read_paths"].items()))  # type: ignore[attr-defined]
    out.print(table)
    levels = Table(title="Dynamic Image Pyramid (coarse → native)", title_justify="left")
    for col in ("level", "name", "size", "factor", "tile grid", "tiles"):
        levels.add_column(col, justify="right")
    for lvl in [*desc["levels"], desc["thumbnail"]]:  # type: ignore[misc]
        levels.add_row(
            str(lvl["index"]) if lvl["index"] >= 0 else "thumb",
            lvl["name"],
            f"{lvl['width']}x{lvl['height']}",
            f"{lvl['factor']:g}",
            f"{lvl['grid'][0]}x{lvl['grid'][1]}",
            str(lvl["tiles"]),
        )
    out.print(levels)


@app.command()
def cog(
    source: Annotated[Path, typer.Argument(help="Input raster.")],
    destination: Annotated[Path, typer.Argument(help="Output Cloud-Optimized GeoTIFF.")],
    compression: Annotated[str, typer.Option(help="auto | jpeg | deflate")] = "auto",
    quality: Annotated[int, typer.Option(help="JPEG quality.")] = 90,
    blocksize: Annotated[int, typer.Option(help="Internal tile size, px.")] = 512,
    overwrite: Annotated[bool, typer.Option(help="Replace DESTINATION if it exists.")] = False,
) -> None:
    """Write a COG (internal tiles and average-resampled overviews), keeping georeferencing."""
    from pyramid.cog import write_cog
    from pyramid.source import inspect_raster

    if compression not in ("auto", "jpeg", "deflate"):
        raise UsageError(f"--compression must be auto, jpeg or deflate, got {compression!r}")
    inspect_raster(source)  # typed errors for bad input before any output exists
    result = write_cog(
        source,
        destination,
        compression=compression,
        quality=quality,
        blocksize=blocksize,
        progress=True,
        overwrite=overwrite,
    )
    err.print(
        f"wrote {result.path} ({result.width}x{result.height}x{result.count} {result.dtype}, "
        f"{result.compression}, overviews {list(result.overview_factors)}) in {result.seconds:.1f} s"
    )


@app.command()
def synth(
    destination: Annotated[Path, typer.Argument(help="Output GeoTIFF (a sidecar .json is written too).")],
    size: Annotated[str, typer.Option(help="N (square) or WIDTHxHEIGHT, in pixels.")] = "4096",
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same scene.")] = 0,
    georeferenced: Annotated[bool, typer.Option(help="Write a CRS and geotransform.")] = True,
    compress: Annotated[str, typer.Option(help="jpeg | deflate | none")] = "jpeg",
) -> None:
    """A georeferenced synthetic scene with planted objects whose boxes are in a sidecar JSON."""
    from pyramid.synth import synthesize_scene

    if compress not in ("jpeg", "deflate", "none"):
        raise UsageError(f"--compress must be jpeg, deflate or none, got {compress!r}")
    info = synthesize_scene(
        destination,
        _parse_size(size),
        seed=seed,
        georeferenced=georeferenced,
        compress=compress,
        progress=True,
    )
    err.print(
        f"wrote {info.path} ({info.width}x{info.height}, {len(info.objects)} objects) and {info.sidecar_path}"
    )


@app.command()
def preview(
    image: Annotated[Path, typer.Argument(help="A raster.")],
    destination: Annotated[Path, typer.Argument(help="Output PNG.")],
    grid_levels: Annotated[int, typer.Option(help="Draw the tile grids of this many levels.")] = 2,
    objects: Annotated[
        Path | None, typer.Option(help="A `synth` sidecar JSON whose object boxes are drawn.")
    ] = None,
) -> None:
    """Render the coarse view with the pyramid's tile grids (and planted objects) to a PNG."""
    from pyramid.dip import DynamicImagePyramid
    from pyramid.levels import PixelBox
    from pyramid.render import save_overview

    boxes: list[tuple[PixelBox, str]] = []
    if objects is not None:
        from pyramid.synth import load_scene_info

        boxes = [(PixelBox(*o.pixel_box), o.category) for o in load_scene_info(objects).objects]
    with DynamicImagePyramid.open(image) as dip:
        save_overview(dip, destination, grid_levels=grid_levels, boxes=boxes)
    err.print(f"wrote {destination}")


@app.command("make-tiny-model")
def make_tiny_model_cmd(
    destination: Annotated[Path, typer.Argument(help="Folder for the checkpoint.")],
    family: Annotated[str, typer.Option(help="llava_onevision | llava | qwen2_vl")] = "llava_onevision",
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Write a tiny RANDOM checkpoint (standard layout) for tests and offline demos: its answers are
    meaningless."""
    from lrs_vqa.tiny import FAMILIES, make_tiny_model

    if family not in FAMILIES:
        raise UsageError(f"--family must be one of {', '.join(FAMILIES)}, got {family!r}")
    info = make_tiny_model(destination, family, seed=seed, overwrite=overwrite)
    err.print(
        f"wrote a tiny random {info.family} checkpoint ({info.num_parameters:,} parameters) to {info.path}; "
        "its answers are meaningless"
    )


@app.command()
def ask(
    image: Annotated[Path, typer.Argument(help="A raster: GeoTIFF/COG, PNG, JPEG or any GDAL format.")],
    question: Annotated[str, typer.Argument(help="The question, in quotes.")],
    model: Annotated[str, typer.Option(help="Hub id or local checkpoint folder.")] = "",
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32",
    strategy: Annotated[str, typer.Option(help="c2f | global | anyres | tiles-all")] = "c2f",
    scorer: Annotated[str, typer.Option(help="c2f: attention (any model) | rfm (trained RFM).")] = (
        "attention"
    ),
    scorer_layers: Annotated[
        int | None, typer.Option(help="c2f attention scorer: LLM layers to run (default: a quarter).")
    ] = None,
    mode: Annotated[
        str, typer.Option(help="c2f: default (multi-level, capped) | paper (the released one-hop loop).")
    ] = "default",
    keep_ratio: Annotated[float, typer.Option(help="c2f: most tokens a level keeps, as a share.")] = 0.25,
    max_tiles_per_level: Annotated[int, typer.Option(help="c2f: tiles read per zoom step, at most.")] = 16,
    budget_tokens: Annotated[int, typer.Option(help="c2f: vision tokens into the LLM, at most.")] = 4096,
    keep_coarse: Annotated[bool, typer.Option(help="c2f: keep coarse focus tokens as context.")] = False,
    heatmap: Annotated[
        Path | None, typer.Option(help="c2f: write the coarse-level token scores over the image as PNG.")
    ] = None,
    level: Annotated[
        int | None, typer.Option(help="tiles-all: pyramid level (0 = coarse, -1 = native).")
    ] = None,
    max_tiles: Annotated[
        int | None, typer.Option(help="tiles-all: finest level with at most N tiles (anyres-pN).")
    ] = None,
    max_vision_tokens: Annotated[int, typer.Option(help="tiles-all: refuse above this.")] = 16384,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit, tokens.")] = 32,
    pruner: Annotated[
        str | None,
        typer.Option(help="Token pruner applied after c2f picks the tiles (see lrs-vqa pruners)."),
    ] = None,
    budget: Annotated[
        str | None, typer.Option(help="Pruner budget: 64 (tokens into the LLM), avg:128, 0.25 (ratio).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON record with statistics.")] = False,
    evidence: Annotated[
        Path | None, typer.Option(help="Write the tiles that were read as GeoJSON to this file.")
    ] = None,
    bands: Annotated[str | None, typer.Option(help="1-based R,G,B band indexes, e.g. 3,2,1.")] = None,
) -> None:
    """Answer a question about an image; print the answer (or a JSON record)."""
    from lrs_vqa.answer import DEFAULT_MODEL, answer
    from lrs_vqa.evidence import write_evidence

    options = _options_from_cli(
        strategy,
        scorer,
        scorer_layers,
        keep_ratio,
        max_tiles_per_level,
        budget_tokens,
        keep_coarse,
        level,
        max_tiles,
        max_vision_tokens,
        max_new_tokens,
        mode=mode,
        pruner=pruner,
        budget=budget,
        bands=bands,
    )
    record = answer(
        image,
        question,
        model=model or DEFAULT_MODEL,
        device=device,
        dtype=dtype,
        options=options,
        heatmap=heatmap,
    )
    if evidence is not None:
        write_evidence(record, evidence)

    if as_json:
        print(json.dumps(record.to_dict(), indent=1))
        return
    if record.random_weights:
        err.print("[random tiny model: the answer below is meaningless]", style="bold red", markup=False)
    print(record.answer)
    s = record.stats
    err.print(
        f"{s.vision_tokens_encoded} vision tokens encoded, {s.tokens_into_llm} tokens into the LLM, "
        f"{s.tflops_total:.4g} TFLOPs, {s.seconds['total']:.2f} s, {s.tiles_read} tiles read"
    )


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


_PRUNER_TOOLS = {
    "adaptinfer": "pruning.adaptinfer",  # analyse: stage layers from attention shifts on sample images
    "vflowopt": "pruning.vflowopt",  # calibrate: hyper-parameters by last-token discrepancy
    "lvpruning": "pruning.lvpruning",  # train: the decision modules, base model frozen
}


@app.command("pruner-tool", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def pruner_tool(
    ctx: typer.Context,
    method: Annotated[str, typer.Argument(help="adaptinfer | vflowopt | lvpruning")],
) -> None:
    """Offline tools of the pruners: `adaptinfer analyse` (a schedule from attention shifts), `vflowopt
    calibrate` (tune by last-token discrepancy), `lvpruning train` (decision modules). The arguments after
    METHOD go to the tool; `lrs-vqa pruner-tool METHOD COMMAND -h` lists them."""
    import importlib

    if method not in _PRUNER_TOOLS:
        raise UsageError(f"no offline tool for {method!r}; choose one of {', '.join(_PRUNER_TOOLS)}")
    code = importlib.import_module(_PRUNER_TOOLS[method]).main(list(ctx.args))
    if code:
        raise typer.Exit(code)


# ------------------------------------------------------------------------------ score / eval / merge / batch
# Options shared by ``eval`` and ``batch`` (the same meaning as in ``ask``).
_Model = Annotated[str, typer.Option(help="Hub id or local checkpoint folder.")]
_Device = Annotated[str, typer.Option(help="cpu | cuda | cuda:N")]
_Dtype = Annotated[str, typer.Option(help="float32 | bfloat16 | float16")]
_Strategy = Annotated[str, typer.Option(help="c2f | global | anyres | tiles-all")]
_Scorer = Annotated[str, typer.Option(help="c2f: attention (any model) | rfm (trained RFM).")]
_ScorerLayers = Annotated[int | None, typer.Option(help="c2f attention scorer: LLM layers to run.")]
_KeepRatio = Annotated[float, typer.Option(help="c2f: most tokens a level keeps, as a share.")]
_MaxTilesPerLevel = Annotated[int, typer.Option(help="c2f: tiles read per zoom step, at most.")]
_BudgetTokens = Annotated[int, typer.Option(help="c2f: vision tokens into the LLM, at most.")]
_KeepCoarse = Annotated[bool, typer.Option(help="c2f: keep coarse focus tokens as context.")]
_Level = Annotated[int | None, typer.Option(help="tiles-all: pyramid level (0 = coarse, -1 = native).")]
_MaxTiles = Annotated[int | None, typer.Option(help="tiles-all: finest level with at most N tiles.")]
_MaxVisionTokens = Annotated[int, typer.Option(help="tiles-all: refuse above this.")]
_MaxNewTokens = Annotated[int, typer.Option(help="Answer length limit, tokens.")]
_Resume = Annotated[bool, typer.Option(help="Continue the answers file in --output-dir (skips answered).")]
_SkipBad = Annotated[bool, typer.Option(help="Ask the good rows of a file with malformed rows (listed).")]
_Progress = Annotated[bool, typer.Option(help="Progress bar with ETA on stderr.")]
_Json = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
_Mode = Annotated[str, typer.Option(help="c2f: default | paper (the released one-hop loop).")]
_Pruner = Annotated[
    str | None, typer.Option(help="Token pruner (see lrs-vqa pruners), e.g. fastv or visionzip+fastv.")
]
_Budget = Annotated[str | None, typer.Option(help="Pruner budget: 64 (tokens), avg:128, 0.25 (ratio).")]
_Normalize = Annotated[
    bool,
    typer.Option(help="Also score with punctuation stripped and number words as digits (reported apart)."),
]


def _options_from_cli(
    strategy: str,
    scorer: str,
    scorer_layers: int | None,
    keep_ratio: float,
    max_tiles_per_level: int,
    budget_tokens: int,
    keep_coarse: bool,
    level: int | None,
    max_tiles: int | None,
    max_vision_tokens: int,
    max_new_tokens: int,
    *,
    mode: str = "default",
    pruner: str | None = None,
    budget: str | None = None,
    bands: str | None = None,
) -> AskOptions:
    """The ``AskOptions`` of ``ask``, ``eval`` and ``batch`` (the same options mean the same there)."""
    from lrs_vqa.answer import AskOptions
    from lrs_vqa.c2f import C2FOptions
    from pyramid.dip import PyramidOptions

    return AskOptions(
        strategy=strategy,
        scorer=scorer,
        scorer_layers=scorer_layers,
        c2f=C2FOptions(
            mode=mode,
            keep_ratio=keep_ratio,
            max_tiles_per_level=max_tiles_per_level,
            budget_tokens=budget_tokens,
            keep_coarse=keep_coarse,
        ),
        level=level,
        max_tiles=max_tiles,
        max_vision_tokens=max_vision_tokens,
        max_new_tokens=max_new_tokens,
        pruner=pruner,
        budget=budget,
        pyramid=PyramidOptions(bands=_parse_bands(bands)),
    )


def _print_bad_rows(bad_rows: tuple[object, ...] | list[object], what: str, limit: int = 20) -> None:
    if not bad_rows:
        return
    err.print(f"{len(bad_rows)} {what}:", markup=False, highlight=False)
    for b in list(bad_rows)[:limit]:
        err.print(f"  {b.describe()}", markup=False, highlight=False)  # type: ignore[attr-defined]
    if len(bad_rows) > limit:
        err.print(f"  ... and {len(bad_rows) - limit} more (all of them with --json)", markup=False)


def _print_report(report: object) -> None:
    from lrs_vqa.benchmarks import get_benchmark

    get_benchmark(report.benchmark).print_report(report, out, err)  # type: ignore[attr-defined]
    for note in report.notes:  # type: ignore[attr-defined]
        err.print(f"note: {note}", markup=False, highlight=False)
    _print_bad_rows(report.bad_rows, "bad rows (listed, not silently dropped)")  # type: ignore[attr-defined]


@app.command()
def score(
    answers: Annotated[
        Path, typer.Argument(help="Answer file (JSONL or JSON list) from eval or the official scripts.")
    ],
    as_json: _Json = False,
    normalize: _Normalize = False,
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
def eval_cmd(
    questions: Annotated[
        Path, typer.Option(help="LRS_VQA_merged.jsonl, or MME-RealWorld's RS question JSON.")
    ],
    image_root: Annotated[Path, typer.Option(help="The folder the question file's image paths start from.")],
    output_dir: Annotated[Path, typer.Option(help="Where answers, settings and results go.")],
    model: _Model = "",
    device: _Device = "cpu",
    dtype: _Dtype = "float32",
    strategy: _Strategy = "c2f",
    scorer: _Scorer = "attention",
    scorer_layers: _ScorerLayers = None,
    keep_ratio: _KeepRatio = 0.25,
    max_tiles_per_level: _MaxTilesPerLevel = 16,
    budget_tokens: _BudgetTokens = 4096,
    keep_coarse: _KeepCoarse = False,
    level: _Level = None,
    max_tiles: _MaxTiles = None,
    max_vision_tokens: _MaxVisionTokens = 16384,
    max_new_tokens: _MaxNewTokens = 32,
    mode: _Mode = "default",
    pruner: _Pruner = None,
    budget: _Budget = None,
    limit: Annotated[int | None, typer.Option(help="Ask at most N questions (of this shard).")] = None,
    offset: Annotated[int, typer.Option(help="Skip the first N questions (of this shard).")] = 0,
    num_chunks: Annotated[
        int, typer.Option(help="Split the questions into N shards (GPUs or machines).")
    ] = 1,
    chunk_idx: Annotated[int, typer.Option(help="Which shard this run asks, 0-based.")] = 0,
    resume: _Resume = False,
    skip_bad_rows: _SkipBad = False,
    score_answers: Annotated[
        bool, typer.Option("--score/--no-score", help="Score the answers at the end.")
    ] = True,
    normalize: _Normalize = False,
    progress: _Progress = True,
    as_json: _Json = False,
) -> None:
    """Run a model over a benchmark question file: one answer row per question, written as it goes
    (--resume continues after a crash), then a results JSON with the scores, settings and versions."""
    from lrs_vqa.answer import DEFAULT_MODEL
    from lrs_vqa.evaluate import EvalConfig, run_eval

    cfg = EvalConfig(
        questions=questions,
        image_root=image_root,
        output_dir=output_dir,
        model=model or DEFAULT_MODEL,
        device=device,
        dtype=dtype,
        options=_options_from_cli(
            strategy,
            scorer,
            scorer_layers,
            keep_ratio,
            max_tiles_per_level,
            budget_tokens,
            keep_coarse,
            level,
            max_tiles,
            max_vision_tokens,
            max_new_tokens,
            mode=mode,
            pruner=pruner,
            budget=budget,
        ),
        num_chunks=num_chunks,
        chunk_idx=chunk_idx,
        offset=offset,
        limit=limit,
        resume=resume,
        skip_bad_rows=skip_bad_rows,
        score=score_answers,
        normalize=normalize,
        progress=progress,
    )
    try:
        result = run_eval(cfg, on_bad_rows=lambda bad: _print_bad_rows(bad, "malformed question rows"))
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
    normalize: _Normalize = False,
    as_json: _Json = False,
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


@app.command()
def batch(
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
    model: _Model = "",
    device: _Device = "cpu",
    dtype: _Dtype = "float32",
    strategy: _Strategy = "c2f",
    scorer: _Scorer = "attention",
    scorer_layers: _ScorerLayers = None,
    keep_ratio: _KeepRatio = 0.25,
    max_tiles_per_level: _MaxTilesPerLevel = 16,
    budget_tokens: _BudgetTokens = 4096,
    keep_coarse: _KeepCoarse = False,
    level: _Level = None,
    max_tiles: _MaxTiles = None,
    max_vision_tokens: _MaxVisionTokens = 16384,
    max_new_tokens: _MaxNewTokens = 32,
    mode: _Mode = "default",
    pruner: _Pruner = None,
    budget: _Budget = None,
    resume: _Resume = False,
    skip_bad_rows: _SkipBad = False,
    progress: _Progress = True,
    as_json: _Json = False,
) -> None:
    """Answer many questions about your own images: resumable answers.jsonl, one GeoJSON evidence file per
    answer, and a summary at the end."""
    from lrs_vqa.answer import DEFAULT_MODEL
    from lrs_vqa.batch import BatchConfig, run_batch

    cfg = BatchConfig(
        questions=questions,
        output_dir=output_dir,
        model=model or DEFAULT_MODEL,
        images=images,
        image_root=image_root,
        device=device,
        dtype=dtype,
        options=_options_from_cli(
            strategy,
            scorer,
            scorer_layers,
            keep_ratio,
            max_tiles_per_level,
            budget_tokens,
            keep_coarse,
            level,
            max_tiles,
            max_vision_tokens,
            max_new_tokens,
            mode=mode,
            pruner=pruner,
            budget=budget,
        ),
        resume=resume,
        skip_bad_rows=skip_bad_rows,
        progress=progress,
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
    _print_bad_rows(summary.bad_rows, "rows skipped (--skip-bad-rows)")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 7860,
    model: Annotated[
        list[str] | None, typer.Option(help="Hub id or local checkpoint folder; repeat to offer several.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32",
    allow_dir: Annotated[
        Path | None, typer.Option(help="Also accept server-side paths of files under this folder.")
    ] = None,
    max_upload_mb: Annotated[int, typer.Option(help="Upload size limit, MB (shown in the page).")] = 2048,
) -> None:
    """Start the web demo (Gradio): upload or pick an image, ask, watch the coarse-to-fine loop."""
    from app.config import ServeConfig
    from lrs_vqa.answer import DEFAULT_MODEL

    if allow_dir is not None and not allow_dir.is_dir():
        raise UsageError(f"--allow-dir {allow_dir}: not a folder")
    try:
        config = ServeConfig(
            host=host,
            port=port,
            models=tuple(model or [DEFAULT_MODEL]),
            device=device,
            dtype=dtype,
            allow_dir=allow_dir,
            max_upload_mb=max_upload_mb,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    from app.server import launch

    launch(config)


def _engine_errors() -> tuple[type[Exception], ...]:
    """Engine errors a user causes (bad model, bad strategy settings); imported only when needed."""
    import sys as _sys

    own: tuple[type[Exception], ...] = ()
    if "lrs_vqa.eval_errors" in _sys.modules:  # score / eval / merge / batch
        from lrs_vqa.eval_errors import EvalError

        own = (EvalError,)
    if "pruning.errors" in _sys.modules:  # a bad pruner name, option or budget
        from pruning.errors import PruningError

        own = (*own, PruningError)
    if "lrs_vqa.answer" not in _sys.modules:
        return own
    from lrs_vqa.answer import StrategyError
    from lrs_vqa.c2f import C2FError
    from lrs_vqa.models.errors import ModelLoadError, UnsupportedModelError

    return (StrategyError, C2FError, UnsupportedModelError, ModelLoadError, *own)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the Typer app and maps expected failures to exit code 2."""
    try:
        # Standalone mode: Typer prints usage errors itself and exits with code 2.
        app(args=argv, prog_name="lrs-vqa")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (RasterInputError, UsageError, FileExistsError, *_engine_errors()) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
