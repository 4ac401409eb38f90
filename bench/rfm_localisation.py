"""Benchmark: where the coarse-to-fine descent finds the target, per pyramid level, for each region scorer.

On the world benchmark's hold-out questions that have a target object (``target_boxes``), the default c2f loop
(``lrs_vqa.c2f``; no answer is decoded) runs with each scorer:

* ``attention``        — the training-free attention scorer (the host's first layers);
* ``rfm-init:L``       — an untrained RFM copied from the host (``RegionFocusModule.from_host``, layer list L,
                         ``+``-separated: ``rfm-init:1+2``);
* ``rfm:DIR``          — an RFM from ``lrs-vqa train-rfm`` (distilled, box-supervised, or both).

Per scorer and level (named by its scale: ``1/64`` … ``1/2``, ``native``): the share of questions whose target
lies in a tile the loop read at that level, over the questions whose scene has that level and whose descent
reached it or stopped above it (a stop counts as a miss); ``reach native``: the target read at native
resolution, over every target question. ``rank@view``: independent of the descent — the thumbnail plus up
to 16 adjacent tiles of a random level around the target (what training shows the RFM, and what the descent
reads), the share where a target tile holds the most score mass.

    .venv/bin/python bench/rfm_localisation.py --scorers attention,rfm-init:1,rfm:/path/to/rfm --limit 120
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import ROOT, git_state, machine, write_results_section

NOTE = (
    "Each cell: the share of questions whose target lies in a tile the c2f loop read at that level "
    "(questions in parentheses; a descent that stopped above counts as a miss); `reach native`: the target "
    "read at native resolution, over every target question, then by scene size."
)
SCALES = ("coarse", "1/64", "1/32", "1/16", "1/8", "1/4", "1/2", "native")


def make_scorer(spec: str, adapter: Any) -> Any:
    from lrs_vqa.models.region_focus import RegionFocusModule
    from lrs_vqa.models.rfm_checkpoint import load_rfm
    from rfm.module import RFMScorer
    from rfm.scorers import build_scorer

    if spec == "attention":
        return build_scorer("attention", adapter, None)
    if spec.startswith("rfm-init:"):
        layers = [int(v) for v in spec.split(":", 1)[1].split("+")]
        return RFMScorer(RegionFocusModule.from_host(adapter, llm_layer_list=layers).eval())
    if spec.startswith("rfm:"):
        return RFMScorer(load_rfm(spec.split(":", 1)[1], adapter))
    raise SystemExit(f"unknown scorer {spec!r}: attention | rfm-init:LAYERS | rfm:DIR")


def covers(dip: Any, level: int, keys: Any, boxes: list[list[float]]) -> bool:
    lvl = dip.level(level)
    for k in keys:
        b = lvl.tile_box(k.row, k.col)
        if any(b.x0 < t[2] and t[0] < b.x1 and b.y0 < t[3] and t[1] < b.y1 for t in boxes):
            return True
    return False


def view_ranks(adapter: Any, scorer: Any, dip: Any, row: dict[str, Any], seed: int) -> dict[str, bool]:
    """For every level below the coarse one, a training-like view (the thumbnail + a 4×4 window holding the
    target at a random place): is a target tile the top tile by score mass? Keyed by the level's name."""
    import torch

    from lrs_vqa.c2f import tile_mass
    from rfm.training import window_around

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        thumb = adapter.encode_tiles([dip.thumbnail()], newlines=False, level=-1)
    out = {}
    for level in range(1, len(dip.levels)):
        keys = window_around(dip, level, row["target_boxes"][0], 16, g)
        with torch.no_grad():
            seg = adapter.encode_tiles(list(dip.stream(keys)), newlines=True, level=level)
            scores = scorer.score(adapter, row["text"], [thumb, seg], 1)
        mass = tile_mass(scores, len(keys))
        best = keys[max(range(len(mass)), key=mass.__getitem__)]
        out[dip.levels[level].name] = covers(dip, level, [best], row["target_boxes"])
    return out


def run(
    bench: Path,
    scorers: list[str],
    limit: int | None,
    model: str,
    c2f: dict[str, Any],
    rank_limit: int | None = None,
) -> dict[str, Any]:
    from lrs_vqa.c2f import C2FOptions, CoarseToFine
    from lrs_vqa.models.base import pyramid_spec_for
    from lrs_vqa.models.registry import load_adapter
    from lrs_vqa.world.bench_writer import QUESTIONS_FILE
    from pyramid.dip import DynamicImagePyramid, PyramidOptions

    rows = [json.loads(x) for x in (bench / QUESTIONS_FILE).read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("target_boxes")]
    if limit is not None:
        rows = rows[:limit]
    adapter = load_adapter(model)
    spec = pyramid_spec_for(adapter)
    out: dict[str, Any] = {}
    dips: dict[str, Any] = {}
    for name in scorers:
        scorer = make_scorer(name, adapter)
        loop = CoarseToFine(adapter, scorer, C2FOptions(**c2f))
        hit: dict[str, list[bool]] = defaultdict(list)
        ranks: dict[str, list[bool]] = defaultdict(list)
        native: list[bool] = []
        by_size: dict[int, list[bool]] = defaultdict(list)
        t0 = time.time()
        for i, row in enumerate(rows):
            path = str(bench / row["image"])
            dip = dips.get(path) or dips.setdefault(
                path, DynamicImagePyramid.open(path, PyramidOptions(spec=spec))
            )
            result = loop.run(dip, row["text"])
            read = {s.level: s.tiles for s in result.steps}
            for idx, level in enumerate(dip.levels):
                hit[level.name].append(idx in read and covers(dip, idx, read[idx], row["target_boxes"]))
            native.append(hit["native"][-1])
            by_size[int(row["image_size"][0])].append(hit["native"][-1])
            if rank_limit is None or i < rank_limit:  # one view per level: the costly part
                for lvl_name, top in view_ranks(adapter, scorer, dip, row, seed=i).items():
                    ranks[lvl_name].append(top)
            if (i + 1) % 20 == 0:
                print(
                    f"  {name}: {i + 1}/{len(rows)} native {sum(native) / len(native):.1%} "
                    f"({time.time() - t0:.0f} s)",
                    flush=True,
                )
        out[name] = {
            "levels": dict(hit),
            "native": native,
            "by_size": dict(by_size),
            "ranks": dict(ranks),
            "n": len(rows),
        }
    for d in dips.values():
        d.close()
    return out


def share(v: list[bool]) -> str:
    return f"{sum(v) / len(v):.0%} ({len(v)})" if v else "—"


def report(results: dict[str, Any], bench: Path, args: argparse.Namespace) -> str:
    cols = [s for s in SCALES if any(s in r["levels"] for r in results.values())]
    sizes = sorted({int(k) for r in results.values() for k in r["by_size"]})
    n = next(iter(results.values()))["n"]
    lines = [
        "## RFM localisation",
        "",
        f"Hold-out `{bench.name}`: the {n} questions with a target object, model `{args.model}`, "
        f"{machine()['cpu']}, commit {git_state().get('commit', '?')[:12]}. " + NOTE,
        "",
        "| scorer | "
        + " | ".join(cols)
        + " | reach native | "
        + " | ".join(f"native, {z}²" for z in sizes)
        + " |",
        "|---|" + "---:|" * (len(cols) + len(sizes) + 1),
    ]
    for name, r in results.items():
        cells = [share(r["levels"].get(c, [])) for c in cols]
        per_size = [share(r["by_size"].get(z, r["by_size"].get(str(z), []))) for z in sizes]
        lines.append(
            f"| `{name}` | " + " | ".join(cells) + f" | {share(r['native'])} | " + " | ".join(per_size) + " |"
        )
    rank_cols = [c for c in SCALES if any(c in r["ranks"] for r in results.values())]
    lines += [
        "",
        "Ranking alone, without the descent (questions in parentheses): the share of views (thumbnail + "
        "a 4×4 window of the level holding the target at a random place) whose top tile by score mass "
        "holds the target (chance 1 in 16 where the level has 16 tiles or more).",
        "",
        "| scorer | " + " | ".join(rank_cols) + " |",
        "|---|" + "---:|" * len(rank_cols),
    ]
    for name, r in results.items():
        lines.append(f"| `{name}` | " + " | ".join(share(r["ranks"].get(c, [])) for c in rank_cols) + " |")
    lines += ["", f"Reproduce: `.venv/bin/python bench/rfm_localisation.py {args.reproduce}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, default=ROOT / "bench" / "out" / "world-holdout")
    ap.add_argument("--model", default="world")
    ap.add_argument("--scorers", default="attention,rfm-init:1")
    ap.add_argument("--limit", type=int, default=None, help="first N target questions only")
    ap.add_argument("--min-gain", type=float, default=None, help="c2f zoom test (default: C2FOptions)")
    ap.add_argument("--max-tiles-per-level", type=int, default=None)
    ap.add_argument("--rank-limit", type=int, default=None, help="per-level ranking on the first N only")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args(argv)
    args.reproduce = " ".join(argv if argv is not None else sys.argv[1:])
    c2f = {
        k: v
        for k, v in (("min_gain", args.min_gain), ("max_tiles_per_level", args.max_tiles_per_level))
        if v is not None
    }
    scorers = [s for s in args.scorers.split(",") if s]
    results = run(args.bench, scorers, args.limit, args.model, c2f, args.rank_limit)
    text = report(results, args.bench, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results))
    if args.write_results:
        write_results_section(ROOT / "bench" / "RESULTS.md", text, heading="## RFM localisation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
