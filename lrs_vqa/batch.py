"""``lrs-vqa batch``: questions about a user's own images, answered resumably, with GeoJSON evidence.

Two ways to say what to ask:

* a list — JSONL, a JSON list or CSV with ``image``, ``question`` and optionally ``id`` per row; relative
  image paths are under ``--image-root`` (default: the list's folder), absolute ones are used as they are;
* a folder (``--images``) and a questions file — every question about every raster in the folder (``.txt``
  with one question per line, or JSONL/CSV rows with ``question`` and optionally ``id``).

``--output-dir`` receives ``answers.jsonl`` (one row per question, fsynced as it is made; ``--resume``
continues it), ``evidence/<id>.geojson`` per answer (the tiles read, WGS84 polygons when georeferenced),
``batch.json`` (the settings) and ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lrs_vqa.answer import AskOptions, StrategyError, answer, get_adapter
from lrs_vqa.answer_log import AnswerLog, write_json_atomic
from lrs_vqa.distributed import RayOptions, require_ray, run_units
from lrs_vqa.eval_errors import InputFileError, MalformedRowsError
from lrs_vqa.evaluate import evidence_list, library_versions, model_id_of, progress_bar, stats_dict
from lrs_vqa.evidence import evidence_geojson
from lrs_vqa.image_groups import group_by_image
from lrs_vqa.models.dtypes import resolve_dtype
from lrs_vqa.rows import BadRow, Row, read_rows, text_field
from lrs_vqa.work_units import Done, RowSink, answer_group
from pyramid.errors import RasterInputError
from pyramid.pool import PyramidPool
from pyramid.remote import is_location

BATCH_FORMAT = "lrs-vqa-batch/1"
IDENTITY = ("format", "questions_sha256", "images", "model", "dtype", "options")
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt"})


@dataclass(frozen=True)
class BatchItem:
    line: int  # where the question is in the questions file
    item_id: str
    image: Path | str  # a local path, or a URL / STAC item URL as written
    image_label: str  # as the user wrote it (or the file name in folder mode)
    question: str


@dataclass(frozen=True)
class BatchConfig:
    questions: Path
    output_dir: Path
    model: str
    images: Path | None = None  # folder mode
    image_root: Path | None = None  # list mode; default: the questions file's folder
    device: str = "cpu"
    dtype: str = "auto"  # lrs_vqa.models.dtypes.resolve_dtype
    options: AskOptions = field(default_factory=AskOptions)
    resume: bool = False
    skip_bad_rows: bool = False
    progress: bool = False
    ray: RayOptions | None = None  # answer on Ray workers (lrs_vqa.distributed); None: in this process


@dataclass(frozen=True)
class BatchSummary:
    answers_path: Path
    summary_path: Path
    evidence_dir: Path
    items: int
    answered_before: int
    answered_now: int
    errors: int  # rows whose answer failed (in the whole answers file)
    seconds: float  # this invocation's wall time
    questions_per_second: float
    mean_seconds_per_answer: float | None
    total_tflops: float
    tiles_read: int
    bad_rows: tuple[BadRow, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bad_rows"] = [b.describe() for b in self.bad_rows]
        return out


def safe_name(item_id: str) -> str:
    """A file name for an id: readable part plus a short hash, so distinct ids never share a file."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._")[:80] or "item"
    return f"{readable}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}"


def _question_rows(path: Path) -> tuple[list[Row], list[BadRow]]:
    if path.suffix.lower() != ".txt":
        return read_rows(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    rows = [
        Row(n, {"question": line.strip()})
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return rows, []


def _id(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


def load_items(cfg: BatchConfig) -> tuple[list[BatchItem], list[BadRow]]:
    rows, bad = _question_rows(cfg.questions)
    bad = list(bad)
    items: list[BatchItem] = []
    seen: dict[str, int] = {}
    if cfg.images is not None:
        if not cfg.images.is_dir():
            raise InputFileError(f"--images {cfg.images} is not a folder")
        images = sorted(
            p for p in cfg.images.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES
        )
        if not images:
            raise InputFileError(
                f"--images {cfg.images} holds no raster ({', '.join(sorted(RASTER_SUFFIXES))})"
            )
        questions: list[tuple[int, str, str]] = []
        for k, row in enumerate(rows, start=1):
            q, given = text_field(row.data, "question"), row.data.get("id")
            qid = _id(given) or f"q{k}"
            if "image" in row.data:
                bad.append(
                    BadRow(row.line, "has an image column; with --images every question goes to every image")
                )
            elif q is None:
                bad.append(BadRow(row.line, "missing or empty question"))
            elif qid in seen:
                bad.append(BadRow(row.line, f"duplicate id (first at line {seen[qid]})", qid))
            else:
                seen[qid] = row.line
                questions.append((row.line, qid, q))
        for image in images:
            for line, qid, q in questions:
                items.append(BatchItem(line, f"{image.name}::{qid}", image, image.name, q))
        return items, sorted(bad, key=lambda b: b.line)
    if cfg.questions.suffix.lower() == ".txt":
        raise InputFileError(f"{cfg.questions}: a .txt file holds questions only; give --images too")
    root = cfg.image_root if cfg.image_root is not None else cfg.questions.parent
    for row in rows:
        d = row.data
        image, q = text_field(d, "image"), text_field(d, "question")
        item_id = _id(d.get("id")) or f"line{row.line}"
        problem = None
        if image is None or q is None:
            problem = "missing or empty " + " and ".join(
                k for k, v in (("image", image), ("question", q)) if not v
            )
        elif item_id in seen:
            problem = f"duplicate id (first at line {seen[item_id]})"
        elif not is_location(image) and not (root / image).is_file():
            problem = f"image not found: {root / image}"
        if problem is not None:
            bad.append(BadRow(row.line, problem, item_id))
            continue
        assert image is not None and q is not None
        seen[item_id] = row.line
        # A URL (a remote COG, or a STAC item) is read where it is; local paths start at the root.
        items.append(BatchItem(row.line, item_id, image if is_location(image) else root / image, image, q))
    return items, sorted(bad, key=lambda b: b.line)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_batch(cfg: BatchConfig) -> BatchSummary:
    if cfg.ray is not None:
        require_ray()  # before any file is written
    items, bad = load_items(cfg)
    if bad and not cfg.skip_bad_rows:
        first = "; ".join(b.describe() for b in bad[:3])
        raise MalformedRowsError(
            f"{cfg.questions}: {len(bad)} malformed row(s) ({first}{'; ...' if len(bad) > 3 else ''}); "
            "fix them or pass --skip-bad-rows",
            tuple(bad),
        )
    if not items:
        raise InputFileError(f"{cfg.questions}: nothing to ask")
    out = cfg.output_dir
    evidence_dir = out / "evidence"
    evidence_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "format": BATCH_FORMAT,
        "questions": str(cfg.questions.resolve()),
        "questions_sha256": _sha256(cfg.questions),
        "images": str(cfg.images.resolve()) if cfg.images is not None else None,
        "image_root": str((cfg.image_root or cfg.questions.parent).resolve()),
        "model": model_id_of(cfg.model),
        "device": cfg.device,
        # Resolved here, where the run starts: the resume identity and Ray workers get a concrete dtype, so a
        # resumed or distributed run never mixes bf16 and fp32 answers (a CUDA device this process cannot see
        # resolves to fp32: pass --dtype bfloat16 for a GPU cluster driven from a CPU-only machine).
        "dtype": resolve_dtype(cfg.dtype, cfg.device),
        "options": asdict(cfg.options),
        "versions": library_versions(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    log = AnswerLog.open(
        out / "answers.jsonl",
        id_of=lambda r: r.get("id") if isinstance(r.get("id"), str) else None,
        resume=cfg.resume,
        settings_path=out / "batch.json",
        settings=settings,
        identity=IDENTITY,
    )
    with log:
        before = sum(it.item_id in log.done for it in items)
        todo = [it for it in items if it.item_id not in log.done]
        if cfg.ray is not None:  # a worker may run in another folder: give it absolute paths
            todo = [_absolute(it) for it in todo]
        job = BatchJob(settings["model"], cfg.device, settings["dtype"], cfg.options)
        groups = group_by_image(todo, key=lambda it: it.image)  # the work units, one per image
        bar, task = progress_bar(cfg.progress, len(items), before, "batch")
        sink = RowSink(log, out, bar, task)
        ray_stats = None
        if cfg.ray is not None and groups:
            with bar:
                ray_stats = run_units(job, groups, sink, cfg.ray)
            wall = ray_stats.answer_seconds
        else:
            adapter = get_adapter(job.model, cfg.device, job.dtype) if todo else None
            sink.restart_clock()
            t0 = time.perf_counter()
            with bar:
                for group in groups:
                    answer_group(job, group, adapter, sink.take)
            wall = time.perf_counter() - t0
        rows = [log.done[it.item_id] for it in items if it.item_id in log.done]
    stats = [r["stats"] for r in rows if isinstance(r.get("stats"), dict)]
    summary = BatchSummary(
        answers_path=log.path,
        summary_path=out / "summary.json",
        evidence_dir=evidence_dir,
        items=len(items),
        answered_before=before,
        answered_now=log.appended,
        errors=sum(1 for r in rows if r.get("error")),
        seconds=wall,
        questions_per_second=log.appended / wall if wall > 0 else 0.0,
        mean_seconds_per_answer=sum(s["seconds"]["total"] for s in stats) / len(stats) if stats else None,
        total_tflops=sum(s["tflops_total"] for s in stats),
        tiles_read=sum(s["tiles_read"] for s in stats),
        bad_rows=tuple(bad),
    )
    extra = {"ray": {"options": cfg.ray.describe(), **ray_stats.to_dict()}} if cfg.ray and ray_stats else {}
    write_json_atomic(summary.summary_path, {**summary.to_dict(), "settings": settings, **extra})
    return summary


@dataclass(frozen=True)
class BatchJob:
    """How batch answers one item: in this process or in a Ray worker (it is pickled there). The evidence
    GeoJSON travels in the result; the driver writes it before the row, so a row always points at a real
    file."""

    model: str  # model_id_of(--model): what get_adapter loads and what the rows name
    device: str
    dtype: str
    options: AskOptions

    def image_of(self, it: BatchItem) -> Path | str:
        return it.image

    def row_id(self, it: BatchItem) -> str:
        return it.item_id

    def answer(self, it: BatchItem, adapter: Any, pool: PyramidPool) -> Done:
        try:
            record = answer(
                it.image,
                it.question,
                model=adapter,
                device=self.device,
                dtype=self.dtype,
                options=self.options,
                pyramids=pool,
            )
        except (RasterInputError, StrategyError) as exc:  # this question only; the batch goes on
            return self.failed(it, " ".join(str(exc).split()))
        evidence = f"evidence/{safe_name(it.item_id)}.geojson"
        row = {
            **_row_head(it),
            "answer": record.answer,
            "model": self.model,
            "strategy": record.strategy,
            "random_weights": record.random_weights,
            "stats": stats_dict(record),
            "tiles": evidence_list(record),
            "evidence_file": evidence,
            **{k: record.image[k] for k in ("remote", "stac") if k in record.image},  # URL / STAC inputs
            "error": None,
        }
        return Done(it.item_id, row, False, ((evidence, json.dumps(evidence_geojson(record), indent=1)),))

    def failed(self, it: BatchItem, error: str) -> Done:
        return Done(it.item_id, {**_row_head(it), "answer": None, "model": self.model, "error": error}, True)


def _absolute(it: BatchItem) -> BatchItem:
    return replace(it, image=it.image.absolute()) if isinstance(it.image, Path) else it


def _row_head(it: BatchItem) -> dict[str, Any]:
    return {"id": it.item_id, "image": it.image_label, "question": it.question, "line": it.line}
