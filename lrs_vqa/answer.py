"""``answer()``: one question about one image, end to end. The CLI, the app and the benchmark call it.

Strategies (the baselines every comparison needs; the coarse-to-fine loop plugs in beside them):

* ``global``    — the global thumbnail only (one tile, long side = the encoder's input size);
* ``anyres``    — the model's own fixed-grid processing of the coarse level (long side ~3 tiles), like the
                  paper's anyres-pX baselines: whatever the checkpoint's processor does with that image;
* ``tiles-all`` — the thumbnail plus every tile of one pyramid level, refused above ``max_vision_tokens``;
* ``c2f``       — the coarse-to-fine loop (``lrs_vqa.c2f``): zoom level by level into the tiles a region
                  scorer points at, read only those, prune, answer. The default.
"""

from __future__ import annotations

import contextlib
import functools
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from lrs_vqa.c2f import C2FOptions, C2FResult, make_loop, shift_tiles
from lrs_vqa.engine.decoder import LayerHook
from lrs_vqa.engine.flops import flops_report
from lrs_vqa.engine.hooks import VisionHook
from lrs_vqa.engine.tokens import VisionSegment
from lrs_vqa.heatmap import render_heatmap, write_heatmap
from lrs_vqa.models.base import EncodedPrompt, ModelAdapter, pyramid_spec_for
from lrs_vqa.records import AnswerRecord, RunStats, TileRecord
from pyramid.dip import DynamicImagePyramid, PyramidOptions, Tile
from pyramid.pool import PyramidPool

if TYPE_CHECKING:
    from pruning.base import Attachment
from rfm.base import RegionScorer
from rfm.scorers import ScorerUnavailableError, UnknownScorerError, build_scorer, scorer_names

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
STRATEGIES = ("c2f", "global", "anyres", "tiles-all")
SCORERS = scorer_names()


class StrategyError(ValueError):
    """A strategy cannot run with these settings (e.g. too many tokens); one-line message."""


@dataclass(frozen=True)
class AskOptions:
    strategy: str = "c2f"
    level: int | None = None  # tiles-all: pyramid level index (negative from native); default coarse
    max_tiles: int | None = None  # tiles-all: the finest level with at most this many tiles (anyres-pN)
    max_vision_tokens: int = 16384  # tiles-all refuses above this
    max_new_tokens: int = 32
    pyramid: PyramidOptions = field(default_factory=PyramidOptions)
    c2f: C2FOptions = field(default_factory=C2FOptions)
    scorer: str = "attention"  # c2f: "attention" (training-free, any model) | "rfm" (trained RFM weights)
    scorer_layers: int | None = None  # attention scorer: LLM layers to run (None: a quarter of them)
    # A registered token pruner (``pruning.registry``: "fastv", "visionzip+fastv", "fastv:layer=3") and its
    # budget ("64" tokens into the LLM, "avg:128" over layers, "0.25" ratio; a chain takes "192+0.5"). With
    # c2f it compresses the final tiles' tokens in place of the loop's own final prune.
    pruner: str | None = None
    budget: str | None = None


@functools.lru_cache(maxsize=2)
def get_adapter(source: str, device: str = "cpu", dtype: str = "float32") -> ModelAdapter:
    """Load once per process (the app and batch runs ask many questions of one model)."""
    from lrs_vqa.models.registry import load_adapter

    return load_adapter(source, device=device, dtype=dtype)


@dataclass
class _Gathered:
    segments: list[VisionSegment]
    tiles: list[Tile]
    roles: list[str]
    prompt: EncodedPrompt | None = None  # set by strategies that use the model's own processing
    c2f: C2FResult | None = None


def region_scorer(adapter: ModelAdapter, options: AskOptions) -> RegionScorer:
    """The scorer the c2f loop asks (``rfm.scorers``): the trained RFM that came with the model, or the
    attention one."""
    try:
        return build_scorer(options.scorer, adapter, options.scorer_layers)
    except (UnknownScorerError, ScorerUnavailableError) as exc:
        raise StrategyError(str(exc)) from None


def split_budget(budget: str, sizes: Sequence[int]) -> list[str]:
    """One budget over several encoded groups (``sizes`` tokens each) → one budget per group: a token
    count (or an average, the same thing before the LLM) is shared in proportion to the group sizes, at least
    one token each; a ratio applies to every group."""
    from pruning.budget import Budget, BudgetKind

    parsed = Budget.parse(budget)
    if parsed.kind is BudgetKind.RATIO:
        return [budget] * len(sizes)
    total, n = int(parsed.value), sum(sizes)
    if total < len(sizes):
        raise StrategyError(f"budget {budget} is below one token per view ({len(sizes)} views)")
    if total > n:
        raise StrategyError(f"budget {budget} is larger than the {n} vision tokens the views have")
    shares = [max(1, round(total * k / n)) for k in sizes[:-1]]
    return [str(v) for v in (*shares, total - sum(shares))]


def _prune_views(
    adapter: ModelAdapter, result: C2FResult, options: AskOptions, vision_hooks: Sequence[VisionHook]
) -> None:
    """Re-encode the thumbnail and the final tiles the loop picked, each with the pruner attached at its
    share of the budget, so the vision tokens into the LLM total the budget."""
    from pruning.registry import get_pruner

    thumb_seg, final_seg = result.segments[0], result.segments[-1]
    real = final_seg.meta.tile >= 0
    tile_ids = sorted(set(final_seg.meta.tile[real].tolist()))
    first = tile_ids[0]
    tiles = result.tiles[first : tile_ids[-1] + 1]  # one level's tiles, contiguous in the loop's list
    level = int(final_seg.meta.level[real][0])
    sizes = [len(adapter.present_rows(thumb_seg)), int(real.sum())]
    shares = split_budget(options.budget or "", sizes)
    segments = []
    for share, (group, lvl, newlines) in zip(
        shares, (([result.tiles[0]], -1, False), (tiles, level, True)), strict=True
    ):
        with get_pruner(options.pruner or "").attach(adapter, share) as att:
            hooks = (*vision_hooks, *att.vision_hooks)
            segments.append(adapter.encode_tiles(group, newlines=newlines, level=lvl, hooks=hooks))
            result.tokens_encoded += segments[-1].tokens_encoded
            result.images_encoded += segments[-1].images_encoded
    result.segments = [segments[0], *result.segments[1:-1], shift_tiles(segments[1], first)]


def _gather(
    adapter: ModelAdapter,
    dip: DynamicImagePyramid,
    question: str,
    options: AskOptions,
    vision_hooks: Sequence[VisionHook],
    pruner_hooks: Sequence[VisionHook] | None = None,
    split_views: bool = False,
) -> _Gathered:
    """``pruner_hooks``: a pruner's vision-side hooks (c2f applies them to the final level only; the
    other strategies to every encoded group, like ``vision_hooks``). ``split_views``: c2f with a pruner that
    works only before the LLM — its budget is shared between the thumbnail and the final tiles instead."""
    if pruner_hooks and options.strategy != "c2f":
        if options.strategy == "anyres":
            raise StrategyError(
                "anyres uses the model's own processing: vision-side pruners need c2f, global or tiles-all"
            )
        vision_hooks = (*vision_hooks, *pruner_hooks)
    if options.strategy == "c2f":
        scorer = region_scorer(adapter, options)
        loop = make_loop(adapter, scorer, options.c2f, vision_hooks, () if split_views else pruner_hooks)
        result = loop.run(dip, question)
        if split_views:
            _prune_views(adapter, result, options, vision_hooks)
        return _Gathered(result.segments, result.tiles, result.roles, c2f=result)
    thumb = dip.thumbnail()
    if options.strategy == "global":
        seg = adapter.encode_tiles([thumb], newlines=False, level=-1, hooks=vision_hooks)
        return _Gathered([seg], [thumb], ["thumbnail"])
    if options.strategy == "anyres":
        coarse = dip.level_image(0)
        image = Image.fromarray(coarse.pixels)
        prompt, _ = adapter.stock_prompt(image, question, image_box=coarse.box)
        return _Gathered([], [coarse], ["overview"], prompt)
    if options.strategy == "tiles-all":
        index = 0 if options.level is None else options.level
        if options.max_tiles is not None:  # the paper's anyres-pN baseline on our pyramid
            if options.level is not None:
                raise StrategyError("give either a level or a tile count (max tiles), not both")
            fitting = [lvl.index for lvl in dip.levels if lvl.num_tiles <= options.max_tiles]
            if not fitting:
                raise StrategyError(f"even the coarse level has more than {options.max_tiles} tiles")
            index = fitting[-1]
        if not -len(dip.levels) <= index < len(dip.levels):
            raise StrategyError(
                f"level {index} does not exist; this image has levels 0..{len(dip.levels) - 1}"
            )
        level = dip.levels[index]
        estimate = (level.num_tiles + 1) * adapter.tokens_per_tile
        if estimate > options.max_vision_tokens:
            raise StrategyError(
                f"tiles-all at level {level.index} ({level.name}, {level.rows}x{level.cols} tiles) would "
                f"feed "
                f"~{estimate} vision tokens, above the limit of {options.max_vision_tokens}; "
                "pick a coarser level or raise --max-vision-tokens"
            )
        tiles = list(dip.stream(dip.all_tiles(level.index)))
        seg0 = adapter.encode_tiles([thumb], newlines=False, level=-1, hooks=vision_hooks)
        seg1 = adapter.encode_tiles(tiles, newlines=True, level=level.index, hooks=vision_hooks)
        return _Gathered(
            [seg0, shift_tiles(seg1, 1)], [thumb, *tiles], ["thumbnail"] + ["level"] * len(tiles)
        )
    raise StrategyError(f"unknown strategy {options.strategy!r}; choose one of {', '.join(STRATEGIES)}")


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
    dtype: str = "float32",
    options: AskOptions | None = None,
    llm_hooks: Sequence[LayerHook] = (),
    vision_hooks: Sequence[VisionHook] = (),
    heatmap: str | Path | None = None,
    pyramids: PyramidPool | None = None,
) -> AnswerRecord:
    """Answer ``question`` about ``image`` and report what was read and what it cost.

    ``heatmap``: with ``c2f``, also write the coarse-level token scores over the image as a PNG.
    ``pyramids``: borrow the image's pyramid from this pool (kept open for the next question about it)."""
    options = options or AskOptions()
    if options.strategy not in STRATEGIES:
        raise StrategyError(f"unknown strategy {options.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if heatmap is not None and options.strategy != "c2f":
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
            split_views = options.strategy == "c2f" and not attachment.llm_hooks
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
            (device, dtype),
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
    where: tuple[str, str],
    llm_hooks: Sequence[LayerHook],
    vision_hooks: Sequence[VisionHook],
    pruner_hooks: Sequence[VisionHook] | None,
    split_views: bool,
    heatmap: str | Path | None,
    t_start: float,
) -> AnswerRecord:
    device, dtype = where  # as the caller gave them (for the record)
    with opened as dip:
        t0 = time.perf_counter()
        gathered = _gather(adapter, dip, question, options, vision_hooks, pruner_hooks, split_views)
        t_gather = time.perf_counter() - t0
        image_info = {**dip.info.describe(), "levels": [lvl.describe() for lvl in dip.levels]}
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
        strategy=options.strategy,
        image={
            k: image_info[k] for k in ("path", "width", "height", "bands", "dtype", "crs", "layout", "levels")
        },
        tiles=records,
        stats=stats,
        generated_tokens=len(ids),
        levels=[step.describe() for step in gathered.c2f.steps] if gathered.c2f is not None else [],
        settings={
            "level": options.level,
            "max_new_tokens": options.max_new_tokens,
            "device": device,
            "dtype": dtype,
            **(
                {"scorer": options.scorer, "scorer_layers": options.scorer_layers, **asdict(options.c2f)}
                if options.strategy == "c2f"
                else {}
            ),
            **({"pruner": options.pruner, "budget": options.budget} if options.pruner is not None else {}),
        },
    )
