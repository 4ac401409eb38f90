"""Tests for lrs_vqa.tiny: tiny random checkpoints that load through the real Auto* code path, offline."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from lrs_vqa.tiny import FAMILIES, MARKER_KEY, TinyModelInfo, is_random_tiny_model, make_tiny_model

QUESTION = "What is the color of the large ship near the bridge? How many cars are there in the image?"

# Image placeholder tokens for one image of (width, height), worked out by hand from each family's
# preprocessing (and pinned here, so a transformers upgrade that changes them is noticed):
# - llava: resize shortest edge to 56, centre-crop 56 → 4×4 patches (+CLS, dropped) = 16, whatever the size.
# - llava_onevision: 16 base tokens + the anyres grid (best 56-px tile grid, un-padded to the aspect ratio,
#   down-sampled past 9 tiles) + one newline per grid row: 56² → 16+16+4 = 36; 100×80 (best 112×112 grid,
#   8×8 → un-padded 6×8) → 16+48+6 = 70; 336² (6×6 grid = 24×24, ratio 2 → 12×12) → 16+144+12 = 172.
# - qwen2_vl: smart_resize to multiples of 28 within [56², 28²·64] px, 2×2 merge: 56² → 4; 100×80 →
#   112×84 → 8×6 patches → 12; 336² → 224² → 16×16 patches → 64.
EXPECTED_IMAGE_TOKENS = {
    "llava": {(56, 56): 16, (100, 80): 16, (336, 336): 16},
    "llava_onevision": {(56, 56): 36, (100, 80): 70, (336, 336): 172},
    "qwen2_vl": {(56, 56): 4, (100, 80): 12, (336, 336): 64},
}
EXPECTED_CLASSES = {
    "llava": ("LlavaProcessor", "LlavaForConditionalGeneration"),
    "llava_onevision": ("LlavaOnevisionProcessor", "LlavaOnevisionForConditionalGeneration"),
    "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLForConditionalGeneration"),
}
IMAGE_TOKEN = {"llava": "<image>", "llava_onevision": "<image>", "qwen2_vl": "<|image_pad|>"}


@pytest.fixture(scope="module", autouse=True)
def _offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, TinyModelInfo]:
    root = tmp_path_factory.mktemp("tiny")
    return {fam: make_tiny_model(root / fam, fam, seed=0) for fam in FAMILIES}


@pytest.fixture(scope="module")
def loaded(built):
    out = {}
    for fam, info in built.items():
        processor = AutoProcessor.from_pretrained(info.path)
        model = AutoModelForImageTextToText.from_pretrained(info.path).eval()
        out[fam] = (processor, model)
    return out


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _messages(image: Image.Image, question: str = QUESTION) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}
    ]


def _inputs(processor, image: Image.Image):
    return processor.apply_chat_template(
        _messages(image), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def _vision_kwargs(inputs) -> dict:
    return {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}


def _feature_rows(model, inputs) -> int:
    with torch.no_grad():
        out = model.get_image_features(**_vision_kwargs(inputs))
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    if isinstance(feats, (list, tuple)):
        return sum(int(f.shape[0]) for f in feats)
    return int(feats.reshape(-1, feats.shape[-1]).shape[0])


# --- writing and marking ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_layout_and_marker(built, family):
    info = built[family]
    assert info.family == family and info.model_type == family
    assert info.image_size == 56
    names = {p.name for p in info.path.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
    } <= names
    cfg = json.loads((info.path / "config.json").read_text())
    assert cfg[MARKER_KEY] is True and cfg["model_type"] == family
    assert is_random_tiny_model(info.path) and is_random_tiny_model(str(info.path))
    total = sum(p.stat().st_size for p in info.path.iterdir())
    assert total < 2_000_000, total
    assert 50_000 < info.num_parameters < 500_000


def test_is_random_tiny_model_false(tmp_path, built):
    assert not is_random_tiny_model(tmp_path)  # empty folder
    assert not is_random_tiny_model(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    assert not is_random_tiny_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", MARKER_KEY: "yes"}))
    assert not is_random_tiny_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    assert not is_random_tiny_model(tmp_path)
    assert not is_random_tiny_model(built["llava"].path / "config.json")  # a file, not a checkpoint folder


# --- loading through the real code path -------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_reload_chat_generate(built, loaded, family):
    processor, model = loaded[family]
    assert (type(processor).__name__, type(model).__name__) == EXPECTED_CLASSES[family]
    assert getattr(model.config, MARKER_KEY) is True  # the marker survives the strict v5 config
    assert sum(p.numel() for p in model.parameters()) == built[family].num_parameters

    image = _image(100, 80)
    prompt = processor.apply_chat_template(_messages(image), add_generation_prompt=True, tokenize=False)
    assert prompt.rstrip().endswith("<|im_start|> assistant \n".rstrip())
    assert IMAGE_TOKEN[family] in prompt and QUESTION in prompt

    inputs = _inputs(processor, image)
    ids = inputs["input_ids"]
    n_placeholders = int((ids == model.config.image_token_id).sum())
    assert n_placeholders == EXPECTED_IMAGE_TOKENS[family][(100, 80)]
    assert _feature_rows(model, inputs) == n_placeholders

    with torch.no_grad():
        logits = model(**inputs).logits
    vocab = model.config.text_config.vocab_size
    assert logits.shape == (1, ids.shape[1], vocab) and torch.isfinite(logits).all()

    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new = out[0, ids.shape[1] :]
    assert 1 <= new.numel() <= 5
    assert torch.equal(out[0, : ids.shape[1]], ids[0])
    assert int(out.min()) >= 0 and int(out.max()) < vocab
    assert model.config.image_token_id not in new.tolist()  # placeholders are suppressed
    assert isinstance(processor.decode(new, skip_special_tokens=True), str)


@pytest.mark.parametrize("family", FAMILIES)
def test_token_ids_and_generation_config(loaded, family):
    processor, model = loaded[family]
    tok = processor.tokenizer
    vocab = model.config.text_config.vocab_size
    assert len(tok) == vocab
    gen = model.generation_config
    assert gen.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    for tid in (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id):
        assert tid is not None and 0 <= tid < vocab and tid != tok.unk_token_id
    assert model.config.text_config.eos_token_id == gen.eos_token_id
    specials = ["<|im_start|>", "<|im_end|>"]
    specials += (
        ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>"] if family == "qwen2_vl" else ["<image>"]
    )
    for special in specials:
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id, special
        assert tok.convert_ids_to_tokens(tok(special, add_special_tokens=False)["input_ids"]) == [special]


@pytest.mark.parametrize("family", FAMILIES)
def test_questions_tokenize_to_known_words(loaded, family):
    tok = loaded[family][0].tokenizer
    questions = [
        QUESTION,
        "Is there a white car parked on the road? Answer yes or no.",
        "How many ships are docked in the harbor on the left side of the image?",
        "What is the color of the building roof in the top right corner?",
        "Are there 12 storage tanks or 3 tennis courts?",
    ]
    for q in questions:
        ids = tok(q, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, (q, tok.convert_ids_to_tokens(ids))
    ids = tok("12 cars\nblue", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["1", "2", "cars", "\n", "blue"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [(56, 56), (100, 80), (336, 336)])
def test_image_token_counts(loaded, family, size):
    processor, model = loaded[family]
    inputs = _inputs(processor, _image(*size, seed=1))
    n = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n == EXPECTED_IMAGE_TOKENS[family][size]
    assert _feature_rows(model, inputs) == n
    width, height = size
    counted = processor._get_num_multimodal_tokens(image_sizes=[(height, width)])["num_image_tokens"]
    assert list(counted) == [n]


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_load_and_generate(built, loaded, family):
    processor = loaded[family][0]
    model = AutoModelForImageTextToText.from_pretrained(built[family].path, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    inputs = _inputs(processor, _image(100, 80)).to(torch.bfloat16)  # casts only the float tensors
    assert inputs["input_ids"].dtype == torch.long
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert int(out.max()) < model.config.text_config.vocab_size


# --- determinism ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_bytes(tmp_path, built, family):
    state = torch.random.get_rng_state()
    again = make_tiny_model(tmp_path / "again", family, seed=0)
    other = make_tiny_model(tmp_path / "other", family, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    weights = (built[family].path / "model.safetensors").read_bytes()
    assert (again.path / "model.safetensors").read_bytes() == weights
    assert (other.path / "model.safetensors").read_bytes() != weights
    for name in ("tokenizer.json", "processor_config.json", "chat_template.jinja", "generation_config.json"):
        assert (again.path / name).read_bytes() == (built[family].path / name).read_bytes(), name


# --- errors -----------------------------------------------------------------------------------------------


def test_unknown_family(tmp_path):
    with pytest.raises(ValueError, match="llava_onevision, llava, qwen2_vl") as exc:
        make_tiny_model(tmp_path / "x", "idefics3")
    assert "idefics3" in str(exc.value)
    assert not (tmp_path / "x").exists()


def test_existing_folder(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError) as exc:
        make_tiny_model(target, "llava")
    assert "\n" not in str(exc.value) and "overwrite" in str(exc.value)
    assert (target / "keep.txt").read_text() == "user data"

    info = make_tiny_model(target, "llava", overwrite=True)
    assert not (target / "keep.txt").exists() and is_random_tiny_model(info.path)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_random_tiny_model(make_tiny_model(empty, "qwen2_vl").path)

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError):
        make_tiny_model(a_file, "llava", overwrite=True)


def test_accepts_str_path(tmp_path):
    info = make_tiny_model(str(tmp_path / "s"), "llava_onevision")
    assert isinstance(info.path, Path) and info.path == tmp_path / "s"
