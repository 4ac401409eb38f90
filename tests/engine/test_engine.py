"""Proofs for the engine on tiny random models of each family: the decoder loop reproduces the stock model,
taps equal eager attention rows, pruned prefill + cached decode equals no-cache recomputation, and the
FLOPs counter reproduces the literature's anchors."""

from __future__ import annotations

from unittest.mock import patch

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_vqa.engine.decoder import LayerView, PrefillInputs, Selection
from lrs_vqa.engine.flops import LayerShape, flops_report, layer_flops, stack_flops
from lrs_vqa.engine.taps import first_row
from lrs_vqa.models.registry import load_adapter
from lrs_vqa.tiny import FAMILIES

QUESTION = "what is the color of the car?"


@pytest.fixture(scope="module")
def tiny_paths(tiny_checkpoint) -> dict[str, str]:
    return {fam: tiny_checkpoint(fam, 3) for fam in FAMILIES}


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))


class KeepTopHalf:
    """Tap the last row at layer ``tap``; before layer ``tap + 1`` keep the text and the most-attended half
    of the vision rows. Records its decision so it can be replayed."""

    def __init__(self, tap: int = 0) -> None:
        self.tap = tap
        self.keep: torch.Tensor | None = None
        self.rows_before = 0

    def llm_tap_rows(self, view: LayerView) -> torch.Tensor | None:
        return torch.tensor([view.hidden.shape[1] - 1]) if view.layer == self.tap else None

    def before_layer(self, view: LayerView) -> Selection | None:
        if view.layer != self.tap + 1:
            return None
        att = view.taps[self.tap].row(view.hidden.shape[1] - 1)
        vis = torch.nonzero(view.vision).flatten()
        top = vis[att[vis].topk(len(vis) // 2).indices]
        self.keep = torch.sort(torch.cat([torch.nonzero(~view.vision).flatten(), top])).values
        self.rows_before = view.hidden.shape[1]
        return Selection(self.keep)


class Replay:
    """Apply a recorded keep at ``layer``, keeping every row appended after the recorded prompt."""

    def __init__(self, layer: int, keep: torch.Tensor, rows_before: int) -> None:
        self.layer, self.keep, self.rows_before = layer, keep, rows_before

    def llm_tap_rows(self, view: LayerView) -> None:
        return None

    def before_layer(self, view: LayerView) -> Selection | None:
        if view.layer != self.layer:
            return None
        extra = torch.arange(self.rows_before, view.hidden.shape[1])
        return Selection(torch.cat([self.keep, extra]))


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_equals_stock_forward_and_generate(
    family: str, tiny_paths: dict[str, str], image: Image.Image
) -> None:
    adapter = load_adapter(tiny_paths[family])
    prompt, inputs = adapter.stock_prompt(image, QUESTION)
    with torch.inference_mode():
        stock = adapter.model(**inputs).logits
    ours = adapter.decoder.prefill(prompt.inputs, all_logits=True).logits
    assert ours.shape == stock.shape
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)
    ids, _, _ = adapter.decoder.generate(
        prompt.inputs,
        max_new_tokens=6,
        eos_token_ids=adapter.eos_token_ids,
        suppress_token_ids=adapter.suppress_token_ids,
    )
    gen = adapter.model.generate(
        **inputs, max_new_tokens=6, do_sample=False, suppress_tokens=list(adapter.suppress_token_ids)
    )
    stock_ids = gen[0, inputs["input_ids"].shape[1] :].tolist()
    assert ids == stock_ids  # every token, and the same length (a decoder that stops early fails)


@pytest.mark.parametrize("max_new", [1, 4])
def test_generate_runs_one_decode_step_per_token_after_the_first(
    max_new: int, tiny_paths: dict[str, str], image: Image.Image
) -> None:
    adapter = load_adapter(tiny_paths["llava"])
    prompt, _ = adapter.stock_prompt(image, QUESTION)
    with patch.object(adapter.decoder, "decode_step", wraps=adapter.decoder.decode_step) as step:
        ids, _, _ = adapter.decoder.generate(prompt.inputs, max_new_tokens=max_new)
    assert len(ids) == max_new  # no eos given: runs to the cap
    assert step.call_count == max_new - 1  # the prefill produced the first token


@pytest.mark.parametrize("family", FAMILIES)
def test_llm_taps_equal_eager_attention_rows(
    family: str, tiny_paths: dict[str, str], image: Image.Image
) -> None:
    adapter = load_adapter(tiny_paths[family])
    prompt, inputs = adapter.stock_prompt(image, QUESTION)
    n = prompt.inputs.length
    instruction = torch.nonzero(prompt.inputs.instruction).flatten()
    rows = torch.cat([instruction, torch.tensor([n - 1])])

    class TapAll:
        def llm_tap_rows(self, view: LayerView) -> torch.Tensor:
            return rows

        def before_layer(self, view: LayerView) -> None:
            return None

    result = adapter.decoder.prefill(prompt.inputs, [TapAll()])
    adapter.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            eager = adapter.model(**inputs, output_attentions=True).attentions
    finally:
        adapter.model.set_attn_implementation("lrs_vqa_sdpa_tap")
    assert len(eager) == len(result.taps)
    for k, tap in result.taps.items():
        expected = eager[k][0].float().mean(0)[tap.rows]  # head mean of the eager rows
        torch.testing.assert_close(tap.probs, expected, rtol=1e-4, atol=1e-6)
        assert torch.allclose(tap.probs.sum(-1), torch.ones(len(rows)), atol=1e-5)


@pytest.mark.parametrize("family", ["llava", "llava_onevision"])
def test_vision_cls_tap_equals_eager(family: str, tiny_paths: dict[str, str]) -> None:
    adapter = load_adapter(tiny_paths[family])
    pixels = torch.randn(
        2, 3, adapter.image_size, adapter.image_size, generator=torch.Generator().manual_seed(1)
    )

    class Hook:
        def vision_tap_rows(self) -> dict:
            return {0: first_row, -1: first_row}

    with adapter.vision_taps([Hook()]) as taps:
        adapter._encoder_features(pixels)
    tower = adapter.model.model.vision_tower
    adapter.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            eager = tower(pixels, output_attentions=True).attentions
    finally:
        adapter.model.set_attn_implementation("lrs_vqa_sdpa_tap")
    last = len(eager) - 1
    torch.testing.assert_close(taps[0], eager[0].float().mean(1)[:, :1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(taps[-1], eager[last].float().mean(1)[:, :1], rtol=1e-4, atol=1e-6)


def _extend(adapter, inputs: PrefillInputs, tokens: list[int]) -> PrefillInputs:
    """The prompt followed by ``tokens``, at the positions greedy decoding gave them."""
    ids = torch.tensor([tokens])
    with torch.inference_mode():
        emb = adapter.text_model.embed_tokens(ids)
    pos = torch.arange(inputs.next_position, inputs.next_position + len(tokens))[None]
    if adapter.mrope:
        pos = pos[None].expand(3, 1, -1)
    return PrefillInputs(
        torch.cat([inputs.embeds, emb], dim=1),
        torch.cat([inputs.position_ids, pos], dim=-1),
        torch.cat([inputs.vision, torch.zeros(len(tokens), dtype=torch.bool)]),
        torch.cat([inputs.instruction, torch.zeros(len(tokens), dtype=torch.bool)]),
        inputs.next_position + len(tokens),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_prefill_cached_decode_equals_recomputation(
    family: str, tiny_paths: dict[str, str], image: Image.Image
) -> None:
    adapter = load_adapter(tiny_paths[family])
    prompt, _ = adapter.stock_prompt(image, QUESTION)
    hook = KeepTopHalf(tap=0)
    result = adapter.decoder.prefill(prompt.inputs, [hook])
    vision = int(prompt.inputs.vision.sum())
    assert result.vision_tokens_per_layer == [vision, vision // 2]
    assert result.tokens_per_layer[1] == prompt.inputs.length - (vision - vision // 2)
    tokens, step_logits = [], [result.logits[0, -1]]
    position = prompt.inputs.next_position
    for _ in range(4):
        token = int(torch.argmax(step_logits[-1]))
        tokens.append(token)
        step_logits.append(adapter.decoder.decode_step(token, position, result.cache))
        position += 1
    assert hook.keep is not None
    extended = _extend(adapter, prompt.inputs, tokens)
    full = adapter.decoder.prefill(extended, [Replay(1, hook.keep, hook.rows_before)], all_logits=True)
    recomputed = full.logits[0, -(len(tokens) + 1) :]
    torch.testing.assert_close(torch.stack(step_logits), recomputed, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_loads_and_answers(family: str, tiny_paths: dict[str, str], image: Image.Image) -> None:
    adapter = load_adapter(tiny_paths[family], dtype="bfloat16")
    assert adapter.dtype == torch.bfloat16
    prompt, _ = adapter.stock_prompt(image, QUESTION)
    ids, _, _ = adapter.decoder.generate(prompt.inputs, max_new_tokens=3)
    assert len(ids) == 3


def test_flops_anchors_from_real_shapes() -> None:
    llava15 = LayerShape(hidden=4096, ffn=11008, layers=32)  # LLaVA-1.5-7B / LLaVA-NeXT-7B (Vicuna-7B)
    assert stack_flops([576] * 32, llava15) / 1e12 == pytest.approx(3.817, abs=5e-4)
    assert stack_flops([96] * 16 + [32] * 16, llava15) / 1e12 == pytest.approx(
        0.415, abs=1e-3
    )  # VScan avg 64
    assert stack_flops([2880] * 32, llava15) / 1e12 == pytest.approx(20.825, abs=5e-4)
    assert stack_flops([320] * 32, llava15) / 1e12 == pytest.approx(2.099, abs=5e-4)
    # The formula itself, by hand: 4nd² + 2n²d + 3ndm
    assert layer_flops(2, 3, 5) == 4 * 2 * 9 + 2 * 4 * 3 + 3 * 2 * 3 * 5
    assert layer_flops(2, 3, 5, gated_mlp=False) == 4 * 2 * 9 + 2 * 4 * 3 + 2 * 2 * 3 * 5
    with pytest.raises(ValueError):
        stack_flops([1, 2], llava15)
    report = flops_report(
        llm=llava15,
        vision_tokens_per_layer=[576] * 32,
        text_tokens=0,
        vision=LayerShape(1024, 4096, 24, gated_mlp=False),
        vision_patches_per_image=577,
        images=1,
    )
    assert report.llm_vision_tflops == pytest.approx(3.81715, abs=1e-4)
    assert report.vision_tflops == pytest.approx(24 * layer_flops(577, 1024, 4096, gated_mlp=False) / 1e12)


@pytest.mark.parametrize("positions", ["original", "compact"])
def test_positions_after_a_drop_match_a_by_hand_recomputation(
    positions: str, tiny_paths: dict[str, str], image: Image.Image
) -> None:
    """Drop half the vision rows before layer 1, then run layer 1 by hand with the kept rows' rotary
    positions — their own (original) or 0..n−1 (compact, as VScan's/TransPrune's released code) — and
    compare with the decoder loop's logits."""
    adapter = load_adapter(tiny_paths["llava"])
    inputs = adapter.stock_prompt(image, QUESTION)[0].inputs
    hook = KeepTopHalf(tap=0)
    with torch.inference_mode():
        got = adapter.decoder.prefill(inputs, [hook], positions=positions).logits[0, -1]
        dec = adapter.decoder
        hidden = inputs.embeds
        cos, sin = dec.rotary(hidden, inputs.position_ids)
        hidden = dec.layers[0](hidden, attention_mask=None, position_embeddings=(cos, sin))
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        assert hook.keep is not None
        hidden = hidden[:, hook.keep]
        pos = (
            inputs.position_ids[..., hook.keep]
            if positions == "original"
            else torch.arange(len(hook.keep))[None]
        )
        cos, sin = dec.rotary(hidden, pos)
        hidden = dec.layers[1](hidden, attention_mask=None, position_embeddings=(cos, sin))
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        want = dec.lm_head(dec.norm(hidden[:, -1:]))[0, -1]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if positions == "compact":  # and it is a different computation from the default
        with torch.inference_mode():
            default = adapter.decoder.prefill(inputs, [KeepTopHalf(tap=0)]).logits[0, -1]
        assert not torch.allclose(got, default, atol=1e-5)


def test_pruners_ask_for_compact_positions_and_bad_modes_are_refused(
    tiny_paths: dict[str, str], image: Image.Image
) -> None:
    from lrs_vqa.options import AskOptions, C2FError
    from pruning import PrunerConfigError, get_pruner
    from pruning.base import ModelTarget

    adapter = load_adapter(tiny_paths["llava"])
    target = ModelTarget.from_adapter(adapter)
    for spec in ("vscan:positions=compact", "transprune:positions=compact"):
        assert [h.positions for h in get_pruner(spec).hooks(8, target).llm] == ["compact"]
    assert [h.positions for h in get_pruner("transprune").hooks(8, target).llm] == ["original"]
    with pytest.raises(PrunerConfigError, match="positions"):
        get_pruner("vscan:positions=shuffled")
    with pytest.raises(C2FError, match="--positions"):
        AskOptions(positions="shuffled")
