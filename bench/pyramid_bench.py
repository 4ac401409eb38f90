"""Benchmark: the Dynamic Image Pyramid against the "PIL opens the whole image" reference.

One synthetic scene (``pyramid.synth``) is stored three ways:

* ``cog``     — a COG written by ``pyramid.cog.write_cog`` (JPEG q90, 512² tiles, internal overviews);
* ``striped`` — the same pixels as a striped LZW TIFF (GDAL default rows per strip), written in row bands;
* ``png``     — the same pixels as a PNG (libvips, deflate level 1).

For each file it measures, in a FRESH subprocess per run (peak RSS = the child's ``VmHWM``; time = the
operation itself, opening the file included, interpreter start and library imports excluded):

* (a) ``coarse``   — the coarse level as one image (``dip.level_image(0)``, long side 1008);
* (b) ``tiles64``  — 64 native-resolution tiles, the 8×8 block around the image centre (``dip.stream``);
* (c) ``level4``   — every tile of the 1/4 level (``dip.all_tiles``, streamed);
* (a+b) ``coarse+tiles64`` — one question: the coarse view, then the 64 tiles, in one process;

against the reference: ``PIL.Image.open`` (``MAX_IMAGE_PIXELS = None``) + ``.convert("RGB")`` + BOX resize /
crops (``np.asarray`` of each crop). Files without overviews (striped, png) build a libvips pyramid cache on
first open: that cold cost is measured in a fresh cache folder, the warm runs reuse it. On the COG it also
measures native-tile streaming throughput (workers=2 and workers=1) and the single-core JPEG decode rate
of libjpeg-turbo and of GDAL for reference, then prints PASS/MISS for the targets of the issue.

Reference rows (issue 15): a **plain reader** — each JPEG tile's bytes read with tifffile's offsets, decoded
with imagecodecs on 2 threads, nothing kept — over every native tile and over the 1/4 overview, run
alternately with the DIP's streaming of the same level so both see the same machine; and (a+b) **whole
process** (interpreter start and imports included, wall time of the child) for the DIP and PIL.
``--files cog`` measures the COG only.

    .venv/bin/python bench/pyramid_bench.py --size 4096 --repeats 1     # ~30 s smoke run
    .venv/bin/python bench/pyramid_bench.py                             # 27,328², ~18-30 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import git_state

ROOT = Path(__file__).resolve().parent.parent
FILES = ("cog", "striped", "png")
OPS = ("coarse", "tiles64", "level4", "coarse+tiles64")
OP_LABEL = {
    "coarse": "(a) coarse level",
    "tiles64": "(b) 64 native tiles",
    "level4": "(c) all 1/4-level tiles",
    "coarse+tiles64": "(a+b) coarse + 64 tiles",
}
STREAM_BUDGET_S = 20.0  # stream the whole image if it fits in this, else a band of >= 4 tile rows
STREAM_MIN_ROWS = 4
CHILD_TIMEOUT_S = 1800
QUIET_MAX_WAIT_S = 30.0
NOISY_CORES = 0.3  # a run during which other processes used more than this many cores is marked †

# Targets of the issue.
COARSE_TARGET_S = 0.2
SPEEDUP_TARGET = 20.0
MEMORY_TARGET = 0.1
PLAIN_TARGET = 0.8  # issue 15: streaming at >= 80 % of the plain reader's rate
IN_PROCESS_TARGET = 80.0  # issue 15: (a+b) vs PIL, imports excluded
WHOLE_TARGET = 40.0  # issue 15: (a+b) vs PIL, whole process
DECODE_RATE = {"GDAL JPEG (IJG libjpeg 9, rasterio wheel)": 85.0, "libjpeg-turbo": 300.0}  # MP/s per core


# =====================================================================================================
# Child side: one measurement per process.
# =====================================================================================================


def _peak_rss() -> int:
    """This process's peak RSS in bytes.

    ``VmHWM`` rather than ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux keeps ``ru_maxrss`` across
    ``fork`` + ``execve``, so a child would report at least the parent's RSS at fork time.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec["kind"]
    if kind == "pil":
        return _child_pil(spec)
    if kind == "dip":
        return _child_dip(spec)
    if kind == "decode":
        return _child_decode(spec)
    if kind == "plain":
        return _child_plain(spec)
    raise ValueError(f"unknown child kind {kind!r}")


def _child_dip(spec: dict[str, Any]) -> dict[str, Any]:
    # Imports first (excluded from the timing); pyramid sets GDAL/VIPS env defaults before pyvips loads.
    # ``whole_process`` runs import only what the pyramid itself imports (its time is the child's wall).
    if not spec.get("whole_process"):
        import cv2  # noqa: F401  (imported lazily by the first resampled read)
        import imagecodecs  # noqa: F401  (used by tifffile's decoders on the direct path)
        import numpy as np  # noqa: F401
        import tifffile  # noqa: F401

    from pyramid.dip import DynamicImagePyramid, PyramidOptions, TileKey

    if spec["file"] != "cog" and not spec.get("whole_process"):
        import pyvips  # noqa: F401  (the disk-cache builder imports it lazily)

    op = spec["op"]
    options = PyramidOptions(cache_dir=spec["cache_dir"], workers=spec.get("workers", 2))
    extra: dict[str, Any] = {}
    base_rss = _peak_rss()
    t0 = time.perf_counter()
    with DynamicImagePyramid.open(spec["path"], options) as dip:
        native = len(dip.levels) - 1
        out_px = 0
        n_tiles = 0
        if op in ("coarse", "coarse+tiles64"):
            tile = dip.level_image(0)
            out_px += tile.pixels.shape[0] * tile.pixels.shape[1]
            extra["coarse_shape"] = list(tile.pixels.shape)
            extra["t_coarse"] = time.perf_counter() - t0
        if op in ("tiles64", "coarse+tiles64"):
            lvl = dip.levels[native]
            r0 = max(0, lvl.rows // 2 - 4)
            c0 = max(0, lvl.cols // 2 - 4)
            keys = [
                TileKey(native, r, c)
                for r in range(r0, min(lvl.rows, r0 + 8))
                for c in range(c0, min(lvl.cols, c0 + 8))
            ]
            for tile in dip.stream(keys):
                out_px += tile.pixels.shape[0] * tile.pixels.shape[1]
                n_tiles += 1
        if op == "level4":
            idx = next(i for i, lvl in enumerate(dip.levels) if lvl.name == "1/4")
            for tile in dip.stream(dip.all_tiles(idx)):
                out_px += tile.pixels.shape[0] * tile.pixels.shape[1]
                n_tiles += 1
        if op == "stream":
            lvl = dip.levels[native]
            rows = 0
            for tile in dip.stream(dip.all_tiles(native)):
                out_px += tile.pixels.shape[0] * tile.pixels.shape[1]
                n_tiles += 1
                if tile.key.col == lvl.cols - 1:
                    rows += 1
                    if rows >= STREAM_MIN_ROWS and time.perf_counter() - t0 > STREAM_BUDGET_S:
                        break
            extra["rows"] = rows
            extra["whole_image"] = rows == lvl.rows
        seconds = time.perf_counter() - t0
        entry = dip.disk_cache
        extra["built_seconds"] = entry.built_seconds if entry is not None else None
        extra["layout"] = dip.info.layout.value
        extra["stats"] = dip.stats
    return {
        "seconds": seconds,
        "peak_rss": _peak_rss(),
        "base_rss": base_rss,
        "tiles": n_tiles,
        "out_px": out_px,
        **extra,
    }


def _child_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """The plain reader: every tile of one COG level — bytes by tifffile's offsets, imagecodecs' JPEG decode
    on 2 threads, each array dropped at once. The rate the pyramid's streaming is held to (issue 15)."""
    from concurrent.futures import ThreadPoolExecutor

    import imagecodecs
    import tifffile

    base_rss = _peak_rss()
    t0 = time.perf_counter()
    with tifffile.TiffFile(spec["path"]) as tif:
        page = next(lv.keyframe for lv in tif.series[0].levels if lv.keyframe.imagewidth == spec["width"])
        offsets, counts, tables = page.dataoffsets, page.databytecounts, page.jpegtables
        fd = os.open(spec["path"], os.O_RDONLY)

        def decode(i: int) -> int:
            tile = imagecodecs.jpeg8_decode(os.pread(fd, counts[i], offsets[i]), tables=tables)
            return tile.shape[0] * tile.shape[1]

        with ThreadPoolExecutor(2) as pool:
            decoded_px = sum(pool.map(decode, range(len(offsets))))
        os.close(fd)
        out_px = page.imagewidth * page.imagelength
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "peak_rss": _peak_rss(),
        "base_rss": base_rss,
        "tiles": len(offsets),
        "out_px": out_px,
        "decoded_px": decoded_px,
    }


def _child_pil(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    op = spec["op"]
    ts = spec["tile_size"]
    out_px = 0
    n_tiles = 0
    extra: dict[str, Any] = {}
    base_rss = _peak_rss()
    t0 = time.perf_counter()
    with Image.open(spec["path"]) as src:
        im = src.convert("RGB")
    extra["t_load"] = time.perf_counter() - t0
    if op in ("coarse", "coarse+tiles64"):
        small = np.asarray(im.resize(tuple(spec["coarse_size"]), Image.Resampling.BOX))
        out_px += small.shape[0] * small.shape[1]
    if op in ("tiles64", "coarse+tiles64"):
        for box in spec["tiles64_boxes"]:
            arr = np.asarray(im.crop(tuple(box)))
            out_px += arr.shape[0] * arr.shape[1]
            n_tiles += 1
    if op == "level4":
        w4, h4 = spec["level4_size"]
        quarter = im.resize((w4, h4), Image.Resampling.BOX)
        for y in range(0, h4, ts):
            for x in range(0, w4, ts):
                arr = np.asarray(quarter.crop((x, y, min(x + ts, w4), min(y + ts, h4))))
                out_px += arr.shape[0] * arr.shape[1]
                n_tiles += 1
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "peak_rss": _peak_rss(),
        "base_rss": base_rss,
        "tiles": n_tiles,
        "out_px": out_px,
        **extra,
    }


def _child_decode(spec: dict[str, Any]) -> dict[str, Any]:
    """Single-core decode rate of 512² JPEG tiles of the COG: libjpeg-turbo (imagecodecs) and GDAL."""
    import numpy as np
    import rasterio
    import tifffile
    from rasterio.windows import Window

    n = 48
    with tifffile.TiffFile(spec["path"]) as tif:
        page = tif.pages[0]
        across = -(-page.imagewidth // page.tilewidth)
        down = -(-page.imagelength // page.tilelength)
        inner = [(r, c) for r in range(down - 1) for c in range(across - 1)]  # full tiles only
        rng = np.random.default_rng(0)
        picks = [inner[i] for i in rng.choice(len(inner), size=min(n, len(inner)), replace=False)]
        with open(spec["path"], "rb") as fh:
            blobs = []
            for r, c in picks:
                i = r * across + c
                fh.seek(page.dataoffsets[i])
                blobs.append((i, fh.read(page.databytecounts[i])))
        page.decode(blobs[0][1], blobs[0][0], jpegtables=page.jpegtables)  # warm up
        best_turbo = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for i, data in blobs:
                page.decode(data, i, jpegtables=page.jpegtables)
            best_turbo = min(best_turbo, time.perf_counter() - t0)
        tw, th = page.tilewidth, page.tilelength
    with rasterio.Env(GDAL_NUM_THREADS="1", GDAL_CACHEMAX=0), rasterio.open(spec["path"]) as src:
        out = np.empty((3, th, tw), np.uint8)
        src.read(window=Window(picks[0][1] * tw, picks[0][0] * th, tw, th), out=out)
        best_gdal = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for r, c in picks:
                src.read(window=Window(c * tw, r * th, tw, th), out=out)
            best_gdal = min(best_gdal, time.perf_counter() - t0)
    mp = len(picks) * tw * th / 1e6
    return {
        "seconds": best_turbo,
        "peak_rss": _peak_rss(),
        "tiles": len(picks),
        "turbo_mps": mp / best_turbo,
        "gdal_mps": mp / best_gdal,
    }


def child_main(arg: str) -> None:
    result = _child(json.loads(arg))
    print("RESULT " + json.dumps(result), flush=True)


# =====================================================================================================
# Parent side: inputs, orchestration, report.
# =====================================================================================================


@dataclass
class Measure:
    """Repeated runs of one measurement."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.runs) and self.error is None

    def median(self, key: str = "seconds") -> float:
        return statistics.median(r[key] for r in self.runs)

    def peak(self) -> int:
        return max(r["peak_rss"] for r in self.runs)

    @property
    def noisy(self) -> bool:
        return any(r.get("background_cores", 0.0) > NOISY_CORES for r in self.runs)

    def t(self) -> str:
        """Median time, marked † when another process used CPU during one of the runs."""
        return _fmt_s(self.median()) + (" †" if self.noisy else "")

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "error": self.error}


def run_child(spec: dict[str, Any], repeats: int, log: bool = True) -> Measure:
    m = Measure()
    for i in range(repeats):
        spec_i = dict(spec)
        if callable(spec.get("before")):
            spec_i.pop("before")
            spec_i.update(spec["before"](i))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec_i)]
        waited = _wait_quiet()
        busy0, kids0 = _cpu_busy(), _children_cpu()
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=ROOT, env=_child_env()
        )
        wall = time.perf_counter() - t0
        child_cpu = _children_cpu() - kids0
        background = max(0.0, (_cpu_busy() - busy0 - child_cpu) / wall)
        line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            m.error = f"rc={proc.returncode}: " + " | ".join(tail)
            _log(f"  ! {_spec_name(spec)} run {i + 1}: {m.error}")
            break
        res = json.loads(line[len("RESULT ") :])
        res["process_wall"] = wall
        res["process_cpu"] = child_cpu
        res["background_cores"] = background  # CPU used by other processes while the child ran
        res["waited_for_quiet"] = waited
        m.runs.append(res)
        if log:
            _log(
                f"  {_spec_name(spec)} run {i + 1}/{repeats}: {res['seconds']:.3f} s, "
                f"peak {res['peak_rss'] / 2**20:.0f} MB, background {background:.2f} cores"
                + (f", built {res['built_seconds']:.1f} s" if res.get("built_seconds") else "")
            )
    return m


def _cpu_busy() -> float:
    """Seconds of CPU time the whole machine has spent busy (all cores, /proc/stat)."""
    try:
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _wait_quiet(threshold: float = 0.25, window: float = 0.5, max_wait: float | None = None) -> float:
    """Wait (up to ``max_wait`` s) until other processes use less than ``threshold`` cores.

    The machine is shared; a busy neighbour on 2 cores would distort every timing. Returns the seconds
    waited. What other processes still used while a child ran is recorded as ``background_cores``.
    """
    max_wait = QUIET_MAX_WAIT_S if max_wait is None else max_wait
    t0 = time.perf_counter()
    while True:
        b0 = _cpu_busy()
        time.sleep(window)
        if (_cpu_busy() - b0) / window < threshold or time.perf_counter() - t0 > max_wait:
            return time.perf_counter() - t0


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _spec_name(spec: dict[str, Any]) -> str:
    bits = [spec["kind"], spec.get("file", ""), spec.get("op", "")]
    if "workers" in spec:
        bits.append(f"workers={spec['workers']}")
    if spec.get("label"):
        bits.append(spec["label"])
    return " ".join(b for b in bits if b)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- inputs --------------------------------------------------------------------------------------------


def ensure_inputs(size: int, folder: Path) -> dict[str, Any]:
    """The three files for ``size`` (reused when present) and how long each took to write."""
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "inputs.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    paths = {"cog": folder / "cog.tif", "striped": folder / "striped_lzw.tif", "png": folder / "scene.png"}

    def save() -> None:
        meta_path.write_text(json.dumps(meta, indent=1))

    if not paths["cog"].exists():
        from pyramid.cog import write_cog
        from pyramid.synth import synthesize_scene

        scene = folder / "scene.tif"
        _log(f"synthesizing a {size}² scene → {scene}")
        t0 = time.perf_counter()
        synthesize_scene(scene, size, seed=0, compress="jpeg", progress=False)
        meta["scene_seconds"] = time.perf_counter() - t0
        meta["scene_bytes"] = scene.stat().st_size
        _log(f"  {meta['scene_seconds']:.1f} s; writing the COG")
        res = write_cog(scene, paths["cog"], quality=90, overwrite=True)
        meta["cog_seconds"] = res.seconds
        meta["cog_overviews"] = list(res.overview_factors)
        meta["cog_compression"] = res.compression
        scene.unlink()
        scene.with_suffix(".json").unlink(missing_ok=True)
        meta.pop("striped_seconds", None)
        meta.pop("png_seconds", None)
        for p in (paths["striped"], paths["png"]):
            p.unlink(missing_ok=True)
        save()
    if "striped" not in FILES:
        paths.pop("striped")
    if "png" not in FILES:
        paths.pop("png")
    if "striped" in paths and not paths["striped"].exists():
        _log("writing the striped LZW TIFF")
        meta["striped_seconds"] = _write_striped(paths["cog"], paths["striped"])
        save()
    if "png" in paths and not paths["png"].exists():
        _log("writing the PNG (libvips, compression=1)")
        meta["png_seconds"] = _write_png(paths["cog"], paths["png"])
        save()
    for name, p in paths.items():
        meta[f"{name}_bytes"] = p.stat().st_size
    save()
    meta["paths"] = {k: str(v) for k, v in paths.items()}
    return meta


def _write_striped(src_path: Path, dst: Path) -> float:
    """COG → striped LZW TIFF in bands of 512 rows (never the whole image in memory)."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    t0 = time.perf_counter()
    tmp = dst.with_name(dst.name + ".tmp")
    # rasterio passes an int GDAL_CACHEMAX to GDALSetCacheMax64: it is in BYTES here.
    env = rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", GDAL_CACHEMAX=256 * 2**20)
    with env, rasterio.open(src_path) as src:
        profile = {
            "driver": "GTiff",
            "width": src.width,
            "height": src.height,
            "count": src.count,
            "dtype": src.dtypes[0],
            "crs": src.crs,
            "transform": src.transform,
            "tiled": False,
            "compress": "lzw",
            "photometric": "RGB",
            "interleave": "pixel",
            "BIGTIFF": "IF_SAFER",
            "NUM_THREADS": "ALL_CPUS",
        }
        band = 512
        buf = np.empty((src.count, band, src.width), np.uint8)
        with rasterio.open(tmp, "w", **profile) as dst_ds:
            for y in range(0, src.height, band):
                h = min(band, src.height - y)
                win = Window(0, y, src.width, h)
                data = buf[:, :h]
                src.read(window=win, out=data)
                dst_ds.write(data, window=win)
    os.replace(tmp, dst)
    return time.perf_counter() - t0


def _write_png(src_path: Path, dst: Path) -> float:
    import pyramid.source  # noqa: F401  (sets VIPS_CONCURRENCY before pyvips loads)

    # isort: split
    import pyvips

    t0 = time.perf_counter()
    tmp = dst.with_name(dst.name + ".tmp.png")
    pyvips.Image.new_from_file(str(src_path), access="sequential").pngsave(str(tmp), compression=1)
    os.replace(tmp, dst)
    return time.perf_counter() - t0


# -- geometry shared with the PIL reference ----------------------------------------------------------


def reference_geometry(size: int) -> dict[str, Any]:
    from pyramid.levels import plan_levels

    levels = plan_levels(size, size)
    coarse, native = levels[0], levels[-1]
    q = next(lvl for lvl in levels if lvl.name == "1/4")
    r0, c0 = max(0, native.rows // 2 - 4), max(0, native.cols // 2 - 4)
    boxes = [
        native.tile_level_box(r, c).as_list()
        for r in range(r0, min(native.rows, r0 + 8))
        for c in range(c0, min(native.cols, c0 + 8))
    ]
    return {
        "coarse_size": [coarse.width, coarse.height],
        "coarse_name": coarse.name,
        "level4_size": [q.width, q.height],
        "level4_tiles": q.num_tiles,
        "native_tiles": native.num_tiles,
        "native_grid": [native.rows, native.cols],
        "tile_size": native.tile_size,
        "tiles64_boxes": boxes,
    }


# -- orchestration -------------------------------------------------------------------------------------


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    global FILES
    FILES = tuple(f for f in FILES if f in args.files)
    out_dir: Path = args.out_dir
    size: int = args.size
    repeats: int = args.repeats
    inputs = ensure_inputs(size, out_dir / f"inputs-{size}")
    geo = reference_geometry(size)
    paths = inputs["paths"]
    cache_root = out_dir / f"cache-{size}"
    results: dict[str, Any] = {"size": size, "repeats": repeats, "inputs": inputs, "geometry": geo}
    dip: dict[str, dict[str, Any]] = {f: {} for f in FILES}
    pil: dict[str, dict[str, Any]] = {f: {} for f in FILES}
    cold: dict[str, Any] = {}

    # Cold first open of the files without overviews: a fresh cache folder per run; the first one is kept
    # and reused by every warm run below.
    for f in [f for f in ("striped", "png") if f in FILES]:
        warm_dir = cache_root / f"{f}-warm"
        shutil.rmtree(warm_dir, ignore_errors=True)

        def fresh(i: int, f: str = f, warm_dir: Path = warm_dir) -> dict[str, Any]:
            d = warm_dir if i == 0 else cache_root / f"{f}-cold-{i}"
            shutil.rmtree(d, ignore_errors=True)
            return {"cache_dir": str(d)}

        _log(f"[{f}] cold first open (fresh cache folder)")
        spec = {"kind": "dip", "file": f, "op": "coarse", "path": paths[f], "label": "cold", "before": fresh}
        cold[f] = run_child(spec, repeats)
        for i in range(1, repeats):
            shutil.rmtree(cache_root / f"{f}-cold-{i}", ignore_errors=True)

    for f in FILES:
        cache_dir = str(cache_root / (f"{f}-warm" if f != "cog" else "cog"))
        for op in OPS:
            _log(f"[{f}] DIP {op}")
            dip[f][op] = run_child(
                {"kind": "dip", "file": f, "op": op, "path": paths[f], "cache_dir": cache_dir}, repeats
            )

    _log("[cog] native tile streaming throughput")
    stream = {}
    for workers in (2, 1):
        stream[workers] = run_child(
            {
                "kind": "dip",
                "file": "cog",
                "op": "stream",
                "path": paths["cog"],
                "cache_dir": str(cache_root / "cog"),
                "workers": workers,
            },
            repeats,
        )
    _log("[cog] single-core decode rates")
    decode = run_child({"kind": "decode", "file": "cog", "path": paths["cog"]}, 1)

    # The plain reader against the pyramid on the same level, alternating run by run (issue 15).
    vs_plain: dict[str, dict[str, Measure]] = {}
    for name, op, factor in (("native", "stream", 1), ("1/4", "level4", 4)):
        both = vs_plain[name] = {"dip": Measure(), "plain": Measure()}
        dip_spec = {"kind": "dip", "file": "cog", "op": op, "path": paths["cog"], "workers": 2}
        dip_spec["cache_dir"] = str(cache_root / "cog")
        plain_spec = {
            "kind": "plain",
            "file": "cog",
            "op": name,
            "path": paths["cog"],
            "width": size // factor,
        }
        _log(f"[cog] {name}: the pyramid vs the plain reader, alternating")
        for _ in range(repeats):
            for key, spec in (("dip", dip_spec), ("plain", plain_spec)):
                one = run_child(spec, 1)
                both[key].runs += one.runs
                both[key].error = both[key].error or one.error

    # (a+b) as a user's script pays it: interpreter start and imports included.
    whole: dict[str, Measure] = {"dip": Measure(), "pil": Measure()}
    if not args.skip_pil:
        _log("[cog] (a+b) whole process, DIP and PIL alternating")
        for _ in range(max(repeats, 5)):
            for key, spec in (
                ("dip", {"kind": "dip", "file": "cog", "op": "coarse+tiles64", "whole_process": True}),
                ("pil", {"kind": "pil", "file": "cog", "op": "coarse+tiles64", **geo}),
            ):
                one = run_child({**spec, "path": paths["cog"], "cache_dir": str(cache_root / "cog")}, 1)
                whole[key].runs += one.runs
                whole[key].error = whole[key].error or one.error

    if not args.skip_pil:
        for f in FILES:
            for op in OPS:
                _log(f"[{f}] PIL {op}")
                pil[f][op] = run_child({"kind": "pil", "file": f, "op": op, "path": paths[f], **geo}, repeats)

    results.update(
        cold={k: v.to_json() for k, v in cold.items()},
        dip={f: {op: m.to_json() for op, m in d.items()} for f, d in dip.items()},
        pil={f: {op: m.to_json() for op, m in d.items()} for f, d in pil.items()},
        stream={str(k): v.to_json() for k, v in stream.items()},
        decode=decode.to_json(),
        vs_plain={k: {kk: m.to_json() for kk, m in v.items()} for k, v in vs_plain.items()},
        whole_process={k: m.to_json() for k, m in whole.items()},
    )
    results["_measures"] = {
        "cold": cold,
        "dip": dip,
        "pil": pil,
        "stream": stream,
        "decode": decode,
        "vs_plain": vs_plain,
        "whole": whole,
    }
    return results


# -- report --------------------------------------------------------------------------------------------


def _baseline(group: dict[str, dict[str, Measure]]) -> str:
    vals = [r["base_rss"] for d in group.values() for ms in d.values() for r in ms.runs if "base_rss" in r]
    if not vals:
        return "n/a"
    lo, hi = round(min(vals) / 2**20), round(max(vals) / 2**20)
    return f"{lo} MB" if lo == hi else f"{lo}-{hi} MB"


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB" if n < 10 * 2**30 else f"{n / 2**30:,.1f} GB"


def _fmt_s(s: float) -> str:
    return f"{s:.3f} s" if s < 10 else f"{s:.1f} s"


def _bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    m = results["_measures"]
    size, inputs, geo = results["size"], results["inputs"], results["geometry"]
    lines: list[str] = []
    add = lines.append
    add(f"## Inputs ({size:,} × {size:,} RGB, {size * size / 1e6:,.0f} MP)\n")
    add("| File | Layout | Size on disk | Write time |")
    add("|---|---|---|---|")
    if "scene_seconds" in inputs:
        add(
            f"| synthetic scene (intermediate, deleted) | tiled 512 JPEG q90, no overviews | "
            f"{_bytes(inputs['scene_bytes'])} | {_fmt_s(inputs['scene_seconds'])} (`synthesize_scene`) |"
        )
    add(
        f"| cog | COG, {inputs.get('cog_compression', 'jpeg')} q90, 512² tiles, overviews "
        f"{inputs.get('cog_overviews')} | {_bytes(inputs['cog_bytes'])} | "
        f"{_fmt_s(inputs['cog_seconds'])} (`write_cog`) |"
        if "cog_seconds" in inputs
        else f"| cog | COG | {_bytes(inputs['cog_bytes'])} | (reused) |"
    )
    if "striped" in FILES:
        add(
            f"| striped | striped LZW, GDAL default rows/strip | {_bytes(inputs['striped_bytes'])} | "
            f"{_fmt_s(inputs['striped_seconds'])} (rasterio, 512-row bands from the COG) |"
        )
    if "png" in FILES:
        add(
            f"| png | PNG, deflate level 1 | {_bytes(inputs['png_bytes'])} | "
            f"{_fmt_s(inputs['png_seconds'])} (pyvips `pngsave(compression=1)` from the COG) |"
        )
    add("")
    add(
        f"Coarse level {geo['coarse_size'][0]}×{geo['coarse_size'][1]}; 1/4 level "
        f"{geo['level4_size'][0]}×{geo['level4_size'][1]} = {geo['level4_tiles']} tiles of "
        f"{geo['tile_size']} px; native grid {geo['native_grid'][0]}×{geo['native_grid'][1]} = "
        f"{geo['native_tiles']} tiles. Times: median of {results['repeats']} fresh processes "
        f"(file open included, imports excluded); RSS: max peak (VmHWM) over the runs, which includes "
        f"the interpreter and libraries: {_baseline(m['dip'])} before the operation in the DIP child, "
        f"{_baseline(m['pil'])} in the PIL child.\n"
    )

    add("## DIP vs the PIL reference\n")
    add("| File | Operation | DIP time | DIP peak RSS | PIL time | PIL peak RSS | Speed-up | RSS ratio |")
    add("|---|---|---|---|---|---|---|---|")
    for f in FILES:
        if f in m["cold"]:
            c = m["cold"][f]
            if c.ok:
                builds = [r["built_seconds"] for r in c.runs if r["built_seconds"] is not None]
                what = (
                    f"cache build {_fmt_s(statistics.median(builds))} of it"
                    if builds
                    else "no disk cache: image ≤ cache_min_pixels"
                )
                add(f"| {f} | (a) coarse, **cold** first open ({what}) | {c.t()} | {_mb(c.peak())} | | | | |")
            else:
                add(f"| {f} | (a) coarse, cold | error: {c.error} | | | | | |")
        for op in OPS:
            d = m["dip"][f].get(op)
            p = m["pil"][f].get(op)
            warm = " (warm cache)" if f != "cog" else ""
            cells = [f, OP_LABEL[op] + warm]
            cells += [d.t(), _mb(d.peak())] if d and d.ok else [f"error: {d.error}" if d else "", ""]
            if p and p.ok:
                cells += [p.t(), _mb(p.peak())]
            else:
                cells += ["skipped" if p is None else f"error: {p.error}", ""]
            if d and d.ok and p and p.ok:
                cells += [_ratio(p.median() / d.median()), _frac(d.peak() / p.peak())]
            else:
                cells += ["", ""]
            add("| " + " | ".join(cells) + " |")
    add("")

    bg = [
        r.get("background_cores", 0.0)
        for group in (m["cold"], *m["dip"].values(), *m["pil"].values(), m["stream"], *m["vs_plain"].values())
        for ms in group.values()
        for r in ms.runs
    ]
    if bg:
        add(
            f"The machine is shared: other processes used a median {statistics.median(bg):.2f} and at most "
            f"{max(bg):.2f} of the 2 cores while a measured child ran (each run first waits up to "
            f"{QUIET_MAX_WAIT_S:.0f} s for < 0.25 busy cores). † = at least one run had > {NOISY_CORES} "
            f"cores of such background load.\n"
        )

    add("## Native-tile streaming throughput (COG)\n")
    add("| Workers | Tiles | Band | Time | MP/s | Peak RSS |")
    add("|---|---|---|---|---|---|")
    rates: dict[int, float] = {}
    for w in (2, 1):
        s = m["stream"][w]
        if not s.ok:
            add(f"| {w} | error: {s.error} | | | | |")
            continue
        mps = statistics.median(r["out_px"] / 1e6 / r["seconds"] for r in s.runs)
        rates[w] = mps
        r0 = s.runs[0]
        band = "whole image" if r0["whole_image"] else f"top {r0['rows']} tile rows"
        add(f"| {w} | {r0['tiles']:,} | {band} | {s.t()} | {mps:,.0f} | {_mb(s.peak())} |")
    dec = m["decode"]
    if dec.ok:
        r = dec.runs[0]
        add(
            f"\nSingle-core decode of 48 random 512² JPEG tiles of this COG on this machine: libjpeg-turbo "
            f"(imagecodecs via tifffile) {r['turbo_mps']:,.0f} MP/s, GDAL (rasterio wheel, "
            f"GDAL_NUM_THREADS=1) {r['gdal_mps']:,.0f} MP/s.\n"
        )

    add("## The pyramid vs a plain reader (COG, 2 threads each, alternating runs)\n")
    add(
        "| Level | Tiles (DIP / plain) | DIP time | DIP MP/s | Plain time | Plain MP/s | DIP / plain | "
        "DIP peak RSS | DIP block cache (max) |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    plain_ratio: dict[str, float] = {}
    for name, both in m["vs_plain"].items():
        d, p = both["dip"], both["plain"]
        if not (d.ok and p.ok):
            add(f"| {name} | error: {d.error or p.error} | | | | | | | |")
            continue
        d_mps = statistics.median(r["out_px"] / 1e6 / r["seconds"] for r in d.runs)
        p_mps = statistics.median(r["out_px"] / 1e6 / r["seconds"] for r in p.runs)
        plain_ratio[name] = d_mps / p_mps
        cache = max(r["stats"]["block_cache_bytes"] for r in d.runs)
        add(
            f"| {name} | {d.runs[0]['tiles']:,} / {p.runs[0]['tiles']:,} | {d.t()} | {d_mps:,.0f} | "
            f"{p.t()} | {p_mps:,.0f} | {d_mps / p_mps:.2f} | {_mb(d.peak())} | {_mb(cache)} |"
        )
    add("")
    whole = m["whole"]
    if whole["dip"].ok and whole["pil"].ok:
        wd, wp = whole["dip"].median("process_wall"), whole["pil"].median("process_wall")
        add(
            f"(a+b) coarse + 64 tiles, **whole process** (`python` start, imports and the work; median of "
            f"{len(whole['dip'].runs)} alternating runs): DIP {wd:.3f} s, PIL {wp:.2f} s = "
            f"{_ratio(wp / wd)}; "
            f"peak RSS {_mb(whole['dip'].peak())} vs {_mb(whole['pil'].peak())}.\n"
        )

    add("## Targets\n")
    verdicts = targets(m, rates)
    for name, ratio in plain_ratio.items():
        verdicts.append(
            f"{_pass(ratio >= PLAIN_TARGET)} {name} streaming ≥ {PLAIN_TARGET:.0%} of the plain reader's "
            f"rate: {ratio:.0%}"
        )
    d, p = m["dip"]["cog"].get("coarse+tiles64"), m["pil"]["cog"].get("coarse+tiles64")
    if d and d.ok and p and p.ok:
        x = p.median() / d.median()
        verdicts.append(
            f"{_pass(x >= IN_PROCESS_TARGET)} (a+b) ≥ {IN_PROCESS_TARGET:.0f}× PIL in-process: {x:,.1f}×"
        )
    if whole["dip"].ok and whole["pil"].ok:
        x = whole["pil"].median("process_wall") / whole["dip"].median("process_wall")
        verdicts.append(
            f"{_pass(x >= WHOLE_TARGET)} (a+b) ≥ {WHOLE_TARGET:.0f}× PIL whole-process: {x:,.1f}×"
        )
    for v in verdicts:
        add(f"- {v}")
    add("")
    return "\n".join(lines)


def _ratio(x: float) -> str:
    return f"{x:.1f}×" if x < 10 else f"{x:,.0f}×"


def _frac(x: float) -> str:
    return f"1/{1 / x:,.0f}" if x <= 0.5 else f"{x:.2f}"


def _quietest(m: Measure) -> float:
    return min(m.runs, key=lambda r: r.get("background_cores", 0.0))["seconds"]


def _pass(ok: bool) -> str:
    return "**PASS**" if ok else "**MISS**"


def targets(m: dict[str, Any], rates: dict[int, float]) -> list[str]:
    out: list[str] = []
    d = m["dip"]["cog"].get("coarse")
    if d and d.ok:
        t = d.median()
        out.append(
            f"{_pass(t < COARSE_TARGET_S)} COG coarse level < {COARSE_TARGET_S} s: {t:.3f} s "
            f"({t / COARSE_TARGET_S:.2f}× the budget)"
        )
    d = m["dip"]["cog"].get("coarse+tiles64")
    p = m["pil"]["cog"].get("coarse+tiles64")
    if d and d.ok and p and p.ok:
        speed = p.median() / d.median()
        mem = d.peak() / p.peak()
        quiet = ""
        if d.noisy or p.noisy:
            quiet = f"; {_quietest(p) / _quietest(d):,.1f}× between the runs with the least background load"
        out.append(
            f"{_pass(speed >= SPEEDUP_TARGET and mem <= MEMORY_TARGET)} COG coarse + 64 tiles ≥ "
            f"{SPEEDUP_TARGET:.0f}× faster than PIL with ≤ 1/10 of its peak RSS: {speed:,.1f}× faster "
            f"({d.median():.3f} s vs {p.median():.2f} s{quiet}), {mem:.3f} of its peak RSS "
            f"({_mb(d.peak())} vs {_mb(p.peak())})"
        )
    else:
        out.append("n/a COG coarse + 64 tiles vs PIL: the PIL reference was skipped or failed")
    for w, rate in sorted(rates.items(), reverse=True):
        for name, per_core in DECODE_RATE.items():
            target = 0.5 * per_core * w
            out.append(
                f"{_pass(rate >= target)} native-tile streaming, workers={w}, vs ½ × {name} "
                f"{per_core:.0f} MP/s/core × {w}: {rate:,.0f} MP/s vs ≥ {target:,.0f} MP/s "
                f"({rate / target:.2f}×)"
            )
    return out


def _git_state() -> str:
    """HEAD of the checkout, and whether ``pyramid/`` has uncommitted edits (the code measured)."""
    state = git_state("pyramid")
    if not state["commit"]:
        return "unknown commit"
    return f"commit {state['commit'][:7]}" + (" + uncommitted edits in pyramid/" if state["dirty"] else "")


def main(argv: list[str] | None = None) -> None:
    global QUIET_MAX_WAIT_S
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=27328, help="side of the square synthetic scene (px)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out", help="work folder")
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process runs per measurement")
    ap.add_argument("--skip-pil", action="store_true", help="skip the PIL reference (~7 GB RAM per run)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files and caches")
    ap.add_argument(
        "--quiet-wait", type=float, default=QUIET_MAX_WAIT_S, help="s each run waits for a quiet machine"
    )
    ap.add_argument(
        "--files", default=",".join(FILES), type=lambda v: tuple(v.split(",")), help="cog,striped,png"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    QUIET_MAX_WAIT_S = args.quiet_wait
    if args.child:
        child_main(args.child)
        return
    if args.size < 1344:
        ap.error("--size must be at least 1344 (the pyramid needs a 1/4 level)")
    args.out_dir = args.out_dir.resolve()
    t0 = time.perf_counter()
    git = _git_state()
    results = run_all(args)
    results["git"] = git
    text = report(results, args)
    total = time.perf_counter() - t0
    header = (
        f"# pyramid benchmark — {args.size:,}², repeats={args.repeats}"
        f"{', PIL skipped' if args.skip_pil else ''}\n\n"
        f"{platform.node()} · {os.cpu_count()} CPUs · Python {platform.python_version()} · "
        f"library at {results['git']} · total {total / 60:.1f} min\n"
    )
    print(header + "\n" + text)
    results.pop("_measures")
    results["total_seconds"] = total
    out_json = args.out_dir / f"results-{args.size}.json"
    out_json.write_text(json.dumps(results, indent=1, default=str))
    (args.out_dir / f"results-{args.size}.md").write_text(header + "\n" + text + "\n")
    _log(f"results: {out_json}")
    if not args.keep:
        shutil.rmtree(args.out_dir / f"inputs-{args.size}", ignore_errors=True)
        shutil.rmtree(args.out_dir / f"cache-{args.size}", ignore_errors=True)


if __name__ == "__main__":
    main()
