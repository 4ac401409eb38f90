"""The ``lrs-vqa`` command line. Bad input → one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pyramid.errors import RasterInputError

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
    mode: Annotated[str, typer.Option(help="c2f: default (paper mode is not built yet).")] = "default",
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
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON record with statistics.")] = False,
    evidence: Annotated[
        Path | None, typer.Option(help="Write the tiles that were read as GeoJSON to this file.")
    ] = None,
    bands: Annotated[str | None, typer.Option(help="1-based R,G,B band indexes, e.g. 3,2,1.")] = None,
) -> None:
    """Answer a question about an image; print the answer (or a JSON record)."""
    from lrs_vqa.answer import DEFAULT_MODEL, AskOptions, answer
    from lrs_vqa.c2f import C2FOptions
    from lrs_vqa.evidence import write_evidence
    from pyramid.dip import PyramidOptions

    options = AskOptions(
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
        pyramid=PyramidOptions(bands=_parse_bands(bands)),
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


def _engine_errors() -> tuple[type[Exception], ...]:
    """Engine errors a user causes (bad model, bad strategy settings); imported only when needed."""
    import sys as _sys

    if "lrs_vqa.answer" not in _sys.modules:
        return ()
    from lrs_vqa.answer import StrategyError
    from lrs_vqa.c2f import C2FError
    from lrs_vqa.models.base import UnsupportedModelError
    from lrs_vqa.models.registry import ModelLoadError

    return (StrategyError, C2FError, UnsupportedModelError, ModelLoadError)


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
