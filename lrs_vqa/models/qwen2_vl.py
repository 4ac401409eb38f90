"""Qwen2-VL and Qwen2.5-VL: dynamic resolution (14 px patches merged 2×2 into 28 px tokens) and M-RoPE.

Each tile is its own image (``<|vision_start|> pads <|vision_end|>``). The 3-D positions are computed by the
model's own ``get_rope_index`` on the full sequence, then sliced to the kept tokens (padding-only tokens of
edge tiles are dropped after that, like any pruning)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

import torch
from PIL import Image

from lrs_vqa.engine.decoder import PrefillInputs
from lrs_vqa.engine.flops import LayerShape
from lrs_vqa.engine.hooks import VisionContext, VisionHook, apply_selection
from lrs_vqa.engine.tokens import TokenMeta, VisionSegment
from lrs_vqa.models.base import EncodedPrompt, ModelAdapter, to_pil, token_boxes
from lrs_vqa.models.errors import UnsupportedModelError
from pyramid.dip import Tile
from pyramid.levels import PixelBox


class Qwen2VLAdapter(ModelAdapter):
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_vl", "qwen2_5_vl")
    family: ClassVar[str] = "qwen2_vl"
    mrope: ClassVar[bool] = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        cfg = self.model.config
        self.image_token_id: int = cfg.image_token_id
        self.vision_start_id: int = cfg.vision_start_token_id
        self.vision_end_id: int = cfg.vision_end_token_id
        self.merge: int = cfg.vision_config.spatial_merge_size
        self.patch: int = cfg.vision_config.patch_size
        ip = self.processor.image_processor  # type: ignore[attr-defined]
        self.fill = tuple(round(m * 255) for m in ip.image_mean)
        self._tile_size = 336  # 12×12 tokens of 28 px, the LLaVA tile size; fits Qwen's native grid

    @property
    def tile_size(self) -> int:
        return self._tile_size

    def _image_inputs(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        out = self.processor.image_processor(images=list(images), return_tensors="pt")  # type: ignore[attr-defined]
        return {
            "pixel_values": out["pixel_values"].to(self.device, self.dtype),
            "image_grid_thw": out["image_grid_thw"].to(self.device),
        }

    @torch.inference_mode()
    def _features(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        feats = self.model.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"]
        ).pooler_output
        return list(feats)

    def vision_attention_modules(self) -> list[torch.nn.Module]:
        return [block.attn for block in self.model.model.visual.blocks]

    def encode_tiles(
        self, tiles: Sequence[Tile], *, newlines: bool, level: int, hooks: Sequence[VisionHook] = ()
    ) -> VisionSegment:
        if not tiles:
            raise ValueError("no tiles to encode")
        if any(getattr(h, "encoder_drop_layers", lambda: ())() for h in hooks):
            # Its blocks run on flattened patches in 2x2 merge units (windowed in 2.5): not supported yet.
            raise UnsupportedModelError(
                "in-encoder token drops are supported for the LLaVA family (CLIP/SigLIP towers); for "
                "Qwen-VL use the after-encoder (patch merger) or LLM hook points"
            )
        inputs = self._image_inputs([to_pil(t, self.tile_size, self.fill) for t in tiles])
        with self.vision_taps(hooks) as taps:
            feats = self._features(inputs)
        full = torch.cat(feats)
        grids = [tuple(int(v) for v in g) for g in inputs["image_grid_thw"].tolist()]
        tile_ids, tok_ids, boxes, valid = [], [], [], []
        for t_idx, (tile, (_t, gh, gw)) in enumerate(zip(tiles, grids, strict=True)):
            b, v = token_boxes(tile, gh // self.merge, gw // self.merge, self.tile_size)
            tile_ids.append(torch.full((b.shape[0],), t_idx))
            tok_ids.append(torch.arange(b.shape[0]))
            boxes.append(b)
            valid.append(v)
        tile_t, tok_t, valid_t = torch.cat(tile_ids), torch.cat(tok_ids), torch.cat(valid)
        meta_full = TokenMeta(
            tile_t, torch.full_like(tile_t, level), torch.cat(boxes), torch.zeros_like(valid_t)
        )
        offsets = torch.tensor([0] + [f.shape[0] for f in feats]).cumsum(0)
        # Hooks see the real (non-padding) tokens; the merger already projected them into the LLM space.
        idx = torch.nonzero(valid_t).flatten()
        _t, gh, gw = grids[0]
        ctx = VisionContext(level, tok_t[idx], tile_t[idx], (gh // self.merge, gw // self.merge), taps)
        flat, meta = full[idx.to(full.device)], meta_full.select(idx)
        for hook in hooks:
            flat, meta, ctx = apply_selection(hook.after_encoder(flat, meta, ctx), flat, meta, ctx)
        for hook in hooks:
            flat, meta, ctx = apply_selection(hook.after_projector(flat, meta, ctx), flat, meta, ctx)
        survivors = offsets[ctx.tile_index] + ctx.token_index
        keep = torch.zeros_like(valid_t)
        keep[survivors] = True
        full = full.clone()
        full[survivors.to(full.device)] = flat  # merged tokens replace their representatives
        return VisionSegment(
            full,
            meta_full,
            images_encoded=len(tiles),
            tokens_encoded=int(full.shape[0]),
            qwen_grids=grids,
            qwen_keep=keep,
        )

    def _assemble(
        self,
        ids: list[int],
        question: str,
        vision: torch.Tensor,
        meta: TokenMeta,
        grids: list[tuple[int, int, int]],
        keep: torch.Tensor,
    ) -> EncodedPrompt:
        p = ids.index(self.image_token_id)
        if ids[p - 1] != self.vision_start_id or ids[p + 1] != self.vision_end_id:
            raise ValueError("chat template does not wrap the image in vision start/end tokens")
        full = ids[: p - 1]
        for _t, gh, gw in grids:
            full += (
                [self.vision_start_id]
                + [self.image_token_id] * (gh * gw // self.merge**2)
                + [self.vision_end_id]
            )
        full += ids[p + 2 :]
        input_ids = torch.tensor([full], device=self.device)
        is_vision = input_ids[0] == self.image_token_id
        grid_thw = torch.tensor(grids, device=self.device)
        with torch.inference_mode():
            positions, _ = self.model.model.get_rope_index(
                input_ids, mm_token_type_ids=is_vision.int()[None], image_grid_thw=grid_thw
            )
            embeds = self.text_model.embed_tokens(input_ids).clone()
            embeds[0, is_vision] = vision.to(embeds)
        next_position = int(positions.max()) + 1
        rows = torch.ones(len(full), dtype=torch.bool)
        rows[is_vision.cpu()] = keep  # drop padding-only tokens after positions were computed
        index = torch.nonzero(rows).flatten()
        instruction = self.instruction_mask(full, question, int(torch.nonzero(is_vision).max()) + 1)
        inputs = PrefillInputs(
            embeds=embeds[:, index.to(self.device)],
            position_ids=positions[..., index.to(self.device)],
            vision=is_vision.cpu()[index],
            instruction=instruction[index],
            next_position=next_position,
        )
        return EncodedPrompt(
            inputs,
            meta.select(torch.nonzero(keep).flatten()),
            text_tokens=int((~inputs.vision).sum()),
            images_encoded=len(grids),
        )

    def present_rows(self, segment: VisionSegment) -> torch.Tensor:
        keep = segment.qwen_keep
        return torch.arange(len(segment.meta)) if keep is None else torch.nonzero(keep).flatten()

    def prune_segment(self, segment: VisionSegment, rows: torch.Tensor) -> VisionSegment:
        # M-RoPE positions come from the whole grid: keep every row's embedding, mark the dropped ones.
        keep = torch.zeros(len(segment.meta), dtype=torch.bool)
        keep[rows] = True
        if segment.qwen_keep is not None:
            keep &= segment.qwen_keep
        if not bool(keep.any()):
            raise ValueError("pruning would leave no vision token")
        return replace(segment, qwen_keep=keep)

    def build_prompt(self, question: str, segments: Sequence[VisionSegment]) -> EncodedPrompt:
        grids = [g for s in segments for g in (s.qwen_grids or [])]
        keep = torch.cat(
            [
                s.qwen_keep if s.qwen_keep is not None else torch.ones(len(s.meta), dtype=torch.bool)
                for s in segments
            ]
        )
        return self._assemble(
            self.chat_ids(question),
            question,
            torch.cat([s.embeds for s in segments]),
            TokenMeta.cat([s.meta for s in segments]),
            grids,
            keep,
        )

    def stock_prompt(
        self, image: Image.Image, question: str, image_box: PixelBox | None = None
    ) -> tuple[EncodedPrompt, dict[str, torch.Tensor]]:
        inputs = self.processor_inputs(image, question)
        feats = self._features(inputs)
        grids = [tuple(int(v) for v in g) for g in inputs["image_grid_thw"].tolist()]
        ids = inputs["input_ids"][0].tolist()
        p = ids.index(self.image_token_id)
        n = sum(f.shape[0] for f in feats)
        ids = ids[:p] + ids[p + n - 1 :]
        box = image_box or PixelBox(0, 0, image.width, image.height)
        meta = TokenMeta.whole_image(n, box)
        prompt = self._assemble(ids, question, torch.cat(feats), meta, grids, torch.ones(n, dtype=torch.bool))
        return prompt, inputs

    def vision_shape(self) -> tuple[LayerShape, int]:
        vc = self.model.config.vision_config
        hidden = getattr(vc, "embed_dim", None) or vc.hidden_size
        ffn = getattr(vc, "intermediate_size", None) or int(hidden * getattr(vc, "mlp_ratio", 4))
        gated = vc.model_type == "qwen2_5_vl"
        patches = (self.tile_size // self.patch) ** 2
        return LayerShape(hidden, ffn, vc.depth, gated_mlp=gated), patches

    @property
    def tokens_per_tile(self) -> int:
        unit = self.patch * self.merge
        side = self.tile_size
        max_pixels = self.processor.image_processor.size.get("longest_edge") or side * side  # type: ignore[attr-defined]
        if side * side > max_pixels:  # the processor shrinks the tile to fit its pixel budget
            side = int((max_pixels**0.5) // unit * unit)
        return (side // unit) ** 2
