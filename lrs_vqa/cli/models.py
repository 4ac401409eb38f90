"""Model commands: ``make-tiny-model``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrs_vqa.cli.base import UsageError, app, err


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
