"""Benchmark: bf16 against fp32 on the world benchmark's hold-out — the same answers? how fast is each?

Every question of the hold-out (``bench/out/world-holdout``, written by ``bench/world_bench.py``) is asked
twice through ``answer()`` with the default strategy (c2f, ``--scorer auto``: the world model's shipped RFM),
once with the model loaded in float32 and once in bfloat16, one question at a time. Which dtype goes first
alternates from question to question, so neither always finds the pyramid's tiles already decoded.

Reported: agreement (the two answers identical after trimming and lower-casing), the accuracy of each (the
official LRS-VQA rule: exact or WordNet synonym), seconds per question of each (the answer record's total) and
their ratio, and what ``--dtype auto`` resolves to on the machine. The per-question rows go to
``bench/out/world-holdout-dtype/answers.jsonl`` as they are made (``--resume`` continues them).

    .venv/bin/python bench/dtype_bench.py --limit 20          # a time estimate
    .venv/bin/python bench/dtype_bench.py --write-results     # the whole hold-out, into RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, git_state, machine, write_results_section

HEADING = "## dtype: bf16 against fp32 (bench/dtype_bench.py)"
DTYPES = ("float32", "bfloat16")
AGREEMENT_TARGET = 0.98


def same(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def run(args: argparse.Namespace, rows: list[dict[str, Any]], log_path: Path) -> list[dict[str, Any]]:
    from lrs_vqa.answer import AskOptions, answer
    from lrs_vqa.models.registry import load_adapter
    from lrs_vqa.scoring import SynonymRule
    from lrs_vqa.wordnet import load_wordnet
    from pyramid.pool import PyramidPool

    done: dict[str, dict[str, Any]] = {}
    if args.resume and log_path.exists():
        for line in log_path.read_text().splitlines():
            if line.strip():
                item = json.loads(line)
                done[item["question_id"]] = item
    else:
        log_path.write_text("")
    adapters = {d: load_adapter(args.model, device="cpu", dtype=d) for d in DTYPES}
    rule = SynonymRule(load_wordnet()[0])
    options = AskOptions(max_new_tokens=4)  # the defaults: c2f, scorer auto; 4 tokens as world_bench
    t0 = time.time()
    fresh = 0
    with PyramidPool() as pool, log_path.open("a") as log:
        for i, row in enumerate(rows):
            if row["question_id"] in done:
                continue
            order = DTYPES if i % 2 == 0 else DTYPES[::-1]
            item: dict[str, Any] = {
                "question_id": row["question_id"],
                "category": row["category"],
                "size": row["image_size"][0],
                "ground_truth": row["ground_truth"],
            }
            for d in order:
                rec = answer(
                    args.bench / row["image"], row["text"], model=adapters[d], options=options, pyramids=pool
                )
                item[d] = {
                    "answer": rec.answer,
                    "correct": rule.judge(row["ground_truth"], rec.answer) is not None,
                    "seconds": rec.stats.seconds["total"],
                    "recorded_dtype": rec.settings["dtype"],
                    "tiles_read": rec.stats.tiles_read,
                }
            item["agree"] = same(item["float32"]["answer"], item["bfloat16"]["answer"])
            done[row["question_id"]] = item
            log.write(json.dumps(item) + "\n")
            log.flush()
            fresh += 1
            if fresh == 20 or (i + 1) % 50 == 0:
                per = (time.time() - t0) / fresh
                left = sum(r["question_id"] not in done for r in rows)
                print(
                    f"  {i + 1}/{len(rows)}: {per:.2f} s per question (both dtypes), "
                    f"~{left * per / 60:.0f} min left",
                    flush=True,
                )
    return [done[r["question_id"]] for r in rows if r["question_id"] in done]


def report(items: list[dict[str, Any]], args: argparse.Namespace) -> str:
    from lrs_vqa.models.dtypes import BF16_CPU_FLAGS, host_cpu_flags, resolve_dtype

    n = len(items)
    agree = sum(i["agree"] for i in items) / n
    acc = {d: sum(i[d]["correct"] for i in items) / n for d in DTYPES}
    sec = {d: sum(i[d]["seconds"] for i in items) / n for d in DTYPES}
    recorded = {d: sorted({i[d]["recorded_dtype"] for i in items}) for d in DTYPES}
    m = machine()
    flags = sorted(host_cpu_flags() & BF16_CPU_FLAGS) or ["none"]
    differ = [i for i in items if not i["agree"]]
    lines = [
        HEADING,
        "",
        f"World hold-out (`{args.bench.name}`), {n} questions"
        f"{'' if n == args.total else f' of {args.total}'}, model `{args.model}`, default strategy (c2f, "
        "`--scorer auto`: the shipped RFM), 4 new tokens, one question at a time, each asked in both dtypes "
        f"(order alternating). {m['cpu']} ({m['cores']} cores), "
        f"torch {m['torch']}, {m['torch_threads']} thread(s), commit {git_state().get('commit', '?')[:12]}. "
        f"This CPU's bf16 flags: {', '.join(flags)} — `--dtype auto` resolves to "
        f"**{resolve_dtype('auto', 'cpu')}** here. The machine was shared with other engineers' tests and "
        "benchmarks during the run: the seconds are indicative, the answers exact.",
        "",
        "| dtype | accuracy | s / question | recorded dtype |",
        "|---|---:|---:|---|",
        *[f"| {d} | {acc[d]:.1%} | {sec[d]:.3f} | {', '.join(recorded[d])} |" for d in DTYPES],
        "",
        f"* **Same answer on {agree:.1%} of questions** ({n - len(differ)} of {n}; target ≥ "
        f"{AGREEMENT_TARGET:.0%}: {'met' if agree >= AGREEMENT_TARGET else 'MISSED'}).",
        f"* Speed: fp32 ÷ bf16 seconds = **{sec['float32'] / sec['bfloat16']:.2f}×** on this CPU (> 1: bf16 "
        "faster). A model this small (the world model, 14 MB) is dominated by per-op overhead and pyramid "
        "reads, not matmuls, so the ratio says little about large models: at OneVision-0.5B's shapes the "
        "Engine section measured bf16 ~3× faster on an AMX Xeon, and the Pruning section found it emulated "
        "and slower on an EPYC without bf16 flags (where `auto` now picks fp32); a GPU differs again.",
    ]
    if differ:
        shown = ", ".join(
            f"{i['question_id']} ({i['float32']['answer']!r} vs {i['bfloat16']['answer']!r})"
            for i in differ[:8]
        )
        lines.append(f"* Answers that differ (fp32 vs bf16): {shown}{' …' if len(differ) > 8 else ''}.")
    lines += [
        "",
        f"Reproduce: `OMP_NUM_THREADS=1 .venv/bin/python bench/dtype_bench.py {args.reproduce}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, default=ROOT / "bench" / "out" / "world-holdout")
    ap.add_argument("--model", default="world")
    ap.add_argument("--limit", type=int, default=None, help="first N questions only")
    ap.add_argument("--resume", action="store_true", help="continue the rows of an earlier run")
    ap.add_argument("--report-only", action="store_true", help="report the rows already made")
    ap.add_argument("--write-results", action="store_true", help="write the section into bench/RESULTS.md")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a benchmark never downloads; before transformers loads
    from lrs_vqa.world.bench_writer import QUESTIONS_FILE

    questions = args.bench / QUESTIONS_FILE
    if not questions.exists():
        raise SystemExit(f"{questions} is missing: write the hold-out with bench/world_bench.py first")
    rows = [json.loads(x) for x in questions.read_text().splitlines() if x.strip()]
    args.total = len(rows)
    if args.limit is not None:
        rows = rows[: args.limit]
    args.reproduce = " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only")
    out = args.bench.parent / (args.bench.name + "-dtype")
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        ids = {r["question_id"] for r in rows}
        lines = (out / "answers.jsonl").read_text().splitlines()
        items = [it for x in lines if x.strip() and (it := json.loads(x))["question_id"] in ids]
    else:
        items = run(args, rows, out / "answers.jsonl")
    text = report(items, args)
    print(text)
    if args.write_results:
        write_results_section(ROOT / "bench" / "RESULTS.md", text, heading=HEADING)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
