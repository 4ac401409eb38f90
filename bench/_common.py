"""What the benchmarks share: process accounting (resettable peak RSS, CPU other processes use, waiting for
a quiet machine), the machine and git state a result was measured on, the results file, and the random
checkpoint at LLaVA-OneVision-0.5B's real shapes with the synthetic scene the engine benchmarks read.

The benchmarks run as scripts (``python bench/<name>.py``), so this folder is on ``sys.path`` and they
import this module as ``_common``."""

from __future__ import annotations

import gc
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def git_state(*paths: str) -> dict[str, str]:
    """HEAD of the checkout and the uncommitted edits under ``paths`` (the code measured)."""

    def git(*args: str) -> str:
        try:
            res = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        except OSError:
            return ""
        return res.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": git("status", "--porcelain", "--", *paths)}


CHECKPOINT_NAME = "ov05b-random"


SHAPES_KEY = "lrs_vqa_bench_shapes"


SHAPES = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"


QUIET_POLL_S = 30.0


NOISY_CORES = 0.3  # a measured run during which other processes used more than this is marked †


VISION = {  # SigLIP so400m-patch14-384; the HF OneVision config keeps 26 of its 27 layers, feature layer -1
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 384,
    "vision_use_head": False,
}


TEXT = {  # Qwen2-0.5B
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "sliding_window": None,
}


ROPE_THETA = 1_000_000.0


TILE = 384


PINPOINTS = [[TILE * i, TILE * j] for i in range(1, 7) for j in range(1, 7)]  # 384..2304, 6×6 options


SIGLIP_MEAN_STD = [0.5, 0.5, 0.5]


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ≥ 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    return _status_kb("VmHWM") / 1024


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def _busy_jiffies() -> int:
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    values = [int(v) for v in parts]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]) - idle


class CpuMeter:
    """Wall time, this process's CPU time, and the CPU other processes used meanwhile (in cores)."""

    def __enter__(self) -> CpuMeter:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.t0 = time.perf_counter()
        self.busy0 = _busy_jiffies()
        t = os.times()
        self.self0 = t.user + t.system
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        t = os.times()
        self.self_cores = (t.user + t.system - self.self0) / max(self.wall, 1e-9)
        busy = (_busy_jiffies() - self.busy0) / self.tick
        self.background_cores = max(0.0, busy / max(self.wall, 1e-9) - self.self_cores)


def other_benchmarks() -> list[str]:
    """Command lines of running pyramid benchmarks / pytest runs (not this process)."""
    found = []
    for pattern in ("pyramid_bench.py", "pytest"):
        res = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True, check=False)
        for line in res.stdout.splitlines():
            pid, _, cmd = line.partition(" ")
            if int(pid) != os.getpid() and "pgrep" not in cmd:
                found.append(line)
    return found


def others_load(seconds: float = 5.0) -> float:
    """Cores used by other processes over ``seconds`` (this process idles meanwhile)."""
    with CpuMeter() as cpu:
        time.sleep(seconds)
    return cpu.background_cores


def wait_until_quiet(max_wait_s: float) -> dict[str, Any]:
    """Wait (polling every 30 s, at most ``max_wait_s``) until no pyramid benchmark / pytest runs and other
    processes use under ``NOISY_CORES`` of CPU."""
    t0 = time.perf_counter()
    busy = other_benchmarks()
    load = others_load()
    first = list(busy)
    while (busy or load > NOISY_CORES) and time.perf_counter() - t0 < max_wait_s:
        why = busy[0][:100] if busy else f"other processes use {load:.2f} cores"
        _log(f"waiting for a quiet machine: {why}")
        time.sleep(QUIET_POLL_S)
        busy = other_benchmarks()
        load = others_load()
    return {
        "waited_s": round(time.perf_counter() - t0, 1),
        "busy_at_start": first,
        "busy_at_end": busy,
        "others_cores_at_start": round(load, 2),
        "quiet": not busy and load <= NOISY_CORES,
    }


def build_checkpoint(folder: Path, seed: int = 0) -> dict[str, Any]:
    """Write (or reuse) the random checkpoint at the real shapes; returns a description."""
    import torch

    cfg_path = folder / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        if cfg.get(SHAPES_KEY) == SHAPES and (folder / "model.safetensors").exists():
            _log(f"reusing {folder}")
            return {"built": False, "seconds": 0.0}
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, GenerationConfig

    from lrs_vqa.tiny import MARKER_KEY, make_tiny_model

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ov-tiny-") as tmp:
        make_tiny_model(tmp, "llava_onevision", seed=seed)
        cfg = AutoConfig.from_pretrained(tmp)
        processor = AutoProcessor.from_pretrained(tmp)
        generation = GenerationConfig.from_pretrained(tmp)
    for k, v in VISION.items():
        setattr(cfg.vision_config, k, v)
    tc = cfg.text_config
    for k, v in TEXT.items():
        setattr(tc, k, v)
    tc.rope_parameters = {"rope_type": "default", "rope_theta": ROPE_THETA}
    tc.layer_types = ["full_attention"] * TEXT["num_hidden_layers"]
    cfg.tie_word_embeddings = True
    cfg.image_grid_pinpoints = PINPOINTS
    cfg.vision_aspect_ratio = "anyres_max_9"
    cfg.vision_feature_layer = -1
    cfg.vision_feature_select_strategy = "full"
    cfg.projector_hidden_act = "gelu"
    cfg.multimodal_projector_bias = True
    setattr(cfg, MARKER_KEY, True)  # random weights: the app and records say so
    setattr(cfg, SHAPES_KEY, SHAPES)

    ip = processor.image_processor
    ip.size = {"height": TILE, "width": TILE}
    if hasattr(ip, "crop_size"):
        ip.crop_size = {"height": TILE, "width": TILE}
    ip.image_grid_pinpoints = PINPOINTS
    ip.image_mean, ip.image_std = list(SIGLIP_MEAN_STD), list(SIGLIP_MEAN_STD)
    vp = getattr(processor, "video_processor", None)
    if vp is not None:
        vp.size = {"height": TILE, "width": TILE}
        vp.image_mean, vp.image_std = list(SIGLIP_MEAN_STD), list(SIGLIP_MEAN_STD)
    processor.num_image_tokens = (TILE // VISION["patch_size"]) ** 2
    processor.tokenizer.model_max_length = TEXT["max_position_embeddings"]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32)
    model.generation_config = generation
    params = sum(p.numel() for p in model.parameters())
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    gc.collect()
    secs = time.perf_counter() - t0
    _log(f"wrote {folder} ({params / 1e9:.3f} B parameters) in {secs:.0f} s")
    return {"built": True, "seconds": round(secs, 1)}


def find_or_make_scene(out_dir: Path, size: int) -> dict[str, Any]:
    """A COG of the synthetic scene: reuse the pyramid benchmark's, else synthesize (+ COG if possible)."""
    work = out_dir / "engine"
    work.mkdir(parents=True, exist_ok=True)
    mine = work / f"scene{size}-cog.tif"
    origin = work / f"scene{size}-cog.origin.json"  # where our COG came from, for the report
    if mine.exists():
        kind = json.loads(origin.read_text())["kind"] if origin.exists() else "COG"
        return {"path": str(mine), "kind": f"{kind}, reused", "seconds": 0.0}
    theirs = out_dir / f"inputs-{size}" / "cog.tif"
    if theirs.exists():
        # The pyramid benchmark deletes its inputs when it ends: a hard link keeps our copy (no bytes copied).
        try:
            os.link(theirs, mine)
        except OSError:
            import shutil

            shutil.copyfile(theirs, mine)
        kind = "COG written by the pyramid benchmark (`write_cog`, JPEG q90, 512² blocks, internal overviews)"
        origin.write_text(json.dumps({"kind": kind}))
        return {"path": str(mine), "kind": kind, "seconds": 0.0}
    from pyramid.synth import synthesize_scene

    tiled = work / f"scene{size}.tif"
    t0 = time.perf_counter()
    if not tiled.exists():
        _log(f"synthesizing a {size}² scene → {tiled}")
        synthesize_scene(tiled, size, seed=0)
    synth_s = time.perf_counter() - t0
    try:
        from pyramid.cog import write_cog

        t1 = time.perf_counter()
        write_cog(tiled, mine, quality=90, overwrite=True)
        _log(f"COG written in {time.perf_counter() - t1:.1f} s")
        kind = "COG (`synthesize_scene` + `write_cog`, JPEG q90)"
        origin.write_text(json.dumps({"kind": kind}))
        return {"path": str(mine), "kind": kind, "seconds": round(synth_s, 1)}
    except Exception as exc:  # write_cog may be mid-edit by someone else: the tiled file is fine here
        _log(f"write_cog unavailable ({type(exc).__name__}: {str(exc)[:120]}); using the tiled JPEG GeoTIFF")
        return {"path": str(tiled), "kind": "tiled JPEG GeoTIFF, no overviews", "seconds": round(synth_s, 1)}


def machine() -> dict[str, Any]:
    import torch  # lazily: the pyramid benchmark's children must not pay for it
    import transformers

    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from lrs_vqa.models.dtypes import host_cpu_flags  # the flags --dtype auto decides by

    have = host_cpu_flags()
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have)
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def write_results_section(path: Path, section: str, heading: str = "## Engine") -> None:
    """Replace a benchmark's section (``heading`` to the next ``## `` heading) or append it at the end.
    Re-reads the file right before writing; other sections are kept byte for byte."""
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == heading), None)
    if start is None:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        new = text + sep + section.rstrip() + "\n"
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + section.rstrip() + "\n" + ("\n" + tail if tail else "")
    path.write_text(new)
