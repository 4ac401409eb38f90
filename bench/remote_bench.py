"""Benchmark: one question's reads from a COG over HTTP, against the same reads from the local file and
against downloading the whole file first.

The workload is ``bench/pyramid_bench.py``'s ``coarse+tiles64``: open, the coarse level as one image, then
the 8×8 block of native tiles around the centre. The COG is the benchmarks' 27,328² scene
(``_common.find_or_make_scene``: ``pyramid_bench``'s COG, JPEG q90, 512² blocks, internal overviews; written
if absent). It is served on loopback by the range server the remote tests use
(``tests/pyramid/range_server.py``: byte ranges read from the file by seek), so the bytes and requests come
from the server's own log; the pyramid's counters (GDAL's network statistics) are printed
beside them. Rows, each in a fresh process (GDAL's caches start empty), repeated, median:

* ``local``          — the file path;
* ``remote``         — the ``http://127.0.0.1:…`` URL (GDAL range requests);
* ``download first`` — the URL copied to disk whole (``pyramid.remote.download``, what ``--download-to``
  does), then the local reads; its seconds include the copy.

Loopback has no latency and ~GB/s bandwidth: the seconds are a floor; on a real network the request count
(× round trip) and the bytes (÷ bandwidth) are what scale, so both are reported.

    .venv/bin/python bench/remote_bench.py                  # 27,328² COG, 3 runs per row
    .venv/bin/python bench/remote_bench.py --size 4096 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, find_or_make_scene, git_state, machine, peak_rss_mb, write_results_section

ROWS = ("local", "remote", "download first")
HEADING = "## Remote COG over HTTP (bench/remote_bench.py)"


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One row's reads in this (fresh) process; imports excluded from the time."""
    from pyramid.dip import DynamicImagePyramid, TileKey
    from pyramid.remote import download, locate

    t0 = time.perf_counter()
    source = spec["source"]
    if spec["row"] == "download first":
        source = str(download(locate(source), spec["download_dir"]))
    t_open = time.perf_counter()
    with DynamicImagePyramid.open(source) as dip:
        coarse = dip.level_image(0).pixels
        native = len(dip.levels) - 1
        lvl = dip.levels[native]
        r0, c0 = max(0, lvl.rows // 2 - 4), max(0, lvl.cols // 2 - 4)
        keys = [
            TileKey(native, r, c)
            for r in range(r0, min(lvl.rows, r0 + 8))
            for c in range(c0, min(lvl.cols, c0 + 8))
        ]
        pixels = coarse.shape[0] * coarse.shape[1] + sum(
            t.pixels.shape[0] * t.pixels.shape[1] for t in dip.stream(keys)
        )
        report = dip.remote_report() or {}
    end = time.perf_counter()
    return {
        "seconds": end - t0,
        "download_seconds": t_open - t0,
        "pixels": pixels,
        "tiles": len(keys),
        "gdal_bytes": report.get("bytes_fetched"),
        "gdal_requests": report.get("requests"),
        "peak_mb": peak_rss_mb(),
    }


def run_row(row: str, source: str, server: Any, download_dir: Path) -> dict[str, Any]:
    for f in download_dir.iterdir():  # each download-first run copies the file again
        f.unlink()
    server.log.reset()
    spec = {"row": row, "source": source, "download_dir": str(download_dir)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")])}
    res = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if res.returncode != 0:
        raise SystemExit(f"{row}: child failed\n{res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["server_bytes"], out["server_requests"] = server.log.bytes_sent, server.log.requests
    return out


def report(results: dict[str, list[dict[str, Any]]], cog: Path, args: argparse.Namespace) -> str:
    size = cog.stat().st_size
    med = {
        r: {k: statistics.median(x[k] for x in runs) for k in ("seconds", "peak_mb")}
        for r, runs in results.items()
    }
    local_s = med["local"]["seconds"]
    commit = git_state().get("commit", "?")[:12]
    lines = [
        HEADING,
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, "
        f"{machine()['cpu']} ({os.cpu_count()} cores). One question's reads (open, the coarse level, the 8×8 "
        f"native tiles around the centre) from the {args.size:,}² COG ({size / 2**20:,.0f} MiB), served on "
        "loopback by a range server; each row in a fresh process, median of "
        f"{args.repeats}. Bytes and requests are the server's log (GDAL's own counters agreed: "
        f"{'yes' if all(x['gdal_bytes'] == x['server_bytes'] for x in results['remote']) else 'NO'}).",
        "",
        "| row | bytes fetched | share of the file | requests | seconds | × local | peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row, runs in results.items():
        last = runs[-1]
        got = last["server_bytes"] if row != "local" else 0
        cells = [
            row,
            f"{got / 2**20:,.1f} MiB" if row != "local" else "— (disk)",
            f"{got / size:.1%}" if row != "local" else "—",
            str(last["server_requests"]) if row != "local" else "—",
            f"{med[row]['seconds']:.2f}",
            f"{med[row]['seconds'] / local_s:.1f}",
            f"{med[row]['peak_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Reproduce: `{' '.join(['.venv/bin/python bench/remote_bench.py', args.reproduce]).strip()}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=27328, help="side of pyramid_bench's synthetic scene (px)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write-results", action="store_true", help="write the table into bench/RESULTS.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    args.reproduce = " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write-results"
    )
    sys.path.insert(0, str(ROOT / "tests" / "pyramid"))
    from range_server import serve

    cog = Path(find_or_make_scene(ROOT / "bench" / "out", args.size)["path"])
    results: dict[str, list[dict[str, Any]]] = {r: [] for r in ROWS}
    with serve(cog.parent) as server, tempfile.TemporaryDirectory(dir=cog.parent) as tmp:
        sources = {"local": str(cog), "remote": server.url(cog.name), "download first": server.url(cog.name)}
        for i in range(args.repeats):
            for row in ROWS:  # interleaved, so drift in the machine's load touches every row alike
                r = run_row(row, sources[row], server, Path(tmp))
                results[row].append(r)
                print(
                    f"  run {i + 1}: {row}: {r['seconds']:.2f} s, {r['server_bytes']:,} B, "
                    f"{r['server_requests']} requests",
                    flush=True,
                )
    text = report(results, cog, args)
    print(text)
    if args.write_results:
        write_results_section(ROOT / "bench" / "RESULTS.md", text, heading=HEADING)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
