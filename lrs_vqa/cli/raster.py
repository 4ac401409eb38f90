"""Raster commands (the pyramid layer only): ``inspect``, ``cog``, ``synth``, ``preview``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lrs_vqa.cli.base import UsageError, app, err, out, parse_bands


def parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("×", "x").split("x")]
    except ValueError:
        raise UsageError(f"--size must be N or WIDTHxHEIGHT, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise UsageError(f"--size must be N or WIDTHxHEIGHT with positive numbers, got {text!r}")
    return parts[0], parts[1]


_IMAGE_HELP = (
    "A raster (GeoTIFF/COG, PNG, JPEG, any GDAL format), a COG URL (http(s)://, s3://, gs://, az://, "
    "/vsi…/) or a STAC item (.json, local or URL)."
)
Image = Annotated[str, typer.Argument(help=_IMAGE_HELP)]  # str: Path() would fold http:// into http:/
Asset = Annotated[str | None, typer.Option(help="STAC item input: the asset to open (default: by role).")]


@app.command()
def inspect(
    image: Image,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    tile_size: Annotated[int, typer.Option(help="Tile size of the pyramid, px.")] = 336,
    coarse_long_side: Annotated[int, typer.Option(help="Long side of the coarse level, px.")] = 1008,
    bands: Annotated[str | None, typer.Option(help="1-based R,G,B band indexes, e.g. 3,2,1.")] = None,
    asset: Asset = None,
) -> None:
    """Size, bands, dtype, CRS, layout class, overviews and the pyramid's levels with their tile grids
    (remote files: also the bytes and requests the header took)."""
    from pyramid.dip import DynamicImagePyramid, PyramidOptions
    from pyramid.levels import PyramidSpec

    spec = PyramidSpec(tile_size=tile_size, coarse_long_side=coarse_long_side)
    options = PyramidOptions(spec=spec, bands=parse_bands(bands), stac_asset=asset)
    # strict=False: a remote non-COG is described (its read paths say "refused"), not an error here.
    with DynamicImagePyramid.open(image, options, strict=False) as dip:
        desc = dip.describe()
    if as_json:
        print(json.dumps(desc, indent=1))
        return
    table = Table(title=str(desc["path"]), show_header=False, title_justify="left")
    for key in ("driver", "layout", "width", "height", "bands", "dtype", "crs", "nodata", "compression"):
        table.add_row(key, str(desc[key]))
    table.add_row("block shape", "x".join(str(v) for v in desc["block_shape"]))  # type: ignore[attr-defined]
    table.add_row("overviews", ", ".join(str(f) for f in desc["overviews"]) or "none")  # type: ignore[attr-defined]
    table.add_row("colour bands", f"RGB <- bands {desc['bands_rgb']}, alpha {desc['alpha_band']}")
    table.add_row("read paths", ", ".join(f"{k}: {v}" for k, v in desc["read_paths"].items()))  # type: ignore[attr-defined]
    remote = desc.get("remote")
    if isinstance(remote, dict):
        table.add_row(
            "remote",
            f"{remote['bytes_fetched']} of {remote['file_size']} bytes in {remote['requests']} requests",
        )
    if isinstance(desc.get("stac"), dict):
        stac = desc["stac"]
        table.add_row("STAC item", f"{stac['id']} ({stac['datetime']}), asset {stac['asset']}")  # type: ignore[index]
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
    if destination.is_dir():
        raise UsageError(f"{destination} is a folder; give the GeoTIFF's file name")
    if not destination.parent.is_dir():
        raise UsageError(f"{destination.parent}: no such folder")
    info = synthesize_scene(
        destination,
        parse_size(size),
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
    image: Image,
    destination: Annotated[Path, typer.Argument(help="Output PNG.")],
    grid_levels: Annotated[int, typer.Option(help="Draw the tile grids of this many levels.")] = 2,
    objects: Annotated[
        Path | None, typer.Option(help="A `synth` or world-scene sidecar JSON whose object boxes are drawn.")
    ] = None,
    asset: Asset = None,
    download_to: Annotated[
        str | None, typer.Option(help="A remote non-COG is copied into this folder and read there.")
    ] = None,
) -> None:
    """Render the coarse view with the pyramid's tile grids (and planted objects) to a PNG."""
    from pyramid.dip import DynamicImagePyramid, PyramidOptions
    from pyramid.levels import PixelBox
    from pyramid.render import save_overview

    boxes: list[tuple[PixelBox, str]] = []
    if objects is not None:
        from pyramid.synth import load_scene_info
        from pyramid.world import is_world_sidecar, load_world

        scene = load_world(objects) if is_world_sidecar(objects) else load_scene_info(objects)
        boxes = [(PixelBox(*o.pixel_box), f"{o.color} {o.category}") for o in scene.objects]
    with DynamicImagePyramid.open(image, PyramidOptions(stac_asset=asset, download_to=download_to)) as dip:
        save_overview(dip, destination, grid_levels=grid_levels, boxes=boxes)
    err.print(f"wrote {destination}")
