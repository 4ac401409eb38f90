"""Benchmark: accuracy against cost on the world benchmark's hold-out split, every strategy run.

A hold-out benchmark (``lrs-vqa world-bench``: scenes from 4,096² to 27,328², seeds the world model never
trained on) is asked with each configuration, one question at a time through ``answer()``:

* ``global``          — the thumbnail only;
* ``anyres``          — the model's own processing of the coarse level (the paper's anyres baseline);
* ``tiles-all-144``   — the thumbnail plus every tile of the finest level with at most 144 tiles (the paper's
                        anyres-p144 analogue on our pyramid);
* ``c2f/attention``   — the coarse-to-fine loop with the training-free attention scorer;
* ``c2f/rfm[-NAME]``  — the loop with a Region Focus Module trained by ``lrs-vqa train-rfm``
                        (``--rfm [NAME=]DIR``, repeatable: one configuration per RFM), or an untrained one
                        copied from the host's layers (``--rfm NAME=init:L``, layer list L ``+``-separated);
* ``c2f-thumb/…``     — any c2f configuration with ``thumbnail_first`` (``C2FOptions``): the loop starts
                        from the thumbnail's scores and skips the coarse level when they are concentrated;
* ``oracle``          — the thumbnail plus the native tile(s) under the target's ground-truth box(es)
                        (strategy ``region``); questions without a target (absent objects, rural/urban) get
                        the thumbnail alone.

Per configuration: accuracy (the official LRS-VQA rule: exact or WordNet synonym) per category and overall
with the number of questions and the chance level; the share of target questions whose target was read at
native resolution; vision tokens encoded and into the LLM; TFLOPs (vision + LLM + scoring); seconds; peak
memory (the process's VmHWM, reset before each answer: it includes the weights).

    .venv/bin/python bench/world_bench.py --quick              # 60 questions of small scenes (~3 min)
    .venv/bin/python bench/world_bench.py --write-results      # the full hold-out table
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from _common import ROOT, git_state, machine, write_results_section

from lrs_vqa.answer import AskOptions, answer
from lrs_vqa.c2f import C2FOptions
from lrs_vqa.models.registry import load_adapter
from lrs_vqa.scoring import SynonymRule
from lrs_vqa.wordnet import load_wordnet
from lrs_vqa.world.bench_writer import QUESTIONS_FILE, write_world_bench
from pyramid.pool import PyramidPool
from pyramid.world import CATEGORIES, COLORS

CONFIGS = ("global", "anyres", "tiles-all-144", "c2f/attention", "oracle")
CHANCE = {  # uniform guessing over the answers a category has
    "object color": 1 / len(COLORS),
    "object category": 1 / len(CATEGORIES),
    "object presence": 1 / 2,
    "count": 1 / 5,  # clusters of 2..6 tanks
    "rural or urban": 1 / 2,
}


RFM_DIRS: dict[str, str] = {}  # --rfm [NAME=]DIR: config c2f/rfm or c2f/rfm-NAME → its train-rfm folder


def options_for(config: str, row: dict[str, Any]) -> AskOptions:
    if config.startswith("c2f-thumb/"):  # the same loop, starting from the thumbnail's scores
        opts = options_for("c2f/" + config.split("/", 1)[1], row)
        return replace(opts, c2f=replace(opts.c2f, thumbnail_first=True))
    if config == "global":
        return AskOptions(strategy="global", max_new_tokens=4)
    if config == "anyres":
        return AskOptions(strategy="anyres", max_new_tokens=4)
    if config == "tiles-all-144":
        return AskOptions(strategy="tiles-all", max_tiles=144, max_new_tokens=4)
    if config.startswith("c2f/rfm"):
        if config not in RFM_DIRS:
            raise SystemExit(f"{config} needs --rfm [NAME=]DIR (a folder from lrs-vqa train-rfm)")
        return AskOptions(
            strategy="c2f", scorer="rfm", rfm=RFM_DIRS[config], c2f=C2FOptions(), max_new_tokens=4
        )
    if config.startswith("c2f/"):
        return AskOptions(strategy="c2f", scorer=config.split("/", 1)[1], c2f=C2FOptions(), max_new_tokens=4)
    if config == "oracle":
        boxes = tuple(tuple(b) for b in row.get("target_boxes") or ())
        if not boxes:
            return AskOptions(strategy="global", max_new_tokens=4)
        return AskOptions(strategy="region", region=boxes, max_new_tokens=4)  # type: ignore[arg-type]
    raise SystemExit(f"unknown config {config!r}; choose from {', '.join(CONFIGS)}")


def target_read(record: Any, row: dict[str, Any]) -> bool | None:
    """A native-resolution tile over a target box was read (None: the question has no target)."""
    boxes = row.get("target_boxes") or []
    if not boxes:
        return None
    native = len(record.image["levels"]) - 1
    for t in record.tiles:
        if t.level != native or t.role == "thumbnail":
            continue
        x0, y0, x1, y1 = t.pixel_box
        if any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes):
            return True
    return False


def untrained_rfm(model: str, layers: str, folder: Path) -> Path:
    """An RFM folder holding the host's own layers, untrained (``RegionFocusModule.from_host``): the
    starting point of ``train-rfm`` with the same layer list, as a configuration of its own."""
    from lrs_vqa.models.region_focus import RegionFocusModule
    from lrs_vqa.models.rfm_checkpoint import write_rfm

    adapter = load_adapter(model)
    rfm = RegionFocusModule.from_host(adapter, llm_layer_list=[int(x) for x in layers.split("+")])
    return write_rfm(folder, rfm, adapter, steps=0, training=None)


def reused(out: Path, config: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A configuration's per-question results from an earlier run's answer log (``--reuse``): every row of
    this question file, in order, or a clear stop."""
    path = out / f"{config.replace('/', '_')}.jsonl"
    items = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    if [i["question_id"] for i in items] != [r["question_id"] for r in rows]:
        raise SystemExit(f"--reuse {config}: {path} does not hold exactly this run's {len(rows)} questions")
    return items


def run(
    bench: Path, model: str, configs: list[str], limit: int | None, out: Path, reuse: set[str] = frozenset()
) -> dict[str, Any]:
    rows = [json.loads(line) for line in (bench / QUESTIONS_FILE).read_text().splitlines() if line.strip()]
    if limit is not None:
        rows = rows[:limit]
    adapter = load_adapter(model)
    wordnet, _ = load_wordnet()
    rule = SynonymRule(wordnet)
    results: dict[str, Any] = {}
    out.mkdir(parents=True, exist_ok=True)
    for config in configs:
        if config in reuse:
            results[config] = reused(out, config, rows)
            continue
        per: list[dict[str, Any]] = []
        t0 = time.time()
        with PyramidPool() as pool, (out / f"{config.replace('/', '_')}.jsonl").open("w") as log:
            for i, row in enumerate(rows):
                rec = answer(
                    bench / row["image"],
                    row["text"],
                    model=adapter,
                    options=options_for(config, row),
                    pyramids=pool,
                )
                ok = rule.judge(row["ground_truth"], rec.answer) is not None
                item = {
                    "question_id": row["question_id"],
                    "category": row["category"],
                    "size": row["image_size"][0],
                    "ground_truth": row["ground_truth"],
                    "answer": rec.answer,
                    "correct": ok,
                    "target_read": target_read(rec, row),
                    "vision_encoded": rec.stats.vision_tokens_encoded,
                    "vision_into_llm": rec.stats.vision_tokens_into_llm,
                    "tflops": rec.stats.tflops_total,
                    "seconds": rec.stats.seconds["total"],
                    "peak_mb": rec.stats.peak_memory_mb,
                }
                per.append(item)
                log.write(json.dumps(item) + "\n")
                if (i + 1) % 25 == 0:
                    acc = sum(p["correct"] for p in per) / len(per)
                    print(
                        f"  {config}: {i + 1}/{len(rows)} acc {acc:.3f} ({time.time() - t0:.0f} s)",
                        flush=True,
                    )
        results[config] = per
    return results


def summarize(per: list[dict[str, Any]]) -> dict[str, Any]:
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for p in per:
        by_cat[p["category"]].append(p["correct"])
    reads = [p["target_read"] for p in per if p["target_read"] is not None]
    big = [p for p in per if p["size"] >= 16384]
    n = len(per)
    return {
        "n": n,
        "accuracy": sum(p["correct"] for p in per) / n,
        "by_category": {k: (sum(v) / len(v), len(v)) for k, v in sorted(by_cat.items())},
        "target_read": sum(reads) / len(reads) if reads else float("nan"),
        "vision_encoded": sum(p["vision_encoded"] for p in per) / n,
        "vision_into_llm": sum(p["vision_into_llm"] for p in per) / n,
        "tflops": sum(p["tflops"] for p in per) / n,
        "tflops_16k_plus": sum(p["tflops"] for p in big) / len(big) if big else float("nan"),
        "seconds": sum(p["seconds"] for p in per) / n,
        "peak_mb": max(p["peak_mb"] for p in per),
    }


def report(results: dict[str, Any], bench: Path, model: str, args: argparse.Namespace) -> str:
    summaries = {c: summarize(per) for c, per in results.items()}
    cats = sorted({k for s in summaries.values() for k in s["by_category"]})
    any_s = next(iter(summaries.values()))
    head = [
        "config",
        "overall",
        *[f"{c} (n={any_s['by_category'][c][1]}, chance {CHANCE[c]:.0%})" for c in cats],
    ]
    head += [
        "target read at native",
        "vision tok. encoded",
        "vision tok. into LLM",
        "TFLOPs",
        "TFLOPs 16k+",
        "s / question",
        "peak MiB",
    ]
    lines = [
        "## World benchmark",
        "",
        f"Hold-out benchmark `{bench.name}`: {any_s['n']} questions "
        f"(`lrs-vqa world-bench {args.bench_args}`), model `{model}`, {machine()['cpu']} "
        f"({os.cpu_count()} cores), fp32, commit {git_state().get('commit', '?')[:12]}, "
        "one question at a time. Accuracy is the official LRS-VQA rule (exact or WordNet synonym); chance is "
        "uniform guessing over each category's answers. "
        "'target read at native' is the share of questions with a target object whose native-resolution tile "
        "was read. TFLOPs are the engine's analytic count (vision encoder + LLM + scorer).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for c, s in summaries.items():
        cells = [f"`{c}`", f"{s['accuracy']:.1%}"] + [f"{s['by_category'][k][0]:.1%}" for k in cats]
        cells += [
            f"{s['target_read']:.1%}",
            f"{s['vision_encoded']:.0f}",
            f"{s['vision_into_llm']:.0f}",
            f"{s['tflops']:.4f}",
            f"{s['tflops_16k_plus']:.4f}",
            f"{s['seconds']:.2f}",
            f"{s['peak_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if args.reuse:
        lines += [
            "",
            f"Rows `{args.reuse}` were run by an earlier process on the same code and questions, "
            "and read back from its answer logs (`--reuse`).",
        ]
    lines += ["", f"Reproduce: `.venv/bin/python bench/world_bench.py {args.reproduce}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, default=ROOT / "bench" / "out" / "world-holdout")
    ap.add_argument("--scenes", type=int, default=36)
    ap.add_argument("--sizes", default="4096,8192,16384,27328")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="world")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--limit", type=int, default=None, help="first N questions only")
    ap.add_argument(
        "--rfm",
        action="append",
        default=[],
        help="[NAME=]DIR, a train-rfm folder, or NAME=init:L (the host's layers L, untrained): adds c2f/rfm "
        "(c2f/rfm-NAME) configuration; repeatable",
    )
    ap.add_argument(
        "--reuse",
        default="",
        help="configurations to take from the answer logs of an earlier run of the same commit and questions "
        "(comma-separated) instead of running them again",
    )
    ap.add_argument("--quick", action="store_true", help="6 scenes of 4096², 60 questions")
    ap.add_argument("--write-results", action="store_true", help="write the table into bench/RESULTS.md")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a benchmark never downloads; before transformers loads
    if args.quick:
        args.bench, args.scenes, args.sizes, args.limit = (
            ROOT / "bench" / "out" / "world-quick",
            6,
            "4096",
            60,
        )
    args.bench_args = f"--scenes {args.scenes} --sizes {args.sizes} --seed {args.seed}"
    args.reproduce = " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    if not (args.bench / QUESTIONS_FILE).exists():
        sizes = tuple(int(s) for s in args.sizes.split(","))
        print(f"writing the hold-out benchmark to {args.bench} ...", flush=True)
        write_world_bench(
            args.bench, scenes=args.scenes, sizes=sizes, seed=args.seed, overwrite=True, progress=True
        )
    configs = [c for c in args.configs.split(",") if c]
    for spec in args.rfm:
        name, _, folder = spec.rpartition("=")
        config = f"c2f/rfm-{name}" if name else "c2f/rfm"
        if folder.startswith("init:"):
            folder = str(untrained_rfm(args.model, folder[5:], args.bench.parent / f"rfm-{name or 'init'}"))
        RFM_DIRS[config] = folder
        if config not in configs:
            configs.insert(configs.index("oracle") if "oracle" in configs else len(configs), config)
    reuse = {c for c in args.reuse.split(",") if c}
    answers = args.bench.parent / (args.bench.name + "-answers")
    results = run(args.bench, args.model, configs, args.limit, answers, reuse)
    text = report(results, args.bench, args.model, args)
    print(text)
    if args.write_results:
        write_results_section(ROOT / "bench" / "RESULTS.md", text, heading="## World benchmark")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
