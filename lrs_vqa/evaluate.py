"""``lrs-vqa eval`` and ``lrs-vqa merge``: run a model over a benchmark question file, resumably; score it.

Files in ``--output-dir`` (``SFX`` is empty for an unsharded run, ``-K-of-N`` for shard K of N):

* ``answersSFX.jsonl`` — one row per question, appended and fsynced as each answer is made. LRS-VQA rows have
  the official fields (``question_id`` and its alias ``id`` that the official script groups by, ``prompt``,
  ``text`` = the answer, ``ground_truth``, ``category``, ``model_id``) plus ``stats`` (tokens, TFLOPs,
  seconds, tiles read), ``evidence`` (the tiles shown to the model, level-0 pixel boxes), ``line``,
  ``error``. MME-RealWorld rows are the question record plus ``Output`` (as its launcher writes) and the
  same extras.
* ``runSFX.json`` — the settings; ``--resume`` refuses to continue with different ones.
* ``resultsSFX.json`` — scores, settings, library versions, counts and throughput.

``merge`` joins shards into ``answers.jsonl`` (question-file order), ``run.json`` and ``results.json``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lrs_vqa.answer import AskOptions, StrategyError, answer, get_adapter
from lrs_vqa.answer_log import AnswerLog, write_json_atomic
from lrs_vqa.benchmarks import get_benchmark, score_file
from lrs_vqa.distributed import RayOptions, require_ray, run_units
from lrs_vqa.eval_errors import InputFileError, MalformedRowsError, MergeError, ResumeError
from lrs_vqa.image_groups import group_by_image
from lrs_vqa.models.dtypes import resolve_dtype
from lrs_vqa.questions import Question, QuestionFile, load_questions, resolve_image, select
from lrs_vqa.records import AnswerRecord
from lrs_vqa.rows import BadRow, read_rows
from lrs_vqa.wordnet import load_wordnet
from lrs_vqa.work_units import Done, RowSink, answer_group
from pyramid.errors import RasterInputError
from pyramid.pool import PyramidPool

RUN_FORMAT = "lrs-vqa-eval/1"
# Settings that must not change between a run and its resumption (or between the shards of one merge).
IDENTITY = ("format", "benchmark", "questions_sha256", "model", "dtype", "options", "num_chunks", "chunk_idx")
PACKAGES = ("lrs-vqa", "torch", "transformers", "numpy", "pillow", "rasterio", "pyvips", "nltk", "typer")


@dataclass(frozen=True)
class EvalConfig:
    questions: Path
    image_root: Path
    output_dir: Path
    model: str
    device: str = "cpu"
    dtype: str = "auto"  # lrs_vqa.models.dtypes.resolve_dtype
    options: AskOptions = field(default_factory=AskOptions)
    num_chunks: int = 1
    chunk_idx: int = 0
    offset: int = 0
    limit: int | None = None
    resume: bool = False
    skip_bad_rows: bool = False  # False: refuse a question file with malformed rows before asking anything
    score: bool = True
    normalize: bool = False
    progress: bool = False
    ray: RayOptions | None = None  # answer on Ray workers (lrs_vqa.distributed); None: in this process


@dataclass(frozen=True)
class EvalResult:
    answers_path: Path
    results_path: Path
    benchmark: str
    selected: int  # questions this run (shard, offset, limit) covers
    answered_before: int  # already in the answers file when this run started (resume)
    answered_now: int
    answer_errors: int  # questions whose answer failed (unreadable image, ...): rows with ``error``
    seconds: float  # this invocation's wall time for answering (model loading excluded)
    questions_per_second: float
    images_opened: int
    bad_question_rows: tuple[BadRow, ...]
    results: dict[str, Any]  # what results.json holds


def shard_suffix(num_chunks: int, chunk_idx: int) -> str:
    return "" if num_chunks == 1 else f"-{chunk_idx}-of-{num_chunks}"


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def model_id_of(model: str) -> str:
    """A local checkpoint folder as an absolute path (resuming from another folder names the same model)."""
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def _check_config(cfg: EvalConfig) -> None:
    if cfg.num_chunks < 1 or not 0 <= cfg.chunk_idx < cfg.num_chunks:
        raise InputFileError(
            f"--chunk-idx must be in 0..{cfg.num_chunks - 1} with --num-chunks {cfg.num_chunks}"
        )
    if cfg.offset < 0 or (cfg.limit is not None and cfg.limit < 1):
        raise InputFileError("--offset must be >= 0 and --limit >= 1")
    if not cfg.image_root.is_dir():
        raise InputFileError(f"--image-root {cfg.image_root} is not a folder")


def row_id(benchmark: str) -> Callable[[dict[str, Any]], str | None]:
    return get_benchmark(benchmark).row_id


def stats_dict(record: AnswerRecord) -> dict[str, Any]:
    s = record.stats
    return {
        "vision_tokens_encoded": s.vision_tokens_encoded,
        "tokens_into_llm": s.tokens_into_llm,
        "vision_tokens_into_llm": s.vision_tokens_into_llm,
        "text_tokens": s.text_tokens,
        "final_vision_tokens": s.final_vision_tokens,
        "generated_tokens": record.generated_tokens,
        "images_encoded": s.images_encoded,
        "tiles_read": s.tiles_read,
        "tflops_total": s.tflops_total,
        "tflops_vision": s.tflops_vision,
        "tflops_llm": s.tflops_llm,
        "tflops_scoring": s.tflops_scoring,
        "seconds": s.seconds,
        "peak_memory_mb": s.peak_memory_mb,
    }


def evidence_list(record: AnswerRecord) -> list[dict[str, Any]]:
    return [
        {
            "role": t.role,
            "level": t.level,
            "pixel_box": t.pixel_box,
            "tokens_into_llm": t.tokens_into_llm,
            "score": t.score,
        }
        for t in record.tiles
    ]


def answer_row(
    q: Question, benchmark: str, model_id: str, record: AnswerRecord | None, error: str | None
) -> dict[str, Any]:
    """The row written for one question (``record`` None and ``error`` set when answering failed)."""
    text = record.answer if record is not None else ""
    extra = {
        "line": q.line,
        "model_id": model_id,
        "stats": stats_dict(record) if record is not None else None,
        "evidence": evidence_list(record) if record is not None else [],
        **({k: record.image[k] for k in ("remote", "stac") if k in record.image} if record else {}),
        "error": error,
    }
    return get_benchmark(benchmark).answer_row(q.qid, q.image, q.prompt, q.record, text, extra)


@dataclass(frozen=True)
class EvalJob:
    """How eval answers one question: in this process or in a Ray worker (it is pickled there)."""

    image_root: Path
    benchmark: str
    model: str  # model_id_of(--model): what get_adapter loads and what the rows name
    device: str
    dtype: str
    options: AskOptions

    def image_of(self, q: Question) -> Path | str:
        return resolve_image(self.image_root, q.image)

    def row_id(self, q: Question) -> str:
        return q.qid

    def answer(self, q: Question, adapter: Any, pool: PyramidPool) -> Done:
        try:
            record = answer(
                self.image_of(q),
                q.prompt,
                model=adapter,
                device=self.device,
                dtype=self.dtype,
                options=self.options,
                pyramids=pool,
            )
        except (RasterInputError, StrategyError) as exc:  # this question only; go on
            return self.failed(q, " ".join(str(exc).split()))
        return Done(q.qid, answer_row(q, self.benchmark, self.model, record, None), failed=False)

    def failed(self, q: Question, error: str) -> Done:
        return Done(q.qid, answer_row(q, self.benchmark, self.model, None, error), failed=True)


def _settings(cfg: EvalConfig, qf: QuestionFile) -> dict[str, Any]:
    return {
        "format": RUN_FORMAT,
        "benchmark": qf.benchmark,
        "questions": str(Path(qf.path).resolve()),
        "questions_sha256": qf.sha256,
        "image_root": str(cfg.image_root.resolve()),
        "model": model_id_of(cfg.model),
        "device": cfg.device,
        # Resolved here, where the run starts: the resume identity and Ray workers get a concrete dtype, so a
        # resumed or distributed run never mixes bf16 and fp32 answers (a CUDA device this process cannot see
        # resolves to fp32: pass --dtype bfloat16 for a GPU cluster driven from a CPU-only machine).
        "dtype": resolve_dtype(cfg.dtype, cfg.device),
        "options": asdict(cfg.options),
        "num_chunks": cfg.num_chunks,
        "chunk_idx": cfg.chunk_idx,
        "offset": cfg.offset,
        "limit": cfg.limit,
        "versions": library_versions(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def progress_bar(enabled: bool, total: int, done: int, label: str) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),  # rows this invocation / its wall time (RowSink sets it)
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    task = bar.add_task(label, total=total, completed=done, rate="", failed=0)
    return bar, task


def _throughput(rows: list[dict[str, Any]], wall: float, answered_now: int) -> dict[str, Any]:
    stats = [r["stats"] for r in rows if isinstance(r.get("stats"), dict)]
    n = len(stats)

    def mean(key: str) -> float | None:
        return sum(float(s[key]) for s in stats) / n if n else None

    return {
        "answered_this_invocation": answered_now,
        "wall_seconds_this_invocation": round(wall, 3),
        "questions_per_second_this_invocation": round(answered_now / wall, 4) if wall > 0 else None,
        "rows_with_stats": n,
        "mean_seconds_per_answer": (sum(s["seconds"].get("total", 0.0) for s in stats) / n) if n else None,
        "mean_tflops_total": mean("tflops_total"),
        "mean_vision_tokens_into_llm": mean("vision_tokens_into_llm"),
        "mean_tiles_read": mean("tiles_read"),
    }


def _score(path: Path, cfg_score: bool, normalize: bool) -> dict[str, Any] | None:
    if not cfg_score:
        return None
    return score_file(path, normalize=normalize).to_dict()


def run_eval(
    cfg: EvalConfig, *, on_bad_rows: Callable[[tuple[BadRow, ...]], None] | None = None
) -> EvalResult:
    """Answer the selected questions, appending a row per question; then score the answers file."""
    _check_config(cfg)
    if cfg.ray is not None:
        require_ray()  # before any file is written
    qf = load_questions(cfg.questions, cfg.image_root)
    if qf.bad_rows:
        if on_bad_rows is not None:
            on_bad_rows(qf.bad_rows)
        if not cfg.skip_bad_rows:
            first = "; ".join(b.describe() for b in qf.bad_rows[:3])
            raise MalformedRowsError(
                f"{cfg.questions}: {len(qf.bad_rows)} malformed question row(s) ({first}"
                f"{'; ...' if len(qf.bad_rows) > 3 else ''}); fix them or pass --skip-bad-rows",
                qf.bad_rows,
            )
    if not qf.questions:
        raise InputFileError(f"{cfg.questions}: no usable question")
    if cfg.score and get_benchmark(qf.benchmark).needs_wordnet:
        load_wordnet()  # fail before hours of answering, not after
    mine = select(
        qf.questions, num_chunks=cfg.num_chunks, chunk_idx=cfg.chunk_idx, offset=cfg.offset, limit=cfg.limit
    )
    sfx = shard_suffix(cfg.num_chunks, cfg.chunk_idx)
    out = cfg.output_dir
    answers_path, results_path = out / f"answers{sfx}.jsonl", out / f"results{sfx}.json"
    settings = _settings(cfg, qf)
    log = AnswerLog.open(
        answers_path,
        id_of=row_id(qf.benchmark),
        resume=cfg.resume,
        settings_path=out / f"run{sfx}.json",
        settings=settings,
        identity=IDENTITY,
    )
    with log:
        before = sum(q.qid in log.done for q in mine)
        todo = [q for q in mine if q.qid not in log.done]
        # Absolute paths: a Ray worker may run in another folder (the rows name images as written).
        root = cfg.image_root.absolute()
        job = EvalJob(root, qf.benchmark, settings["model"], cfg.device, settings["dtype"], cfg.options)
        groups = group_by_image(todo, key=lambda q: q.image)  # the work units, one per image
        bar, task = progress_bar(
            cfg.progress, len(mine), before, f"{qf.benchmark} {Path(settings['model']).name}"
        )
        sink = RowSink(log, out, bar, task)
        ray_stats = None
        if cfg.ray is not None and groups:
            with bar:
                ray_stats = run_units(job, groups, sink, cfg.ray)
            load_seconds, wall = ray_stats.model_load_seconds, ray_stats.answer_seconds
        else:
            t_load = time.perf_counter()
            adapter = get_adapter(job.model, cfg.device, job.dtype) if todo else None
            load_seconds = time.perf_counter() - t_load
            sink.restart_clock()
            t0 = time.perf_counter()  # answering only: model loading is reported apart
            with bar:
                for group in groups:
                    sink.images_opened += answer_group(job, group, adapter, sink.take)
            wall = time.perf_counter() - t0
        errors, opened = sink.failures, sink.images_opened
        rows = list(log.done.values())
    scores = _score(answers_path, cfg.score, cfg.normalize)
    results = {
        "benchmark": qf.benchmark,
        "answers": str(answers_path),
        "settings": {**settings, "resume": cfg.resume, "skip_bad_rows": cfg.skip_bad_rows},
        "versions": settings["versions"],
        "counts": {
            "questions_in_file": len(qf.questions) + len(qf.bad_rows),
            "bad_question_rows": len(qf.bad_rows),
            "selected": len(mine),
            "answered_before": before,
            "answered_now": log.appended,
            "answer_errors_now": errors,
            "rows_in_answers_file": len(rows),
            "images_opened_now": opened,
        },
        "bad_question_rows": [b.describe() for b in qf.bad_rows],
        "throughput": {**_throughput(rows, wall, log.appended), "model_load_seconds": round(load_seconds, 3)},
        "scores": scores,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if cfg.ray is not None:  # how it ran; the rows and scores are those of a local run
        results["ray"] = {"options": cfg.ray.describe(), **(ray_stats.to_dict() if ray_stats else {})}
    write_json_atomic(results_path, results)
    return EvalResult(
        answers_path=answers_path,
        results_path=results_path,
        benchmark=qf.benchmark,
        selected=len(mine),
        answered_before=before,
        answered_now=log.appended,
        answer_errors=errors,
        seconds=wall,
        questions_per_second=log.appended / wall if wall > 0 else 0.0,
        images_opened=opened,
        bad_question_rows=qf.bad_rows,
        results=results,
    )


# ------------------------------------------------------------------------------------------------- merge


@dataclass(frozen=True)
class MergeResult:
    answers_path: Path
    results_path: Path
    shards: tuple[str, ...]
    rows: int
    missing: tuple[str, ...]  # question ids with no answer (when the question file could be checked)
    results: dict[str, Any]


def _shard_files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files += sorted(p.glob("answers-*-of-*.jsonl"))
        elif p.is_file():
            files.append(p)
        else:
            raise MergeError(f"{p}: no such file or folder")
    if not files:
        raise MergeError("no shard answer files (answers-K-of-N.jsonl) found")
    return files


def _settings_of(answers: Path) -> dict[str, Any]:
    name = answers.name
    if not (name.startswith("answers") and name.endswith(".jsonl")):
        raise MergeError(f"{answers}: not an eval answers file (answers[-K-of-N].jsonl)")
    path = answers.with_name("run" + name[len("answers") : -len(".jsonl")] + ".json")
    if not path.is_file():
        raise MergeError(f"{answers}: its settings file {path.name} is missing")
    return json.loads(path.read_text(encoding="utf-8"))


def merge_shards(
    inputs: list[Path],
    output_dir: Path,
    *,
    allow_partial: bool = False,
    overwrite: bool = False,
    score: bool = True,
    normalize: bool = False,
) -> MergeResult:
    """Join shard answer files into one, in question-file order, after checking they belong together."""
    files = _shard_files(inputs)
    settings = [_settings_of(f) for f in files]
    ref = settings[0]
    for f, s in zip(files, settings, strict=True):
        differ = [k for k in IDENTITY if k != "chunk_idx" and s.get(k) != ref.get(k)]
        if differ:
            raise MergeError(
                f"{f.name} comes from another run than {files[0].name}: {', '.join(differ)} differ"
            )
    n = int(ref["num_chunks"])
    idx = [int(s["chunk_idx"]) for s in settings]
    if len(set(idx)) != len(idx):
        raise MergeError(f"shard given twice: chunk indexes {sorted(idx)}")
    absent = sorted(set(range(n)) - set(idx))
    if absent and not allow_partial:
        raise MergeError(f"shards {absent} of {n} are missing; pass --allow-partial to merge what is there")
    id_of = row_id(ref["benchmark"])
    rows: dict[str, dict[str, Any]] = {}
    for f in files:
        found, bad = read_rows(f)
        if bad:
            raise MergeError(
                f"{f}: {bad[0].describe()}; resume that shard first (it repairs a torn last line)"
            )
        for r in found:
            rid = id_of(r.data)
            if rid is None:
                raise MergeError(f"{f}: line {r.line} has no question id")
            if rid in rows:
                raise MergeError(f"question {rid!r} is answered in more than one shard")
            rows[rid] = r.data
    missing: tuple[str, ...] = ()
    qpath = Path(ref["questions"])
    whole = all(s.get("offset", 0) == 0 and s.get("limit") is None for s in settings) and not absent
    if whole and qpath.is_file():
        qf = load_questions(qpath, ref["image_root"], check_images=False)
        if qf.sha256 == ref["questions_sha256"]:
            missing = tuple(q.qid for q in qf.questions if q.qid not in rows)
            if missing and not allow_partial:
                raise MergeError(
                    f"{len(missing)} questions have no answer (first: {missing[0]}); resume the shards"
                )
    output_dir.mkdir(parents=True, exist_ok=True)
    answers_path, results_path = output_dir / "answers.jsonl", output_dir / "results.json"
    if answers_path.exists() and not overwrite:
        raise ResumeError(f"{answers_path} exists; pass --overwrite to replace it")
    ordered = sorted(rows.values(), key=lambda r: int(r.get("line", 0)))
    _write_jsonl_atomic(answers_path, ordered)
    merged = {**ref, "chunk_idx": None, "shards": [str(f) for f in files], "offset": 0, "limit": None}
    write_json_atomic(output_dir / "run.json", merged)
    results = {
        "benchmark": ref["benchmark"],
        "answers": str(answers_path),
        "settings": merged,
        "versions": library_versions(),
        "merged_from": [str(f) for f in files],
        "counts": {"shards": len(files), "num_chunks": n, "rows": len(ordered), "missing": len(missing)},
        "missing_question_ids": list(missing),
        "throughput": _throughput(ordered, 0.0, 0),
        "scores": _score(answers_path, score, normalize),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(results_path, results)
    return MergeResult(
        answers_path, results_path, tuple(str(f) for f in files), len(ordered), missing, results
    )


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
