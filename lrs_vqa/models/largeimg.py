"""The released LRS-VQA models (``ll-13/llava-largeimg-Qwen2-7B`` / ``-Vicuna-7B``, original LLaVA layout)
as an engine adapter, with their trained Region Focus Module as ``adapter.region_focus_module``.

Vision path (reference card §3): each tile (``slice_block_size`` px, 336) goes through the CLIP tower;
``hidden_states[mm_vision_select_layer]`` without CLS goes through the MLP projector. The global thumbnail
(``level == -1``) keeps its whole 24×24 grid (576 tokens, padding included, no newline markers); tiles of a
pyramid level are then pooled 2×2 (``mm_spatial_pool_mode``, bilinear: 12×12 = 144 tokens per tile), the
tokens that cover only padding are dropped, and a learned ``image_newline`` ends every token row of the level.

Prompt (card §3, §5, §8.2): ``[prefix][global tokens][embed(':')][local tokens + newlines][suffix]`` with
contiguous 1-D positions; the chat template is the one the released evaluation used — ChatML
(``qwen_1_5``) for Qwen2, ``vicuna_v1`` for Vicuna — tokenised around the image like LLaVA does (the
prefix with the tokenizer's BOS, the suffix without).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lrs_vqa.engine.decoder import DecoderLoop, PrefillInputs
from lrs_vqa.engine.flops import LayerShape
from lrs_vqa.engine.hooks import VisionContext, VisionHook, apply_selection, encoder_drop_layers
from lrs_vqa.engine.tokens import TokenMeta, VisionSegment
from lrs_vqa.models.base import EncodedPrompt, ModelAdapter, to_pil, token_boxes
from lrs_vqa.models.dtypes import torch_dtype
from lrs_vqa.models.errors import UnsupportedModelError
from lrs_vqa.models.largeimg_checkpoint import (
    LargeImgModel,
    is_released_layout,
    load_released,
    released_config,
)
from lrs_vqa.models.random_weights import is_random_tiny_model
from pyramid.dip import THUMBNAIL, Tile
from pyramid.levels import PixelBox

# (text before the image, text after it) of the released evaluation's conversation templates (card §8.2).
QWEN_CHATML = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
    "\n{question}\n<|im_end|>\n<|im_start|>assistant\n",
)
VICUNA_V1 = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: ",
    "\n{question}\n ASSISTANT:",
)
TEMPLATES = {"qwen2": QWEN_CHATML, "llama": VICUNA_V1}
SEPARATOR_TOKEN = ":"  # between the global and the local tokens (card §3)
IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id in ``chat_ids``
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class LargeImgAdapter(ModelAdapter):
    """Adapter over :class:`~lrs_vqa.models.largeimg_checkpoint.LargeImgModel`; ``processor`` is the
    checkpoint's tokenizer (the released code prepares tiles itself, there is no multimodal processor)."""

    model_types: ClassVar[tuple[str, ...]] = ("llava_qwen", "llava_llama")
    family: ClassVar[str] = "llava_largeimg"

    def __init__(self, model: LargeImgModel, processor: object, *, source: str, random_weights: bool) -> None:
        # Not ModelAdapter.__init__: the LLM is a plain causal LM here, not a stock LLaVA class.
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor
        self.source = source
        self.random_weights = random_weights
        self.text_model = model.llm.model
        self.decoder = DecoderLoop(self.text_model, model.llm.lm_head, mrope=False)
        self.settings = model.settings
        vc = model.vision_tower.config
        self.image_size: int = vc.image_size
        self.grid: int = vc.image_size // vc.patch_size
        stride = self.settings.pool_stride
        if self.settings.pool_mode == "bilinear":
            self.pooled_grid = math.ceil(self.grid / stride)
        else:
            self.pooled_grid = self.grid // stride
        if self.pooled_grid < 1:
            raise UnsupportedModelError(f"a {self.grid}x{self.grid} patch grid cannot be pooled by {stride}")
        self.mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
        self.fill = tuple(round(m * 255) for m in CLIP_MEAN)  # zero in normalised space (card §2.1)
        self.template = TEMPLATES[self.settings.llm_type]
        sep = self.tokenizer.convert_tokens_to_ids(SEPARATOR_TOKEN)  # type: ignore[attr-defined]
        if sep is None:
            raise UnsupportedModelError(f"the tokenizer has no {SEPARATOR_TOKEN!r} token")
        self.separator_id = int(sep)
        self._set_eos()
        # The trained RFM that came with the weights; the ``rfm`` region scorer (rfm.module) runs it.
        self.region_focus_module = model.rfm

    # -- loading --------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls, source: str | Path, *, device: str = "cpu", dtype: str | torch.dtype = torch.float32
    ) -> LargeImgAdapter:
        """Load a released checkpoint (hub id or local folder); see
        :func:`lrs_vqa.models.largeimg_checkpoint.load_released`."""
        model, tokenizer = load_released(source, device=device, dtype=torch_dtype(dtype))
        random_weights = Path(source).is_dir() and is_random_tiny_model(source)
        return cls(model, tokenizer, source=str(source), random_weights=random_weights)

    @staticmethod
    def claims(source: str | Path) -> bool:
        """True if ``source``'s config.json is in the original LLaVA layout (``mm_*`` fields)."""
        config = released_config(source)
        return config is not None and is_released_layout(config)

    def _set_eos(self) -> None:
        gen = self.model.generation_config
        eos = gen.eos_token_id
        ids = [eos] if isinstance(eos, int) else list(eos or [])
        extra = [self.tokenizer.eos_token_id]  # type: ignore[attr-defined]
        if self.settings.llm_type == "qwen2":  # ChatML turns end with <|im_end|>
            extra.append(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))  # type: ignore[attr-defined]
        unk = getattr(self.tokenizer, "unk_token_id", None)
        for i in extra:
            if isinstance(i, int) and i != unk and i not in ids:
                ids.append(i)
        gen.eos_token_id = ids

    # -- vision ---------------------------------------------------------------------------------------------
    @property
    def tile_size(self) -> int:
        return self.settings.block_size

    @property
    def tokens_per_tile(self) -> int:
        """Tokens per local (pooled) tile; the thumbnail has ``grid²``."""
        return self.pooled_grid**2

    def vision_attention_modules(self) -> list[torch.nn.Module]:
        tower = self.model.vision_tower
        encoder = getattr(tower, "vision_model", tower).encoder
        return [layer.self_attn for layer in encoder.layers]

    def vision_shape(self) -> tuple[LayerShape, int]:
        vc = self.model.vision_tower.config
        shape = LayerShape(vc.hidden_size, vc.intermediate_size, vc.num_hidden_layers, gated_mlp=False)
        return shape, self.grid**2 + 1

    def _pixels(self, tiles: Sequence[Tile]) -> torch.Tensor:
        batch = []
        for tile in tiles:
            img = to_pil(tile, self.tile_size, self.fill)
            if img.size != (self.image_size, self.image_size):
                img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
            arr = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 255.0
            batch.append((arr - self.mean) / self.std)
        return torch.stack(batch).to(self.device, self.dtype)

    @torch.inference_mode()
    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(tiles, grid², d_vision): the selected hidden state without CLS."""
        out = self.model.vision_tower(pixels, output_hidden_states=True)
        return out.hidden_states[self.settings.select_layer][:, 1:]

    @torch.inference_mode()
    def _pool(self, embeds: torch.Tensor) -> torch.Tensor:
        """(tiles, grid², d) → (tiles, pooled², d) with the configured 2-D pooling."""
        n, g, d = embeds.shape[0], self.grid, embeds.shape[-1]
        x = embeds.view(n, g, g, d).permute(0, 3, 1, 2)
        s, p = self.settings.pool_stride, self.pooled_grid
        if self.settings.pool_mode == "bilinear":
            x = F.interpolate(x, size=(p, p), mode="bilinear", align_corners=False)
        elif self.settings.pool_mode == "average":
            x = F.avg_pool2d(x, s)
        else:
            x = F.max_pool2d(x, s)
        return x.permute(0, 2, 3, 1).reshape(n, p * p, d)

    def _flatten(
        self, tiles: Sequence[Tile], feats: torch.Tensor, side: int, level: int, drop_padding: bool
    ) -> tuple[torch.Tensor, TokenMeta, VisionContext]:
        """Tokens of a ``side × side`` grid per tile, in raster order over the level's whole token grid
        (token row ``i`` of tile row ``r`` is row ``r·side + i``), optionally without padding-only ones."""
        per_tile = [token_boxes(tile, side, side, self.tile_size) for tile in tiles]
        order = sorted(
            (tile.key.row * side + q // side, tile.key.col, q % side, t, q)
            for t, tile in enumerate(tiles)
            for q in range(side * side)
            if per_tile[t][1][q] or not drop_padding
        )
        tile_idx = torch.tensor([o[3] for o in order])
        tok_idx = torch.tensor([o[4] for o in order])
        boxes = torch.stack(
            [per_tile[t][0][q] for t, q in zip(tile_idx.tolist(), tok_idx.tolist(), strict=True)]
        )
        meta = TokenMeta(
            tile_idx, torch.full_like(tile_idx, level), boxes, torch.zeros_like(tile_idx, dtype=torch.bool)
        )
        flat = feats[tile_idx.to(feats.device), tok_idx.to(feats.device)]
        return flat, meta, VisionContext(level, tok_idx, tile_idx, (side, side))

    def encode_tiles(
        self, tiles: Sequence[Tile], *, newlines: bool, level: int, hooks: Sequence[VisionHook] = ()
    ) -> VisionSegment:
        """``level == -1`` (the thumbnail): 576 unpooled tokens; any other level: pooled, unpadded tiles."""
        if not tiles:
            raise ValueError("no tiles to encode")
        if encoder_drop_layers(hooks, len(self.vision_attention_modules())):
            raise UnsupportedModelError(
                "in-encoder token drops are not supported for llava_largeimg; use the after-projector or "
                "LLM hook points"
            )
        with self.vision_taps(hooks) as taps:
            feats = self._features(self._pixels(tiles))
        thumbnail = level == THUMBNAIL
        projector = self.model.mm_projector
        if thumbnail:  # the released global view: all 576 tokens, padding included (card §3)
            flat, meta, ctx = self._flatten(tiles, feats, self.grid, level, drop_padding=False)
            ctx.taps = taps
            for hook in hooks:
                flat, meta, ctx = apply_selection(hook.after_encoder(flat, meta, ctx), flat, meta, ctx)
            with torch.inference_mode():
                embeds = projector(flat)
            side = self.grid
        else:
            if hooks:  # encoder features exist only before the projector and the pool: selecting is refused
                flat, meta0, ctx0 = self._flatten(tiles, feats, self.grid, level, drop_padding=True)
                ctx0.taps = taps
                if any(hook.after_encoder(flat, meta0, ctx0) is not None for hook in hooks):
                    raise UnsupportedModelError(
                        "llava_largeimg pools local tiles 2x2 after the projector; select tokens at the "
                        "after-projector hook point instead of after the encoder"
                    )
            with torch.inference_mode():
                pooled = self._pool(projector(feats))
            side = self.pooled_grid
            embeds, meta, ctx = self._flatten(tiles, pooled, side, level, drop_padding=True)
            ctx.taps = taps
        for hook in hooks:
            embeds, meta, ctx = apply_selection(hook.after_projector(embeds, meta, ctx), embeds, meta, ctx)
        if newlines:
            embeds, meta = self._with_newlines(embeds, meta, ctx, tiles, side)
        return VisionSegment(embeds, meta, images_encoded=len(tiles), tokens_encoded=len(tiles) * side * side)

    def _with_newlines(
        self, embeds: torch.Tensor, meta: TokenMeta, ctx: VisionContext, tiles: Sequence[Tile], side: int
    ) -> tuple[torch.Tensor, TokenMeta]:
        """Append ``image_newline`` after every token row of the level that still has tokens."""
        tile_rows = torch.tensor([tiles[t].key.row for t in ctx.tile_index.tolist()], dtype=torch.long)
        row = tile_rows * side + ctx.token_index // side
        last = torch.cat([row[1:] != row[:-1], torch.tensor([True])])
        newline = self.model.image_newline.view(1, -1).to(embeds)
        marker = TokenMeta(
            torch.tensor([-1]), meta.level[:1].clone(), torch.full((1, 4), float("nan")), torch.tensor([True])
        )
        parts, metas, start = [], [], 0
        for end in torch.nonzero(last).flatten().tolist():
            parts += [embeds[start : end + 1], newline]
            metas += [meta.select(torch.arange(start, end + 1)), marker]
            start = end + 1
        return torch.cat(parts), TokenMeta.cat(metas)

    # -- prompt ---------------------------------------------------------------------------------------------
    def chat_text(self, question: str) -> str:
        before, after = self.template
        return before + "<image>" + after.format(question=question)

    def _text_ids(self, question: str) -> tuple[list[int], list[int]]:
        before, after = self.template
        tok = self.tokenizer
        pre = list(tok(before).input_ids)  # type: ignore[operator]
        post = list(tok(after.format(question=question), add_special_tokens=False).input_ids)  # type: ignore[operator]
        return pre, post

    def chat_ids(self, question: str) -> list[int]:
        pre, post = self._text_ids(question)
        return [*pre, IMAGE_TOKEN_INDEX, *post]

    @staticmethod
    def _is_thumbnail(segment: VisionSegment) -> bool:
        level = segment.meta.level
        return level.numel() > 0 and bool((level == THUMBNAIL).all())

    def build_prompt(self, question: str, segments: Sequence[VisionSegment]) -> EncodedPrompt:
        if not segments:
            raise ValueError("no vision segments to build a prompt from")
        n_global = 0
        while n_global < len(segments) and self._is_thumbnail(segments[n_global]):
            n_global += 1
        pre, post = self._text_ids(question)
        blocks: list[list[int] | torch.Tensor] = [pre, *(s.embeds for s in segments[:n_global])]
        if 0 < n_global < len(segments):
            blocks.append([self.separator_id])
        blocks += [*(s.embeds for s in segments[n_global:]), post]
        embed = self.text_model.embed_tokens
        pieces, ids, vision = [], [], []
        with torch.inference_mode():
            for block in blocks:
                if isinstance(block, torch.Tensor):
                    pieces.append(block.to(self.device, embed.weight.dtype))
                    ids += [IMAGE_TOKEN_INDEX] * block.shape[0]
                    vision += [True] * block.shape[0]
                elif block:
                    pieces.append(embed(torch.tensor(block, device=self.device)))
                    ids += block
                    vision += [False] * len(block)
            embeds = torch.cat(pieces)[None].clone()
        is_vision = torch.tensor(vision, dtype=torch.bool)
        last_vision = int(torch.nonzero(is_vision).flatten()[-1]) + 1
        inputs = PrefillInputs(
            embeds=embeds,
            position_ids=torch.arange(len(ids), device=self.device)[None],
            vision=is_vision,
            instruction=self.instruction_mask(ids, question, last_vision),
            next_position=len(ids),
        )
        meta = TokenMeta.cat([s.meta for s in segments])
        n_vision = int(is_vision.sum())
        return EncodedPrompt(
            inputs,
            meta,
            text_tokens=len(ids) - n_vision,
            images_encoded=sum(s.images_encoded for s in segments),
        )

    def processor_inputs(self, image: Image.Image, question: str) -> dict[str, torch.Tensor]:
        raise UnsupportedModelError(self._no_stock_path())

    def stock_prompt(
        self, image: Image.Image, question: str, image_box: PixelBox | None = None
    ) -> tuple[EncodedPrompt, dict[str, torch.Tensor]]:
        raise UnsupportedModelError(self._no_stock_path())

    def _no_stock_path(self) -> str:
        return (
            f"{self.source} (llava_largeimg) has no stock processor path: the released code tiles the image "
            "itself; use the global, tiles-all or c2f strategy"
        )
