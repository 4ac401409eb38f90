"""Our own prefill loop over the decoder layers (batch size 1), with hook points that drop or merge
vision tokens before any layer, attention taps, and KV-cache greedy decoding.

By default kept tokens keep their original RoPE positions (1-D or M-RoPE): positions are computed once on
the full sequence and sliced, and the cos/sin tables are sliced with them (``positions="compact"``
renumbers the kept rows instead, as some pruners' released code does). Decoding continues from the original
sequence length (1-D) or from the M-RoPE maximum + 1, exactly as the stock model would, so a run that
keeps every token reproduces the stock model's logits.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import DynamicCache

from lrs_vqa.engine import POSITION_MODES
from lrs_vqa.engine.taps import TapRecorder, fixed_rows, recording


@dataclass
class PrefillInputs:
    """One prompt, ready for the LLM: embeddings, original positions and which rows are what."""

    embeds: torch.Tensor  # (1, L, d)
    position_ids: torch.Tensor  # (1, L) or (3, 1, L) for M-RoPE
    vision: torch.Tensor  # (L,) bool: vision tokens (incl. newline markers)
    instruction: torch.Tensor  # (L,) bool: the question's tokens
    next_position: int  # position id of the first generated token

    @property
    def length(self) -> int:
        return self.embeds.shape[1]


@dataclass
class TapResult:
    """Head-averaged attention probabilities of ``rows`` (current row indices) over all keys; ``per_head``
    keeps every head's when a hook asked for them (``tap_heads = True``)."""

    rows: torch.Tensor  # (r,)
    probs: torch.Tensor  # (r, keys), fp32
    per_head: torch.Tensor | None = None  # (heads, r, keys), fp32

    def row(self, index: int) -> torch.Tensor:
        where = (self.rows == index).nonzero()
        if where.numel() == 0:
            raise KeyError(f"row {index} was not tapped")
        return self.probs[int(where[0, 0])]


@dataclass
class LayerView:
    """What a hook sees before decoder layer ``layer`` runs (all tensors describe the current rows)."""

    layer: int
    hidden: torch.Tensor  # (1, L', d)
    orig_index: torch.Tensor  # (L',) index of each row in the original prompt
    vision: torch.Tensor  # (L',) bool
    instruction: torch.Tensor  # (L',) bool
    taps: dict[int, TapResult]  # attention rows captured in earlier layers, by layer index


@dataclass(frozen=True)
class Selection:
    """Rows to keep (sorted indices into the current rows) and optional replacement states for them."""

    keep: torch.Tensor
    hidden: torch.Tensor | None = None  # (1, len(keep), d): merged tokens


class LayerHook(Protocol):
    # A hook may also set ``tap_heads = True``: its taps then keep every head (``TapResult.per_head``).

    def llm_tap_rows(self, view: LayerView) -> torch.Tensor | None:
        """Rows whose attention to capture *during* ``view.layer`` (None: nothing)."""
        ...

    def before_layer(self, view: LayerView) -> Selection | None:
        """Optionally drop or merge rows before ``view.layer`` runs."""
        ...


@dataclass
class PrefillResult:
    logits: torch.Tensor  # (1, L_last, vocab) for all kept rows if requested, else (1, 1, vocab)
    cache: DynamicCache
    tokens_per_layer: list[int]
    vision_tokens_per_layer: list[int]
    kept_orig_index: list[torch.Tensor]  # per layer: which original rows it saw
    taps: dict[int, TapResult] = field(default_factory=dict)
    seconds: float = 0.0


class DecoderLoop:
    """Runs the text decoder of a stock ``transformers`` VLM layer by layer."""

    def __init__(self, text_model: torch.nn.Module, lm_head: torch.nn.Module, mrope: bool) -> None:
        self.text_model = text_model
        self.layers = list(text_model.layers)
        self.norm = text_model.norm
        self.rotary = text_model.rotary_emb
        self.embed_tokens = text_model.embed_tokens
        self.lm_head = lm_head
        self.mrope = mrope
        self.config = text_model.config

    @torch.inference_mode()
    def prefill(
        self,
        inputs: PrefillInputs,
        hooks: Sequence[LayerHook] = (),
        *,
        all_logits: bool = False,
        cache: DynamicCache | None = None,
        positions: str = "original",
    ) -> PrefillResult:
        """Run the decoder over ``inputs`` with ``hooks`` dropping or merging rows before layers.

        ``positions``: the rotary positions of the rows a hook keeps — ``"original"`` (each row keeps its
        position; the default) or ``"compact"`` (renumbered 0..n−1 after every drop, as VScan's and
        TransPrune's released code do). A hook may ask for compact positions itself (``positions =
        "compact"``). Decoding continues from the original next position either way, as the released code
        does (its cache position counts the unpruned first layer)."""
        t0 = time.perf_counter()
        compact = _compact_positions(positions, hooks)
        if compact and self.mrope:
            raise ValueError("compact positions are defined for 1-D rotary positions, not M-RoPE")
        cache = cache if cache is not None else DynamicCache(config=self.config)
        hidden = inputs.embeds
        cos, sin = self.rotary(hidden, inputs.position_ids)
        n = inputs.length
        orig = torch.arange(n, device=hidden.device)
        vision, instruction = inputs.vision.to(hidden.device), inputs.instruction.to(hidden.device)
        taps: dict[int, TapResult] = {}
        tokens: list[int] = []
        vision_tokens: list[int] = []
        kept: list[torch.Tensor] = []
        for k, layer in enumerate(self.layers):
            view = LayerView(k, hidden, orig, vision, instruction, taps)
            for hook in hooks:
                selection = hook.before_layer(view)
                if selection is None:
                    continue
                keep = selection.keep.to(hidden.device)
                hidden = selection.hidden if selection.hidden is not None else hidden[:, keep]
                if compact:
                    position_ids = torch.arange(hidden.shape[1], device=hidden.device)[None]
                    cos, sin = self.rotary(hidden, position_ids)
                else:
                    cos, sin = cos[:, keep], sin[:, keep]
                orig, vision, instruction = orig[keep], vision[keep], instruction[keep]
                view = LayerView(k, hidden, orig, vision, instruction, taps)
            requested = [r for hook in hooks if (r := hook.llm_tap_rows(view)) is not None]
            recorder = None
            if requested:
                rows = torch.unique(torch.cat([r.to(hidden.device) for r in requested]))
                heads = any(getattr(hook, "tap_heads", False) for hook in hooks)
                recorder = TapRecorder({id(layer.self_attn): k}, {k: fixed_rows(rows)}, head_mean=not heads)
                with recording(recorder):
                    hidden = self._layer(layer, hidden, cos, sin, cache)
                probs = recorder.result(k)[0]
                taps[k] = TapResult(rows, probs.mean(0), probs) if heads else TapResult(rows, probs)
            else:
                hidden = self._layer(layer, hidden, cos, sin, cache)
            tokens.append(hidden.shape[1])
            vision_tokens.append(int(vision.sum()))
            kept.append(orig)
        normed = self.norm(hidden if all_logits else hidden[:, -1:])
        logits = self.lm_head(normed)
        return PrefillResult(
            logits, cache, tokens, vision_tokens, kept, taps, seconds=time.perf_counter() - t0
        )

    @staticmethod
    def _layer(
        layer: torch.nn.Module,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: DynamicCache,
    ) -> torch.Tensor:
        # attention_mask=None: SDPA applies the causal mask itself for a prefill of one unpadded sequence,
        # and a single decode query may attend to every cached key.
        kwargs = {_cache_argument(type(layer)): cache}
        out = layer(hidden, attention_mask=None, use_cache=True, position_embeddings=(cos, sin), **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def _positions(self, position: int, device: torch.device) -> torch.Tensor:
        pos = torch.tensor([[position]], device=device)
        return pos.expand(3, 1, 1) if self.mrope else pos

    @torch.inference_mode()
    def decode_step(self, token: int, position: int, cache: DynamicCache) -> torch.Tensor:
        """Logits (vocab,) after feeding ``token`` at ``position`` on top of ``cache``."""
        device = self.embed_tokens.weight.device
        hidden = self.embed_tokens(torch.tensor([[token]], device=device))
        cos, sin = self.rotary(hidden, self._positions(position, device))
        for layer in self.layers:
            hidden = self._layer(layer, hidden, cos, sin, cache)
        return self.lm_head(self.norm(hidden))[0, -1]

    @torch.inference_mode()
    def generate(
        self,
        inputs: PrefillInputs,
        hooks: Sequence[LayerHook] = (),
        *,
        max_new_tokens: int = 32,
        eos_token_ids: Sequence[int] = (),
        suppress_token_ids: Sequence[int] = (),
        positions: str = "original",
    ) -> tuple[list[int], PrefillResult, float]:
        """Greedy decoding; returns the new token ids, the prefill result and the decode seconds."""
        result = self.prefill(inputs, hooks, positions=positions)
        t0 = time.perf_counter()
        suppress = torch.tensor(list(suppress_token_ids), dtype=torch.long)
        logits = result.logits[0, -1]
        out: list[int] = []
        position = inputs.next_position
        for _ in range(max_new_tokens):
            if suppress.numel():
                logits = logits.clone()
                logits[suppress.to(logits.device)] = float("-inf")
            token = int(torch.argmax(logits))
            out.append(token)
            if token in eos_token_ids or len(out) == max_new_tokens:
                break  # no decode step for a token that will never be used
            logits = self.decode_step(token, position, result.cache)
            position += 1
        return out, result, time.perf_counter() - t0


@functools.cache
def _cache_argument(layer_type: type) -> str:
    """The keyword a decoder layer takes its KV cache by: ``cache`` in current transformers 5.x, where
    ``past_key_values`` is deprecated (removed in 5.40); older 5.x layers only know ``past_key_values``."""
    params = inspect.signature(layer_type.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _compact_positions(mode: str, hooks: Sequence[object]) -> bool:
    if mode not in POSITION_MODES:
        raise ValueError(f"positions must be one of {', '.join(POSITION_MODES)}, got {mode!r}")
    return mode == "compact" or any(getattr(h, "positions", "original") == "compact" for h in hooks)
