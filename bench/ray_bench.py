"""Rows per second of ``eval`` in one process vs on Ray with 1 and 2 workers, and the driver's cost per row.

The questions are the first ``--limit`` of the world benchmark's hold-out (``bench/out/world-holdout``,
written by ``bench/world_bench.py`` or ``lrs-vqa world-bench``), asked of the world model with the default
strategy (c2f), fp32 on CPU. Each configuration writes its own answers file; the answers must be the same
in all of them. Rows per second count answering only (from the first worker ready to the last row; model
loading is reported apart). The driver's CPU per row is this process's CPU time over the whole Ray run
(questions, actor creation, receiving and writing rows) divided by the rows, an upper bound; its write time
per row is what the single writer spends appending a row (fsync included).

    OMP_NUM_THREADS=1 .venv/bin/python bench/ray_bench.py [--limit 96] [--write-results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from lrs_vqa.distributed import RayOptions
from lrs_vqa.evaluate import EvalConfig, run_eval
from lrs_vqa.options import AskOptions

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Ray"


def measure(name: str, cfg: EvalConfig) -> dict[str, Any]:
    cpu0, t0 = time.process_time(), time.perf_counter()
    res = run_eval(cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rows = [json.loads(line) for line in res.answers_path.read_text().splitlines() if line.strip()]
    ray = res.results.get("ray") or {}
    out = {
        "config": name,
        "rows": res.answered_now,
        "images": len({r["image"] for r in rows}),
        "failed": res.answer_errors,
        "answer_seconds": round(res.seconds, 2),
        "rows_per_second": round(res.questions_per_second, 3),
        "model_load_seconds": res.results["throughput"]["model_load_seconds"],
        "wall_seconds": round(wall, 2),
        "driver_cpu_ms_per_row": round(1000 * cpu / max(1, res.answered_now), 1) if ray else None,
        "driver_write_ms_per_row": ray.get("driver_ms_per_row"),
        "workers": ray.get("workers"),
        "answers": {r["question_id"]: r["text"] for r in rows},
    }
    print(json.dumps({k: v for k, v in out.items() if k != "answers"}), flush=True)
    return out


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    base = runs[0]["rows_per_second"]
    same = all(r["answers"] == runs[0]["answers"] for r in runs)
    lines = [
        SECTION,
        "",
        f"`bench/ray_bench.py --limit {args.limit}`: the first {args.limit} questions of the world hold-out "
        f"({runs[0]['images']} images), model `{args.model}`, c2f, fp32, "
        f"{platform.processor() or 'CPU'} with {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, Ray "
        f"{_ray_version()} started by the script (`num_cpus={os.cpu_count()}`), 1 CPU per worker. "
        f"Load average before the runs: {args.load_before}. Answers identical in all runs: "
        f"{'yes' if same else 'NO'}.",
        "",
        "| config | workers | rows/s (answering) | × one process | model load s | wall s | driver CPU ms/row "
        "| driver write ms/row |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        cpu = "-" if r["driver_cpu_ms_per_row"] is None else f"{r['driver_cpu_ms_per_row']:.1f}"
        write = "-" if r["driver_write_ms_per_row"] is None else f"{r['driver_write_ms_per_row']:.2f}"
        lines.append(
            f"| {r['config']} | {r['workers'] or '-'} | {r['rows_per_second']:.2f} | "
            f"{r['rows_per_second'] / base:.2f} | "
            f"{r['model_load_seconds']:.1f} | {r['wall_seconds']:.1f} | {cpu} | {write} |"
        )
    return "\n".join(lines) + "\n"


def _ray_version() -> str:
    import ray

    return ray.__version__


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, default=ROOT / "bench" / "out" / "world-holdout")
    ap.add_argument("--model", default="world")
    ap.add_argument("--limit", type=int, default=96)
    ap.add_argument("--write-results", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()
    questions = args.bench / "LRS_VQA_merged.jsonl"
    if not questions.is_file():
        raise SystemExit(f"{questions} is missing: run `lrs-vqa world-bench {args.bench}` first")
    args.load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False, log_to_driver=False)
    runs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = EvalConfig(
                questions=questions,
                image_root=args.bench,
                output_dir=Path(tmp),
                model=args.model,
                options=AskOptions(),
                limit=args.limit,
                score=False,
            )
            configs = [("one process", None), ("Ray, 1 worker", 1), ("Ray, 2 workers", 2)]
            for name, workers in configs:
                out = Path(tmp) / name.replace(" ", "").replace(",", "")
                ray_opts = None if workers is None else RayOptions(workers=workers)
                runs.append(measure(name, replace(base, output_dir=out, ray=ray_opts)))
    finally:
        ray.shutdown()
    text = report(runs, args)
    print(text)
    if args.write_results:
        path = ROOT / "bench" / "RESULTS.md"
        old = path.read_text()
        # Only this section is ours: replace it where it is, else append it at the end.
        start = old.find("\n" + SECTION + "\n")
        if start < 0:
            path.write_text(old.rstrip("\n") + "\n\n" + text)
        else:
            end = old.find("\n## ", start + 1)
            tail = "" if end < 0 else "\n" + old[end + 1 :]
            path.write_text(old[: start + 1] + text + tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
