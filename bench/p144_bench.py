"""Benchmark: the paper's anyres-p144 baseline, run (not computed), 27,328² scene, OneVision-0.5B shapes.

``lrs-vqa ask --strategy tiles-all --max-tiles 144`` on our pyramid: the thumbnail plus every tile of the
finest level with at most 144 tiles (for 27,328² with 384 px tiles the 1/8 level, 9×9 tiles) — about 60k
vision tokens into one prefill. Random weights at LLaVA-OneVision-0.5B's real shapes
(``_common.build_checkpoint``), one question through ``answer()``, one new token (the cost is the prefill;
decoding one token after it is noise).

A prefill this long may not finish in the time a shared CPU gives it, so the run leaves a trail: a clock
hook before every decoder layer appends the time and the process's peak RSS to ``progress.jsonl`` as it
goes. A run killed by its timeout therefore still says exactly how far it got and what each layer cost
(every layer sees the same 60k rows: nothing is pruned). ``--report`` turns that trail (finished or not)
into the RESULTS section.

    nohup timeout 90m .venv/bin/python bench/p144_bench.py > bench/out/p144/log.txt 2>&1 &
    .venv/bin/python bench/p144_bench.py --report --write-results
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, build_checkpoint, find_or_make_scene, git_state, machine, write_results_section

OUT = ROOT / "bench" / "out"
HEADING = "## anyres-p144, run (bench/p144_bench.py)"
QUESTION = "what color is the ship near the harbor ?"  # the c2f bench's question (same text tokens)
COMPUTED_TFLOPS = 204.77  # the analytic figure this run replaces (RESULTS, c2f addendum)


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class LayerClock:
    """A decoder hook that drops nothing: it stamps the time and peak RSS before each layer (and writes them
    at once, so a killed run keeps them)."""

    def __init__(self, trail: Path, t0: float) -> None:
        self.trail, self.t0 = trail, t0

    def _write(self, entry: dict[str, Any]) -> None:
        with self.trail.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def llm_tap_rows(self, view: Any) -> None:
        return None

    def before_layer(self, view: Any) -> None:
        self._write(
            {
                "event": "layer",
                "layer": view.layer,
                "rows": int(view.hidden.shape[1]),
                "t": round(time.perf_counter() - self.t0, 2),
                # CPU seconds of this process: on a shared machine the wall clock says how busy the others
                # were; with one thread this is the work itself.
                "cpu": round(time.process_time(), 2),
                "peak_rss_mb": round(_vm_kb("VmHWM") / 1024, 1),
            }
        )
        return None


def run(args: argparse.Namespace) -> int:
    import torch

    from lrs_vqa.answer import AskOptions, answer
    from lrs_vqa.models.registry import load_adapter

    work = OUT / "p144"
    work.mkdir(parents=True, exist_ok=True)
    trail = work / "progress.jsonl"
    trail.write_text("")
    ckpt = OUT / "ov05b-random"
    build_checkpoint(ckpt)
    scene = find_or_make_scene(OUT, 27328)
    t0 = time.perf_counter()
    clock = LayerClock(trail, t0)
    head = {
        "event": "start",
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "scene": scene,
        "machine": machine(),
        "commit": git_state().get("commit", "?")[:12],
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "timeout … .venv/bin/python bench/p144_bench.py " + " ".join(sys.argv[1:]),
    }
    clock._write(head)
    adapter = load_adapter(str(ckpt), device="cpu", dtype=args.dtype)
    clock._write(
        {"event": "loaded", "t": round(time.perf_counter() - t0, 2), "cpu": round(time.process_time(), 2)}
    )
    options = AskOptions(
        strategy="tiles-all",
        max_tiles=144,
        max_vision_tokens=100_000,  # the default (16,384) refuses this baseline on purpose
        max_new_tokens=1,
    )
    rec = answer(scene["path"], args.question, model=adapter, options=options, llm_hooks=[clock])
    s = rec.stats
    clock._write(
        {
            "event": "done",
            "t": round(time.perf_counter() - t0, 2),
            "cpu": round(time.process_time(), 2),
            "answer": rec.answer,
            "dtype_used": str(adapter.dtype).removeprefix("torch."),
            "images_encoded": s.images_encoded,
            "vision_tokens_encoded": s.vision_tokens_encoded,
            "tokens_into_llm": s.tokens_into_llm,
            "vision_tokens_into_llm": s.vision_tokens_into_llm,
            "text_tokens": s.text_tokens,
            "tflops_vision": s.tflops_vision,
            "tflops_llm": s.tflops_llm,
            "tflops_total": s.tflops_total,
            "seconds": s.seconds,
            "peak_memory_mb": s.peak_memory_mb,
            "levels": [lvl["name"] if isinstance(lvl, dict) and "name" in lvl else lvl for lvl in rec.levels],
            "tiles": len(rec.tiles),
        }
    )
    return 0


def report(args: argparse.Namespace) -> str:
    entries = [json.loads(x) for x in (OUT / "p144" / "progress.jsonl").read_text().splitlines() if x.strip()]
    start = next(e for e in entries if e["event"] == "start")
    loaded = next((e for e in entries if e["event"] == "loaded"), None)
    layers = [e for e in entries if e["event"] == "layer"]
    done = next((e for e in entries if e["event"] == "done"), None)
    m = start["machine"]
    lines = [
        HEADING,
        "",
        f"Measured {start['started_at']} on {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB, flags "
        f"{m['cpu_flags']}), torch {m['torch']}, {start['threads']} thread(s), **{start['dtype']}**, commit "
        f"{start['commit']}; random weights at LLaVA-OneVision-0.5B's shapes, the 27,328² scene "
        f"({start['scene']['kind']}). The machine was shared with other engineers' tests and benchmarks "
        "during the run, so the seconds are an upper bound; token counts and TFLOPs are exact.",
        "",
        f"Command: `{start['command']}`, then "
        "`.venv/bin/python bench/p144_bench.py --report --write-results`.",
        "",
    ]
    wall = [b["t"] - a["t"] for a, b in itertools.pairwise(layers)]
    cpu = [b["cpu"] - a["cpu"] for a, b in itertools.pairwise(layers)]
    if done is not None:  # the last layer ends where the prefill ends (one token decoded after it: noise)
        wall.append(done["t"] - layers[-1]["t"])
        cpu.append(done["cpu"] - layers[-1]["cpu"])
    span = (
        f"{min(cpu):.0f}–{max(cpu):.0f} CPU s (mean {sum(cpu) / len(cpu):.0f}; wall {min(wall):.0f}–"
        f"{max(wall):.0f} s)"
        if cpu
        else "none finished"
    )
    enc_cpu = layers[0]["cpu"] - loaded["cpu"] if layers and loaded else float("nan")
    enc_wall = layers[0]["t"] - loaded["t"] if layers and loaded else float("nan")
    if done is not None:
        sec = done["seconds"]
        lines += [
            "| configuration | images encoded | vision tokens into LLM | tokens into LLM | TFLOPs vision | "
            "TFLOPs LLM | TFLOPs total | read + encode s | prefill s | total s | total CPU s | "
            "peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| anyres-p144 (`tiles-all --max-tiles 144`), **measured** | {done['images_encoded']} | "
            f"{done['vision_tokens_into_llm']:,} | {done['tokens_into_llm']:,} | "
            f"{done['tflops_vision']:.2f} | "
            f"{done['tflops_llm']:.2f} | {done['tflops_total']:.2f} | {sec['read_and_encode']:.0f} | "
            f"{sec['prefill']:.0f} | {sec['total']:.0f} | {done['cpu'] - loaded['cpu']:.0f} | "
            f"{done['peak_memory_mb']:,.0f} |",
            "",
            f"Model load {loaded['t']} s (not in the row). The answer record's dtype: "
            f"`{done['dtype_used']}`. "
            f"Read + encode + prompt: {enc_cpu:.0f} CPU s; per decoder layer: {span}, every layer over all "
            f"{layers[0]['rows']:,} rows.",
        ]
    else:
        last = layers[-1] if layers else None
        lines += [
            "**Did not finish within its time** (not a memory limit: the process's peak RSS was "
            f"{last['peak_rss_mb'] if last else '?'} MiB when it was stopped).",
            "",
            f"* Model load: {loaded['t'] if loaded else '?'} s.",
        ]
        if last is not None:
            mean = sum(cpu) / len(cpu) if cpu else float("nan")
            lines += [
                f"* Read + encode (82 images) + prompt, up to decoder layer 0: {enc_cpu:.0f} CPU s "
                f"({enc_wall:.0f} s wall); the prompt is {layers[0]['rows']:,} rows.",
                f"* Decoder layers started: {len(layers)} of 24; finished: {len(cpu)}, {span}.",
                f"* Extrapolated, not measured: prefill ≈ 24 × {mean:.0f} = {24 * mean / 60:.0f} CPU min on "
                f"one thread; answer ≈ {(enc_cpu + 24 * mean) / 60:.0f} CPU min.",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    ap.add_argument("--question", default=QUESTION)
    ap.add_argument("--report", action="store_true", help="print the section from progress.jsonl")
    ap.add_argument("--write-results", action="store_true", help="with --report: write it into RESULTS.md")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a benchmark never downloads
    if not args.report:
        return run(args)
    text = report(args)
    print(text)
    if args.write_results:
        write_results_section(ROOT / "bench" / "RESULTS.md", text, heading=HEADING)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
