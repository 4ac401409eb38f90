"""The released LRS-VQA checkpoint layout (reference card §4.2), loaded key for key; the trained Region Focus
Module's score (§4.3) against an eager recomputation written here from the card; and such a model answering
through the engine.

The checkpoints are synthetic: tiny Qwen2 / Llama LLMs, a tiny CLIP tower in its own folder named by
``mm_vision_tower``, N=2 RFM layers, every tensor under the exact released key name, random values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_vqa.answer import AskOptions, answer, pyramid_spec_for
from lrs_vqa.engine.tokens import VisionSegment
from lrs_vqa.models.errors import ModelLoadError, UnsupportedModelError
from lrs_vqa.models.largeimg import LargeImgAdapter
from lrs_vqa.models.largeimg_checkpoint import load_released
from lrs_vqa.models.registry import load_adapter
from pyramid.dip import DynamicImagePyramid, PyramidOptions
from rfm.attention import AttentionScorer
from rfm.module import RegionFocusModule, RFMScorer
from rfm.scorers import build_scorer
from tests.rfm.checkpoints import (
    EPS,
    GRID,
    HEAD_DIM,
    HEADS,
    HIDDEN,
    IMAGE,
    KV_HEADS,
    LLM_LAYERS,
    N_RFM,
    POOLED,
    QUESTION,
    TEMPLATE,
    THETA,
    write_checkpoint,
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict, dict]]:
    root = tmp_path_factory.mktemp("largeimg")
    return {
        "qwen2": write_checkpoint(root, "qwen2", fmt="sharded"),
        "llama": write_checkpoint(root, "llama", fmt="bin", tower_in_checkpoint=True, seed=3),
    }


@pytest.fixture(scope="module")
def adapters(checkpoints) -> dict[str, LargeImgAdapter]:
    return {llm: LargeImgAdapter.from_checkpoint(str(path)) for llm, (path, _, _) in checkpoints.items()}


@pytest.fixture(scope="module")
def image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(4)
    coarse = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((300, 200), Image.Resampling.BICUBIC)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    img.save(path)
    return path


# ------------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_loads_key_for_key(llm: str, checkpoints, tmp_path: Path) -> None:
    from transformers import CLIPVisionModel, LlamaForCausalLM, Qwen2ForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    folder, written, config = checkpoints[llm]
    model, _ = load_released(str(folder))
    loaded = model.released_state_dict()
    assert sorted(loaded) == sorted(written)
    for key, tensor in written.items():
        assert torch.equal(loaded[key], tensor), key

    # The parts are stock modules and the tensors sit where the key names say.
    assert isinstance(model.llm, Qwen2ForCausalLM if llm == "qwen2" else LlamaForCausalLM)
    layer_cls = Qwen2DecoderLayer if llm == "qwen2" else LlamaDecoderLayer
    assert model.settings.n_rfm == N_RFM and len(model.rfm.layers) == N_RFM + 1
    assert all(type(layer) is layer_cls for layer in model.rfm.layers)
    assert model.settings.llm_layer_list == (1, 2)
    pre = "model.mm_projector.token_pruner."
    assert torch.equal(
        model.rfm.layers[2].self_attn.k_proj.weight, written[pre + "layers.2.self_attn.k_proj.weight"]
    )
    assert torch.equal(model.rfm.norm.weight, written[pre + "norm.weight"])
    assert torch.equal(
        model.llm.model.layers[1].mlp.up_proj.weight, written["model.layers.1.mlp.up_proj.weight"]
    )
    assert torch.equal(model.llm.lm_head.weight, written["lm_head.weight"])
    assert torch.equal(model.mm_projector[2].bias, written["model.mm_projector.mlp_projector.2.bias"])
    assert torch.equal(model.image_newline, written["model.image_newline"])
    assert isinstance(model.vision_tower, CLIPVisionModel)
    encoder = getattr(model.vision_tower, "vision_model", model.vision_tower).encoder
    q = encoder.layers[1].self_attn.q_proj.weight
    if llm == "llama":  # tower keys in the checkpoint win over the mm_vision_tower folder
        assert model.settings.tower_from_checkpoint
        key = "model.vision_tower.vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.weight"
        assert torch.equal(q, written[key])
    else:
        reference = CLIPVisionModel.from_pretrained(config["mm_vision_tower"])
        ref_encoder = getattr(reference, "vision_model", reference).encoder
        assert torch.equal(q, ref_encoder.layers[1].self_attn.q_proj.weight)
    assert (
        model.llm.config._attn_implementation == model.rfm.config._attn_implementation == "lrs_vqa_sdpa_tap"
    )


def _drop(prefix: str) -> Callable[[dict], None]:
    return lambda w: [w.pop(k) for k in [k for k in w if k.startswith(prefix)]]


BAD = {
    "missing-rfm-key": (
        {"edit_weights": _drop("model.mm_projector.token_pruner.layers.1.mlp.up_proj.weight")},
        "missing model.mm_projector.token_pruner.layers.1.mlp.up_proj.weight",
    ),
    "missing-llm-key": ({"edit_weights": _drop("model.layers.2.self_attn.o_proj")}, "missing model.layers.2"),
    "missing-newline": ({"edit_weights": _drop("model.image_newline")}, "missing model.image_newline"),
    "unexpected-key": (
        {"edit_weights": lambda w: w.update({"model.mm_projector.extra.weight": torch.zeros(2)})},
        "unexpected model.mm_projector.extra.weight",
    ),
    "wrong-shape": (
        {
            "edit_weights": lambda w: w.update(
                {"model.mm_projector.mlp_projector.0.weight": torch.zeros(HIDDEN, 8)}
            )
        },
        "shape mismatch model.mm_projector.mlp_projector.0.weight",
    ),
    "rfm-gap": ({"edit_weights": _drop("model.mm_projector.token_pruner.layers.1.")}, "skips layer"),
    "no-rfm": ({"edit_weights": _drop("model.mm_projector.token_pruner.")}, "Region Focus Module"),
    "projector-type": (
        {"edit_config": lambda c: c.update(mm_projector_type="mlp2x_gelu")},
        "mm_projector_type is 'mlp2x_gelu'",
    ),
    "layer-list": ({"edit_config": lambda c: c.update(llm_layer_list="[1, 2, 3]")}, "llm_layer_list"),
    "merge-type": ({"edit_config": lambda c: c.update(mm_patch_merge_type="flat")}, "mm_patch_merge_type"),
    "pool-mode": ({"edit_config": lambda c: c.update(mm_spatial_pool_mode="none")}, "mm_spatial_pool_mode"),
    "tower": ({"edit_config": lambda c: c.update(mm_vision_tower="/no/such/tower")}, "vision tower"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_raises_typed_one_line_error(case: str, tmp_path: Path) -> None:
    edits, message = BAD[case]
    folder, _, _ = write_checkpoint(tmp_path, "qwen2", **edits)
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(")) as err:
        load_adapter(str(folder))
    assert "\n" not in str(err.value)


def test_hub_id_offline_is_a_typed_error() -> None:
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE (set before huggingface_hub was imported)")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_released("ll-13/llava-largeimg-Qwen2-7B-not-cached")


def test_registry_dispatches_on_the_original_layout(checkpoints) -> None:
    folder, _, _ = checkpoints["qwen2"]
    adapter = load_adapter(str(folder))
    assert isinstance(adapter, LargeImgAdapter) and adapter.family == "llava_largeimg"
    assert adapter.random_weights  # the tiny marker in config.json
    assert isinstance(build_scorer("rfm", adapter), RFMScorer)


# ------------------------------------------------------------------------------------- vision and prompt


def _segments(adapter: LargeImgAdapter, image: Path, level: int = 0) -> list[VisionSegment]:
    popts = PyramidOptions(spec=pyramid_spec_for(adapter), use_disk_cache=False)
    with DynamicImagePyramid.open(image, popts) as dip:
        thumb = adapter.encode_tiles([dip.thumbnail()], newlines=False, level=-1)
        tiles = list(dip.stream(dip.all_tiles(level)))
        local = adapter.encode_tiles(tiles, newlines=True, level=level)
    return [thumb, local]


def test_local_tiles_are_projected_then_pooled_2x2(adapters, checkpoints, image_path: Path) -> None:
    adapter = adapters["qwen2"]
    _, written, _ = checkpoints["qwen2"]
    popts = PyramidOptions(spec=pyramid_spec_for(adapter), use_disk_cache=False)
    with DynamicImagePyramid.open(image_path, popts) as dip:
        tile = dip.tile(0, 0, 0)
        thumb = dip.thumbnail()
    assert tile.pixels.shape[:2] == (IMAGE, IMAGE)  # a full tile: no padding tokens
    seg = adapter.encode_tiles([tile], newlines=True, level=0)
    assert seg.meta.newline.tolist() == [False, False, True, False, False, True]

    # Independent: CLIP (stock, from the tower folder) → layer -2 minus CLS → Linear, GELU, Linear →
    # bilinear 2x (align_corners=False) = the mean of each 2x2 block.
    from transformers import CLIPVisionModel

    tower = CLIPVisionModel.from_pretrained(adapter.settings.vision_tower).eval()
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    px = (torch.from_numpy(tile.pixels.astype(np.float32)).permute(2, 0, 1) / 255 - mean) / std
    with torch.no_grad():
        feats = tower(px[None], output_hidden_states=True).hidden_states[-2][0, 1:]
        w = "model.mm_projector.mlp_projector."
        h = torch.nn.functional.gelu(feats @ written[w + "0.weight"].T + written[w + "0.bias"])
        proj = (h @ written[w + "2.weight"].T + written[w + "2.bias"]).view(GRID, GRID, HIDDEN)
    pooled = proj.view(POOLED, 2, POOLED, 2, HIDDEN).mean(dim=(1, 3)).reshape(-1, HIDDEN)
    tokens = seg.embeds[~seg.meta.newline]
    torch.testing.assert_close(tokens, pooled, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(seg.embeds[seg.meta.newline], written["model.image_newline"].expand(2, -1))

    # The global thumbnail is not pooled and keeps all its tokens (padding included), no newlines.
    g = adapter.encode_tiles([thumb], newlines=False, level=-1)
    assert len(g.meta) == GRID * GRID and not bool(g.meta.newline.any())


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_prompt_layout(llm: str, adapters, checkpoints, image_path: Path) -> None:
    adapter = adapters[llm]
    _, written, _ = checkpoints[llm]
    segments = _segments(adapter, image_path)
    prompt = adapter.build_prompt(QUESTION, segments)
    tok = adapter.tokenizer
    before, after = TEMPLATE[llm]
    pre = tok(before).input_ids
    post = tok(after.format(q=QUESTION), add_special_tokens=False).input_ids
    assert (pre[0] == tok.bos_token_id) == (llm == "llama")
    n_g, n_l = len(segments[0].meta), len(segments[1].meta)
    emb = written["model.embed_tokens.weight"]
    x = prompt.inputs.embeds[0]
    assert x.shape[0] == len(pre) + n_g + 1 + n_l + len(post)
    p = len(pre)
    torch.testing.assert_close(x[:p], emb[pre])
    torch.testing.assert_close(x[p : p + n_g], segments[0].embeds)
    torch.testing.assert_close(x[p + n_g], emb[tok.convert_tokens_to_ids(":")])
    torch.testing.assert_close(x[p + n_g + 1 : p + n_g + 1 + n_l], segments[1].embeds)
    torch.testing.assert_close(x[p + n_g + 1 + n_l :], emb[post])
    vision = torch.zeros(x.shape[0], dtype=torch.bool)
    vision[p : p + n_g] = True
    vision[p + n_g + 1 : p + n_g + 1 + n_l] = True
    assert torch.equal(prompt.inputs.vision, vision)
    assert prompt.inputs.position_ids.tolist() == [list(range(x.shape[0]))]
    assert prompt.text_tokens == len(pre) + 1 + len(post)


# --------------------------------------------------------------------------------------------- the score


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """x: (L, heads, d) at positions pos: rotate pairs (i, i + d/2) by pos · theta^(-2i/d)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos.double()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1)[:, None], torch.cat([ang.sin(), ang.sin()], -1)[:, None]
    half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + half * sin


def _qkv(h: torch.Tensor, w: dict, pre: str, llm: str) -> tuple[torch.Tensor, ...]:
    out = []
    for name, heads in (("q", HEADS), ("k", KV_HEADS[llm]), ("v", KV_HEADS[llm])):
        t = h @ w[f"{pre}self_attn.{name}_proj.weight"].double().T
        if llm == "qwen2":
            t = t + w[f"{pre}self_attn.{name}_proj.bias"].double()
        out.append(t.view(h.shape[0], heads, HEAD_DIM))
    return tuple(out)


def eager_rfm_score(written: dict, llm: str, embeds: torch.Tensor, local: slice) -> torch.Tensor:
    """Card §4.3, straightforwardly: RFM layers 0..N-1 with full causal softmax attention, then layer N's
    q of the last token against every key (RoPE at contiguous positions), softmax over the local keys only,
    mean over heads."""
    w = {k: v for k, v in written.items()}
    eps, theta = EPS[llm], THETA[llm]
    x = embeds.double()
    n = x.shape[0]
    pos = torch.arange(n)
    group = HEADS // KV_HEADS[llm]
    causal = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(N_RFM):
        pre = f"model.mm_projector.token_pruner.layers.{i}."
        h = _rms(x, w[pre + "input_layernorm.weight"].double(), eps)
        q, k, v = _qkv(h, w, pre, llm)
        q, k = _rope(q, pos, theta), _rope(k, pos, theta)
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        att = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(HEAD_DIM) + causal, dim=-1)
        o = torch.einsum("hqk,khd->qhd", att, v).reshape(n, HIDDEN)
        x = x + o @ w[pre + "self_attn.o_proj.weight"].double().T
        h = _rms(x, w[pre + "post_attention_layernorm.weight"].double(), eps)
        gate = torch.nn.functional.silu(h @ w[pre + "mlp.gate_proj.weight"].double().T)
        up = h @ w[pre + "mlp.up_proj.weight"].double().T
        x = x + (gate * up) @ w[pre + "mlp.down_proj.weight"].double().T
    pre = f"model.mm_projector.token_pruner.layers.{N_RFM}."
    h = _rms(x, w[pre + "input_layernorm.weight"].double(), eps)
    q, k, _ = _qkv(h, w, pre, llm)
    q, k = _rope(q, pos, theta)[-1], _rope(k, pos, theta).repeat_interleave(group, dim=1)
    logits = torch.einsum("hd,khd->hk", q, k) / math.sqrt(HEAD_DIM)  # the last token sees every key
    return torch.softmax(logits[:, local], dim=-1).mean(0)


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_rfm_score_equals_eager_recomputation(llm: str, adapters, checkpoints, image_path: Path) -> None:
    adapter = adapters[llm]
    _, written, _ = checkpoints[llm]
    segments = _segments(adapter, image_path)
    scores = build_scorer("rfm", adapter).score(adapter, QUESTION, segments, 1)
    n_l = len(segments[1].meta)
    assert scores.scores.shape == (n_l,) and scores.scores.dtype == torch.float32
    assert torch.equal(scores.rows, torch.arange(n_l))
    assert torch.equal(scores.meta.newline, segments[1].meta.newline)
    assert abs(float(scores.scores.sum()) - 1.0) < 1e-5
    assert scores.tflops > 0

    prompt = adapter.build_prompt(QUESTION, segments)
    before, _ = TEMPLATE[llm]
    start = len(adapter.tokenizer(before).input_ids) + len(segments[0].meta) + 1  # after the ':' separator
    expected = eager_rfm_score(written, llm, prompt.inputs.embeds[0], slice(start, start + n_l))
    torch.testing.assert_close(scores.scores.double(), expected, atol=2e-6, rtol=1e-4)
    # The global thumbnail and the separator are outside the softmax: scoring them in would change it.
    wider = eager_rfm_score(written, llm, prompt.inputs.embeds[0], slice(start - 1, start + n_l))
    assert not torch.allclose(scores.scores.double(), wider[1:], atol=1e-6)


def test_rfm_from_host_copies_the_papers_source_layers(adapters, image_path: Path) -> None:
    adapter = adapters["qwen2"]
    host = adapter.text_model.layers
    rfm = RegionFocusModule.from_host(adapter, llm_layer_list=[2, 2])  # sources [1, 2, 2]
    assert rfm.n_layers == 2 and len(rfm.layers) == 3
    for i, src in enumerate([1, 2, 2]):
        for (name, p), (_, q) in zip(
            rfm.layers[i].named_parameters(), host[src].named_parameters(), strict=True
        ):
            assert torch.equal(p, q), (i, name)
            assert p.data_ptr() != q.data_ptr()  # copies, not shared storage
    assert torch.equal(rfm.norm.weight, adapter.text_model.norm.weight)
    with pytest.raises(ValueError, match="outside"):
        RegionFocusModule.from_host(adapter, llm_layer_list=[1, 3])

    # Default init (list 1..N): the RFM is the host's first N+1 layers, so its score is the host attention
    # scorer's with N+1 layers.
    segments = _segments(adapter, image_path)
    from_host = RFMScorer(RegionFocusModule.from_host(adapter, n_layers=2)).score(
        adapter, QUESTION, segments, 1
    )
    direct = AttentionScorer(3).score(adapter, QUESTION, segments, 1)
    torch.testing.assert_close(from_host.scores, direct.scores, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------- through the engine


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_answers_through_the_engine(llm: str, checkpoints, image_path: Path, tmp_path: Path) -> None:
    folder, _, _ = checkpoints[llm]
    pyr = PyramidOptions(cache_dir=tmp_path / "cache")
    rec = answer(
        image_path,
        QUESTION,
        model=str(folder),
        options=AskOptions(strategy="tiles-all", max_new_tokens=3, pyramid=pyr),
    )
    assert rec.model_family == "llava_largeimg" and rec.random_weights
    assert 1 <= rec.generated_tokens <= 3
    s = rec.stats
    level = rec.image["levels"][0]
    rows, cols = math.ceil(level["height"] / (IMAGE / POOLED)), math.ceil(level["width"] / (IMAGE / POOLED))
    assert s.vision_tokens_into_llm == GRID * GRID + rows * cols + rows  # thumbnail + pooled + newlines
    assert s.tokens_into_llm == s.vision_tokens_into_llm + s.text_tokens
    assert s.tokens_per_layer == [s.tokens_into_llm] * LLM_LAYERS
    n_tiles = math.ceil(level["height"] / IMAGE) * math.ceil(level["width"] / IMAGE)
    assert s.images_encoded == 1 + n_tiles
    assert s.tflops_llm > 0 and s.tflops_vision > 0

    rec = answer(
        image_path,
        QUESTION,
        model=str(folder),
        options=AskOptions(strategy="c2f", scorer="rfm", max_new_tokens=3, pyramid=pyr),
    )
    assert rec.strategy == "c2f" and rec.levels and 1 <= rec.generated_tokens <= 3
    assert rec.settings["scorer"] == "rfm"
    assert rec.stats.tflops_scoring > 0
    assert rec.stats.vision_tokens_into_llm > GRID * GRID  # the thumbnail plus pruned local tokens

    with pytest.raises(UnsupportedModelError, match="no stock processor path"):
        answer(image_path, QUESTION, model=str(folder), options=AskOptions(strategy="anyres", pyramid=pyr))
