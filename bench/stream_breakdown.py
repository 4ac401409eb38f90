"""Where native streaming's CPU goes, against the plain reader (issue 15's streaming target).

Streams every native tile of the benchmark COG (``bench/out/inputs-27328/cog.tif``, written by
``pyramid_bench.py``) with 2 workers, each variant in a fresh process, alternating with the plain reader
(tifffile offsets + imagecodecs' JPEG decode on 2 threads, nothing kept):

* ``full``      — ``dip.stream`` as shipped;
* ``no-copy``   — the same, but the reader copies nothing from the blocks into the tile arrays
                  (``RegionReader._scatter`` is a no-op): the difference to ``full`` is the copying;
* ``no-decode`` — additionally every block decode is a no-op: what is left is the stream's Python.

The variants swap two methods on the one reader instance they open (a measurement, not a library change).
CPU seconds are the process's (all threads); wall seconds the stream's.

    OMP_NUM_THREADS=1 .venv/bin/python bench/stream_breakdown.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COG = ROOT / "bench" / "out" / "inputs-27328" / "cog.tif"
VARIANTS = ("plain", "full", "no-copy", "no-decode")


def _child(variant: str, path: str) -> dict[str, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    if variant == "plain":
        from concurrent.futures import ThreadPoolExecutor

        import imagecodecs
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            offsets, counts, tables = page.dataoffsets, page.databytecounts, page.jpegtables
            fd = os.open(path, os.O_RDONLY)

            def decode(i: int) -> int:
                return imagecodecs.jpeg8_decode(os.pread(fd, counts[i], offsets[i]), tables=tables).size

            with ThreadPoolExecutor(2) as pool:
                sum(pool.map(decode, range(len(offsets))))
            os.close(fd)
        return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}

    import numpy as np

    from pyramid.dip import DynamicImagePyramid, PyramidOptions

    with DynamicImagePyramid.open(path, PyramidOptions(workers=2)) as dip:
        native = len(dip.levels) - 1
        reader = dip._native_reader()
        if variant in ("no-copy", "no-decode"):
            reader._scatter = lambda block, bi, bj, targets: None  # type: ignore[method-assign]
        if variant == "no-decode":  # edge blocks (partial) go through ``decode``, the others ``decode_into``
            shape = reader.direct.tile_shape  # type: ignore[union-attr]
            reader.direct.decode_into = lambda ty, tx, out: None  # type: ignore[union-attr]
            reader.direct.decode = lambda ty, tx: np.zeros(shape, np.uint8)  # type: ignore[union-attr]
        t1, c1 = time.perf_counter(), time.process_time()
        tiles = sum(1 for _ in dip.stream(dip.all_tiles(native)))
        return {"wall": time.perf_counter() - t1, "cpu": time.process_time() - c1, "tiles": tiles}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--path", type=Path, default=COG)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_child(*args.child)), flush=True)
        return
    if not args.path.exists():
        sys.exit(f"{args.path} is missing: run bench/pyramid_bench.py --files cog --keep first")
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--child", variant, str(args.path)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            runs[variant].append(json.loads(out.stdout.split("RESULT ", 1)[1]))
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu")} for v, rs in runs.items()}
    print(f"Native streaming of {args.path.name}, 2 threads, median of {args.rounds} alternating rounds\n")
    print("| variant | wall s | CPU s | CPU s (all rounds) |")
    print("|---|---:|---:|---|")
    for v in VARIANTS:
        every = ", ".join(f"{r['cpu']:.2f}" for r in runs[v])
        print(f"| {v} | {med[v]['wall']:.3f} | {med[v]['cpu']:.2f} | {every} |")
    full, no_copy, no_decode = med["full"]["cpu"], med["no-copy"]["cpu"], med["no-decode"]["cpu"]
    print(
        f"\nCPU split of `full`: decode {no_copy - no_decode:.2f} s, copies {full - no_copy:.2f} s, "
        f"Python {no_decode:.2f} s; the plain reader: {med['plain']['cpu']:.2f} s. "
        f"Wall ratio DIP / plain rate: {med['plain']['wall'] / med['full']['wall']:.2f}"
    )


if __name__ == "__main__":
    main()
