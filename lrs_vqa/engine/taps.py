"""Attention taps: the attention rows a stage asks for, under SDPA, without L×L matrices.

A registered ``transformers.AttentionInterface`` function computes the layer's real output with the
stock SDPA function and, only for the (module, rows) a ``TapRecorder`` asks for, recomputes the softmax
rows from the query/key the layer already produced (after RoPE / M-RoPE, so no positional code is
re-implemented): cost ``heads · rows · keys · head_dim``, memory ``heads · rows · keys``. With no recorder
active it is exactly SDPA. The model is switched with ``set_attn_implementation`` — a public API — never
by patching classes.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

TAP_ATTENTION = "lrs_vqa_sdpa_tap"

_ACTIVE: contextvars.ContextVar[TapRecorder | None] = contextvars.ContextVar("lrs_vqa_tap", default=None)

# rows: a callable gets (q_len, kv_len) and returns query-row indices; lets "last"/"instruction" resolve
# against the sequence as it is at that layer (after earlier pruning).
RowSelector = Callable[[int, int], torch.Tensor]


@dataclass
class TapRecorder:
    """Which modules to tap (by identity) and the rows captured from them.

    ``requests[key]`` is a row selector; after the forward, ``result(key)`` holds fp32 attention
    probabilities of shape (batch, rows, keys) when ``head_mean`` else (batch, heads, rows, keys). With
    ``raw`` it holds the raw logits ``q·k·scale`` instead (per head, no mask, no softmax: what attention
    distillation compares), differentiable when the forward is. A module
    called several times in one forward (Qwen-VL's vision attention runs once per image) contributes one
    batch entry per call.
    """

    module_keys: dict[int, object] = field(default_factory=dict)  # id(attention module) -> key
    requests: dict[object, RowSelector] = field(default_factory=dict)
    head_mean: bool = True
    raw: bool = False
    parts: dict[object, list[torch.Tensor]] = field(default_factory=dict)

    def result(self, key: object) -> torch.Tensor:
        if key not in self.parts:
            raise KeyError(f"nothing was captured for {key!r}")
        return torch.cat(self.parts[key], dim=0)

    def capture(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        is_causal: bool,
    ) -> None:
        tap_key = self.module_keys.get(id(module))
        if tap_key is None or tap_key not in self.requests:
            return
        q_len, kv_len = query.shape[2], key.shape[2]
        rows = self.requests[tap_key](q_len, kv_len).to(query.device)
        b, heads, _, dim = query.shape
        kv_heads = key.shape[1]
        groups = heads // kv_heads
        # Grouped query heads share their KV head: one batched matmul per KV head, no repeat_kv copy.
        q = query[:, :, rows].float().reshape(b, kv_heads, groups * len(rows), dim)
        scale = scaling if scaling is not None else dim**-0.5
        logits = torch.matmul(q, key.float().transpose(-1, -2)) * scale
        logits = logits.reshape(b, heads, len(rows), kv_len)  # (B, H, r, kv)
        if self.raw:
            self.parts.setdefault(tap_key, []).append(logits)
            return
        if attention_mask is not None:
            mask = attention_mask[:, :, rows] if attention_mask.shape[2] == q_len else attention_mask
            if mask.dtype == torch.bool:
                logits = logits.masked_fill(~mask, float("-inf"))
            else:
                logits = logits + mask.float()
        elif is_causal and q_len > 1:
            # Row i of the query is absolute position i + (kv_len - q_len): it sees keys up to there.
            absolute = rows + (kv_len - q_len)
            future = torch.arange(kv_len, device=query.device)[None, :] > absolute[:, None]
            logits = logits.masked_fill(future, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        self.parts.setdefault(tap_key, []).append(probs.mean(1) if self.head_mean else probs)


def tap_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    out = sdpa_attention_forward(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout=dropout,
        scaling=scaling,
        is_causal=is_causal,
        **kwargs,
    )
    recorder = _ACTIVE.get()
    if recorder is not None and query.shape[2] > 1:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        recorder.capture(module, query, key, attention_mask, scaling, bool(causal))
    return out


AttentionInterface.register(TAP_ATTENTION, tap_attention_forward)


@contextlib.contextmanager
def recording(recorder: TapRecorder) -> Iterator[TapRecorder]:
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


def last_row(q_len: int, kv_len: int) -> torch.Tensor:
    return torch.tensor([q_len - 1])


def first_row(q_len: int, kv_len: int) -> torch.Tensor:
    """The CLS row of a vision encoder."""
    return torch.tensor([0])


def fixed_rows(rows: torch.Tensor) -> RowSelector:
    return lambda q_len, kv_len: rows
