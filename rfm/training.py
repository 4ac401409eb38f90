"""Training the Region Focus Module: the host VLM frozen, the RFM distilling its attention
(:mod:`rfm.distill`), optionally supervised by ground-truth boxes.

A sample is what the coarse-to-fine loop shows the scorer: the thumbnail plus tiles of one pyramid level
(the paper's "multi-GSD" input: every level of the same scene takes turns), the question, in the prompt the
host would read. The teacher rows are the host's raw attention logits of the last prompt token at layers
``llm_layer_list`` (captured while each layer runs, from the state entering it); the student's are the
RFM's at layers ``1..N`` (RFM layer ``k+1`` mirrors host layer ``llm_layer_list[k]``). The RFM reads the
host's input embeddings, detached, so no gradient reaches the host: its parameters stay bit for bit.

Checkpoints: ``rfm.safetensors`` (the RFM's layers and norm) and ``rfm.json`` (host, layer list, shapes,
training settings); ``train-state.pt`` holds the optimiser to resume after a kill (atomic writes).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from lrs_vqa.engine.decoder import DecoderLoop, PrefillInputs
from lrs_vqa.engine.taps import TapRecorder, last_row, recording
from lrs_vqa.models.region_focus import RegionFocusModule
from lrs_vqa.models.rfm_checkpoint import CONFIG, FORMAT, WEIGHTS, load_rfm_weights, write_rfm
from pyramid.errors import LrsVqaError
from rfm.base import local_rows
from rfm.distill import box_loss, box_target, distill_terms

if TYPE_CHECKING:
    from lrs_vqa.models.base import ModelAdapter
    from pyramid.dip import DynamicImagePyramid, TileKey

STATE = "train-state.pt"
TARGETS = ("distill", "boxes", "both")


class RFMTrainingError(LrsVqaError, ValueError):
    """A bad RFM training setup, sample or checkpoint; one-line message."""


@dataclass(frozen=True)
class RFMTrainConfig:
    llm_layer_list: tuple[int, ...] = (1, 2)  # host layers the RFM layers 1..N mirror (0-based module ids)
    target: str = "distill"  # distill | boxes (ground-truth boxes) | both
    box_weight: float = 1.0  # weight of the box term with target=both
    steps: int = 200
    lr: float = 1e-4
    weight_decay: float = 0.0
    accumulate: int = 1  # samples per optimiser step
    max_tiles: int = 16  # tiles of a level per sample: a window of adjacent tiles around the target
    seed: int = 0
    checkpoint_every: int = 50
    skip: tuple[int, ...] = field(default=(1, 2))  # layer-list positions the distillation leaves out

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise RFMTrainingError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if not self.llm_layer_list or min(self.llm_layer_list) < 1:
            raise RFMTrainingError(f"--layers must be host layer ids >= 1, got {self.llm_layer_list!r}")
        if self.steps < 1 or self.accumulate < 1 or self.max_tiles < 1 or self.lr <= 0:
            raise RFMTrainingError("--steps, --accumulate, --max-tiles and --lr must be positive")


@dataclass(frozen=True)
class RFMExample:
    """One training question: an image, the question, and (for box targets) level-0 boxes of the answer."""

    image: str
    question: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()


@dataclass(frozen=True)
class RFMSample:
    """One prompt, ready for both networks."""

    inputs: PrefillInputs
    local: torch.Tensor  # prompt rows of the scored (local) view's tokens
    target: torch.Tensor | None  # (len(local),) box distribution, or None
    level: int


def query_row_logits(
    layers: Sequence[torch.nn.Module],
    rotary: torch.nn.Module,
    config: object,
    inputs: PrefillInputs,
    at: Sequence[int],
    embeds: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Raw attention logits (heads, L) of the last prompt row at each layer index in ``at`` — computed by
    that layer from the state entering it — running ``layers[0..max(at)]`` (tap attention layers).
    Differentiable unless called under ``torch.no_grad``."""
    hidden = inputs.embeds if embeds is None else embeds
    cos, sin = rotary(hidden, inputs.position_ids)
    cache = DynamicCache(config=config)
    keys = {id(layers[i].self_attn): i for i in at}
    recorder = TapRecorder(keys, {i: last_row for i in at}, head_mean=False, raw=True)
    with recording(recorder):
        for layer in layers[: max(at) + 1]:
            hidden = DecoderLoop._layer(layer, hidden, cos, sin, cache)
    return [recorder.result(i)[0, :, 0] for i in at]


def check_host(adapter: ModelAdapter, layer_list: Sequence[int]) -> None:
    depth = len(adapter.decoder.layers)
    bad = [i for i in layer_list if not 1 <= i < depth]
    if bad:
        raise RFMTrainingError(f"--layers {list(bad)} outside the host's layers 1..{depth - 1}")
    if adapter.mrope:
        raise RFMTrainingError(
            f"{adapter.family}: RFM training needs 1-D rotary positions (LLaVA / LLaVA-OneVision hosts)"
        )


def window_shape(rows: int, cols: int, max_tiles: int) -> tuple[int, int]:
    """The largest near-square window of at most ``max_tiles`` tiles that fits a ``rows`` × ``cols`` grid."""
    h = max(1, min(rows, math.isqrt(max_tiles)))
    w = max(1, min(cols, max_tiles // h))
    h = max(1, min(rows, max_tiles // w))
    return h, w


def window_around(
    dip: DynamicImagePyramid,
    level: int,
    box: Sequence[float] | None,
    max_tiles: int,
    generator: torch.Generator,
) -> list[TileKey]:
    """A window of up to ``max_tiles`` adjacent tiles of ``level`` (raster order) holding a tile of ``box``
    (level-0 pixels) at a random place, or lying anywhere when ``box`` is None or off the image."""
    from pyramid.dip import TileKey
    from pyramid.levels import PixelBox

    lvl = dip.level(level)
    h, w = window_shape(lvl.rows, lvl.cols, max_tiles)

    def pick(lo: int, hi: int) -> int:
        return lo + int(torch.randint(hi - lo + 1, (1,), generator=generator))

    keys = dip.tiles_covering(level, PixelBox(*(round(v) for v in box))) if box is not None else []
    if not keys:
        r0, c0 = pick(0, lvl.rows - h), pick(0, lvl.cols - w)
    else:
        anchor = keys[0]
        r0 = pick(max(0, anchor.row - h + 1), min(anchor.row, lvl.rows - h))
        c0 = pick(max(0, anchor.col - w + 1), min(anchor.col, lvl.cols - w))
    return [TileKey(level, r, c) for r in range(r0, r0 + h) for c in range(c0, c0 + w)]


def build_sample(
    adapter: ModelAdapter,
    dip: DynamicImagePyramid,
    example: RFMExample,
    level: int,
    generator: torch.Generator,
    max_tiles: int,
) -> RFMSample:
    """Thumbnail + a window of up to ``max_tiles`` adjacent tiles of ``level`` and the question, as the host
    would read them: a window around the example's first box (:func:`window_around`), or anywhere when it
    has none. That is what the descent shows the scorer: a neighbourhood, where the target competes with its
    surroundings, not random far-away tiles that are mostly empty."""
    chosen = window_around(dip, level, example.boxes[0] if example.boxes else None, max_tiles, generator)
    with torch.no_grad():
        thumb = adapter.encode_tiles([dip.thumbnail()], newlines=False, level=-1)
        tiles = list(dip.stream(chosen))
        segment = adapter.encode_tiles(tiles, newlines=True, level=level)
    segments = [thumb, segment]
    prompt = adapter.build_prompt(example.question, segments)
    vision_rows = torch.nonzero(prompt.inputs.vision).flatten()
    local = vision_rows[local_rows(adapter, segments, 1)]
    target = None
    if example.boxes:
        rows = adapter.present_rows(segment)
        target = box_target(segment.meta.select(rows).boxes, torch.tensor(example.boxes, dtype=torch.float32))
        if float(target.sum()) <= 0:
            target = None
    return RFMSample(prompt.inputs, local, target, level)


def sample_loss(
    adapter: ModelAdapter, rfm: RegionFocusModule, sample: RFMSample, cfg: RFMTrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one sample and its parts (teacher rows under no_grad; student rows with gradient)."""
    n = len(cfg.llm_layer_list)
    logs: dict[str, float] = {}
    terms = []
    student = query_row_logits(
        rfm.layers,
        rfm.rotary_emb,
        rfm.config,
        sample.inputs,
        list(range(1, n + 1)),
        sample.inputs.embeds.detach(),
    )
    if cfg.target in ("distill", "both"):
        dec = adapter.decoder
        with torch.no_grad():
            teacher = query_row_logits(dec.layers, dec.rotary, dec.config, sample.inputs, cfg.llm_layer_list)
        d = distill_terms(teacher, student, sample.local, skip=cfg.skip)
        logs.update(
            kl_full=float(d.kl_full.detach()),
            kl_image=float(d.kl_image.detach()),
            mse_image=float(d.mse_image.detach()),
        )
        terms.append(d.loss)
    if cfg.target in ("boxes", "both") and sample.target is not None:
        b = box_loss(student[-1][:, sample.local], sample.target)
        logs["box"] = float(b.detach())
        terms.append(b * (cfg.box_weight if cfg.target == "both" else 1.0))
    if not terms:  # target=boxes, and this sample's tiles miss its boxes: nothing to learn from it
        return student[-1].sum() * 0.0, {"loss": 0.0}
    loss = sum(terms[1:], terms[0])
    logs["loss"] = float(loss.detach())
    return loss, logs


def examples_stream(
    examples: Sequence[RFMExample], seed: int, start: int
) -> Iterator[tuple[int, RFMExample, torch.Generator]]:
    """Sample ``i`` of the run: a pure function of (seed, i), so a resumed run continues exactly."""
    i = start
    while True:
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        yield i, examples[int(torch.randint(len(examples), (1,), generator=g))], g
        i += 1


def train_rfm(
    adapter: ModelAdapter,
    examples: Sequence[RFMExample],
    out: str | Path,
    cfg: RFMTrainConfig,
    *,
    open_pyramid: Callable[[str], DynamicImagePyramid],
    progress: Callable[[int, dict[str, float]], None] | None = None,
    stop_at: int | None = None,
) -> RegionFocusModule:
    """Train (or resume) an RFM for ``adapter`` into ``out``; returns the module (also written there)."""
    if not examples:
        raise RFMTrainingError("no training questions")
    if cfg.target == "boxes":  # only questions with ground-truth boxes teach a box target
        examples = [e for e in examples if e.boxes]
        if not examples:
            raise RFMTrainingError("--target boxes needs questions with ground-truth boxes")
    check_host(adapter, cfg.llm_layer_list)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RFMTrainingError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    rfm = RegionFocusModule.from_host(adapter, llm_layer_list=list(cfg.llm_layer_list))
    rfm.train()
    for p in rfm.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(rfm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fingerprint = _fingerprint(adapter, cfg)
    step = _resume(out, fingerprint, rfm, opt)
    log = (out / "train-log.jsonl").open("a")
    stream = examples_stream(examples, cfg.seed, step * cfg.accumulate)
    dips: dict[str, DynamicImagePyramid] = {}
    try:
        while step < cfg.steps:
            opt.zero_grad(set_to_none=True)
            parts: dict[str, float] = {}
            for _ in range(cfg.accumulate):
                _, ex, g = next(stream)
                dip = dips.get(ex.image) or dips.setdefault(ex.image, open_pyramid(ex.image))
                level = int(torch.randint(len(dip.levels), (1,), generator=g))
                sample = build_sample(adapter, dip, ex, level, g, cfg.max_tiles)
                loss, logs = sample_loss(adapter, rfm, sample, cfg)
                (loss / cfg.accumulate).backward()
                for k, v in logs.items():
                    parts[k] = parts.get(k, 0.0) + v / cfg.accumulate
            torch.nn.utils.clip_grad_norm_(list(rfm.parameters()), 1.0)
            opt.step()
            step += 1
            log.write(json.dumps({"step": step, **{k: round(v, 6) for k, v in parts.items()}}) + "\n")
            log.flush()
            if progress is not None:
                progress(step, parts)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or step == stop_at:
                _save(out, fingerprint, rfm, opt, step, adapter, cfg)
            if step == stop_at:
                break
    finally:
        log.close()
        for d in dips.values():
            d.close()
    return rfm.eval()


def plot_losses(log: str | Path, png: str | Path) -> Path:
    """The run's loss terms against steps (moving average over about 1/20 of the run), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key in ("box", "kl_full", "kl_image", "mse_image"):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if not pts:
            continue
        k = max(1, len(pts) // 20)
        steps = torch.tensor([p[0] for p in pts], dtype=torch.float64)
        values = torch.tensor([p[1] for p in pts], dtype=torch.float64)
        smooth = values.unfold(0, k, 1).mean(1) if len(values) >= k else values
        ax.plot(steps[k - 1 :].tolist(), smooth.tolist(), label=key)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)


def _fingerprint(adapter: ModelAdapter, cfg: RFMTrainConfig) -> dict:
    d = asdict(cfg)
    d.pop("checkpoint_every")
    return {"host": str(adapter.source), "config": d}


def _save(
    out: Path, fingerprint: dict, rfm: RegionFocusModule, opt, step: int, adapter: ModelAdapter, cfg
) -> None:
    tmp = out / (STATE + ".part")
    torch.save(
        {"format": FORMAT, "fingerprint": fingerprint, "step": step, "optimizer": opt.state_dict()}, tmp
    )
    write_rfm(out, rfm, adapter, steps=step, training=asdict(cfg), suffix=".part")
    for name in (WEIGHTS, CONFIG, STATE):  # a kill between these leaves a consistent older set at worst
        os.replace(out / (name + ".part"), out / name)


def _resume(out: Path, fingerprint: dict, rfm: RegionFocusModule, opt) -> int:
    state_path = out / STATE
    if not state_path.exists():
        if (out / CONFIG).exists():
            raise RFMTrainingError(
                f"{out} holds a finished or foreign RFM without training state; use another --out"
            )
        return 0
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RFMTrainingError(f"{state_path}: cannot resume ({type(exc).__name__})") from None
    if state.get("format") != FORMAT or state.get("fingerprint") != fingerprint:
        raise RFMTrainingError(f"{out} holds another run (other host or settings); use another --out")
    load_rfm_weights(rfm, out)
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])


def export_released(rfm: RegionFocusModule, path: str | Path) -> Path:
    """The RFM's weights under the released LRS-VQA checkpoint keys (``model.mm_projector.token_pruner.*``,
    reference card §4.2), for LLaVA-largeimg hosts: what ``lrs_vqa.models.largeimg_checkpoint`` reads."""
    from safetensors.torch import save_file

    from lrs_vqa.models.largeimg_checkpoint import RFM_PREFIX

    path = Path(path)
    state = {
        RFM_PREFIX + k: v.detach().contiguous().cpu()
        for k, v in rfm.state_dict().items()
        if "rotary" not in k
    }
    tmp = path.with_name(path.name + ".part")
    save_file(state, str(tmp))
    os.replace(tmp, path)
    return path
