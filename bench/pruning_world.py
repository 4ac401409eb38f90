"""Benchmark: world-benchmark accuracy of token pruners beside the unpruned baseline (issue 15, item 6).

The speed rows of ``bench/pruning_bench.py`` run random weights, so they say nothing about answers; this asks
the hold-out questions (``bench/world_bench.py``'s set, ``lrs-vqa world-bench``) with the trained world model
(``--model world``, a tiny LLaVA-OneVision: SigLIP 4 layers, 64 tokens per 112 px tile), one question at a
time through ``answer()``, once without a pruner and once per pruner, all at the same strategy and budget:

* strategy ``global`` (the thumbnail alone, one tile: the bench's ``576`` token set on this model) and
  ``c2f`` (the default loop; the pruner compresses the final tiles in place of the loop's own prune);
* budget ``--budget`` (default 0.111 = 64 / 576: the bench's 64-of-576 ratio, as a ratio of each view's
  tokens).

Per configuration: accuracy (the official LRS-VQA rule: exact or WordNet synonym) overall and per category,
n, the chance level (uniform guessing over each category's answers, averaged over the questions), vision
tokens into the LLM, seconds per question.

    .venv/bin/python bench/pruning_world.py --pruners vscan,vscan:drop_at=local
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, git_state, machine
from world_bench import CHANCE, summarize, target_read

from lrs_vqa.answer import AskOptions, answer
from lrs_vqa.c2f import C2FOptions
from lrs_vqa.models.registry import load_adapter
from lrs_vqa.scoring import SynonymRule
from lrs_vqa.wordnet import load_wordnet
from lrs_vqa.world.bench_writer import QUESTIONS_FILE
from pyramid.pool import PyramidPool

NEW_TOKENS = 4  # as bench/world_bench.py: one-word answers


def options_for(strategy: str, pruner: str | None, budget: str) -> AskOptions:
    extra: dict[str, Any] = {"pruner": pruner, "budget": budget} if pruner else {}
    if strategy == "c2f":
        extra["scorer"] = "attention"  # the training-free scorer: the same for every row
        extra["c2f"] = C2FOptions()
    return AskOptions(strategy=strategy, max_new_tokens=NEW_TOKENS, **extra)


def ask_all(
    adapter: Any, rows: list[dict[str, Any]], bench: Path, options: AskOptions, rule: SynonymRule
) -> list[dict[str, Any]]:
    per = []
    with PyramidPool() as pool:
        for row in rows:
            rec = answer(bench / row["image"], row["text"], model=adapter, options=options, pyramids=pool)
            per.append(
                {
                    "question_id": row["question_id"],
                    "category": row["category"],
                    "size": row["image_size"][0],
                    "answer": rec.answer,
                    "correct": rule.judge(row["ground_truth"], rec.answer) is not None,
                    "target_read": target_read(rec, row),
                    "vision_encoded": rec.stats.vision_tokens_encoded,
                    "vision_into_llm": rec.stats.vision_tokens_into_llm,
                    "avg_vision": rec.stats.avg_vision_tokens_over_layers,
                    "tflops": rec.stats.tflops_total,
                    "seconds": rec.stats.seconds["total"],
                    "peak_mb": rec.stats.peak_memory_mb,
                }
            )
    return per


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, n: int, chance: float) -> str:
    cats = sorted(CHANCE)
    counts = {c: sum(p["category"] == c for p in next(iter(results.values()))) for c in cats}
    head = ["strategy", "pruner @ budget", "overall", *[f"{c} (n={counts[c]})" for c in cats]]
    head += ["vision tok. into LLM", "avg vision over layers", "s / question"]
    lines = [
        f"World-benchmark accuracy, hold-out `{args.bench.name}`: n = {n} questions, chance {chance:.1%} "
        f"(uniform guessing per category, averaged over the questions), model `{args.model}`, "
        f"{machine()['cpu']}, fp32, commit {git_state().get('commit', '?')[:12]}. Command: "
        f"`.venv/bin/python bench/pruning_world.py {args.command}`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for key, per in results.items():
        strategy, label = key.split("|", 1)
        s = summarize(per)
        avg = sum(p["avg_vision"] for p in per) / len(per)
        cells = [f"`{strategy}`", label, f"{s['accuracy']:.1%}"]
        cells += [f"{s['by_category'][c][0]:.1%}" if c in s["by_category"] else "—" for c in cats]
        cells += [f"{s['vision_into_llm']:.1f}", f"{avg:.1f}", f"{s['seconds']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, default=ROOT / "bench" / "out" / "world-holdout")
    ap.add_argument("--model", default="world")
    ap.add_argument("--strategies", default="global,c2f")
    ap.add_argument("--pruners", default="vscan,vscan:drop_at=local", help="comma-separated specs")
    ap.add_argument("--budget", default="0.111", help="as --budget takes it (default: 64 / 576 as a ratio)")
    ap.add_argument("--limit", type=int, default=None, help="first N questions only")
    args = ap.parse_args(argv)
    args.command = " ".join(argv if argv is not None else sys.argv[1:])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = [json.loads(x) for x in (args.bench / QUESTIONS_FILE).read_text().splitlines() if x.strip()]
    rows = rows[: args.limit] if args.limit is not None else rows
    chance = sum(CHANCE[r["category"]] for r in rows) / len(rows)
    adapter = load_adapter(args.model)
    wordnet, _ = load_wordnet()
    rule = SynonymRule(wordnet)
    results: dict[str, list[dict[str, Any]]] = {}
    for strategy in args.strategies.split(","):
        for pruner in [None, *args.pruners.split(",")]:
            key = f"{strategy}|" + ("none" if pruner is None else f"`{pruner}` @ {args.budget}")
            t0 = time.time()
            results[key] = per = ask_all(
                adapter, rows, args.bench, options_for(strategy, pruner, args.budget), rule
            )
            acc = sum(p["correct"] for p in per) / len(per)
            print(f"{key}: acc {acc:.3f} on {len(per)} ({time.time() - t0:.0f} s)", flush=True)
    text = report(results, args, len(rows), chance)
    print(text)
    out = args.bench.parent / "pruning_world.json"
    out.write_text(json.dumps({"command": args.command, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
