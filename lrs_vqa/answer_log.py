"""An append-only JSONL file of answer rows that survives crashes and resumes without duplicates.

* Each row is one ``write`` of one line followed by ``fsync``: a crash or kill loses at most the row being
  written. A torn last line (no newline) is cut off when the file is opened again with ``resume``.
* The ids already in the file are the questions not to ask again, so a resumed run never repeats a row, and
  any question without a complete row is asked again, so none is dropped.
* An exclusive ``flock`` stops two processes from appending to the same file (it dies with its process).
* A sidecar JSON records the run's settings; resuming with different settings is refused, so one file never
  mixes answers from two configurations.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lrs_vqa.eval_errors import ResumeError


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON to ``path`` via a temporary file, fsynced, then renamed over it (never half written)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AnswerLog:
    """Open with :meth:`open`; ``done`` holds the ids already answered; :meth:`append` adds one row."""

    def __init__(self, path: Path, fd: int, done: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self._fd = fd
        self.done = done  # id -> row, in file order
        self.appended = 0

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        id_of: Callable[[dict[str, Any]], str | None],
        resume: bool,
        settings_path: str | Path,
        settings: Mapping[str, Any],
        identity: tuple[str, ...],
    ) -> AnswerLog:
        """Open ``path`` for appending. Without ``resume`` it must be absent or empty. ``settings`` are
        written to ``settings_path``; on resume the keys in ``identity`` must equal the recorded ones."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ResumeError(f"{p} is being written by another process") from None
            size = os.fstat(fd).st_size
            if size and not resume:
                raise ResumeError(f"{p} already has answers; pass --resume to continue it, or another output")
            done = _read_done(p, fd, size, id_of) if size else {}
            _check_settings(Path(settings_path), settings, identity, resume and bool(done))
        except BaseException:
            os.close(fd)
            raise
        _fsync_dir(p.parent)
        return cls(p, fd, done)

    def append(self, row: dict[str, Any], row_id: str) -> None:
        data = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:  # a short write on a regular file is rare but legal
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)
        self.done[row_id] = row
        self.appended += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the lock
            self._fd = -1

    def __enter__(self) -> AnswerLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_done(
    p: Path, fd: int, size: int, id_of: Callable[[dict[str, Any]], str | None]
) -> dict[str, dict[str, Any]]:
    data = os.pread(fd, size, 0)
    end = data.rfind(b"\n") + 1
    if end < len(data):  # a row cut short by a crash: its question is asked again
        os.ftruncate(fd, end)
        os.fsync(fd)
        data = data[:end]
    done: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ResumeError(f"{p}: line {n} is not valid JSON; fix or remove it before resuming") from None
        row_id = id_of(row) if isinstance(row, dict) else None
        if row_id is None:
            raise ResumeError(f"{p}: line {n} has no question id; fix or remove it before resuming")
        if row_id in done:
            raise ResumeError(f"{p}: line {n} repeats id {row_id!r}; fix the file before resuming")
        done[row_id] = row
    return done


def _check_settings(
    path: Path, settings: Mapping[str, Any], identity: tuple[str, ...], resuming: bool
) -> None:
    # Round-trip through JSON so tuples and lists (and other non-JSON types) compare as they are stored.
    current = json.loads(json.dumps(dict(settings), default=str))
    if resuming and path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        differ = [k for k in identity if recorded.get(k) != current.get(k)]
        if differ:
            raise ResumeError(
                f"cannot resume: {', '.join(differ)} differ from the run recorded in {path}; "
                "use the same settings or another output"
            )
    write_json_atomic(path, current)
