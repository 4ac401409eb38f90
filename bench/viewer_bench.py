"""The deep-zoom viewer's tile endpoint on the benchmarks' 27,328² COG: native-tile latency (p50/p95) through
HTTP, cold and warm, one at a time and with a browser's six parallel connections, and the memory of the app
process after a zoom sweep (overview → native at three places, then a pan at native).

The app runs in a child process (``lrs-vqa serve``'s ``launch``, no model loaded: the image's token is
registered as the page registers it when a question starts); this process only sends requests and reads the
child's RSS from /proc, so the client's own memory is not counted.

    .venv/bin/python bench/viewer_bench.py [--tiles 200] [--write-results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, find_or_make_scene, git_state, write_results_section

SIZE = 27328
HEADING = "## Deep-zoom viewer"
VIEWPORT = (1400, 900)  # screen pixels the sweep fills at each level


def _serve(image: str, port: int, examples: str) -> None:
    """The child: the demo's server with the image registered, until stdin closes."""
    sys.path.insert(0, str(ROOT))
    from app.config import ServeConfig
    from app.server import launch
    from pyramid.dip import DynamicImagePyramid

    config = ServeConfig(port=port, examples_dir=Path(examples))
    served = launch(config, block=False)
    with DynamicImagePyramid.open(image) as dip:  # as the page does: the size comes from the open pyramid
        width, height = dip.info.width, dip.info.height
    token = served.tiles.register(Path(image), width, height)
    print(json.dumps({"token": token, "width": width, "height": height, "pid": os.getpid()}), flush=True)
    sys.stdin.read()
    served.close()


def _status_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _get(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        n = len(r.read())
    return (time.perf_counter() - t0) * 1000, n


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _row(name: str, ms: list[float], wall_s: float | None = None) -> str:
    rate = f"{len(ms) / wall_s:.0f}" if wall_s else "—"
    return f"| {name} | {len(ms)} | {_pct(ms, 0.5):.1f} | {_pct(ms, 0.95):.1f} | {max(ms):.1f} | {rate} |"


def _viewport_tiles(level: int, max_level: int, cx: float, cy: float, width: int, height: int) -> list[tuple]:
    """The tiles of ``level`` a VIEWPORT-sized view centred at level-0 (cx, cy) shows."""
    f = 2 ** (max_level - level)
    lw, lh = math.ceil(width / f), math.ceil(height / f)
    x0, y0 = cx / f - VIEWPORT[0] / 2, cy / f - VIEWPORT[1] / 2
    c0, c1 = max(0, int(x0 // 256)), min(math.ceil(lw / 256) - 1, int((x0 + VIEWPORT[0]) // 256))
    r0, r1 = max(0, int(y0 // 256)), min(math.ceil(lh / 256) - 1, int((y0 + VIEWPORT[1]) // 256))
    return [(level, c, r) for c in range(c0, c1 + 1) for r in range(r0, r1 + 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", type=int, default=200, help="native tiles per latency measurement")
    ap.add_argument("--write-results", action="store_true", help=f"write '{HEADING}' into bench/RESULTS.md")
    ap.add_argument("--image", help="another image instead of the 27,328² COG (a quick check of this script)")
    ap.add_argument("--serve", nargs=3, metavar=("IMAGE", "PORT", "EXAMPLES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        _serve(args.serve[0], int(args.serve[1]), args.serve[2])
        return

    out = ROOT / "bench" / "out"
    scene = {"path": args.image, "kind": "given"} if args.image else find_or_make_scene(out, SIZE)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", scene["path"], str(port), str(out / "viewer" / "examples")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        info = json.loads(child.stdout.readline())  # type: ignore[union-attr]
        pid, token, width, height = info["pid"], info["token"], info["width"], info["height"]
        max_level = math.ceil(math.log2(max(width, height)))
        base = f"http://127.0.0.1:{port}/lrs/dzi/{token}_files"

        def url(t: tuple) -> str:
            return f"{base}/{t[0]}/{t[1]}_{t[2]}.jpg"

        rss_base = _status_mb(pid, "VmRSS")  # the app started, no tile asked yet
        _get(url((0, 0, 0)))  # opens the pyramid
        rss_open = _status_mb(pid, "VmRSS")
        rows = []
        rng = random.Random(0)
        cols, nrows = math.ceil(width / 256), math.ceil(height / 256)
        cells = rng.sample([(c, r) for c in range(cols) for r in range(nrows)], 2 * args.tiles)
        cold = [(max_level, c, r) for c, r in cells[: args.tiles]]
        ms, sizes = zip(*(_get(url(t)) for t in cold), strict=True)
        rows.append(_row("native, cold (never read), one at a time", list(ms)))
        ms_warm = [_get(url(t))[0] for t in cold[-50:]]
        rows.append(_row("native, warm (the last of them again), one at a time", ms_warm))
        par = [(max_level, c, r) for c, r in cells[args.tiles :]]
        with ThreadPoolExecutor(6) as pool:  # a browser's connections per host
            t0 = time.perf_counter()
            ms_par = [m for m, _ in pool.map(lambda t: _get(url(t)), par)]
            wall = time.perf_counter() - t0
        rows.append(_row("native, cold, 6 parallel connections", ms_par, wall))

        # The zoom sweep: overview → native at three places, then a pan at native across 20 views.
        sweep: list[tuple] = []
        for cx, cy in [(width * 0.3, height * 0.4), (width * 0.7, height * 0.2), (width * 0.5, height * 0.8)]:
            for level in range(max_level + 1):
                sweep += _viewport_tiles(level, max_level, cx, cy, width, height)
        for k in range(20):
            cx = width * (0.1 + 0.04 * k)
            sweep += _viewport_tiles(max_level, max_level, cx, height * 0.6, width, height)
        with ThreadPoolExecutor(6) as pool:
            t0 = time.perf_counter()
            ms_sweep = [m for m, _ in pool.map(lambda t: _get(url(t)), sweep)]
            wall_sweep = time.perf_counter() - t0
        rows.append(_row(f"zoom sweep, all levels ({len(sweep)} tiles, 6 connections)", ms_sweep, wall_sweep))
        rss_after, hwm = _status_mb(pid, "VmRSS"), _status_mb(pid, "VmHWM")
    finally:
        child.stdin.close()  # type: ignore[union-attr]
        child.wait(timeout=60)

    from app.config import ServeConfig

    budget = ServeConfig().tile_cache_bytes / 2**20
    state = git_state("app", "bench/viewer_bench.py")
    lines = [
        HEADING,
        "",
        f"`bench/viewer_bench.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit "
        f"{state['commit'][:12]}{', uncommitted edits' if state['dirty'] else ''}): the app's Deep Zoom "
        f"endpoint serving the {width:,}×{height:,} image ({scene['kind']}), 256 px JPEG tiles (q85) over "
        f"HTTP on loopback, the app in its own process, {os.cpu_count()} cores shared with other work. "
        "Latency is request to last byte, in ms.",
        "",
        "| requests | n | p50 ms | p95 ms | max ms | tiles/s |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Native tiles average {sum(sizes) / len(sizes) / 1024:.0f} KiB. App process memory (RSS): "
        f"{rss_base:.0f} MiB started (Gradio, torch and the pipeline imported, no model loaded), "
        f"{rss_open:.0f} MiB with the pyramid open, {rss_after:.0f} MiB after all the requests above "
        f"(peak {hwm:.0f} MiB, {hwm - rss_base:+.0f} MiB over the start); "
        f"the viewer's block cache budget (`ServeConfig.tile_cache_bytes`) is {budget:.0f} MiB over up to "
        f"{ServeConfig().viewer_images} open images, so this one image may hold "
        f"{budget / ServeConfig().viewer_images:.0f} MiB of decoded blocks.",
        "",
        "Reproduce: `.venv/bin/python bench/viewer_bench.py --write-results`.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        write_results_section(ROOT / "bench" / "RESULTS.md", text, HEADING)


if __name__ == "__main__":
    main()
