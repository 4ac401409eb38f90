"""Model adapters: turn pyramid tiles into vision tokens tagged with where they came from, and build the
prompt the decoder loop runs. One adapter class per family, selected by ``config.model_type``.

``TokenMeta`` and ``VisionSegment`` are engine types (``lrs_vqa.engine.tokens``); they are imported here
because every adapter produces them."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from lrs_vqa.engine.decoder import DecoderLoop, PrefillInputs
from lrs_vqa.engine.flops import LayerShape
from lrs_vqa.engine.hooks import VisionHook
from lrs_vqa.engine.taps import RowSelector, TapRecorder, recording
from lrs_vqa.engine.tokens import TokenMeta, VisionSegment
from pyramid.dip import Tile
from pyramid.levels import PyramidSpec


@dataclass
class EncodedPrompt:
    inputs: PrefillInputs
    meta: TokenMeta  # aligned with the vision rows of ``inputs`` (inputs.vision.nonzero())
    text_tokens: int
    images_encoded: int
    tokens_encoded: int = 0  # vision-encoder outputs before any selection (0: count the vision rows)


def token_boxes(tile: Tile, grid_h: int, grid_w: int, tile_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Level-0 boxes of a ``grid_h × grid_w`` token grid laid over the tile padded to ``tile_size``²
    (bottom/right padding), and which tokens touch real pixels (padding-only tokens are dropped)."""
    lb, b0 = tile.level_box, tile.box
    sx = b0.width / max(lb.width, 1)
    sy = b0.height / max(lb.height, 1)
    cw, ch = tile_size / grid_w, tile_size / grid_h
    xs = np.arange(grid_w) * cw
    ys = np.arange(grid_h) * ch
    x0 = np.minimum(xs, lb.width)
    x1 = np.minimum(xs + cw, lb.width)
    y0 = np.minimum(ys, lb.height)
    y1 = np.minimum(ys + ch, lb.height)
    valid = (x1 > x0)[None, :] & (y1 > y0)[:, None]
    boxes = np.stack(
        np.broadcast_arrays(
            (b0.x0 + x0 * sx)[None, :],
            (b0.y0 + y0 * sy)[:, None],
            (b0.x0 + x1 * sx)[None, :],
            (b0.y0 + y1 * sy)[:, None],
        ),
        axis=-1,
    ).reshape(-1, 4)
    return torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(valid.reshape(-1))


def to_pil(tile: Tile, tile_size: int, fill: tuple[int, int, int]) -> Image.Image:
    return Image.fromarray(tile.padded(tile_size, fill))


class ModelAdapter:
    """Base class; subclasses fill in the family specifics."""

    model_types: ClassVar[tuple[str, ...]] = ()
    family: ClassVar[str] = ""
    synthetic_world: bool = False  # trained on the synthetic world only (set by the loader)

    def __init__(
        self, model: torch.nn.Module, processor: object, *, source: str, random_weights: bool
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer  # type: ignore[attr-defined]
        self.source = source
        self.random_weights = random_weights
        self.text_model = model.model.language_model
        self.decoder = DecoderLoop(self.text_model, model.lm_head, mrope=self.mrope)

    mrope: ClassVar[bool] = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- to implement -------------------------------------------------------------------------------
    @property
    def tile_size(self) -> int:
        """Pixel size of one tile as the vision encoder wants it (the pyramid's tile size)."""
        raise NotImplementedError

    def encode_tiles(
        self, tiles: Sequence[Tile], *, newlines: bool, level: int, hooks: Sequence[VisionHook] = ()
    ) -> VisionSegment:
        raise NotImplementedError

    def vision_attention_modules(self) -> list[torch.nn.Module]:
        """The vision encoder's attention modules, first layer first (for taps)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def vision_taps(self, hooks: Sequence[VisionHook]) -> Iterator[dict[int, torch.Tensor]]:
        """Capture the encoder attention rows the hooks ask for; the dict fills in when the block exits."""
        requests: dict[int, RowSelector] = {}
        for hook in hooks:
            requests.update(hook.vision_tap_rows())
        captured: dict[int, torch.Tensor] = {}
        if not requests:
            yield captured
            return
        modules = self.vision_attention_modules()
        resolved = {(k if k >= 0 else len(modules) + k): sel for k, sel in requests.items()}
        recorder = TapRecorder({id(modules[k]): k for k in resolved}, dict(resolved))
        with recording(recorder):
            yield captured
        for k in resolved:
            captured[k] = recorder.result(k)
        for k in requests:  # also reachable under the negative index the hook used
            captured[k] = captured[k if k >= 0 else len(modules) + k]

    def build_prompt(self, question: str, segments: Sequence[VisionSegment]) -> EncodedPrompt:
        raise NotImplementedError

    def present_rows(self, segment: VisionSegment) -> torch.Tensor:
        """Rows of ``segment.meta`` that enter the prompt, in prompt order (all of them by default)."""
        return torch.arange(len(segment.meta))

    def prune_segment(self, segment: VisionSegment, rows: torch.Tensor) -> VisionSegment:
        """Keep the token rows ``rows`` of ``segment.meta``; a newline marker stays only while the token row
        it ends keeps a token (the reference's unpad-then-newline layout, applied to the survivors)."""
        keep = torch.zeros(len(segment.meta), dtype=torch.bool)
        keep[rows] = True
        keep &= ~segment.meta.newline
        newline = segment.meta.newline
        span_has_token = False
        for i in range(len(keep)):  # one pass: a newline closes the span of tokens before it
            if newline[i]:
                keep[i] = span_has_token
                span_has_token = False
            elif keep[i]:
                span_has_token = True
        index = torch.nonzero(keep).flatten()
        if index.numel() == 0:
            raise ValueError("pruning would leave no vision token")
        return replace(
            segment, embeds=segment.embeds[index.to(segment.embeds.device)], meta=segment.meta.select(index)
        )

    def stock_prompt(
        self, image: Image.Image, question: str
    ) -> tuple[EncodedPrompt, dict[str, torch.Tensor]]:
        """The model's own processing of ``image`` (its fixed grid), as a prompt for our decoder loop,
        plus the processor outputs a stock forward would take."""
        raise NotImplementedError

    def vision_shape(self) -> tuple[LayerShape, int]:
        """The vision encoder's layer shape and the patch tokens per encoded image."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------
    def llm_shape(self) -> LayerShape:
        cfg = self.text_model.config
        return LayerShape(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers)

    def chat_text(self, question: str) -> str:
        """The chat prompt (the checkpoint's own template) with exactly one image placeholder."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)  # type: ignore[attr-defined]

    def chat_ids(self, question: str) -> list[int]:
        return list(self.tokenizer(self.chat_text(question), add_special_tokens=False).input_ids)

    def processor_inputs(self, image: Image.Image, question: str) -> dict[str, torch.Tensor]:
        """What the stock processor makes of one image and the question, on the model's device/dtype."""
        inputs = self.processor(images=[image], text=self.chat_text(question), return_tensors="pt")  # type: ignore[operator]
        return {
            k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
        }

    def instruction_mask(self, ids: Sequence[int], question: str, start: int) -> torch.Tensor:
        """Mark the question's own tokens (searched after ``start``) as instruction rows."""
        q = list(self.tokenizer(question, add_special_tokens=False).input_ids)
        mask = torch.zeros(len(ids), dtype=torch.bool)
        for i in range(start, len(ids) - len(q) + 1):
            if list(ids[i : i + len(q)]) == q:
                mask[i : i + len(q)] = True
                return mask
        mask[start:] = True  # fall back to everything after the image
        return mask

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    @property
    def suppress_token_ids(self) -> list[int]:
        return list(getattr(self.model.generation_config, "suppress_tokens", None) or [])

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(
            [i for i in ids if i not in self.eos_token_ids], skip_special_tokens=True
        ).strip()


def grid_side(n: int) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} vision tokens do not form a square grid")
    return side


def pyramid_spec_for(adapter: ModelAdapter) -> PyramidSpec:
    """Tiles at the encoder's input size, a coarse level of about 3×3 tiles, as the paper's DIP."""
    t = adapter.tile_size
    return PyramidSpec(tile_size=t, coarse_long_side=3 * t, thumbnail_size=t)
