"""Analytic FLOPs, with the per-layer formula the pruning literature uses (pruners.md §0.3).

One transformer layer over ``n`` tokens with hidden size ``d`` and FFN size ``m`` costs
``4·n·d² + 2·n²·d + 3·n·d·m`` FLOPs (q/k/v/o projections, attention scores and mix, a gated FFN).
PyramidDrop, SparseVLM, AdaptInfer and VScan count the LLM with ``n`` = vision tokens only; we report that
figure (``llm_vision_tflops``) so numbers compare with their tables, and also the figure with text tokens
included. Vision encoders use the same formula with their own ``d``, ``m`` and patch count (a plain
2-matrix MLP costs ``2·n·d·m`` instead of ``3·n·d·m``; the difference is documented, not hidden).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def layer_flops(n: int, d: int, m: int, *, gated_mlp: bool = True) -> float:
    """FLOPs of one layer over ``n`` tokens (0 tokens → 0)."""
    mlp = 3 if gated_mlp else 2
    return 4.0 * n * d * d + 2.0 * n * n * d + mlp * n * d * m


@dataclass(frozen=True)
class LayerShape:
    hidden: int
    ffn: int
    layers: int
    gated_mlp: bool = True


def stack_flops(tokens_per_layer: Sequence[int], shape: LayerShape) -> float:
    """FLOPs of a layer stack where layer ``k`` sees ``tokens_per_layer[k]`` tokens."""
    if len(tokens_per_layer) != shape.layers:
        raise ValueError(f"need {shape.layers} per-layer token counts, got {len(tokens_per_layer)}")
    return sum(layer_flops(n, shape.hidden, shape.ffn, gated_mlp=shape.gated_mlp) for n in tokens_per_layer)


@dataclass(frozen=True)
class FlopsReport:
    vision_tflops: float  # vision encoder(s) over every encoded tile
    llm_vision_tflops: float  # LLM counting vision tokens only (the literature's convention)
    llm_total_tflops: float  # LLM counting every prefill token

    @property
    def total_tflops(self) -> float:
        return self.vision_tflops + self.llm_total_tflops


def flops_report(
    *,
    llm: LayerShape,
    vision_tokens_per_layer: Sequence[int],
    text_tokens: int,
    vision: LayerShape | None = None,
    vision_patches_per_image: int = 0,
    images: int = 0,
) -> FlopsReport:
    """TFLOPs of one prefill: the encoder over ``images`` inputs plus the LLM with a per-layer schedule."""
    vision_flops = 0.0
    if vision is not None and images:
        vision_flops = (
            images
            * vision.layers
            * layer_flops(vision_patches_per_image, vision.hidden, vision.ffn, gated_mlp=vision.gated_mlp)
        )
    return FlopsReport(
        vision_tflops=vision_flops / 1e12,
        llm_vision_tflops=stack_flops(vision_tokens_per_layer, llm) / 1e12,
        llm_total_tflops=stack_flops([n + text_tokens for n in vision_tokens_per_layer], llm) / 1e12,
    )
