"""Tiny random VLM checkpoints in the standard Hugging Face layout, for tests and offline demos.

``make_tiny_model(out_dir, family)`` writes a checkpoint that loads through exactly the same code path as a
real one (``AutoProcessor.from_pretrained`` + ``AutoModelForImageTextToText.from_pretrained``), with
structurally faithful but tiny shapes and **random weights**. Its answers are meaningless. The checkpoint is
marked with ``"lrs_vqa_tiny_random": true`` in ``config.json``; ``is_random_tiny_model`` detects it so that
the app and reports can say so.

Families:

- ``llava`` (LLaVA-1.5 style): CLIP vision tower (56 px, patch 14: 4×4 patches + CLS, layer -2, CLS dropped),
  Llama text model with GQA. ``<image>`` expands to 16 tokens.
- ``llava_onevision``: SigLIP vision tower (56 px, patch 14: 16 patches, no CLS), Qwen2 text model,
  anyres tiling over a 6×6 grid of 56 px tiles with ``anyres_max_9`` down-sampling and newline tokens.
- ``qwen2_vl``: Qwen2-VL vision transformer (patch 14, 2×2 merge, temporal patch 2) with M-RoPE text
  model; dynamic resolution capped by ``min_pixels``/``max_pixels``.

The tokenizer is a word-level vocabulary built with the ``tokenizers`` library (lower-casing, newline kept
as a token, digits split one by one, punctuation split off), so ordinary remote-sensing questions map
mostly onto known words. Chat templates follow each family's real format (ChatML) with spaces between
tokens.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lrs_vqa.models.random_weights import MARKER_KEY, is_random_tiny_model

__all__ = ["FAMILIES", "MARKER_KEY", "TinyModelInfo", "is_random_tiny_model", "make_tiny_model"]

FAMILIES = ("llava_onevision", "llava", "qwen2_vl")


# Shared tiny sizes.
_TEXT_HIDDEN = 64
_TEXT_LAYERS = 2
_TEXT_HEADS = 4
_TEXT_KV_HEADS = 2
_TEXT_INTERMEDIATE = 128
_MAX_POSITIONS = 4096
_VISION_HIDDEN = 32
_VISION_LAYERS = 2
_VISION_HEADS = 4
_PATCH = 14
_IMAGE_SIZE = 56  # llava / onevision vision tower input: 4×4 patches of 14 px

# Qwen2-VL image budget: min 56×56 px, max 64 merge units of 28×28 px (= 256 patches, 64 tokens).
_QWEN_MIN_PIXELS = 56 * 56
_QWEN_MAX_PIXELS = 28 * 28 * 64

_SYSTEM_PROMPT = "You are a helpful assistant."

# Ordinary words: question words, remote-sensing objects, colours, sizes, directions, counting words.
_WORD_TEXT = """
a an the this that these those it its there here is are was were be been being am do does did have has had
what which who whom whose where when why how many much more most less least few several some any all each
every both either neither none no not yes can could would should will shall may might must of in on at to
from by with without within into onto over under above below between among near far next beside behind
front back left right top bottom middle center centre side corner edge upper lower north south east west
northeast northwest southeast southwest northern southern eastern western central and or but if than then
as so because while for about around along across through up down out off only also just very too same
different other another one two three four five six seven eight nine ten eleven twelve twenty hundred
thousand first second third last number count total amount percent half quarter color colour colors
colours red white blue green black gray grey yellow orange brown purple pink dark light bright pale
large small big little huge tiny long short wide narrow tall high low round square rectangular circular
straight curved new old empty full busy open closed image picture photo scene view area region part
object objects thing things type kind shape size position location direction distance relationship
car cars vehicle vehicles truck trucks bus buses van vans taxi motorcycle bicycle tractor trailer
excavator crane ship ships boat boats vessel vessels yacht ferry tanker cargo container warship sailboat
fishing airplane airplanes plane planes aircraft airliner jet helicopter helicopters airport runway
taxiway apron terminal hangar harbor harbour port dock pier wharf bridge bridges overpass tunnel road
roads street streets highway freeway lane intersection roundabout crossroad parking lot lots railway
railroad train trains station track building buildings house houses roof roofs tower towers storage
tank tanks chimney factory warehouse stadium court courts tennis basketball baseball soccer football
field fields ground track playground swimming pool pools golf course park garden tree trees forest
grass lawn farmland farm crop crops land desert sand beach coast shore sea ocean lake river pond water
waters canal dam reservoir island mountain hill hills valley cloud clouds shadow snow ice rock rocks
soil residential commercial industrial urban rural city town village wall fence path sidewalk dock
solar panel panels wind turbine turbines power plant substation pipeline church school hospital
present absent visible exist exists existing located situated parked moving docked placed facing
compared larger smaller bigger longer shorter wider closer farther nearest farthest largest smallest
biggest longest highest lowest same equal similar answer question word phrase single using please
describe tell show find identify give list name type category shown appear appears contain contains
images pictures photos regions areas places place sides kinds types shapes colored coloured
you your i my me we our they them he she his her system user assistant helpful
"""
_WORDS = _WORD_TEXT.split()

_DIGITS = [str(i) for i in range(10)]
_PUNCT = ["?", ".", ",", ":", ";", "!", "'", '"', "-", "(", ")", "/", "%"]

# Pre-tokenization: newline, single digits, runs of letters, runs of other non-space characters.
_PRETOKEN_REGEX = r"\n|\d|[^\W\d_]+|_+|[^\w\s]"


def _family_specials(family: str) -> dict[str, object]:
    """Special tokens, roles and ids of one family's tokenizer."""
    if family == "qwen2_vl":
        return {
            "specials": [
                "<|endoftext|>",
                "<|im_start|>",
                "<|im_end|>",
                "<|vision_start|>",
                "<|vision_end|>",
                "<|image_pad|>",
                "<|video_pad|>",
            ],
            "unk": "<unk>",
            "bos": "<|endoftext|>",
            "pad": "<|endoftext|>",
            "eos": "<|im_end|>",
            "extra": {
                "image_token": "<|image_pad|>",
                "video_token": "<|video_pad|>",
                "vision_bos_token": "<|vision_start|>",
                "vision_eos_token": "<|vision_end|>",
            },
        }
    if family == "llava":
        return {
            "specials": ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<image>"],
            "unk": "<unk>",
            "bos": "<s>",
            "pad": "<pad>",
            "eos": "<|im_end|>",
            "extra": {"image_token": "<image>"},
        }
    return {  # llava_onevision
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        "unk": "<unk>",
        "bos": "<|endoftext|>",
        "pad": "<|endoftext|>",
        "eos": "<|im_end|>",
        "extra": {"image_token": "<image>", "video_token": "<video>"},
    }


def _vocabulary(family: str) -> list[str]:
    spec = _family_specials(family)
    seen: set[str] = set()
    vocab: list[str] = []
    for tok in [spec["unk"], *spec["specials"], "\n", *_DIGITS, *_PUNCT, *_WORDS]:
        if tok not in seen:
            seen.add(tok)
            vocab.append(tok)
    return vocab


def _build_tokenizer(family: str):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    spec = _family_specials(family)
    vocab = _vocabulary(family)
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=spec["unk"]))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(_PRETOKEN_REGEX), behavior="removed", invert=True)
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins word-level tokens with spaces
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec["specials"]])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token=spec["unk"],
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        extra_special_tokens=spec["extra"],
        model_max_length=_MAX_POSITIONS,
        padding_side="left",
    )
    return tok


# --- chat templates (real formats, tokens separated by spaces for the word-level tokenizer) ---------------

_CHATML_LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|> ' + message['role'] + ' \\n ' }}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image> ' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video> ' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% if loop.first %}{{ '\\n ' }}{% endif %}{{ content['text'] + ' ' }}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|> \\n ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|> assistant \\n ' }}{% endif %}"
)

_QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|> system \\n " + _SYSTEM_PROMPT + " <|im_end|> \\n ' }}"
    "{% endif %}"
    "{{ '<|im_start|> ' + message['role'] + ' \\n ' }}"
    "{% if message['content'] is string %}{{ message['content'] + ' <|im_end|> \\n ' }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}{{ 'Picture ' + image_count.value|string + ' : ' }}{% endif %}"
    "{{ '<|vision_start|> <|image_pad|> <|vision_end|> ' }}"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}{{ 'Video ' + video_count.value|string + ' : ' }}{% endif %}"
    "{{ '<|vision_start|> <|video_pad|> <|vision_end|> ' }}"
    "{% elif 'text' in content %}{{ content['text'] + ' ' }}"
    "{% endif %}"
    "{% endfor %}"
    "{{ '<|im_end|> \\n ' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|> assistant \\n ' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyModelInfo:
    path: Path
    family: str
    model_type: str
    num_parameters: int
    image_size: int  # the vision tower's input size (Qwen2-VL: the minimum side, 56 px)


# The tiny vision tower's shape, shared by the CLIP (LLaVA) and SigLIP (OneVision) configs.
_VISION_KWARGS = {
    "hidden_size": _VISION_HIDDEN,
    "intermediate_size": 2 * _VISION_HIDDEN,
    "num_hidden_layers": _VISION_LAYERS,
    "num_attention_heads": _VISION_HEADS,
    "image_size": _IMAGE_SIZE,
    "patch_size": _PATCH,
}


def _text_kwargs(tok, family: str) -> dict:
    spec = _family_specials(family)
    return {
        "vocab_size": len(tok),
        "hidden_size": _TEXT_HIDDEN,
        "intermediate_size": _TEXT_INTERMEDIATE,
        "num_hidden_layers": _TEXT_LAYERS,
        "num_attention_heads": _TEXT_HEADS,
        "num_key_value_heads": _TEXT_KV_HEADS,
        "max_position_embeddings": _MAX_POSITIONS,
        "bos_token_id": tok.convert_tokens_to_ids(spec["bos"]),
        "eos_token_id": tok.convert_tokens_to_ids(spec["eos"]),
        "pad_token_id": tok.convert_tokens_to_ids(spec["pad"]),
        "tie_word_embeddings": False,
    }


def _build_llava(tok):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    vision = CLIPVisionConfig(
        **_VISION_KWARGS,
        projection_dim=_VISION_HIDDEN,
    )
    text = LlamaConfig(**_text_kwargs(tok, "llava"))
    n_tokens = (_IMAGE_SIZE // _PATCH) ** 2  # CLS added by CLIP, dropped by "default"
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=n_tokens,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(cfg)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": _IMAGE_SIZE},
        crop_size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_CHATML_LLAVA_TEMPLATE,
    )
    return model, processor, _IMAGE_SIZE


def _onevision_pinpoints() -> list[list[int]]:
    # The real checkpoints use a 6×6 grid of 384 px tiles; ours is the same grid of 56 px tiles.
    return [[_IMAGE_SIZE * i, _IMAGE_SIZE * j] for i in range(1, 7) for j in range(1, 7)]


def onevision_model_and_processor(tok, vision, text, tile: int, pinpoints: list[list[int]]):
    """A LLaVA-OneVision model (random weights from the global RNG) and its processor around ``vision`` and
    ``text`` configs, with ``tile`` px tiles and the processor's anyres grid ``pinpoints``; the layout the
    tiny test models and the world model share."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    cfg = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )
    model = LlavaOnevisionForConditionalGeneration(cfg)
    size = {"height": tile, "width": tile}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
        tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(tile // vision.patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=_CHATML_LLAVA_TEMPLATE,
    )
    return model, processor


def _build_llava_onevision(tok):
    from transformers import Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        **_VISION_KWARGS,
        vision_use_head=False,
    )
    text = Qwen2Config(**_text_kwargs(tok, "llava_onevision"))
    model, processor = onevision_model_and_processor(tok, vision, text, _IMAGE_SIZE, _onevision_pinpoints())
    return model, processor, _IMAGE_SIZE


def _build_qwen2_vl(tok):
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    head_dim = _TEXT_HIDDEN // _TEXT_HEADS  # 16 → mrope sections sum to 8
    text = _text_kwargs(tok, "qwen2_vl")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]}
    assert sum(text["rope_parameters"]["mrope_section"]) == head_dim // 2
    vision = {
        "depth": _VISION_LAYERS,
        "embed_dim": _VISION_HIDDEN,
        "hidden_size": _TEXT_HIDDEN,  # merger output = text hidden size
        "mlp_ratio": 4,
        "num_heads": _VISION_HEADS,
        "patch_size": _PATCH,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    cfg = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    model = Qwen2VLForConditionalGeneration(cfg)
    pix = {"min_pixels": _QWEN_MIN_PIXELS, "max_pixels": _QWEN_MAX_PIXELS}
    common = {"patch_size": _PATCH, "temporal_patch_size": 2, "merge_size": 2}
    image_processor = Qwen2VLImageProcessor(**pix, **common)
    video_processor = Qwen2VLVideoProcessor(**pix, **common)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=_QWEN2_VL_TEMPLATE,
    )
    return model, processor, 2 * _PATCH * 2  # 56 px: the smallest image (2×2 merged patches)


def generation_config(tok, family: str):
    """End of turn, padding, and the tokens a model must never emit: placeholders, ``<|im_start|>`` and
    ``<unk>`` (an under-trained model happily emits them; downstream code that re-feeds an answer would then
    see stray image tokens)."""
    from transformers import GenerationConfig

    spec = _family_specials(family)
    suppress = [spec["unk"], "<|im_start|>", *spec["extra"].values()]
    return GenerationConfig(
        bos_token_id=tok.convert_tokens_to_ids(spec["bos"]),
        eos_token_id=tok.convert_tokens_to_ids(spec["eos"]),
        pad_token_id=tok.convert_tokens_to_ids(spec["pad"]),
        suppress_tokens=sorted({tok.convert_tokens_to_ids(t) for t in suppress}),
    )


_BUILDERS = {"llava": _build_llava, "llava_onevision": _build_llava_onevision, "qwen2_vl": _build_qwen2_vl}


def make_tiny_model(
    out_dir: str | Path, family: str, *, seed: int = 0, overwrite: bool = False
) -> TinyModelInfo:
    """Write a tiny random checkpoint of ``family`` into ``out_dir`` and describe it.

    The weights depend only on ``seed`` (same seed → identical ``model.safetensors``). Raises
    :class:`UnsupportedModelError` (a ``ValueError``) for an unknown family and :class:`OutputExistsError` (a
    ``FileExistsError``) if ``out_dir`` is a non-empty folder and ``overwrite`` is false.
    """
    from lrs_vqa.models.errors import UnsupportedModelError
    from pyramid.cog import OutputExistsError

    if family not in FAMILIES:
        raise UnsupportedModelError(
            f"unknown tiny model family {family!r}; choose one of: {', '.join(FAMILIES)}"
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} is not empty; pass overwrite=True to replace it")

    import torch

    tok = _build_tokenizer(family)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG state untouched
        torch.manual_seed(seed)
        model, processor, image_size = _BUILDERS[family](tok)
    model = model.to(torch.float32).eval()

    setattr(model.config, MARKER_KEY, True)
    model.config.lrs_vqa_tiny_seed = int(seed)
    model.generation_config = generation_config(tok, family)

    if out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)  # overwrite=True: everything in out_dir is replaced
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return TinyModelInfo(
        path=out,
        family=family,
        model_type=model.config.model_type,
        num_parameters=sum(p.numel() for p in model.parameters()),
        image_size=image_size,
    )
