"""The options ``ask``, ``eval`` and ``batch`` share, declared once: ``@with_ask_options`` adds them to a
command and hands it one :class:`AskRun` instead. Defaults come from ``AskOptions`` / ``C2FOptions``; the
choices in the help come from the strategy, scorer and c2f-mode registries."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any

import typer

from lrs_vqa.c2f_modes import describe_modes
from lrs_vqa.options import DEFAULT_MODEL, AskOptions, C2FOptions
from lrs_vqa.strategies import describe_strategies
from rfm.scorers import describe_scorers

_ASK, _C2F = AskOptions(), C2FOptions()


@dataclass(frozen=True)
class AskRun:
    """The model and how to run it, and what each question is asked with."""

    model: str
    device: str
    dtype: str
    options: AskOptions


def _option(name: str, kind: Any, default: Any, help: str) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[kind, typer.Option(help=help)],
    )


def _parameters() -> list[inspect.Parameter]:
    return [
        _option("model", str, "", f"Hub id or local checkpoint folder (default {DEFAULT_MODEL})."),
        _option("device", str, "cpu", "cpu | cuda | cuda:N"),
        _option(
            "dtype",
            str,
            "auto",  # a literal: importing lrs_vqa.models.dtypes here would import torch for --help
            "auto (bf16 on a CUDA GPU of capability ≥ 8.0 or a CPU with AMX / AVX-512 BF16, else fp32) | "
            "float32 | bfloat16 | float16",
        ),
        _option("strategy", str, _ASK.strategy, describe_strategies()),
        _option("scorer", str, _ASK.scorer, f"c2f: {describe_scorers()}."),
        _option(
            "scorer_layers",
            int | None,
            _ASK.scorer_layers,
            "c2f attention scorer: LLM layers (default: a quarter).",
        ),
        _option("rfm", str | None, _ASK.rfm, "c2f --scorer rfm: an RFM folder from `lrs-vqa train-rfm`."),
        _option("mode", str, _C2F.mode, f"c2f: {describe_modes()}."),
        _option("keep_ratio", float, _C2F.keep_ratio, "c2f: most tokens a level keeps, as a share."),
        _option(
            "max_tiles_per_level", int, _C2F.max_tiles_per_level, "c2f: tiles read per zoom step, at most."
        ),
        _option("budget_tokens", int, _C2F.budget_tokens, "c2f: vision tokens into the LLM, at most."),
        _option("keep_coarse", bool, _C2F.keep_coarse, "c2f: keep coarse focus tokens as context."),
        _option(
            "thumbnail_first",
            bool,
            _C2F.thumbnail_first,
            "c2f: score the thumbnail first; start deeper when it is concentrated (else coarse).",
        ),
        _option("jump_tiles", int, _C2F.jump_tiles, "c2f --thumbnail-first: tiles a jump may start with."),
        _option("level", int | None, _ASK.level, "tiles-all: pyramid level (0 = coarse, -1 = native)."),
        _option(
            "max_tiles",
            int | None,
            _ASK.max_tiles,
            "tiles-all: finest level with at most N tiles (anyres-pN).",
        ),
        _option("max_vision_tokens", int, _ASK.max_vision_tokens, "tiles-all, region: refuse above this."),
        _option(
            "box",
            list[str] | None,
            None,
            "region: a level-0 pixel box x0,y0,x1,y1 to read at native resolution (repeatable).",
        ),
        _option("max_new_tokens", int, _ASK.max_new_tokens, "Answer length limit, tokens."),
        _option(
            "pruner",
            str | None,
            _ASK.pruner,
            "Token pruner (see lrs-vqa pruners), e.g. fastv or visionzip+fastv.",
        ),
        _option(
            "budget",
            str | None,
            _ASK.budget,
            "Pruner budget: 64 (tokens into the LLM), avg:128, 0.25 (ratio).",
        ),
        _option(
            "positions",
            str,
            _ASK.positions,
            "RoPE positions of kept tokens after pruning: original | compact (renumbered).",
        ),
        _option("asset", str | None, None, "STAC item input: the asset to open (default: role visual/data)."),
        _option(
            "download_to",
            str | None,
            None,
            "Remote rasters that are not COGs: copy them into this folder and read the copy (else refused).",
        ),
    ]


def _parse_box(text: str) -> tuple[int, int, int, int]:
    from lrs_vqa.cli.base import UsageError

    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--box must be x0,y0,x1,y1 (integers, level-0 pixels), got {text!r}") from None
    return x0, y0, x1, y1


def _run(values: dict[str, Any]) -> AskRun:
    c2f = {
        k: values.pop(k)
        for k in (
            "mode",
            "keep_ratio",
            "max_tiles_per_level",
            "budget_tokens",
            "keep_coarse",
            "thumbnail_first",
            "jump_tiles",
        )
    }
    model, device, dtype = values.pop("model"), values.pop("device"), values.pop("dtype")
    values["region"] = tuple(_parse_box(b) for b in values.pop("box") or ())
    pyramid = replace(_ASK.pyramid, stac_asset=values.pop("asset"), download_to=values.pop("download_to"))
    return AskRun(
        model or DEFAULT_MODEL, device, dtype, AskOptions(c2f=C2FOptions(**c2f), pyramid=pyramid, **values)
    )


def with_ask_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command(run: AskRun, ...)`` the shared options (its own parameters come first in --help)."""
    common = _parameters()
    names = [p.name for p in common]
    # Typer reads the Annotated options from resolved hints: resolve the command's own (string) annotations.
    hints = typing.get_type_hints(command, include_extras=True)
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
        for p in inspect.signature(command).parameters.values()
    ]
    if own[0].name != "run":
        raise TypeError(f"{command.__name__} must take `run: AskRun` first")

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        command(run=_run({k: kwargs.pop(k) for k in names}), **kwargs)

    params = [*own[1:], *common]
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
