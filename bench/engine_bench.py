"""Benchmark: the engine at the real shapes of llava-onevision-qwen2-0.5b, random weights, on CPU.

A random checkpoint with the exact shapes of ``llava-hf/llava-onevision-qwen2-0.5b-ov-hf`` (SigLIP
so400m-patch14-384 truncated to 26 layers, 2-layer GELU projector, Qwen2-0.5B; ~0.89 B parameters) is
written locally — no download: ``make_tiny_model(..., "llava_onevision")`` supplies the tokenizer,
processor and chat template, the config is edited to the real shapes and the weights are drawn by
``AutoModelForImageTextToText.from_config`` (seed 0). It is loaded back through
``lrs_vqa.models.registry.load_adapter``, the path users take. On a synthetic scene (27,328² by default;
a COG of the pyramid benchmark is reused when present) it measures, per strategy of ``lrs_vqa.answer``
(``global``, ``anyres``, ``tiles-all`` at the coarse level):

* vision tokens encoded, tokens into the LLM, analytic TFLOPs (vision / LLM / total, from the record),
  seconds per stage (``record.stats.seconds``) and the peak RSS of the run (VmHWM, reset before each run);

and the overhead of the attention taps on one prompt (``tiles-all`` by default): ``decoder.prefill``
without hooks against prefill with a ``LayerHook`` asking for the last row at every layer, for every
instruction row at every layer, and for the last row at one layer (FastV's K=2), alternating, medians;
plus the tap's own added work timed in isolation (``TapRecorder.capture`` on tensors of the same shapes),
which is far less noisy than a difference of two ~minute-long prefills.

Random weights: token counts, FLOPs and timings are those of the real model; the answers are meaningless.

    .venv/bin/python bench/engine_bench.py --quick                 # 4096² scene, global only (~2 min)
    .venv/bin/python bench/engine_bench.py --write-results         # 27,328², all strategies (~30 min)
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

ROOT = Path(__file__).resolve().parent.parent

import torch  # noqa: E402
from _common import (  # noqa: E402
    CHECKPOINT_NAME,
    NOISY_CORES,
    SHAPES,
    TEXT,
    VISION,
    CpuMeter,
    _log,
    build_checkpoint,
    find_or_make_scene,
    machine,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    wait_until_quiet,
    write_results_section,
)

from lrs_vqa.answer import AskOptions, answer, pyramid_spec_for  # noqa: E402
from lrs_vqa.engine.decoder import LayerView, PrefillInputs  # noqa: E402
from lrs_vqa.engine.taps import TapRecorder, fixed_rows  # noqa: E402
from lrs_vqa.engine.tokens import TokenMeta, VisionSegment  # noqa: E402
from lrs_vqa.models.base import EncodedPrompt, ModelAdapter  # noqa: E402
from lrs_vqa.strategies import strategy_names  # noqa: E402
from pyramid.dip import DynamicImagePyramid, PyramidOptions  # noqa: E402

QUESTION = "what color is the ship near the harbor ?"
TAP_TARGET = 0.02  # the target: taps cost under 2% of prefill
FASTV_LAYER = 2  # FastV prunes after layer K=2: one tapped layer

# ---------------------------------------------------------------------------------------------------
# Real shapes (llava-hf/llava-onevision-qwen2-0.5b-ov-hf)
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# Process accounting: peak RSS (resettable), CPU used by others while we measure
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# The checkpoint
# ---------------------------------------------------------------------------------------------------


def describe_model(adapter: ModelAdapter) -> dict[str, Any]:
    model = adapter.model
    cfg = model.config
    vc, tc = cfg.vision_config, cfg.text_config
    parts = {
        "vision_tower": model.model.vision_tower,
        "projector": model.model.multi_modal_projector,
        "language_model": model.model.language_model,
    }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    total = sum(p.numel() for p in model.parameters())  # tied lm_head counted once
    ip = adapter.processor.image_processor
    return {
        "parameters": total,
        "parameters_by_part": counts,
        "lm_head_tied": model.lm_head.weight.data_ptr()
        == model.model.language_model.embed_tokens.weight.data_ptr(),
        "vision": {k: getattr(vc, k) for k in VISION},
        "text": {k: getattr(tc, k) for k in TEXT},
        "rope_theta": (getattr(tc, "rope_parameters", None) or {}).get("rope_theta"),
        "image_grid_pinpoints": [list(p) for p in cfg.image_grid_pinpoints],
        "vision_aspect_ratio": cfg.vision_aspect_ratio,
        "vision_feature_layer": cfg.vision_feature_layer,
        "processor_size": dict(ip.size),
        "processor_num_image_tokens": getattr(adapter.processor, "num_image_tokens", None),
        "attn_implementation": model.config._attn_implementation,
        "random_weights": adapter.random_weights,
    }


# ---------------------------------------------------------------------------------------------------
# The scene
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------
def run_strategy(
    adapter: ModelAdapter, scene: str, strategy: str, pyramid: PyramidOptions, question: str
) -> dict[str, Any]:
    gc.collect()
    reset_peak_rss()
    with CpuMeter() as cpu:
        rec = answer(
            scene,
            question,
            model=adapter,
            options=AskOptions(strategy=strategy, max_new_tokens=1, pyramid=pyramid),
        )
    s = rec.stats
    return {
        "strategy": strategy,
        "vision_tokens_encoded": s.vision_tokens_encoded,
        "images_encoded": s.images_encoded,
        "tokens_into_llm": s.tokens_into_llm,
        "vision_tokens_into_llm": s.vision_tokens_into_llm,
        "text_tokens": s.text_tokens,
        "tiles_read": s.tiles_read,
        "tflops_vision": s.tflops_vision,
        "tflops_llm": s.tflops_llm,
        "tflops_llm_vision_only": s.tflops_llm_vision_only,
        "tflops_total": s.tflops_total,
        "seconds": dict(s.seconds),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "record_peak_memory_mb": s.peak_memory_mb,
        "self_cores": round(cpu.self_cores, 2),
        "background_cores": round(cpu.background_cores, 2),
        "answer": rec.answer,
        "generated_tokens": rec.generated_tokens,
        "tiles": [(t.role, t.level_name, t.row, t.col, t.tokens_into_llm) for t in rec.tiles],
    }


def anyres_check(adapter: ModelAdapter, scene: str, pyramid: PyramidOptions, question: str) -> dict[str, Any]:
    """What the real processor does with the coarse level: grid, patches, and placeholder count."""
    from PIL import Image

    with DynamicImagePyramid.open(scene, pyramid) as dip:
        coarse = dip.level_image(0)
    image = Image.fromarray(coarse.pixels)
    inputs = adapter.processor_inputs(image, question)
    ids = inputs["input_ids"][0]
    placeholders = int((ids == adapter.image_token_id).sum())
    pv = inputs["pixel_values"]
    return {
        "coarse_size": list(image.size),
        "image_sizes": inputs["image_sizes"].tolist() if "image_sizes" in inputs else None,
        "pixel_values_shape": list(pv.shape),
        "processor_placeholders": placeholders,
    }


# ---------------------------------------------------------------------------------------------------
# Tap overhead
# ---------------------------------------------------------------------------------------------------
@dataclass
class TapHook:
    """A ``LayerHook`` that only records attention rows (never drops tokens)."""

    rows: Callable[[LayerView], torch.Tensor]
    layers: frozenset[int] | None = None  # None: every layer
    seen: list[int] = field(default_factory=list)

    def llm_tap_rows(self, view: LayerView) -> torch.Tensor | None:
        if self.layers is not None and view.layer not in self.layers:
            return None
        return self.rows(view)

    def before_layer(self, view: LayerView) -> None:
        return None


def last_row(view: LayerView) -> torch.Tensor:
    return torch.tensor([view.hidden.shape[1] - 1])


def instruction_rows(view: LayerView) -> torch.Tensor:
    return view.instruction.nonzero().flatten()


def build_prompt(
    adapter: ModelAdapter, scene: str, strategy: str, pyramid: PyramidOptions, question: str
) -> tuple[EncodedPrompt, float]:
    """The prompt ``answer`` builds for ``global`` / ``tiles-all`` (coarse level), via the adapter API."""
    t0 = time.perf_counter()
    with DynamicImagePyramid.open(scene, pyramid) as dip:
        thumb = dip.thumbnail()
        segments = [adapter.encode_tiles([thumb], newlines=False, level=-1)]
        if strategy == "tiles-all":
            tiles = list(dip.stream(dip.all_tiles(0)))
            seg = adapter.encode_tiles(tiles, newlines=True, level=0)
            tile = torch.where(seg.meta.tile >= 0, seg.meta.tile + 1, seg.meta.tile)  # after the thumbnail
            meta = TokenMeta(tile, seg.meta.level, seg.meta.boxes, seg.meta.newline)
            segments.append(VisionSegment(seg.embeds, meta, seg.images_encoded, seg.tokens_encoded))
        elif strategy != "global":
            raise ValueError(f"tap prompt strategy must be global or tiles-all, not {strategy}")
    return adapter.build_prompt(question, segments), time.perf_counter() - t0


def _timed_prefill(adapter: ModelAdapter, inputs: PrefillInputs, hooks: Sequence[Any]) -> tuple[float, Any]:
    gc.collect()
    with CpuMeter() as cpu:
        result = adapter.decoder.prefill(inputs, hooks)
    return result.seconds, (result, cpu)


def tap_overhead(adapter: ModelAdapter, prompt: EncodedPrompt, repeats: int) -> dict[str, Any]:
    inputs = prompt.inputs
    n_layers = len(adapter.decoder.layers)
    variants: dict[str, Callable[[], list[Any]]] = {
        "plain": lambda: [],
        "last row, every layer": lambda: [TapHook(last_row)],
        "instruction rows, every layer": lambda: [TapHook(instruction_rows)],
        f"last row, layer {FASTV_LAYER} only": lambda: [TapHook(last_row, frozenset({FASTV_LAYER}))],
    }
    names = list(variants)
    times: dict[str, list[float]] = {k: [] for k in names}
    background: dict[str, list[float]] = {k: [] for k in names}
    reference_logits = None
    checks: dict[str, Any] = {}
    for rep in range(repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no variant always first
        for name in order:
            secs, (result, cpu) = _timed_prefill(adapter, inputs, variants[name]())
            times[name].append(secs)
            background[name].append(cpu.background_cores)
            _log(
                f"  prefill [{name}] run {rep + 1}/{repeats}: {secs:.2f} s "
                f"(others: {cpu.background_cores:.2f} cores)"
            )
            if name == "plain" and reference_logits is None:
                reference_logits = result.logits.clone()
            elif name != "plain" and name not in checks:
                checks[name] = {"tapped_layers": sorted(result.taps)}
                if reference_logits is not None:
                    checks[name]["logits_max_abs_diff"] = float(
                        (result.logits - reference_logits).abs().max()
                    )
                sums = [float(t.probs.sum(-1).max() - 1) for t in result.taps.values()]
                checks[name]["rows_per_layer"] = [int(t.rows.numel()) for t in result.taps.values()][:1]
                checks[name]["prob_row_sum_err"] = max((abs(v) for v in sums), default=0.0)
            del result
    med = {k: statistics.median(v) for k, v in times.items()}
    plain = med["plain"]
    out = {
        "prompt_tokens": inputs.length,
        "vision_rows": int(inputs.vision.sum()),
        "instruction_rows": int(inputs.instruction.sum()),
        "layers": n_layers,
        "repeats": repeats,
        "times": times,
        "background_cores": {k: round(max(v), 2) for k, v in background.items()},
        "background_runs": {k: [round(x, 2) for x in v] for k, v in background.items()},
        "median_s": med,
        "overhead": {k: (med[k] - plain) / plain for k in names if k != "plain"},
        "checks": checks,
    }
    out["isolated"] = isolated_capture_cost(adapter, inputs.length, int(inputs.instruction.sum()), plain)
    return out


def isolated_capture_cost(adapter: ModelAdapter, length: int, n_instr: int, plain_s: float) -> dict[str, Any]:
    """The tap's added work alone: ``TapRecorder.capture`` on q/k of the real shapes, median of 11."""
    cfg = adapter.decoder.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    attn = adapter.decoder.layers[0].self_attn
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, length, head_dim, generator=g)
    k = torch.randn(1, kv_heads, length, head_dim, generator=g)
    out: dict[str, Any] = {}
    for name, rows in (
        ("last row", torch.tensor([length - 1])),
        ("instruction rows", torch.arange(length - n_instr - 5, length - 5)),
    ):
        per_layer = []
        for _ in range(11):
            rec = TapRecorder({id(attn): 0}, {0: fixed_rows(rows)})
            t0 = time.perf_counter()
            with torch.inference_mode():
                rec.capture(attn, q, k, None, head_dim**-0.5, True)
            per_layer.append(time.perf_counter() - t0)
        layer_s = statistics.median(per_layer)
        out[name] = {
            "per_layer_ms": layer_s * 1e3,
            "per_layer_min_ms": min(per_layer) * 1e3,
            "every_layer_s": layer_s * len(adapter.decoder.layers),
            "every_layer_pct": 100 * layer_s * len(adapter.decoder.layers) / plain_s,
            "one_layer_pct": 100 * layer_s / plain_s,
        }
    return out


def paired_layer_overhead(adapter: ModelAdapter, inputs: PrefillInputs, rounds: int) -> dict[str, Any]:
    """Tap overhead measured inside one prefill: tap every other layer and compare each tapped layer with
    its untapped neighbour (all layers have the same shape, so they cost the same). Adjacent layers run
    seconds apart, so slow drifts of the machine (clock, neighbours) cancel, unlike between two prefills.
    A layer's time runs from its forward pre-hook to the next layer's (the decoder's own per-layer tap
    bookkeeping included); the parity that is tapped alternates between rounds."""
    layers = adapter.decoder.layers
    n = len(layers)
    stamps: list[float] = []
    handles = [
        layer.register_forward_pre_hook(lambda *_: stamps.append(time.perf_counter())) for layer in layers
    ]
    handles.append(layers[-1].register_forward_hook(lambda *_: stamps.append(time.perf_counter())))
    out: dict[str, Any] = {}
    try:
        for name, rows in (("last row", last_row), ("instruction rows", instruction_rows)):
            per_round = []
            for r in range(rounds):
                parity = r % 2
                stamps.clear()
                gc.collect()
                with CpuMeter() as cpu:
                    adapter.decoder.prefill(inputs, [TapHook(rows, frozenset(range(parity, n, 2)))])
                t = [b - a for a, b in itertools.pairwise(stamps)]
                pairs = [(t[k], t[k ^ 1]) for k in range(parity, n, 2) if (k ^ 1) < n]  # (tapped, untapped)
                diff = statistics.mean(a - b for a, b in pairs)
                base = statistics.mean(b for _, b in pairs)
                per_round.append(
                    {
                        "tapped_parity": parity,
                        "overhead": diff / base,
                        "per_layer_diff_ms": diff * 1e3,
                        "untapped_layer_s": base,
                        "background_cores": round(cpu.background_cores, 2),
                    }
                )
                _log(
                    f"  paired [{name}] round {r + 1}/{rounds} (tapped layers {parity}, {parity + 2}, ...): "
                    f"{100 * diff / base:+.2f} % per tapped layer ({diff * 1e3:+.1f} ms of {base:.3f} s), "
                    f"others {cpu.background_cores:.2f} cores"
                )
            out[name] = {
                "rounds": per_round,
                "overhead": statistics.median(x["overhead"] for x in per_round),
            }
    finally:
        for h in handles:
            h.remove()
    return out


def profile_prefill(adapter: ModelAdapter, inputs: PrefillInputs) -> dict[str, float]:
    """Where prefill time goes: forward hooks around attention / MLP / norms of every layer (one run)."""
    spans: dict[str, float] = {
        "self_attn": 0.0,
        "mlp": 0.0,
        "input_layernorm": 0.0,
        "post_attention_layernorm": 0.0,
    }
    starts: dict[int, float] = {}
    handles = []

    def pre(mod: torch.nn.Module, *_: Any) -> None:
        starts[id(mod)] = time.perf_counter()

    def make_post(name: str) -> Callable[..., None]:
        def post(mod: torch.nn.Module, *_: Any) -> None:
            spans[name] += time.perf_counter() - starts.pop(id(mod))

        return post

    for layer in adapter.decoder.layers:
        for name in spans:
            mod = getattr(layer, name)
            handles.append(mod.register_forward_pre_hook(pre))
            handles.append(mod.register_forward_hook(make_post(name)))
    try:
        gc.collect()
        result = adapter.decoder.prefill(inputs)
    finally:
        for h in handles:
            h.remove()
    spans = {k: round(v, 3) for k, v in spans.items()}
    spans["prefill"] = round(result.seconds, 3)
    spans["other"] = round(result.seconds - sum(v for k, v in spans.items() if k != "prefill"), 3)
    return spans


def profile_attention_split(adapter: ModelAdapter, length: int) -> dict[str, float]:
    """One layer's attention pieces at this length: the SDPA kernel alone vs the q/k/v/o projections."""
    cfg = adapter.decoder.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, length, head_dim, generator=g)
    k = torch.randn(1, kv_heads, length, head_dim, generator=g)
    v = torch.randn(1, kv_heads, length, head_dim, generator=g)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            t0 = time.perf_counter()
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            times.append(time.perf_counter() - t0)
    return {"sdpa_kernel_per_layer_s": round(statistics.median(times), 4)}


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def _f(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}f}"


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r["seconds"][key] for r in runs)


def report(res: dict[str, Any]) -> str:
    m, model, scene = res["machine"], res["model"], res["scene"]
    lines = [
        "## Engine",
        "",
        f"Command: `{res['command']}` ({res['date']}).",
        "",
        f"Machine: {m['cpu']} ({m['cpu_flags']}), {m['cores']} cores, torch threads {m['torch_threads']}, "
        f"{m['memory_gib']} GiB; Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}; "
        f"{res.get('dtype', 'float32')} on CPU, SDPA through the tap attention function "
        f"(`{model['attn_implementation']}`).",
        "",
    ]
    q = res["quiet"]
    if q["quiet"] and q["waited_s"] < 10:
        quiet = (
            "quiet when the measurement started (no pyramid benchmark or pytest running, other processes "
            f"using {q.get('others_cores_at_start', 0.0):.2f} cores)"
        )
    elif q["quiet"]:
        quiet = f"quiet after waiting {q['waited_s']:.0f} s for other benchmarks / tests / load to finish"
    else:
        quiet = (
            f"NOT quiet: other processes were still running after {q['waited_s']:.0f} s "
            f"({q['busy_at_end'][:2]})"
        )
    bg = max(
        [r["background_cores"] for runs in res["strategies"].values() for r in runs]
        + list(res.get("taps", {}).get("background_cores", {}).values())
        + [x["background_cores"] for v in res.get("taps", {}).get("paired", {}).values() for x in v["rounds"]]
        or [0.0]
    )
    lines += [
        f"Machine load: {quiet}; CPU used by other processes during any measured run: at most "
        f"{bg:.2f} cores.",
        "",
        f"Model: random weights at the shapes of `{SHAPES}` — {model['parameters'] / 1e9:.3f} B parameters "
        f"(vision tower {model['parameters_by_part']['vision_tower'] / 1e6:.0f} M: SigLIP so400m-patch14-384 "
        f"with 26 layers, as the HF OneVision config truncates it (`vision_feature_layer=-1`); projector "
        f"{model['parameters_by_part']['projector'] / 1e6:.2f} M (Linear-GELU-Linear); Qwen2-0.5B "
        f"{model['parameters_by_part']['language_model'] / 1e6:.0f} M, vocab {model['text']['vocab_size']}, "
        f"tied lm_head: {model['lm_head_tied']}). Anyres grid: 6×6 pinpoints, 384…2304 px, `anyres_max_9`; "
        f"processor size {model['processor_size']}. Built locally (`make_tiny_model` tokenizer/processor + "
        f"`from_config`, seed 0) and loaded with `load_adapter` in {res['load_seconds']:.1f} s.",
        "",
        f"Scene: {scene['size']}² synthetic (`synthesize_scene`, seed 0), {scene['kind']}. Question: "
        f"`{res['question']}`; `max_new_tokens=1`. Strategy runs: {res['repeats']} after one warm-up "
        f"(`{res['warmup']}`); times are medians, peak RSS the largest VmHWM of the runs (reset before "
        "each run, so it is that run's own peak; the weights, 3.6 GB in fp32, are included).",
        "",
        "| strategy | images encoded | vision tokens encoded | tokens into LLM (vision) | TFLOPs vision | "
        "TFLOPs LLM | TFLOPs total | read+encode s | prefill s | decode s | total s | peak RSS GB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    noisy_strategy = False
    for name, runs in res["strategies"].items():
        r = runs[0]
        mark = "†" if any(x["background_cores"] > NOISY_CORES for x in runs) else ""
        noisy_strategy = noisy_strategy or bool(mark)
        lines.append(
            f"| `{name}`{mark} | {r['images_encoded']} | {r['vision_tokens_encoded']:,} | "
            f"{r['tokens_into_llm']:,} "
            f"({r['vision_tokens_into_llm']:,}) | {_f(r['tflops_vision'])} | {_f(r['tflops_llm'])} | "
            f"{_f(r['tflops_total'])} | {_f(_med(runs, 'read_and_encode'), 1)} | "
            f"{_f(_med(runs, 'prefill'), 1)} | "
            f"{_f(_med(runs, 'decode'), 2)} | {_f(_med(runs, 'total'), 1)} | "
            f"{max(x['peak_rss_mb'] for x in runs) / 1024:.2f} |"
        )
    if noisy_strategy:
        lines += [
            "",
            f"† other processes used more than {NOISY_CORES} cores during at least one of its runs.",
        ]
    prefill_runs = "; ".join(
        f"`{k}` " + ", ".join(_f(x["seconds"]["prefill"], 1) for x in v) for k, v in res["strategies"].items()
    )
    lines += ["", f"Prefill seconds per run: {prefill_runs}.", ""]
    rates = []
    for name, runs in res["strategies"].items():
        r = runs[0]
        enc = _med(runs, "read_and_encode")
        pre = _med(runs, "prefill")
        rates.append(
            f"`{name}` {r['tflops_vision'] / enc * 1e3:.0f} (vision) / "
            f"{r['tflops_llm'] / pre * 1e3:.0f} (LLM)"
        )
    lines += [
        "Achieved rate in the FLOPs convention of `lrs_vqa.engine.flops` (per-layer `4nd² + 2n²d + 3ndm`, "
        "i.e. multiply-accumulates, the pruning literature's count; real FLOPs are about twice that), in "
        "G/s: " + "; ".join(rates) + ".",
        "",
    ]
    if "anyres_check" in res:
        a = res["anyres_check"]
        lines += [
            f"Anyres check: the coarse level is {a['coarse_size'][0]}×{a['coarse_size'][1]}; the processor "
            f"makes pixel_values {a['pixel_values_shape']} (base + grid patches) and expands `<image>` to "
            f"{a['processor_placeholders']:,} placeholders; the model's features fill "
            f"{res['strategies']['anyres'][0]['vision_tokens_into_llm']:,} rows.",
            "",
        ]
    if "taps" in res:
        t = res["taps"]
        plain = t["times"]["plain"]
        spread = (max(plain) - min(plain)) / statistics.median(plain)
        lines += [
            f"### Tap overhead (prompt of `{res['tap_prompt']}`: {t['prompt_tokens']:,} tokens, "
            f"{t['vision_rows']:,} vision rows, {t['instruction_rows']} instruction rows; "
            f"{t['layers']} layers)",
            "",
            f"(1) Whole prefills: `adapter.decoder.prefill(inputs, hooks)`, {t['repeats']} rounds, variants "
            "alternating (order rotated each round); overhead = (median tapped − median plain) / median "
            "plain. "
            f"The plain runs alone spread by {100 * spread:.1f} % (max − min over median), so this "
            "comparison cannot resolve a 2 % effect (the one-layer variant adds about 1 ms of work, yet "
            "lands wherever the noise puts it); it is shown for completeness.",
            "",
            "| hooks | runs (s) | median s | overhead |",
            "|---|---|---:|---:|",
        ]
        bgs = t.get("background_runs", {})
        for name, runs in t["times"].items():
            ov = t["overhead"].get(name)
            marks = bgs.get(name, [0.0] * len(runs))
            cells = ", ".join(
                _f(x, 2) + ("†" if bg > NOISY_CORES else "") for x, bg in zip(runs, marks, strict=True)
            )
            lines.append(
                f"| {name} | {cells} | {_f(t['median_s'][name], 2)} | "
                f"{'—' if ov is None else f'{100 * ov:+.2f} %'} |"
            )
        if any(bg > NOISY_CORES for v in bgs.values() for bg in v):
            lines += ["", f"† other processes used more than {NOISY_CORES} cores during that run."]
        verdicts: list[tuple[str, float]] = []
        if "paired" in t:
            pr = t["paired"]
            n_layers = t["layers"]
            lines += [
                "",
                "(2) Inside one prefill: every other layer tapped, each "
                "tapped layer compared with its untapped neighbour (same shape, seconds apart, so machine "
                "drift cancels); the tapped parity alternates between rounds. Per-layer overhead = mean "
                "(tapped − untapped) / mean untapped; at every layer the prefill overhead is the same "
                f"fraction, at one layer it is 1/{n_layers} of it.",
                "",
                "| rows tapped | per round: overhead per tapped layer (Δ per layer) | median | every layer "
                f"| one layer | target < {100 * TAP_TARGET:.0f} % |",
                "|---|---|---:|---:|---:|:---:|",
            ]
            for name, v in pr.items():
                rounds = ", ".join(
                    f"{100 * x['overhead']:+.2f} % ({x['per_layer_diff_ms']:+.0f} ms of "
                    f"{x['untapped_layer_s']:.2f} s)" + ("†" if x["background_cores"] > NOISY_CORES else "")
                    for x in v["rounds"]
                )
                ov = v["overhead"]
                verdicts.append((f"{name}, every layer", ov))
                verdicts.append((f"{name}, one layer", ov / n_layers))
                lines.append(
                    f"| {name} | {rounds} | {100 * ov:+.2f} % | {100 * ov:+.2f} % | "
                    f"{100 * ov / n_layers:+.3f} % | "
                    f"{'PASS' if ov < TAP_TARGET else 'MISS'} |"
                )
        iso = t["isolated"]
        lines += [
            "",
            "(3) The tap's own work timed alone (`TapRecorder.capture` on q/k of these shapes, median of 11; "
            "it is the only work a tap adds besides a few tiny tensors): "
            + "; ".join(
                f"{k}: {v['per_layer_ms']:.1f} ms per layer (min {v['per_layer_min_ms']:.1f}) = "
                f"{v['every_layer_pct']:.2f} % of plain prefill at every layer, "
                f"{v['one_layer_pct']:.3f} % at one"
                for k, v in iso.items()
            )
            + ".",
            "",
        ]
        direct = max(v["every_layer_pct"] for v in iso.values()) / 100
        worst = max([direct, *(ov for _, ov in verdicts)])
        lines += [
            f"**Tap-overhead target (< {100 * TAP_TARGET:.0f} % of prefill): "
            f"{'PASS' if worst < TAP_TARGET else 'MISS'}** — direct cost (3): "
            + ", ".join(
                f"{k} {v['every_layer_pct']:.2f} % at every layer, {v['one_layer_pct']:.3f} % at one layer"
                for k, v in iso.items()
            )
            + (
                "; in-prefill comparison (2), median of rounds: "
                + ", ".join(f"{k} {100 * ov:+.2f} %" for k, ov in verdicts)
                + " (single rounds range over "
                + f"{100 * min(x['overhead'] for v in t['paired'].values() for x in v['rounds']):+.1f} … "
                + f"{100 * max(x['overhead'] for v in t['paired'].values() for x in v['rounds']):+.1f} %)"
                if verdicts
                else ""
            )
            + ". The verdict takes the worst of (2) and (3); (1) is noise-bound.",
            "",
        ]
        checks = t["checks"]
        lines += [
            "Checks: tapped prefill returns the same logits as plain (max |Δ| "
            + ", ".join(f"{k}: {v.get('logits_max_abs_diff', float('nan')):.1e}" for k, v in checks.items())
            + "); every captured row sums to 1 (max error "
            + f"{max(v['prob_row_sum_err'] for v in checks.values()):.1e}).",
            "",
        ]
    if "profile" in res:
        p = res["profile"]
        total = p["prefill"]
        lines += [
            f"Where prefill time goes (`{res['tap_prompt']}` prompt, one run with module hooks): "
            + ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f} %)" for k, v in p.items() if k != "prefill")
            + f" of {total:.1f} s; the SDPA kernel alone is {res['sdpa_kernel_per_layer_s']:.2f} s per layer "
            f"({100 * res['sdpa_kernel_per_layer_s'] * t['layers'] / total:.0f} % of prefill over "
            f"{t['layers']} layers).",
            "",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=27328, help="side of the square synthetic scene (px)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out", help="work folder (git-ignored)")
    ap.add_argument("--strategies", default=",".join(strategy_names()), help="comma-separated, in run order")
    ap.add_argument("--repeats", type=int, default=2, help="measured runs per strategy (after one warm-up)")
    ap.add_argument("--tap-repeats", type=int, default=3, help="rounds of the tap-overhead comparison")
    ap.add_argument(
        "--paired-rounds", type=int, default=4, help="prefills of the tap-every-other-layer measurement"
    )
    ap.add_argument("--tap-prompt", choices=("tiles-all", "global"), default="tiles-all")
    ap.add_argument("--no-taps", action="store_true", help="skip the tap-overhead measurement")
    ap.add_argument("--no-profile", action="store_true", help="skip the prefill time breakdown")
    ap.add_argument("--question", default=QUESTION)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="model dtype on CPU")
    ap.add_argument(
        "--wait-quiet", type=float, default=1800.0, help="max seconds to wait for other benchmarks"
    )
    ap.add_argument("--write-results", action="store_true", help="write the ## Engine section of RESULTS.md")
    ap.add_argument("--results-md", type=Path, default=ROOT / "bench" / "RESULTS.md")
    ap.add_argument(
        "--quick", action="store_true", help="development run: 4096² scene, global only, 1 repeat, no wait"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.strategies, args.repeats, args.tap_repeats = 4096, "global", 1, 1
        args.tap_prompt, args.wait_quiet, args.paired_rounds = "global", 0.0, 2
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for s in strategies:
        if s not in strategy_names():
            ap.error(f"unknown strategy {s!r}; choose from {', '.join(strategy_names())}")

    from lrs_vqa.models.registry import load_adapter

    torch.set_grad_enabled(False)
    out_dir = args.out_dir.resolve()
    ckpt = out_dir / CHECKPOINT_NAME
    res: dict[str, Any] = {
        "command": " ".join(["HF_HUB_OFFLINE=1", ".venv/bin/python", "bench/engine_bench.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "question": args.question,
        "repeats": args.repeats,
        "tap_prompt": args.tap_prompt,
        "dtype": args.dtype,
    }
    res["checkpoint"] = build_checkpoint(ckpt)
    t0 = time.perf_counter()
    adapter = load_adapter(str(ckpt), device="cpu", dtype=args.dtype)
    res["load_seconds"] = round(time.perf_counter() - t0, 1)
    res["model"] = describe_model(adapter)
    _log(
        f"loaded {ckpt.name}: {res['model']['parameters'] / 1e9:.3f} B parameters "
        f"({', '.join(f'{k} {v / 1e6:.1f} M' for k, v in res['model']['parameters_by_part'].items())}), "
        f"{res['load_seconds']:.1f} s, RSS {rss_mb() / 1024:.2f} GB"
    )
    res["scene"] = {"size": args.size, **find_or_make_scene(out_dir, args.size)}
    scene = res["scene"]["path"]
    _log(f"scene: {scene} ({res['scene']['kind']})")
    pyramid = PyramidOptions(spec=pyramid_spec_for(adapter), cache_dir=out_dir / "engine" / "pyramid-cache")

    res["quiet"] = wait_until_quiet(args.wait_quiet)
    _log(f"machine quiet: {res['quiet']['quiet']} (waited {res['quiet']['waited_s']} s)")

    # Warm-up: the first strategy once, not measured (allocator, thread pools, lazy imports).
    res["warmup"] = strategies[0]
    w = run_strategy(adapter, scene, strategies[0], pyramid, args.question)
    _log(f"warm-up {strategies[0]}: {w['seconds']}")
    res["strategies"] = {}
    for s in strategies:
        runs = []
        for i in range(args.repeats):
            r = run_strategy(adapter, scene, s, pyramid, args.question)
            runs.append(r)
            _log(
                f"{s} run {i + 1}/{args.repeats}: {r['vision_tokens_encoded']} encoded, "
                f"{r['tokens_into_llm']} into LLM, {r['tflops_total']:.2f} TFLOPs, {r['seconds']}, "
                f"peak {r['peak_rss_mb']:.0f} MB, "
                f"others {r['background_cores']:.2f} cores"
            )
        res["strategies"][s] = runs
    if "anyres" in strategies:
        res["anyres_check"] = anyres_check(adapter, scene, pyramid, args.question)
        _log(f"anyres check: {res['anyres_check']}")

    if not args.no_taps:
        prompt, secs = build_prompt(adapter, scene, args.tap_prompt, pyramid, args.question)
        _log(f"tap prompt ({args.tap_prompt}): {prompt.inputs.length} tokens, built in {secs:.1f} s")
        if args.tap_prompt in res["strategies"]:
            expect = res["strategies"][args.tap_prompt][0]["tokens_into_llm"]
            if expect != prompt.inputs.length:
                _log(
                    f"WARNING: answer() fed {expect} tokens for {args.tap_prompt}, the rebuilt prompt has "
                    f"{prompt.inputs.length}"
                )
        res["taps"] = tap_overhead(adapter, prompt, args.tap_repeats)
        if args.paired_rounds:
            res["taps"]["paired"] = paired_layer_overhead(adapter, prompt.inputs, args.paired_rounds)
        for k, v in res["taps"]["overhead"].items():
            _log(f"tap overhead [{k}]: {100 * v:+.2f} %")
        _log(f"isolated capture cost: {json.dumps(res['taps']['isolated'])}")
        if not args.no_profile:
            res["profile"] = profile_prefill(adapter, prompt.inputs)
            res["sdpa_kernel_per_layer_s"] = profile_attention_split(adapter, prompt.inputs.length)[
                "sdpa_kernel_per_layer_s"
            ]
            _log(f"prefill breakdown: {res['profile']}; SDPA kernel {res['sdpa_kernel_per_layer_s']} s/layer")

    section = report(res)
    print()
    print(section)
    work = out_dir / "engine"
    (work / f"results-{args.size}.json").write_text(json.dumps(res, indent=1, default=str))
    (work / f"results-{args.size}.md").write_text(section + "\n")
    _log(f"wrote {work / f'results-{args.size}.md'} and .json")
    if args.write_results:
        write_results_section(args.results_md, section)
        _log(f"wrote the ## Engine section of {args.results_md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
