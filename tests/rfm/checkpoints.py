"""Tiny checkpoints in the released LRS-VQA layout (original LLaVA keys), written key by key for the
loader tests (tests/rfm) and the paper-mode tests (tests/pipeline)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

HIDDEN, FFN, HEADS, LLM_LAYERS, N_RFM = 64, 128, 4, 3, 2
HEAD_DIM = HIDDEN // HEADS
KV_HEADS = {"qwen2": 2, "llama": 4}  # Qwen2 uses GQA, Vicuna plain multi-head attention
EPS = {"qwen2": 1e-6, "llama": 1e-5}
THETA = {"qwen2": 1e6, "llama": 1e4}
V_HIDDEN, IMAGE, PATCH = 32, 56, 14  # CLIP: 4x4 patches per tile → 2x2 pooled tokens
GRID, POOLED = IMAGE // PATCH, IMAGE // PATCH // 2
QUESTION = "how many ships are in the harbor?"

CHATML_BEFORE = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
CHATML_AFTER = "\n{q}\n<|im_end|>\n<|im_start|>assistant\n"
VICUNA_BEFORE = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: "
)
VICUNA_AFTER = "\n{q}\n ASSISTANT:"
TEMPLATE = {"qwen2": (CHATML_BEFORE, CHATML_AFTER), "llama": (VICUNA_BEFORE, VICUNA_AFTER)}

_WORD_TEXT = (
    "a an the chat between curious user and artificial intelligence assistant gives helpful detailed polite "
    "answers to s questions system you are how many ships ship in harbor what color is roof there of boats "
    "cars one two three yes no"
)
WORDS = _WORD_TEXT.split()


# --------------------------------------------------------------------------------------------- the checkpoint


def make_tokenizer(llm: str):
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = ["<unk>", *specials, "\n", *list("0123456789?.,:;!'\"-()/%"), *dict.fromkeys(WORDS)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n|\d|[^\W\d_]+|_+|[^\w\s]"), "removed", invert=True)
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if llm == "llama":  # LLaMA tokenizers put BOS first
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        names = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>"}
    else:
        names = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", **names)


def clip_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=V_HIDDEN,
        intermediate_size=2 * V_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE,
        patch_size=PATCH,
    )


def layer_shapes(llm: str) -> dict[str, tuple[int, ...]]:
    """One decoder layer's tensors (card §4.2 table: the LLM's and the RFM's layers are alike)."""
    kv = KV_HEADS[llm] * HEAD_DIM
    shapes: dict[str, tuple[int, ...]] = {
        "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        "self_attn.k_proj.weight": (kv, HIDDEN),
        "self_attn.v_proj.weight": (kv, HIDDEN),
        "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        "mlp.gate_proj.weight": (FFN, HIDDEN),
        "mlp.up_proj.weight": (FFN, HIDDEN),
        "mlp.down_proj.weight": (HIDDEN, FFN),
        "input_layernorm.weight": (HIDDEN,),
        "post_attention_layernorm.weight": (HIDDEN,),
    }
    if llm == "qwen2":
        shapes |= {
            "self_attn.q_proj.bias": (HIDDEN,),
            "self_attn.k_proj.bias": (kv,),
            "self_attn.v_proj.bias": (kv,),
        }
    return shapes


def released_shapes(llm: str, vocab: int, n_rfm: int = N_RFM) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, HIDDEN)}
    for i in range(LLM_LAYERS):
        out |= {f"model.layers.{i}.{k}": s for k, s in layer_shapes(llm).items()}
    out |= {"model.norm.weight": (HIDDEN,), "lm_head.weight": (vocab, HIDDEN)}
    out |= {
        "model.mm_projector.mlp_projector.0.weight": (HIDDEN, V_HIDDEN),
        "model.mm_projector.mlp_projector.0.bias": (HIDDEN,),
        "model.mm_projector.mlp_projector.2.weight": (HIDDEN, HIDDEN),
        "model.mm_projector.mlp_projector.2.bias": (HIDDEN,),
    }
    for i in range(n_rfm + 1):
        out |= {f"model.mm_projector.token_pruner.layers.{i}.{k}": s for k, s in layer_shapes(llm).items()}
    out |= {"model.mm_projector.token_pruner.norm.weight": (HIDDEN,), "model.image_newline": (HIDDEN,)}
    return out


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        t = torch.randn(s, generator=g) * (0.02 if k.endswith("embed_tokens.weight") else 0.15)
        out[k] = 1.0 + t if k.endswith("norm.weight") else t
    return out


def base_config(llm: str, vocab: int, tok, tower_dir: Path) -> dict:
    return {
        "architectures": ["LlavaQwenForCausalLM" if llm == "qwen2" else "LlavaLlamaForCausalLM"],
        "model_type": "llava_qwen" if llm == "qwen2" else "llava_llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LLM_LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS[llm],
        "vocab_size": vocab,
        "rms_norm_eps": EPS[llm],
        "rope_theta": THETA[llm],
        "max_position_embeddings": 4096,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "mm_projector_type": "mlp2x_gelu_after_distillpruner",
        "llm_layer_list": "[1, 2]",
        "llm_use_last_text": True,
        "mm_vision_tower": str(tower_dir),
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_hidden_size": V_HIDDEN,
        "mm_patch_merge_type": "spatial_unpad",
        "mm_spatial_pool_mode": "bilinear",
        "slice_block_size": IMAGE,
        "image_aspect_ratio": "pyramid_crop",
        "tokenizer_model_max_length": 2048,
        "lrs_vqa_tiny_random": True,
    }


def save_weights(folder: Path, weights: dict[str, torch.Tensor], fmt: str) -> None:
    from safetensors.torch import save_file

    if fmt == "bin":
        torch.save(weights, folder / "pytorch_model.bin")
    elif fmt == "sharded":
        keys = sorted(weights)
        halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
        names = [f"model-0000{i + 1}-of-00002.safetensors" for i in range(2)]
        for name, part in zip(names, halves, strict=True):
            save_file({k: weights[k].contiguous() for k in part}, str(folder / name))
        index = {
            "metadata": {},
            "weight_map": {k: n for n, part in zip(names, halves, strict=True) for k in part},
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))


def write_checkpoint(
    root: Path,
    llm: str,
    *,
    fmt: str = "safetensors",
    tower_in_checkpoint: bool = False,
    edit_weights: Callable[[dict[str, torch.Tensor]], None] | None = None,
    edit_config: Callable[[dict], None] | None = None,
    seed: int = 0,
) -> tuple[Path, dict[str, torch.Tensor], dict]:
    """A released-layout checkpoint folder; returns it, the tensors written (by key) and the config."""
    from transformers import CLIPVisionModel

    folder = root / f"ckpt-{llm}"
    folder.mkdir(parents=True)
    tok = make_tokenizer(llm)
    tok.save_pretrained(folder)
    tower_dir = root / "clip-tower"
    if not tower_dir.exists():
        torch.manual_seed(100)
        CLIPVisionModel(clip_config()).save_pretrained(tower_dir)
    weights = random_tensors(released_shapes(llm, len(tok)), seed)
    if tower_in_checkpoint:
        torch.manual_seed(seed + 1)
        own = CLIPVisionModel(clip_config()).state_dict()
        # Released names (saved by transformers 4.37): the tower's modules under ``vision_model.``.
        prefix = "model.vision_tower.vision_tower."
        weights |= {
            prefix + ("" if k.startswith("vision_model.") else "vision_model.") + k: v.clone()
            for k, v in own.items()
        }
    if edit_weights is not None:
        edit_weights(weights)
    config = base_config(llm, len(tok), tok, tower_dir)
    if edit_config is not None:
        edit_config(config)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    save_weights(folder, weights, fmt)
    return folder, weights, config
