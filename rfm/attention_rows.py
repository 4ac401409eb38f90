"""The RFM's score: head-averaged attention of the last prompt token over the local vision tokens.

Shared by the trained RFM (its own N+1 decoder layers) and the training-free scorer (the host LLM's first
K layers): run ``layers[:-1]`` over the prompt, then take layer ``layers[-1]``'s attention row of the last
token, per head, with the softmax restricted to the local keys (renormalising each head's full-softmax row
over those keys is exactly that), then average the heads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from lrs_vqa.engine.decoder import DecoderLoop, PrefillInputs
from lrs_vqa.engine.taps import TapRecorder, last_row, recording
from rfm.base import TokenScores, local_rows

if TYPE_CHECKING:
    from lrs_vqa.engine.tokens import VisionSegment
    from lrs_vqa.models.base import ModelAdapter


@torch.inference_mode()
def last_token_attention(
    layers: Sequence[torch.nn.Module],
    rotary: torch.nn.Module,
    config: object,
    inputs: PrefillInputs,
    keys: torch.Tensor,
) -> torch.Tensor:
    """(len(keys),) fp32 distribution: the last row's attention at ``layers[-1]`` restricted to ``keys``.

    ``layers`` must use the engine's tap attention (``TAP_ATTENTION``): layers of a loaded adapter do.
    Only the last layer's attention row is needed, so the last layer's MLP output is discarded.
    """
    if len(layers) == 0:
        raise ValueError("need at least one layer to score with")
    hidden = inputs.embeds
    cos, sin = rotary(hidden, inputs.position_ids)
    cache = DynamicCache(config=config)
    for layer in layers[:-1]:
        hidden = DecoderLoop._layer(layer, hidden, cos, sin, cache)
    last = layers[-1]
    recorder = TapRecorder({id(last.self_attn): "score"}, {"score": last_row}, head_mean=False)
    with recording(recorder):
        DecoderLoop._layer(last, hidden, cos, sin, cache)
    probs = recorder.result("score")[0, :, 0]  # (heads, keys)
    local = probs[:, keys.to(probs.device)]
    local = local / local.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(local.dtype).tiny)
    return local.mean(dim=0).float().cpu()


def score_local_view(
    adapter: ModelAdapter,
    question: str,
    segments: Sequence[VisionSegment],
    local: int,
    layers: Sequence[torch.nn.Module],
    rotary: torch.nn.Module,
    config: object,
    layer_cost: Callable[[int], float],
) -> TokenScores:
    """Both scorers' pass: the prompt the host LLM would read, :func:`last_token_attention` over
    ``segments[local]``'s tokens, and the cost of running ``layers`` (``layer_cost(prompt length)`` FLOPs
    each; the last layer runs whole, its MLP output discarded)."""
    prompt = adapter.build_prompt(question, segments)
    vision_rows = torch.nonzero(prompt.inputs.vision).flatten()
    keys = vision_rows[local_rows(adapter, segments, local)]
    scores = last_token_attention(layers, rotary, config, prompt.inputs, keys)
    rows = adapter.present_rows(segments[local])
    cost = len(layers) * layer_cost(prompt.inputs.length)
    return TokenScores(scores, rows, segments[local].meta.select(rows), tflops=cost / 1e12)
