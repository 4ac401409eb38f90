"""``ask``: one question about one image."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from lrs_vqa.cli.ask_options import AskRun, with_ask_options
from lrs_vqa.cli.base import app, err, parse_bands
from lrs_vqa.records import WORLD_MODEL_NOTE


@app.command()
@with_ask_options
def ask(
    run: AskRun,
    image: Annotated[
        str,
        typer.Argument(
            help="A raster (GeoTIFF/COG, PNG, JPEG, any GDAL format), a COG URL (http(s)/s3/gs/az, /vsi…) "
            "or a STAC item (.json, local or URL)."
        ),
    ],
    question: Annotated[str, typer.Argument(help="The question, in quotes.")],
    heatmap: Annotated[
        Path | None, typer.Option(help="c2f: write the coarse-level token scores over the image as PNG.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON record with statistics.")] = False,
    evidence: Annotated[
        Path | None, typer.Option(help="Write the tiles that were read as GeoJSON to this file.")
    ] = None,
    bands: Annotated[str | None, typer.Option(help="1-based R,G,B band indexes, e.g. 3,2,1.")] = None,
) -> None:
    """Answer a question about an image; print the answer (or a JSON record)."""
    from lrs_vqa.answer import answer
    from lrs_vqa.evidence import write_evidence

    options = run.options
    options = replace(options, pyramid=replace(options.pyramid, bands=parse_bands(bands)))
    record = answer(
        image, question, model=run.model, device=run.device, dtype=run.dtype, options=options, heatmap=heatmap
    )
    if evidence is not None:
        write_evidence(record, evidence)

    if as_json:
        print(json.dumps(record.to_dict(), indent=1))
        return
    if record.random_weights:
        err.print("[random tiny model: the answer below is meaningless]", style="bold red", markup=False)
    elif record.synthetic_world:
        err.print(f"[{WORLD_MODEL_NOTE}]", style="yellow", markup=False)
    print(record.answer)
    s = record.stats
    err.print(
        f"{s.vision_tokens_encoded} vision tokens encoded, {s.tokens_into_llm} tokens into the LLM, "
        f"{s.tflops_total:.4g} TFLOPs, {s.seconds['total']:.2f} s, {s.tiles_read} tiles read"
    )
