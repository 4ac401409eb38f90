"""The world model's architecture: a stock LLaVA-OneVision (SigLIP tower, 2-layer MLP projector,
``image_newline``, Qwen2 decoder) at small sizes, with the word-level tokenizer and ChatML template of the
project's tiny models — so it saves and loads with ``AutoProcessor`` + ``AutoModelForImageTextToText`` like
any real checkpoint, and every engine path (taps, hooks, pruners, c2f) runs on it unchanged.

Tiles are ``TILE`` px with ``PATCH`` px patches (8 × 8 = 64 tokens a tile): world objects are tens of pixels
at native resolution, so the asked object spans 1-4 patches in a native tile and vanishes in coarse views.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from lrs_vqa.tiny import _build_tokenizer, _family_specials, generation_config, onevision_model_and_processor

MARKER_KEY = "lrs_vqa_world_model"  # config.json flag: trained on synthetic world scenes only


@dataclass(frozen=True)
class WorldModelConfig:
    tile: int = 112
    patch: int = 14
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 192
    text_layers: int = 4
    text_heads: int = 6
    text_kv_heads: int = 2
    text_intermediate: int = 512
    max_positions: int = 32768

    @property
    def grid(self) -> int:
        return self.tile // self.patch


def build_world_model(cfg: WorldModelConfig, seed: int = 0) -> tuple[torch.nn.Module, object]:
    """A freshly initialised model and its processor (random weights until trained)."""
    from transformers import Qwen2Config, SiglipVisionConfig

    tok = _build_tokenizer("llava_onevision")
    spec = _family_specials("llava_onevision")
    vision = SiglipVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=3 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.tile,
        patch_size=cfg.patch,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads,
        max_position_embeddings=cfg.max_positions,
        bos_token_id=tok.convert_tokens_to_ids(spec["bos"]),
        eos_token_id=tok.convert_tokens_to_ids(spec["eos"]),
        pad_token_id=tok.convert_tokens_to_ids(spec["pad"]),
        tie_word_embeddings=False,
    )
    # The processor's own anyres grid (the `anyres` strategy): up to 3×3 tiles, as the coarse level.
    pinpoints = [[cfg.tile * i, cfg.tile * j] for i in range(1, 4) for j in range(1, 4)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = onevision_model_and_processor(tok, vision, text, cfg.tile, pinpoints)
    model = model.float()
    setattr(model.config, MARKER_KEY, True)
    model.config.lrs_vqa_world_config = asdict(cfg)
    model.generation_config = generation_config(tok, "llava_onevision")
    return model, processor
