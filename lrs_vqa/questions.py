"""Benchmark question files (any benchmark of ``lrs_vqa.benchmarks``), checked row by row, image paths
confined to the image root, and the slice of questions one run (or one shard) asks."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lrs_vqa.benchmarks import detect
from lrs_vqa.eval_errors import InputFileError, PathEscapeError
from lrs_vqa.rows import BadRow, read_rows
from pyramid.remote import is_location


@dataclass(frozen=True)
class Question:
    line: int  # the row's line in the file (item number in a JSON list): the order merged answers follow
    qid: str
    image: str  # as written in the file, relative to the image root
    prompt: str  # the text the model is asked
    record: dict[str, Any]  # the row as read


@dataclass(frozen=True)
class QuestionFile:
    path: str
    benchmark: str  # a name in lrs_vqa.benchmarks
    sha256: str
    questions: tuple[Question, ...]
    bad_rows: tuple[BadRow, ...]


def resolve_image(image_root: Path, relative: str) -> Path | str:
    """``image_root / relative``, refused when ``relative`` is absolute or climbs out with ``..``.

    The check is on the path as written (symbolic links the user placed inside the root are followed, so a
    dataset folder may link to another disk). A URL (http(s), s3, gs, az) or GDAL ``/vsi…/`` path is
    returned as written: remote images (and STAC items at a URL) are read by range, not from the root."""
    if is_location(relative.strip()):
        return relative.strip()
    if "\x00" in relative or not relative.strip():
        raise PathEscapeError(f"image path {relative!r} is not a usable path")
    if os.path.isabs(relative) or PurePosixPath(relative.replace("\\", "/")).is_absolute():
        raise PathEscapeError(f"image path {relative!r} is absolute; it must be relative to --image-root")
    parts = PurePosixPath(os.path.normpath(relative.replace("\\", "/"))).parts
    if parts and parts[0] == "..":
        raise PathEscapeError(f"image path {relative!r} escapes --image-root")
    return image_root / relative


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_questions(path: str | Path, image_root: str | Path, *, check_images: bool = True) -> QuestionFile:
    """Read and check every row. Bad rows (invalid JSON, missing fields, repeated ids, image paths outside
    ``image_root``, missing images) are returned, not dropped silently; the caller decides."""
    p = Path(path)
    rows, bad = read_rows(p)
    if not rows and not bad:
        raise InputFileError(f"{p}: no questions")
    bench = detect(rows)
    root = Path(image_root)
    bad = list(bad)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for row in rows:
        d = row.data
        fields = bench.read_question(d)
        qid, image, problem = fields.qid, fields.image, fields.problem
        if problem is None and qid in seen:
            problem = f"duplicate question id (first at line {seen[qid]})"
        if problem is None:
            assert isinstance(image, str) and qid is not None
            try:
                full = resolve_image(root, image)
            except PathEscapeError as exc:
                problem = str(exc)
            else:
                if check_images and isinstance(full, Path) and not full.is_file():
                    problem = f"image not found: {full}"
        if problem is not None:
            bad.append(BadRow(row.line, problem, qid))
            continue
        assert qid is not None and isinstance(image, str)
        seen[qid] = row.line
        prompt = bench.prompt(d)
        questions.append(Question(row.line, qid, image, prompt, d))
    bad.sort(key=lambda b: b.line)
    return QuestionFile(
        path=str(p),
        benchmark=bench.name,
        sha256=_sha256(p),
        questions=tuple(questions),
        bad_rows=tuple(bad),
    )


def chunk(items: list[Question] | tuple[Question, ...], num_chunks: int, chunk_idx: int) -> list[Question]:
    """The official launchers' split: ``ceil(n / num_chunks)`` consecutive questions per chunk."""
    size = math.ceil(len(items) / num_chunks) if items else 0
    return list(items[chunk_idx * size : (chunk_idx + 1) * size]) if size else []


def select(
    questions: tuple[Question, ...],
    *,
    num_chunks: int = 1,
    chunk_idx: int = 0,
    offset: int = 0,
    limit: int | None,
) -> list[Question]:
    """This shard's questions (chunking first, so ``--limit`` can grow on resume without moving shards),
    then ``offset``/``limit`` inside the shard."""
    mine = chunk(questions, num_chunks, chunk_idx)
    end = None if limit is None else offset + limit
    return mine[offset:end]
