"""Work units of ``eval`` and ``batch``: the questions about one image, answered by one model holder, their
rows appended by one writer.

The same code runs in a local run and in a Ray worker (``lrs_vqa.distributed``): a *job* (``EvalJob``,
``BatchJob``) knows how to answer one item with a loaded model and an open pyramid, and returns a
:class:`Done` — the row and any file it points at, as data. Only the driver's :class:`RowSink` touches the
output folder, so a worker on another machine never needs to see it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from lrs_vqa.answer_log import AnswerLog
from lrs_vqa.image_groups import shared_pyramid
from pyramid.pool import PyramidPool

T = TypeVar("T")


@dataclass(frozen=True)
class Done:
    """One answered (or failed) item: its row, and files (path relative to the output folder, text) that must
    exist before the row does."""

    row_id: str
    row: dict[str, Any]
    failed: bool
    files: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class UnitResult:
    """What a worker sends back for one unit."""

    done: tuple[Done, ...]
    images_opened: int


class Job(Protocol[T]):
    """How one kind of run answers its items; picklable (it travels to Ray workers)."""

    model: str  # what get_adapter loads (an absolute folder or a hub id)
    device: str
    dtype: str

    def image_of(self, item: T) -> str | Path: ...

    def row_id(self, item: T) -> str: ...

    def answer(self, item: T, adapter: Any, pool: PyramidPool) -> Done: ...

    def failed(self, item: T, error: str) -> Done: ...


def answer_group(job: Job[T], group: Sequence[T], adapter: Any, emit: Callable[[Done], None]) -> int:
    """Answer every item of one image group with that image's pyramid kept open; ``emit`` each row as it is
    made. Returns the number of pyramids opened."""
    with shared_pyramid(job.image_of(group[0])) as pool:
        for item in group:
            emit(job.answer(item, adapter, pool))
    return pool.opens


def answer_unit(job: Job[T], unit: Sequence[T], adapter: Any) -> UnitResult:
    """:func:`answer_group` with the rows collected (a Ray worker returns them in one message)."""
    done: list[Done] = []
    opened = answer_group(job, unit, adapter, done.append)
    return UnitResult(tuple(done), opened)


class RowSink:
    """The single writer: writes a row's files, then appends the row (fsynced), and moves the progress bar.

    A row whose id is already in the log is dropped, so a unit delivered twice never writes a row twice."""

    def __init__(self, log: AnswerLog, output_dir: Path, bar: Any, task: Any) -> None:
        self.log, self.output_dir, self.bar, self.task = log, output_dir, bar, task
        self.failures = 0
        self.images_opened = 0
        self.busy_seconds = 0.0  # writing rows and files: the single writer's cost
        self._t0 = time.perf_counter()

    def restart_clock(self) -> None:
        """Rows per second count from now (after the model is loaded)."""
        self._t0 = time.perf_counter()

    def take(self, done: Done) -> None:
        if done.row_id in self.log.done:
            return
        t0 = time.perf_counter()
        for rel, text in done.files:
            _write_text_atomic(self.output_dir / rel, text)
        self.log.append(done.row, done.row_id)
        self.busy_seconds += time.perf_counter() - t0
        self.failures += done.failed
        wall = time.perf_counter() - self._t0
        rate = f"{self.log.appended / wall:.2f} rows/s" if wall > 0 else ""
        self.bar.update(self.task, advance=1, rate=rate, failed=self.failures)

    def take_unit(self, result: UnitResult) -> None:
        for done in result.done:
            self.take(done)
        self.images_opened += result.images_opened


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # never a half-written file behind a row
