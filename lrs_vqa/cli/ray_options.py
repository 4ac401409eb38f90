"""``--ray [ADDRESS]``, ``--workers``, ``--gpus-per-worker``, ``--cpus-per-worker`` of ``eval`` and ``batch``.

Typer options always take a value, so a bare ``--ray`` (followed by another option, or last) is rewritten to
``--ray auto`` before parsing (:func:`bare_ray_to_auto`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from lrs_vqa.cli.base import UsageError

if TYPE_CHECKING:
    from lrs_vqa.distributed import RayOptions

Ray = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="[ADDRESS]",
        help="Answer on Ray workers: auto (or a bare --ray): start or join a local Ray; host:port or "
        "ray://host:10001: join that cluster. Needs Ray (the ray extra of lrs-vqa).",
    ),
]
Workers = Annotated[
    int | None, typer.Option(help="--ray: workers (model copies); default: as the cluster's GPUs/CPUs allow.")
]
GpusPerWorker = Annotated[
    float | None, typer.Option(help="--ray: GPUs per worker (default 1 with --device cuda, else 0).")
]
CpusPerWorker = Annotated[float, typer.Option(help="--ray: CPUs per worker.")]


def bare_ray_to_auto(argv: list[str]) -> list[str]:
    out: list[str] = []
    for k, arg in enumerate(argv):
        out.append(arg)
        if arg == "--ray" and (k + 1 == len(argv) or argv[k + 1].startswith("-")):
            out.append("auto")
    return out


def ray_options(
    ray: str | None, workers: int | None, gpus_per_worker: float | None, cpus_per_worker: float
) -> RayOptions | None:
    """The Ray settings of a command, or None for a local run; a missing Ray is a one-line error here, before
    anything is loaded or written."""
    if ray is None:
        if workers is not None or gpus_per_worker is not None:
            raise UsageError("--workers and --gpus-per-worker need --ray")
        return None
    from lrs_vqa.distributed import RayOptions, parse_address, require_ray

    require_ray()
    if (workers is not None and workers < 1) or (gpus_per_worker or 0) < 0 or cpus_per_worker < 0:
        raise UsageError("--workers must be >= 1, --gpus-per-worker and --cpus-per-worker >= 0")
    return RayOptions(
        address=parse_address(ray),
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
    )
