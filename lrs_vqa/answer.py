"""``answer()``: one question about one image, end to end. The CLI, the app and the benchmark call it.

It opens the pyramid, attaches a token pruner if one is asked for, lets the chosen strategy
(``lrs_vqa.strategies``: ``c2f``, ``global``, ``anyres``, ``tiles-all``) gather the vision tokens, runs the
decoder, and reports what was read and what it cost.
"""

from __future__ import annotations

import contextlib
import functools
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lrs_vqa.engine.decoder import LayerHook
from lrs_vqa.engine.flops import flops_report
from lrs_vqa.engine.hooks import VisionHook
from lrs_vqa.heatmap import render_heatmap, write_heatmap
from lrs_vqa.models.base import ModelAdapter, pyramid_spec_for
from lrs_vqa.models.dtypes import AUTO, dtype_name, resolve_dtype
from lrs_vqa.options import DEFAULT_MODEL, AskOptions
from lrs_vqa.records import AnswerRecord, RunStats, TileRecord
from lrs_vqa.strategies import Gathered, StrategyError, StrategyRequest, get_strategy, strategy_names
from pyramid.dip import DynamicImagePyramid
from pyramid.pool import PyramidPool
from rfm.scorers import resolve_scorer_name

if TYPE_CHECKING:
    from pruning.base import Attachment

# Re-exported: the names callers of answer() need with it.
__all__ = ["DEFAULT_MODEL", "AskOptions", "StrategyError", "answer", "get_adapter", "pyramid_spec_for"]


def get_adapter(source: str, device: str = "cpu", dtype: str = AUTO) -> ModelAdapter:
    """Load once per process (the app and batch runs ask many questions of one model); ``auto`` is resolved
    first, so it and the dtype it stands for share one loaded model."""
    return _load_adapter(source, device, resolve_dtype(dtype, device))


@functools.lru_cache(maxsize=2)
def _load_adapter(source: str, device: str, dtype: str) -> ModelAdapter:
    from lrs_vqa.models.registry import load_adapter

    return load_adapter(source, device=device, dtype=dtype)


def _gather(req: StrategyRequest) -> Gathered:
    strategy = get_strategy(req.options.strategy)
    if req.pruner_hooks and strategy.own_processing:
        usable = [s for s in strategy_names() if not get_strategy(s).own_processing]
        raise StrategyError(
            f"{strategy.name} uses the model's own processing: vision-side pruners need "
            f"{', '.join(usable[:-1])} or {usable[-1]}"
        )
    return strategy.gather(req)


_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # "5" resets this process's resident-set high-water mark (VmHWM)
        _CLEAR_REFS.write_text("5")


def _peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak since the last reset: CUDA allocator, or this process's VmHWM (ru_maxrss where /proc lacks it)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda"
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "rss"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss-process"


def answer(
    image: str | Path,
    question: str,
    *,
    model: str | ModelAdapter = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str = AUTO,
    options: AskOptions | None = None,
    llm_hooks: Sequence[LayerHook] = (),
    vision_hooks: Sequence[VisionHook] = (),
    heatmap: str | Path | None = None,
    pyramids: PyramidPool | None = None,
) -> AnswerRecord:
    """Answer ``question`` about ``image`` and report what was read and what it cost.

    ``heatmap``: with ``c2f``, also write the coarse-level token scores over the image as a PNG.
    ``pyramids``: borrow the image's pyramid from this pool (kept open for the next question about it).
    ``dtype``: for a ``model`` given by name (``auto``: :func:`~lrs_vqa.models.dtypes.resolve_dtype`); the
    record names the dtype the model's weights hold, whichever way it came."""
    options = options or AskOptions()
    strategy = get_strategy(options.strategy)
    if heatmap is not None and not strategy.coarse_to_fine:
        raise StrategyError("a heatmap needs the c2f strategy (it draws the coarse-level token scores)")
    if not question.strip():
        raise StrategyError("the question is empty")
    adapter = get_adapter(model, device, dtype) if isinstance(model, str) else model
    _reset_peak_memory(adapter.device)
    t_start = time.perf_counter()
    popts = replace(options.pyramid, spec=pyramid_spec_for(adapter))
    with contextlib.ExitStack() as stack:
        pruner_hooks, split_views = None, False
        if options.pruner is not None:  # detached again however the answer ends
            attachment = stack.enter_context(_attach_pruner(adapter, options))
            pruner_hooks = attachment.vision_hooks
            llm_hooks = (*llm_hooks, *attachment.llm_hooks)
            # A pruner that acts only before the LLM cannot see the whole prompt: after c2f its budget is
            # shared between the views (see _prune_views), so the tokens into the LLM still total it.
            split_views = strategy.coarse_to_fine and not attachment.llm_hooks
            if split_views:
                attachment.detach()  # _prune_views attaches it per view
        opened = (
            pyramids.lend(image, popts) if pyramids is not None else DynamicImagePyramid.open(image, popts)
        )
        record = _answer_with(
            adapter,
            opened,
            question,
            options,
            device,
            llm_hooks,
            vision_hooks,
            pruner_hooks,
            split_views,
            heatmap,
            t_start,
        )
    return record


def _attach_pruner(adapter: ModelAdapter, options: AskOptions) -> Attachment:
    from pruning.registry import get_pruner

    if options.budget is None:
        raise StrategyError("a pruner needs a budget: --budget 64 (tokens), avg:128 or 0.25 (ratio)")
    return get_pruner(options.pruner).attach(adapter, options.budget)  # type: ignore[arg-type]


def _answer_with(
    adapter: ModelAdapter,
    opened: contextlib.AbstractContextManager[DynamicImagePyramid],
    question: str,
    options: AskOptions,
    device: str,
    llm_hooks: Sequence[LayerHook],
    vision_hooks: Sequence[VisionHook],
    pruner_hooks: Sequence[VisionHook] | None,
    split_views: bool,
    heatmap: str | Path | None,
    t_start: float,
) -> AnswerRecord:
    with opened as dip:
        t0 = time.perf_counter()
        gathered = _gather(
            StrategyRequest(adapter, dip, question, options, vision_hooks, pruner_hooks, split_views)
        )
        t_gather = time.perf_counter() - t0
        image_info = {**dip.info.describe(), "levels": [lvl.describe() for lvl in dip.levels]}
        remote = dip.remote_report()  # after the reads: bytes and requests this answer cost
        if heatmap is not None and gathered.c2f is not None and gathered.c2f.coarse_scores is not None:
            picture = render_heatmap(dip, gathered.c2f.coarse_scores, gathered.c2f.steps)
            write_heatmap(picture, heatmap)
        tiles_read = dip.stats["tiles_read"]
    prompt = gathered.prompt or adapter.build_prompt(question, gathered.segments)
    ids, prefill, t_decode = adapter.decoder.generate(
        prompt.inputs,
        llm_hooks,
        max_new_tokens=options.max_new_tokens,
        eos_token_ids=adapter.eos_token_ids,
        suppress_token_ids=adapter.suppress_token_ids,
        positions=options.positions,
    )
    text = adapter.decode_text(ids)
    vision_shape, patches = adapter.vision_shape()
    flops = flops_report(
        llm=adapter.llm_shape(),
        vision_tokens_per_layer=prefill.vision_tokens_per_layer,
        text_tokens=prompt.text_tokens,
        vision=vision_shape,
        vision_patches_per_image=patches,
        images=gathered.c2f.images_encoded if gathered.c2f is not None else prompt.images_encoded,
    )
    scoring = gathered.c2f.scoring_tflops if gathered.c2f is not None else 0.0
    per_tile = torch.bincount(prompt.meta.tile[prompt.meta.tile >= 0], minlength=len(gathered.tiles))
    if gathered.prompt is not None:  # the model's own processing: all tokens come from the one overview
        per_tile = torch.tensor([len(prompt.meta)])
    scores = gathered.c2f.tile_scores if gathered.c2f is not None else [None] * len(gathered.tiles)
    records = [
        TileRecord.from_tile(tile, role, int(per_tile[i]), scores[i])
        for i, (tile, role) in enumerate(zip(gathered.tiles, gathered.roles, strict=True))
    ]
    peak, kind = _peak_memory(adapter.device)
    vision_in = int(prompt.inputs.vision.sum())
    own = gathered.prompt is not None
    segs = gathered.segments
    encoded = (prompt.tokens_encoded if own else sum(s.tokens_encoded for s in segs)) or vision_in
    if gathered.c2f is not None:  # every level the loop encoded, not only what survived
        encoded = gathered.c2f.tokens_encoded
    stats = RunStats(
        vision_tokens_encoded=encoded,
        tokens_into_llm=prompt.inputs.length,
        vision_tokens_into_llm=vision_in,
        text_tokens=prompt.text_tokens,
        tokens_per_layer=prefill.tokens_per_layer,
        vision_tokens_per_layer=prefill.vision_tokens_per_layer,
        avg_vision_tokens_over_layers=sum(prefill.vision_tokens_per_layer)
        / len(prefill.vision_tokens_per_layer),
        final_vision_tokens=prefill.vision_tokens_per_layer[-1],
        images_encoded=gathered.c2f.images_encoded if gathered.c2f is not None else prompt.images_encoded,
        tiles_read=tiles_read,
        tflops_vision=flops.vision_tflops,
        tflops_llm_vision_only=flops.llm_vision_tflops,
        tflops_llm=flops.llm_total_tflops,
        tflops_total=flops.total_tflops + scoring,
        tflops_scoring=scoring,
        seconds={
            "read_and_encode": round(t_gather, 4),
            "prefill": round(prefill.seconds, 4),
            "decode": round(t_decode, 4),
            "total": round(time.perf_counter() - t_start, 4),
        },
        peak_memory_mb=round(peak, 1),
        peak_memory_kind=kind,
    )
    return AnswerRecord(
        question=question,
        answer=text,
        model=adapter.source,
        model_family=adapter.family,
        random_weights=adapter.random_weights,
        synthetic_world=adapter.synthetic_world,
        strategy=options.strategy,
        image={
            **{
                k: image_info[k]
                for k in ("path", "width", "height", "bands", "dtype", "crs", "layout", "levels")
            },
            **({"remote": remote} if remote is not None else {}),
            **({"stac": image_info["stac"]} if "stac" in image_info else {}),
        },
        tiles=records,
        stats=stats,
        generated_tokens=len(ids),
        levels=[step.describe() for step in gathered.c2f.steps] if gathered.c2f is not None else [],
        settings={
            "level": options.level,
            **({"region": [list(b) for b in options.region]} if options.strategy == "region" else {}),
            "max_new_tokens": options.max_new_tokens,
            "device": device,
            # What the weights hold, not what was asked: resolved (never "auto"), and true for a model passed
            # in already loaded whatever ``dtype`` said.
            "dtype": dtype_name(adapter.dtype),
            **(
                {
                    "scorer": "rfm" if options.rfm else resolve_scorer_name(options.scorer, adapter),
                    "scorer_layers": options.scorer_layers,
                    **({"rfm": options.rfm} if options.rfm is not None else {}),
                    **asdict(options.c2f),
                }
                if get_strategy(options.strategy).coarse_to_fine
                else {}
            ),
            **({"pruner": options.pruner, "budget": options.budget} if options.pruner is not None else {}),
            **({"positions": options.positions} if options.positions != "original" else {}),
        },
    )
