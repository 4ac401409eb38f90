"""Benchmark: every registered pruner at 64 / 128 / 192 vision-token budgets, CPU, random weights.

Model: a LLaVA-1.5 token layout (CLIP ViT-L/14-336: 576 tokens per 336 px tile) over the LLM of
llava-onevision-0.5b (Qwen2-0.5B shapes), random weights, built locally (``build_llava15``; the tokenizer and
chat template come from ``bench/engine_bench.py``'s checkpoint). Two token sets:

* ``576``  — one 336 px view (the scene's global thumbnail): the pruning literature's LLaVA-1.5 layout;
* ``c2f``  — the coarse-to-fine loop's final tiles on the 27,328² scene (planted map, at most 4 tiles per
             level) plus the thumbnail: what ``ask --pruner`` compresses after c2f.

Per (token set, pruner, budget): vision tokens into the LLM, average vision tokens over layers, final
vision tokens, LLM TFLOPs (``flops_report``), prefill seconds (fastest of ``--repeats``), the speed-up over
no pruning, and the pruner's own overhead: pruned prefill minus a *replay* prefill that drops exactly the
same rows at the same layers without computing any signal (taps, scores, merges), as a share of the pruned
prefill; for vision-side pruners also the change of the encoder time (their hooks run there). End to end
(issue 15): each run is one whole answer — encode, prefill, decode of ``--new-tokens`` — and its sum is
compared with the no-pruning baseline of the same run (measured before and after the pruners, the faster
kept); ``--clock cpu`` times CPU seconds of the process, for a shared machine. Targets: at 64 of 576 tokens
a prefill at least 3x faster than no pruning and every pruner's overhead under 5 % of its pruned prefill
(issue 5); an answer at least 2.5x faster end to end for one seed method (issue 15).

    .venv/bin/python bench/pruning_bench.py --quick               # 576 layout, fastv/random/visionzip
    .venv/bin/python bench/pruning_bench.py --write-results       # everything (~30 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

ROOT = Path(__file__).resolve().parent.parent

import torch  # noqa: E402
from _common import (  # noqa: E402
    CHECKPOINT_NAME,
    TEXT,
    build_checkpoint,
    find_or_make_scene,
    machine,
    write_results_section,
)

from lrs_vqa.answer import pyramid_spec_for  # noqa: E402
from lrs_vqa.c2f import C2FOptions, CoarseToFine  # noqa: E402
from lrs_vqa.engine.decoder import LayerView, Selection  # noqa: E402
from lrs_vqa.engine.flops import flops_report  # noqa: E402
from lrs_vqa.engine.tokens import VisionSegment  # noqa: E402
from lrs_vqa.models.base import ModelAdapter  # noqa: E402
from lrs_vqa.models.registry import load_adapter  # noqa: E402
from lrs_vqa.strategies.c2f import split_budget  # noqa: E402
from pruning.errors import PruningError  # noqa: E402
from pruning.registry import get_pruner, known_pruners  # noqa: E402
from pyramid.dip import THUMBNAIL, DynamicImagePyramid, PyramidOptions, Tile  # noqa: E402
from pyramid.levels import PixelBox  # noqa: E402

SECTION = "## Pruning (bench/pruning_bench.py)"
BUDGETS = (64, 128, 192)
QUESTION = "what color is the ship near the harbor ?"
SPEEDUP_TARGET = 3.0  # at 64 of 576 tokens
E2E_TARGET = 2.5  # end-to-end (encode + prefill + decode) at 64 of 576 tokens, issue 15
NEW_TOKENS = 4  # tokens decoded per answer: the world benchmark's max_new_tokens (one-word answers)
# Variants run with "all" besides the registered names: VScan selecting before its local-scan layer, so the
# later encoder layers run on the kept tokens (the encoder costs more than the pruned prefill on a CPU).
EXTRA_SPECS = ("vscan:drop_at=local",)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
TIMES = ("prefill_s", "encode_s", "decode_s", "e2e_s")
OVERHEAD_TARGET = 0.05
LLAVA15_NAME = "llava15-layout-qwen05b-random"
CLIP_L = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
}
UNTRAINED = {"lvpruning": "lvpruning:untrained_seed=0"}  # no trained modules here: timing only


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_llava15(folder: Path, tokenizer_source: Path, seed: int = 0) -> dict[str, Any]:
    """CLIP ViT-L/14-336 + Qwen2-0.5B in the LLaVA-1.5 layout, random weights (reused when present)."""
    if (folder / "model.safetensors").exists():
        return {"built": False}
    from transformers import (
        AutoProcessor,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
    )

    from lrs_vqa.tiny import MARKER_KEY

    t0 = time.perf_counter()
    source = AutoProcessor.from_pretrained(tokenizer_source)
    tok = source.tokenizer
    text = Qwen2Config(**TEXT, rope_theta=1_000_000.0)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**CLIP_L),
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=576,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    setattr(cfg, MARKER_KEY, True)  # random weights: records say so
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config = source_generation(tokenizer_source)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
        ),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=source.chat_template,
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    return {"built": True, "seconds": round(time.perf_counter() - t0, 1), "parameters_b": params / 1e9}


def source_generation(folder: Path) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(folder)


# ------------------------------------------------------------------------------------------ measurement


@dataclass(frozen=True)
class ReplayHook:
    """Drops, before each layer, exactly the rows a pruned run had dropped there; computes nothing else."""

    kept: tuple[torch.Tensor, ...]  # per layer: original row indices that layer saw

    def llm_tap_rows(self, view: LayerView) -> torch.Tensor | None:
        return None

    def before_layer(self, view: LayerView) -> Selection | None:
        want = self.kept[view.layer].to(view.orig_index.device)
        if len(want) == len(view.orig_index):
            return None
        keep = torch.nonzero(torch.isin(view.orig_index, want)).flatten()
        return Selection(keep)


def best_time(fn: Any, repeats: int, clock: Any = time.perf_counter) -> tuple[float, Any]:
    """Fastest of ``repeats`` runs (the least disturbed by the rest of the machine) and its result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = clock()
        result = fn()
        dt = clock() - t0
        if dt < best:
            best, out = dt, result
    return best, out


@dataclass
class TokenSet:
    name: str
    thumb: Tile
    tiles: list[Tile]  # empty: the thumbnail alone (the 576 layout)
    level: int


def encode(
    adapter: ModelAdapter, ts: TokenSet, hooks: Any, split: tuple[str, str] | None = None
) -> list[VisionSegment]:
    """As ``ask --pruner`` does after c2f: a pruner with an LLM stage hooks the final tiles only; one that
    acts only before the LLM (``split``: its spec and budget) hooks both views with the budget shared."""
    if not ts.tiles:
        return [adapter.encode_tiles([ts.thumb], newlines=False, level=THUMBNAIL, hooks=hooks)]
    if split is None:
        thumb = adapter.encode_tiles([ts.thumb], newlines=False, level=THUMBNAIL)
        return [thumb, adapter.encode_tiles(ts.tiles, newlines=True, level=ts.level, hooks=hooks)]
    spec, budget = split
    plain = adapter.encode_tiles([ts.thumb], newlines=False, level=THUMBNAIL)
    sizes = [len(adapter.present_rows(plain)), len(ts.tiles) * adapter.tokens_per_tile]
    out = []
    for share, (group, level, newlines) in zip(
        split_budget(budget, sizes), (([ts.thumb], THUMBNAIL, False), (ts.tiles, ts.level, True)), strict=True
    ):
        with get_pruner(spec).attach(adapter, share) as att:
            out.append(adapter.encode_tiles(group, newlines=newlines, level=level, hooks=att.vision_hooks))
    return out


def decode(adapter: ModelAdapter, inputs: Any, result: Any, new_tokens: int) -> list[int]:
    """Greedy decoding after a prefill, as ``DecoderLoop.generate`` does, EOS ignored (random weights: every
    run decodes the same count): ``new_tokens`` tokens, the first from the prefill's logits."""
    logits, position, out = result.logits[0, -1], inputs.next_position, []
    with torch.inference_mode():
        while len(out) < new_tokens:
            out.append(int(torch.argmax(logits)))
            if len(out) < new_tokens:
                logits = adapter.decoder.decode_step(out[-1], position, result.cache)
                position += 1
    return out


def measure(
    adapter: ModelAdapter,
    ts: TokenSet,
    spec: str | None,
    budget: str,
    repeats: int,
    new_tokens: int,
    clock: Any,
    overhead: bool = True,
) -> dict[str, Any]:
    """Each repeat is one whole answer: encode afresh (a two-stage pruner hands its vision-stage state to
    one prefill) and build the prompt, prefill, decode ``new_tokens``; each part is timed with ``clock``, and
    the end-to-end time is the sum of one repeat's parts. The replay prefill reuses the last prompt."""
    att = get_pruner(spec).attach(adapter, budget) if spec else None
    encode_times, prefill_times, decode_times, e2e_times = [], [], [], []
    try:
        vision_hooks = att.vision_hooks if att else ()
        llm_hooks = att.llm_hooks if att else ()
        split = (spec, budget) if spec and ts.tiles and not llm_hooks else None
        for _ in range(repeats):
            t0 = clock()
            segments = encode(adapter, ts, vision_hooks, split)
            prompt = adapter.build_prompt(QUESTION, segments)
            encode_times.append(clock() - t0)
            inputs = prompt.inputs
            with torch.inference_mode():
                t0 = clock()
                result = adapter.decoder.prefill(inputs, llm_hooks)
                prefill_times.append(clock() - t0)
            t0 = clock()
            decode(adapter, inputs, result, new_tokens)
            decode_times.append(clock() - t0)
            e2e_times.append(encode_times[-1] + prefill_times[-1] + decode_times[-1])
        replay_s = None
        if llm_hooks and overhead:  # vision-side only: nothing runs in the LLM besides the shorter prompt
            replay = ReplayHook(tuple(result.kept_orig_index))
            with torch.inference_mode():
                replay_s, replayed = best_time(
                    lambda: adapter.decoder.prefill(inputs, [replay]), repeats, clock
                )
            assert replayed.vision_tokens_per_layer == result.vision_tokens_per_layer
    finally:
        if att is not None:
            att.detach()
    flops = flops_report(
        llm=adapter.llm_shape(),
        vision_tokens_per_layer=result.vision_tokens_per_layer,
        text_tokens=prompt.text_tokens,
    )
    vt = result.vision_tokens_per_layer
    return {
        "vision_in": int(inputs.vision.sum()),
        "avg_vision": round(sum(vt) / len(vt), 1),
        "final_vision": vt[-1],
        "tflops_llm": round(flops.llm_total_tflops, 3),
        "prefill_s": round(min(prefill_times), 3),
        "replay_s": None if replay_s is None else round(replay_s, 3),
        "llm_stage": bool(llm_hooks),
        "encode_s": round(min(encode_times), 3),
        "decode_s": round(min(decode_times), 3),
        "e2e_s": round(min(e2e_times), 3),
    }


def token_sets(adapter: ModelAdapter, scene: str, planted: PixelBox, which: list[str]) -> list[TokenSet]:
    options = PyramidOptions(spec=pyramid_spec_for(adapter))
    out = []
    with DynamicImagePyramid.open(scene, options) as dip:
        thumb = dip.thumbnail()
        if "576" in which:
            out.append(TokenSet("576", thumb, [], THUMBNAIL))
        if "c2f" in which:
            from c2f_bench import PlantedOverScorer

            from rfm.attention import AttentionScorer

            scorer = PlantedOverScorer(AttentionScorer(2), planted)
            loop = CoarseToFine(adapter, scorer, C2FOptions(max_tiles_per_level=4), pruner_hooks=())
            result = loop.run(dip, QUESTION)
            last = result.steps[-1].level
            tiles = [t for t, r in zip(result.tiles, result.roles, strict=True) if r != "thumbnail"]
            tiles = [t for t in tiles if t.key.level == last]
            _log(f"c2f token set: {len(tiles)} tiles at level {last} ({result.steps[-1].level_name})")
            out.append(TokenSet("c2f", thumb, tiles, last))
    return out


# ----------------------------------------------------------------------------------------------- report


def report(res: dict[str, Any]) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {res['date']} on {res['machine'].get('cpu', 'CPU')} "
        f"({res['machine'].get('cores', '?')} cores), "
        f"{res['dtype']}, random weights: LLaVA-1.5 layout (CLIP ViT-L/14-336, 576 tokens per tile) over "
        "Qwen2-0.5B (llava-onevision-0.5b's LLM). Budgets are tokens into the LLM (`--budget N`); "
        f"seconds ({'CPU seconds of this process' if res['clock'] == 'cpu' else 'wall-clock'}, "
        f"{res['threads']} thread(s)) are the fastest of {res['repeats']} runs. Each run is one whole "
        "answer: encode (pixels → encoder → projector → prompt), prefill, and decode of "
        f"{res['new_tokens']} tokens (EOS ignored); "
        "end-to-end = the sum of one run's three parts, and its speed-up is against the no-pruning "
        "row of the same run (measured before and again after the pruners; the faster is kept). Overhead = "
        "pruned prefill − a replay prefill that drops the same rows at the same layers without computing any "
        "signal, as a share of the pruned prefill (— : the pruner runs nothing in the LLM); "
        "Δencode = encoder time with the pruner's vision hooks − "
        f"without. Reproduce: `.venv/bin/python bench/pruning_bench.py {res['command']}`.",
        "",
    ]
    for ts, runs in res["sets"].items():
        base = runs["none"]
        lines += [
            f"### Token set `{ts}` — no pruning: {base['vision_in']} vision tokens, encode "
            f"{base['encode_s']:.2f} s, prefill {base['prefill_s']:.2f} s, decode {base['decode_s']:.2f} s, "
            f"end-to-end {base['e2e_s']:.2f} s, {base['tflops_llm']:.3f} TFLOPs",
            "",
            "| pruner | budget | vision in | avg vision | final | TFLOPs LLM | encode s | prefill s | "
            "decode s | end-to-end s | prefill speed-up | end-to-end speed-up | overhead | Δencode s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, r in runs.items():
            if key == "none":
                continue
            name, budget = key.rsplit("@", 1)
            if "error" in r:
                lines.append(f"| {name} | {budget} |" + " — |" * 11 + f" {r['error'][:80]} |")
                continue
            speed = base["prefill_s"] / r["prefill_s"] if r["prefill_s"] else float("nan")
            replay = r["replay_s"]
            over = "—" if replay is None else f"{100 * (r['prefill_s'] - replay) / r['prefill_s']:.1f} %"
            over = "not run" if r.get("llm_stage") and replay is None else over
            d_enc = r["encode_s"] - base["encode_s"]
            e2e = base["e2e_s"] / r["e2e_s"] if r["e2e_s"] else float("nan")
            lines.append(
                f"| {name} | {budget} | {r['vision_in']} | {r['avg_vision']} | {r['final_vision']} | "
                f"{r['tflops_llm']:.3f} | {r['encode_s']:.2f} | {r['prefill_s']:.2f} | {r['decode_s']:.2f} | "
                f"{r['e2e_s']:.2f} | {speed:.2f}× | {e2e:.2f}× | {over} | {d_enc:+.2f} |"
            )
        lines.append("")
    lines += [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--size", type=int, default=27328)
    ap.add_argument("--sets", default="576,c2f")
    ap.add_argument("--pruners", default="all", help="comma-separated names, or all")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="tokens decoded per answer")
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed seconds; cpu: this process's CPU seconds (with OMP_NUM_THREADS=1 the same on a "
        "quiet machine, and far less disturbed by other jobs on a shared one)",
    )
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument(
        "--no-overhead",
        action="store_true",
        help="skip the replay prefills that measure each pruner's own overhead (a shorter run)",
    )
    ap.add_argument("--quick", action="store_true", help="576 set; fastv, random, visionzip; budget 64")
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--results-md", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.quick:
        args.sets, args.pruners, args.budgets = "576", "fastv,random,visionzip", "64"
    out_dir = args.out_dir
    ov = out_dir / CHECKPOINT_NAME
    build_checkpoint(ov)
    folder = out_dir / LLAVA15_NAME
    built = build_llava15(folder, ov)
    _log(f"model {folder} {built}")
    scene_info = find_or_make_scene(out_dir, args.size)
    from c2f_bench import planted_ship

    planted = planted_ship(args.size, scene_info["path"])
    adapter = load_adapter(str(folder), device="cpu", dtype=args.dtype)
    clock = CLOCKS[args.clock]
    names = [*known_pruners(), *EXTRA_SPECS] if args.pruners == "all" else args.pruners.split(",")
    budgets = args.budgets.split(",")  # "64", "avg:64", "0.25": as --budget takes them
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "dtype": args.dtype,
        "repeats": args.repeats,
        "new_tokens": args.new_tokens,
        "clock": args.clock,
        "no_overhead": args.no_overhead,
        "threads": torch.get_num_threads(),
        "command": " ".join(argv if argv is not None else sys.argv[1:]),
        "sets": {},
        "notes": [],
    }
    for ts in token_sets(adapter, scene_info["path"], PixelBox(*planted["box"]), args.sets.split(",")):
        runs: dict[str, Any] = {}
        measure(adapter, ts, None, "0", 1, args.new_tokens, clock)  # warm-up: allocator, kernels
        runs["none"] = measure(adapter, ts, None, "0", max(args.repeats, 3), args.new_tokens, clock)
        _log(f"[{ts.name}] no pruning: {runs['none']}")
        for name in names:
            for budget in budgets:
                spec = UNTRAINED.get(name, name)
                try:
                    runs[f"{name}@{budget}"] = r = measure(
                        adapter, ts, spec, budget, args.repeats, args.new_tokens, clock, not args.no_overhead
                    )
                except (PruningError, ValueError, RuntimeError) as exc:
                    runs[f"{name}@{budget}"] = r = {"error": f"{type(exc).__name__}: {exc}"}
                _log(f"[{ts.name}] {name}@{budget}: {r}")
        # The baseline again after the pruners, keeping the faster of each time: the machine's load drifts
        # during a long run, and the speed-ups must not profit from a baseline measured in a busy moment.
        again = measure(adapter, ts, None, "0", max(args.repeats, 3), args.new_tokens, clock)
        runs["none"] = {k: min(v, again[k]) if k in TIMES else v for k, v in runs["none"].items()}
        _log(f"[{ts.name}] no pruning, again: {again}")
        res["sets"][ts.name] = runs
    if "lvpruning" in names:
        res["notes"].append(
            "lvpruning runs with untrained decision modules (`untrained_seed=0`): its timing and budget are "
            "real, its choice of tokens is not (no trained checkpoint exists for these shapes)."
        )
    text = report(res)
    print(text)
    (out_dir / "pruning_bench.json").write_text(json.dumps(res, indent=1, default=str))
    if args.write_results:
        write_results_section(args.results_md, text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
