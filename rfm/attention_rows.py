"""The RFM's score: head-averaged attention of the last prompt token over the local vision tokens.

Shared by the trained RFM (its own N+1 decoder layers) and the training-free scorer (the host LLM's first
K layers): run ``layers[:-1]`` over the prompt, then take layer ``layers[-1]``'s attention row of the last
token, per head, with the softmax restricted to the local keys (renormalising each head's full-softmax row
over those keys is exactly that), then average the heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from lrs_vqa.engine.decoder import DecoderLoop, PrefillInputs
from lrs_vqa.engine.taps import TapRecorder, last_row, recording


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
