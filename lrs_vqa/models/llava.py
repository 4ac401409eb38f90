"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision: a CLIP/SigLIP tower, an MLP projector and (NeXT/OneVision)
a learned ``image_newline`` row marker, over a LLaMA or Qwen2 decoder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from lrs_vqa.engine.decoder import PrefillInputs
from lrs_vqa.engine.flops import LayerShape
from lrs_vqa.engine.hooks import (
    VisionContext,
    VisionHook,
    apply_encoder_selection,
    apply_selection,
    encoder_drop_layers,
)
from lrs_vqa.engine.tokens import TokenMeta, VisionSegment
from lrs_vqa.models.base import EncodedPrompt, ModelAdapter, grid_side, to_pil, token_boxes
from pyramid.dip import Tile
from pyramid.levels import PixelBox


class LlavaAdapter(ModelAdapter):
    model_types: ClassVar[tuple[str, ...]] = ("llava", "llava_next", "llava_onevision")
    family: ClassVar[str] = "llava"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        cfg = self.model.config
        self.image_token_id: int = cfg.image_token_id
        self.feature_layer = cfg.vision_feature_layer
        self.select_strategy: str = cfg.vision_feature_select_strategy
        self.image_size: int = cfg.vision_config.image_size
        ip = self.processor.image_processor  # type: ignore[attr-defined]
        self.mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(ip.image_std, dtype=torch.float32).view(3, 1, 1)
        self.fill = tuple(round(m * 255) for m in ip.image_mean)
        self.newline_embed: torch.nn.Parameter | None = getattr(self.model.model, "image_newline", None)

    @property
    def tile_size(self) -> int:
        return self.image_size

    def _pixels(self, tiles: Sequence[Tile]) -> torch.Tensor:
        batch = []
        for tile in tiles:
            img = to_pil(tile, self.tile_size, self.fill)
            if img.size != (self.image_size, self.image_size):
                img = img.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            arr = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 255.0
            batch.append((arr - self.mean) / self.std)
        return torch.stack(batch).to(self.device, self.dtype)

    def vision_attention_modules(self) -> list[torch.nn.Module]:
        tower = self.model.model.vision_tower
        encoder = tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder
        return [layer.self_attn for layer in encoder.layers]

    @torch.inference_mode()
    def _encoder_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tower → selected layer(s) → (drop CLS): (N, tokens, d_vision). The stock modules, in the order
        ``get_image_features`` uses them, for one square input per tile."""
        out = self.model.model.vision_tower(pixel_values, output_hidden_states=True)
        layers = self.feature_layer if isinstance(self.feature_layer, list) else [self.feature_layer]
        feats = torch.cat([out.hidden_states[i] for i in layers], dim=-1)
        return feats[:, 1:] if self.select_strategy == "default" else feats

    def _tower_parts(self) -> tuple[torch.nn.Module, torch.nn.Module | None, list[torch.nn.Module]]:
        tower = self.model.model.vision_tower
        vm = tower.vision_model if hasattr(tower, "vision_model") else tower
        return vm.embeddings, getattr(vm, "pre_layrnorm", None), list(vm.encoder.layers)

    @torch.inference_mode()
    def _encoder_features_dropping(
        self, pixel_values: torch.Tensor, wanted: dict[int, list[VisionHook]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower's own modules layer by layer, letting hooks drop/merge patch tokens before the layers
        they named. Returns (tiles, k, d) features of the selected layer and (tiles, k) grid indices."""
        embeddings, pre_norm, layers = self._tower_parts()
        if isinstance(self.feature_layer, list):
            raise ValueError("in-encoder token drops need a single vision_feature_layer, not a list")
        depth = len(layers) + 1 + self.feature_layer if self.feature_layer < 0 else self.feature_layer
        if any(k >= depth for k in wanted):
            raise ValueError(f"in-encoder drops must come before the feature layer ({depth} layers run)")
        hidden = embeddings(pixel_values)
        if pre_norm is not None:
            hidden = pre_norm(hidden)
        cls = self.model.config.vision_config.model_type == "clip_vision_model"
        n = hidden.shape[1] - (1 if cls else 0)
        grid_index = torch.arange(n).expand(hidden.shape[0], n).clone()
        for k in range(depth):
            for hook in wanted.get(k, ()):
                selection = hook.inside_encoder(k, hidden, grid_index)  # type: ignore[attr-defined]
                hidden, grid_index = apply_encoder_selection(selection, hidden, grid_index, cls)
            out = layers[k](hidden, attention_mask=None)
            hidden = out[0] if isinstance(out, tuple) else out
        feats = hidden[:, 1:] if cls and self.select_strategy == "default" else hidden
        if cls and self.select_strategy != "default":  # "full" keeps CLS: it has no grid position
            raise ValueError("in-encoder token drops need the 'default' feature strategy on CLIP towers")
        return feats, grid_index

    def encode_tiles(
        self, tiles: Sequence[Tile], *, newlines: bool, level: int, hooks: Sequence[VisionHook] = ()
    ) -> VisionSegment:
        if not tiles:
            raise ValueError("no tiles to encode")
        wanted = encoder_drop_layers(hooks, len(self._tower_parts()[2]))
        with self.vision_taps(hooks) as taps:
            if wanted:
                feats, grid_index = self._encoder_features_dropping(self._pixels(tiles), wanted)
            else:
                feats = self._encoder_features(self._pixels(tiles))
                grid_index = torch.arange(feats.shape[1]).expand(feats.shape[0], -1)
        vc = self.model.config.vision_config
        g = vc.image_size // vc.patch_size if wanted else grid_side(feats.shape[1])
        # Raster order over the level's token grid: token row i of tile row r is global row r*g + i;
        # tokens that cover only padding are dropped (the reference's bottom/right unpadding).
        per_tile = [token_boxes(tile, g, g, self.tile_size) for tile in tiles]
        order = sorted(
            (tile.key.row * g + q // g, tile.key.col, t_idx, q, pos)
            for t_idx, tile in enumerate(tiles)
            for pos, q in enumerate(grid_index[t_idx].tolist())
            if per_tile[t_idx][1][q]
        )
        tile_idx = torch.tensor([o[2] for o in order])
        tok_idx = torch.tensor([o[3] for o in order])
        pos_idx = torch.tensor([o[4] for o in order])
        boxes = torch.stack(
            [per_tile[t][0][k] for t, k in zip(tile_idx.tolist(), tok_idx.tolist(), strict=True)]
        )
        meta = TokenMeta(
            tile_idx, torch.full_like(tile_idx, level), boxes, torch.zeros_like(tile_idx, dtype=torch.bool)
        )
        ctx = VisionContext(level, tok_idx, tile_idx, (g, g), taps)
        flat = feats[tile_idx.to(feats.device), pos_idx.to(feats.device)]
        for hook in hooks:
            flat, meta, ctx = apply_selection(hook.after_encoder(flat, meta, ctx), flat, meta, ctx)
        with torch.inference_mode():
            embeds = self.model.model.multi_modal_projector(flat)
        for hook in hooks:
            embeds, meta, ctx = apply_selection(hook.after_projector(embeds, meta, ctx), embeds, meta, ctx)
        if newlines and self.newline_embed is not None:
            embeds, meta = self._with_newlines(embeds, meta, ctx, tiles, g)
        return VisionSegment(
            embeds, meta, images_encoded=len(tiles), tokens_encoded=int(feats.shape[0] * feats.shape[1])
        )

    def _with_newlines(
        self, embeds: torch.Tensor, meta: TokenMeta, ctx: VisionContext, tiles: Sequence[Tile], g: int
    ) -> tuple[torch.Tensor, TokenMeta]:
        """Insert ``image_newline`` after each global token row that still has tokens."""
        assert self.newline_embed is not None
        tile_rows = torch.tensor([tiles[t].key.row for t in ctx.tile_index.tolist()])
        row_key = tile_rows * g + ctx.token_index // g
        ends = torch.nonzero(torch.cat([row_key[1:] != row_key[:-1], torch.tensor([True])])).flatten()
        newline = self.newline_embed.view(1, -1).to(embeds)
        parts, metas, start = [], [], 0
        nl_meta = TokenMeta(
            torch.tensor([-1]),
            meta.level[:1].clone(),
            torch.full((1, 4), float("nan")),
            torch.ones(1, dtype=torch.bool),
        )
        for end in ends.tolist():
            parts += [embeds[start : end + 1], newline]
            metas += [meta.select(torch.arange(start, end + 1)), nl_meta]
            start = end + 1
        return torch.cat(parts), TokenMeta.cat(metas)

    def _assemble(
        self, ids: list[int], question: str, vision: torch.Tensor, meta: TokenMeta, images: int
    ) -> EncodedPrompt:
        p = ids.index(self.image_token_id)
        n = vision.shape[0]
        full = ids[:p] + [self.image_token_id] * n + ids[p + 1 :]
        input_ids = torch.tensor([full], device=self.device)
        with torch.inference_mode():
            embeds = self.text_model.embed_tokens(input_ids).clone()
            embeds[0, p : p + n] = vision.to(embeds)
        is_vision = torch.zeros(len(full), dtype=torch.bool)
        is_vision[p : p + n] = True
        inputs = PrefillInputs(
            embeds=embeds,
            position_ids=torch.arange(len(full), device=self.device)[None],
            vision=is_vision,
            instruction=self.instruction_mask(full, question, p + n),
            next_position=len(full),
        )
        return EncodedPrompt(inputs, meta, text_tokens=len(full) - n, images_encoded=images)

    def build_prompt(self, question: str, segments: Sequence[VisionSegment]) -> EncodedPrompt:
        vision = torch.cat([s.embeds for s in segments])
        meta = TokenMeta.cat([s.meta for s in segments])
        return self._assemble(
            self.chat_ids(question), question, vision, meta, sum(s.images_encoded for s in segments)
        )

    def stock_prompt(
        self, image: Image.Image, question: str, image_box: PixelBox | None = None
    ) -> tuple[EncodedPrompt, dict[str, torch.Tensor]]:
        inputs = self.processor_inputs(image, question)
        kwargs = {k: inputs[k] for k in ("pixel_values", "image_sizes") if k in inputs}
        with torch.inference_mode():
            feats = self.model.model.get_image_features(**kwargs).pooler_output
        vision = (
            torch.cat(list(feats)) if isinstance(feats, list | tuple) else feats.reshape(-1, feats.shape[-1])
        )
        ids = inputs["input_ids"][0].tolist()
        p = ids.index(self.image_token_id)
        n = vision.shape[0]
        # The processor already expanded the placeholder: collapse it back to one, then re-expand.
        ids = ids[:p] + ids[p + n - 1 :] if n > 1 else ids
        box = image_box or PixelBox(0, 0, image.width, image.height)
        meta = TokenMeta.whole_image(n, box)
        images = int(inputs["pixel_values"].shape[1]) if inputs["pixel_values"].ndim == 5 else 1
        prompt = self._assemble(ids, question, vision, meta, images)
        # Vision rows include image_newline markers and miss the unpadded-away tokens: count the encoder's.
        return replace(prompt, tokens_encoded=images * self.tokens_per_tile), inputs

    def vision_shape(self) -> tuple[LayerShape, int]:
        vc = self.model.config.vision_config
        patches = (vc.image_size // vc.patch_size) ** 2 + (1 if vc.model_type == "clip_vision_model" else 0)
        return LayerShape(
            vc.hidden_size, vc.intermediate_size, vc.num_hidden_layers, gated_mlp=False
        ), patches

    @property
    def tokens_per_tile(self) -> int:
        vc = self.model.config.vision_config
        return (vc.image_size // vc.patch_size) ** 2
