"""``eval --ray`` / ``batch --ray``: the same run spread over Ray actors on one machine's GPUs or a cluster.

* Each worker is a Ray actor that loads the model once (``get_adapter``, as a local run) and answers *units*:
  the questions about one image (``image_groups``), so each image is opened once, on one worker.
* The driver (this process) stays the single writer: it owns the fsynced, resumable ``answers.jsonl`` through
  a :class:`~lrs_vqa.work_units.RowSink`, so a Ray run writes the same files as a local one and either can
  resume the other. Workers return rows (and evidence) as data and never touch the output folder.
* Faults: actors are created with ``max_restarts`` (Ray brings a dead one back, on another node if its node is
  gone). A unit whose worker died, or raised, goes back to the front of the queue for the next free worker
  (so, another one), at most ``unit_attempts`` times; then its questions are written as failed rows with the
  error and the run goes on. Rows are appended only from a unit's complete result and the log drops ids it
  already holds, so nothing is lost or written twice.

``ray`` is imported only here and only when a Ray run starts: ``pip install "lrs-vqa[ray]"``.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

from lrs_vqa.eval_errors import EvalError
from lrs_vqa.work_units import Job, RowSink, UnitResult, answer_unit

INSTALL_HINT = 'pip install "lrs-vqa[ray]"'


class RayMissingError(EvalError):
    """``--ray`` without Ray installed."""


class RayRunError(EvalError):
    """A Ray run that cannot start or go on (no cluster at the address, no room for a worker, every worker
    dead)."""


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: join the local Ray if one runs, else start one; or host:port, ray://…
    workers: int | None = None  # None: as many as the cluster's GPUs (or CPUs) allow, at most one per unit
    gpus_per_worker: float | None = None  # None: 1 when the device is cuda, else 0
    cpus_per_worker: float = 1.0
    unit_attempts: int = 3  # tries of one unit before its rows are written as failed
    actor_restarts: int = 3  # Ray restarts of one dead worker (it reloads the model)
    # Runs in the worker before each unit, with the unit's items (the tests kill a worker with it).
    before_unit: Callable[[Sequence[Any]], None] | None = None

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "before_unit"}


@dataclass(frozen=True)
class RayRunStats:
    workers: int
    nodes: tuple[str, ...]  # host names of the workers that came up
    units: int
    units_retried: int  # unit attempts that failed and were tried again
    units_failed: int  # units written as failed rows after unit_attempts tries
    worker_failures: int  # unit attempts lost to a dead worker
    model_load_seconds: float  # until the first worker was ready
    answer_seconds: float  # from the first worker ready to the last row
    driver_ms_per_row: float  # the driver writing one row (and its files), fsync included

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_address(text: str | None) -> str | None:
    """``--ray`` value: ``auto``/``local`` → None (start or join a local Ray); ``host:port`` or ``ray://…`` as
    given."""
    value = (text or "auto").strip()
    if value in ("auto", "local"):
        return None
    host, _, port = value.removeprefix("ray://").rpartition(":")
    if value.startswith("ray://") or (host and port.isdigit()):
        return value
    raise RayRunError(
        f"--ray takes auto or a cluster address (host:port, ray://host:10001), got {value!r}"
        " (a bare --ray goes after the positional arguments)"
    )


def require_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise RayMissingError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _worker_class(ray: ModuleType) -> Any:
    # Built here, not at import, so that importing this module needs no Ray.
    @ray.remote
    class Worker:
        def __init__(self, job: Job[Any], before_unit: Callable[[Sequence[Any]], None] | None) -> None:
            from lrs_vqa.answer import get_adapter

            t0 = time.perf_counter()
            self.job, self.before_unit = job, before_unit
            self.adapter = get_adapter(job.model, job.device, job.dtype)
            self.load_seconds = time.perf_counter() - t0

        # Retried until the actor is back (restarting) or gone for good: the driver's liveness probe.
        @ray.method(max_task_retries=-1)
        def ready(self) -> dict[str, Any]:
            return {"node": socket.gethostname(), "pid": os.getpid(), "load_seconds": self.load_seconds}

        def run(self, unit: Sequence[Any]) -> UnitResult:
            if self.before_unit is not None:
                self.before_unit(unit)
            return answer_unit(self.job, unit, self.adapter)

    return Worker


def _connect(ray: ModuleType, address: str | None) -> bool:
    """Join (or start) Ray; True when this call started or joined it (and so must shut it down)."""
    if ray.is_initialized():  # a library user (or a test) already holds a session: use it
        return False
    try:
        ray.init(address=address, include_dashboard=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayRunError(f"cannot join Ray at {address or 'the local machine'}: {_one_line(exc)}") from None
    return True


def _resources(ray: ModuleType, job: Job[Any], opts: RayOptions, units: int) -> tuple[int, float, float]:
    gpus = opts.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if job.device.startswith("cuda") else 0.0
    cpus = opts.cpus_per_worker
    total = ray.cluster_resources()
    have_gpus, have_cpus = float(total.get("GPU", 0.0)), float(total.get("CPU", 0.0))
    if gpus > have_gpus or cpus > have_cpus:
        raise RayRunError(
            f"a worker needs {gpus:g} GPU and {cpus:g} CPU; the cluster has {have_gpus:g} GPU and "
            f"{have_cpus:g} CPU (see --gpus-per-worker, --cpus-per-worker)"
        )
    if opts.workers is not None:
        if opts.workers < 1:
            raise RayRunError("--workers must be >= 1")
        workers = opts.workers
    else:
        workers = int(have_gpus // gpus) if gpus > 0 else int(have_cpus // cpus) if cpus > 0 else 1
    return max(1, min(workers, units)), gpus, cpus


def run_units(job: Job[Any], units: list[list[Any]], sink: RowSink, opts: RayOptions) -> RayRunStats:
    """Answer ``units`` on Ray workers; every row goes through ``sink`` (the driver's single writer)."""
    ray = require_ray()
    if opts.unit_attempts < 1:
        raise RayRunError("unit_attempts must be >= 1")
    owned = _connect(ray, opts.address)
    actors: list[Any] = []
    try:
        n, gpus, cpus = _resources(ray, job, opts, len(units))
        worker = _worker_class(ray).options(
            num_gpus=gpus, num_cpus=cpus, max_restarts=opts.actor_restarts, max_task_retries=0
        )
        actors = [worker.remote(job, opts.before_unit) for _ in range(n)]
        return _drive(ray, actors, job, units, sink, opts)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if owned:
            ray.shutdown()


def _drive(
    ray: ModuleType, actors: list[Any], job: Job[Any], units: list[list[Any]], sink: RowSink, opts: RayOptions
) -> RayRunStats:
    from ray.exceptions import RayError, RayTaskError

    t_start, busy_before, rows_before = time.perf_counter(), sink.busy_seconds, sink.log.appended
    queue: deque[tuple[list[Any], int]] = deque((u, 0) for u in units)  # (unit, failed attempts)
    idle: list[Any] = []
    running: dict[Any, tuple[Any, list[Any], int]] = {}  # ObjectRef -> (actor, unit, failed attempts)
    # Every worker starts as "recovering": it is given work once its model is loaded.
    probing: dict[Any, Any] = {a.ready.remote(): a for a in actors}
    nodes: set[str] = set()
    first_ready: float | None = None
    retried = failed_units = deaths = 0
    last_error = ""
    while queue or running:
        while idle and queue:
            actor = idle.pop()
            unit, attempts = queue.popleft()
            running[actor.run.remote(unit)] = (actor, unit, attempts)
        if not running and not probing:
            raise RayRunError(
                f"every Ray worker is dead, {sum(len(u) for u, _ in queue)} questions left "
                f"(rows so far are kept; rerun with --resume): {last_error}"
            )
        [ref], _ = ray.wait([*running, *probing], num_returns=1)
        if ref in probing:
            actor = probing.pop(ref)
            try:
                info = ray.get(ref)
            except RayError as exc:  # restarts used up, or the model does not load there
                last_error = _one_line(exc)
                continue
            nodes.add(str(info["node"]))
            if first_ready is None:
                first_ready = time.perf_counter()
                sink.restart_clock()
            idle.append(actor)
            continue
        actor, unit, attempts = running.pop(ref)
        try:
            result = ray.get(ref)
        except RayError as exc:
            last_error = _one_line(exc)
            if isinstance(exc, RayTaskError):
                idle.append(actor)  # the unit raised; the worker lives
            else:  # the worker died (killed, out of memory, node lost): back once Ray has restarted it
                deaths += 1
                probing[actor.ready.remote()] = actor
            if attempts + 1 < opts.unit_attempts:
                retried += 1
                queue.appendleft((unit, attempts + 1))  # the next free worker takes it
            else:
                failed_units += 1
                error = f"failed on Ray workers {attempts + 1} times: {last_error}"
                for item in unit:
                    sink.take(job.failed(item, error))
            continue
        idle.append(actor)
        sink.take_unit(result)
    end = time.perf_counter()
    ready_at = first_ready if first_ready is not None else end
    return RayRunStats(
        workers=len(actors),
        nodes=tuple(sorted(nodes)),
        units=len(units),
        units_retried=retried,
        units_failed=failed_units,
        worker_failures=deaths,
        model_load_seconds=round(ready_at - t_start, 3),
        answer_seconds=round(end - ready_at, 3),
        driver_ms_per_row=round(
            1000 * (sink.busy_seconds - busy_before) / max(1, sink.log.appended - rows_before), 3
        ),
    )


def _one_line(exc: BaseException) -> str:
    # Ray errors carry the remote traceback; the row and the message keep its last line (the cause).
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(exc).__name__
